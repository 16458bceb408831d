//! Error bodies: RFC 9457 `application/problem+json`, keeping the original pattern's `error`
//! field so existing clients keep working.
//!
//! Every rejection the pipeline answers is a [`Rejection`]. Its response carries a
//! [`RejectionInfo`] in the extensions, so outer layers (and the audit step) can read the typed
//! reason without parsing the body.
//!
//! ```
//! use axum::response::IntoResponse;
//! use secure_routes::response::problem::{Rejection, RejectionInfo, RejectionKind};
//! let res = Rejection::new(RejectionKind::MethodNotAllowed, "method_not_allowed").into_response();
//! assert_eq!(res.status(), 405);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.extensions().get::<RejectionInfo>().unwrap().kind, RejectionKind::MethodNotAllowed);
//! ```

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::audit::{AuditAction, Reason};

/// The kinds of rejection, each with a fixed status, title and `error` string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// 400: input the route cannot accept (malformed JSON, a field out of bounds).
    InvalidInput,
    /// 405.
    MethodNotAllowed,
    /// 401.
    Unauthorized,
    /// 403 from authorization (authenticated, not allowed).
    Forbidden,
    /// 429.
    RateLimited,
    /// 413.
    PayloadTooLarge,
    /// 403 from the CSRF checks.
    CsrfFailed,
    /// 503: the rate-limit store needed for the decision is unavailable (fail-closed).
    Unavailable,
    /// 503: the authenticator could not decide (its key set unreachable, a timeout). Audited
    /// as [`AuditAction::AuthenticatorFailure`], apart from store failures.
    AuthUnavailable,
    /// 404: no route matches (see [`Security::not_found`](crate::Security::not_found)).
    NotFound,
    /// 500: the handler panicked.
    Internal,
    /// 502: the gateway's upstream could not be reached.
    BadGateway,
    /// 504: the gateway's upstream did not answer in time.
    GatewayTimeout,
    /// 403: the client is banned for repeated violations (step 2; see
    /// [`bans`](crate::bans)). Answered with `Retry-After`, audited as
    /// [`AuditAction::IpBanned`].
    Banned,
}

impl RejectionKind {
    /// The HTTP status.
    pub const fn status(self) -> StatusCode {
        match self {
            RejectionKind::InvalidInput => StatusCode::BAD_REQUEST,
            RejectionKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RejectionKind::Unauthorized => StatusCode::UNAUTHORIZED,
            RejectionKind::Forbidden | RejectionKind::CsrfFailed | RejectionKind::Banned => {
                StatusCode::FORBIDDEN
            }
            RejectionKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RejectionKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RejectionKind::Unavailable | RejectionKind::AuthUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectionKind::NotFound => StatusCode::NOT_FOUND,
            RejectionKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            RejectionKind::BadGateway => StatusCode::BAD_GATEWAY,
            RejectionKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The short human string of the original pattern's `error` field.
    pub const fn error(self) -> &'static str {
        match self {
            RejectionKind::InvalidInput => "Invalid input",
            RejectionKind::MethodNotAllowed => "Method not allowed",
            RejectionKind::Unauthorized => "Authentication required",
            RejectionKind::Forbidden => "Forbidden",
            RejectionKind::RateLimited => "Rate limit exceeded",
            RejectionKind::PayloadTooLarge => "Request body too large",
            RejectionKind::CsrfFailed => "Invalid or missing CSRF token",
            RejectionKind::Unavailable | RejectionKind::AuthUnavailable => {
                "Service temporarily unavailable"
            }
            RejectionKind::NotFound => "Not found",
            RejectionKind::Internal => "Internal server error",
            RejectionKind::BadGateway => "Upstream unavailable",
            RejectionKind::GatewayTimeout => "Upstream timeout",
            RejectionKind::Banned => "Access temporarily blocked",
        }
    }

    /// The RFC 9457 `title`.
    pub const fn title(self) -> &'static str {
        match self {
            RejectionKind::InvalidInput => "Bad Request",
            RejectionKind::MethodNotAllowed => "Method Not Allowed",
            RejectionKind::Unauthorized => "Unauthorized",
            RejectionKind::Forbidden => "Forbidden",
            RejectionKind::RateLimited => "Too Many Requests",
            RejectionKind::PayloadTooLarge => "Content Too Large",
            RejectionKind::CsrfFailed => "CSRF Validation Failed",
            RejectionKind::Unavailable | RejectionKind::AuthUnavailable => "Service Unavailable",
            RejectionKind::NotFound => "Not Found",
            RejectionKind::Internal => "Internal Server Error",
            RejectionKind::BadGateway => "Bad Gateway",
            RejectionKind::GatewayTimeout => "Gateway Timeout",
            RejectionKind::Banned => "Forbidden",
        }
    }

    /// The RFC 9457 `type` URI.
    pub const fn type_uri(self) -> &'static str {
        match self {
            RejectionKind::InvalidInput => "urn:secure-routes:problem:invalid-input",
            RejectionKind::MethodNotAllowed => "urn:secure-routes:problem:method-not-allowed",
            RejectionKind::Unauthorized => "urn:secure-routes:problem:unauthorized",
            RejectionKind::Forbidden => "urn:secure-routes:problem:forbidden",
            RejectionKind::RateLimited => "urn:secure-routes:problem:rate-limited",
            RejectionKind::PayloadTooLarge => "urn:secure-routes:problem:payload-too-large",
            RejectionKind::CsrfFailed => "urn:secure-routes:problem:csrf",
            RejectionKind::Unavailable | RejectionKind::AuthUnavailable => {
                "urn:secure-routes:problem:unavailable"
            }
            RejectionKind::NotFound => "urn:secure-routes:problem:not-found",
            RejectionKind::Internal => "urn:secure-routes:problem:internal",
            RejectionKind::BadGateway => "urn:secure-routes:problem:bad-gateway",
            RejectionKind::GatewayTimeout => "urn:secure-routes:problem:gateway-timeout",
            RejectionKind::Banned => "urn:secure-routes:problem:banned",
        }
    }

    /// The audit action this rejection is recorded as.
    pub const fn audit_action(self) -> AuditAction {
        match self {
            RejectionKind::Unauthorized => AuditAction::UnauthorizedAccess,
            RejectionKind::Forbidden => AuditAction::AuthzFail,
            RejectionKind::RateLimited => AuditAction::RateLimitExceeded,
            RejectionKind::CsrfFailed => AuditAction::CsrfValidationFailed,
            RejectionKind::InvalidInput
            | RejectionKind::MethodNotAllowed
            | RejectionKind::PayloadTooLarge
            | RejectionKind::NotFound => AuditAction::InvalidInput,
            RejectionKind::Unavailable => AuditAction::StoreFailure,
            RejectionKind::AuthUnavailable => AuditAction::AuthenticatorFailure,
            RejectionKind::Internal => AuditAction::InternalError,
            RejectionKind::BadGateway | RejectionKind::GatewayTimeout => {
                AuditAction::UpstreamFailure
            }
            RejectionKind::Banned => AuditAction::IpBanned,
        }
    }

    fn default_detail(self) -> &'static str {
        match self {
            RejectionKind::InvalidInput => "The request could not be understood.",
            RejectionKind::MethodNotAllowed => "This route does not accept this method.",
            RejectionKind::Unauthorized => "A valid bearer token or session cookie is required.",
            RejectionKind::Forbidden => "You are not allowed to do this.",
            RejectionKind::RateLimited => "Too many requests. Please try again later.",
            RejectionKind::PayloadTooLarge => "The request body exceeds this route's limit.",
            RejectionKind::CsrfFailed => {
                "Send the CSRF token from the token endpoint (the csrf-token cookie) in X-CSRF-Token."
            }
            RejectionKind::Unavailable | RejectionKind::AuthUnavailable => {
                "A dependency is unavailable. Please retry shortly."
            }
            RejectionKind::NotFound => "No route matches this path.",
            RejectionKind::Internal => "The server failed to handle this request.",
            RejectionKind::BadGateway => "The upstream service could not be reached.",
            RejectionKind::GatewayTimeout => "The upstream service did not answer in time.",
            RejectionKind::Banned => {
                "Too many refused requests from this client. Retry after the time given."
            }
        }
    }
}

/// The typed reason placed in a rejection response's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectionInfo {
    /// What kind of rejection.
    pub kind: RejectionKind,
    /// Machine-readable reason for the audit log (never shown verbatim to clients).
    pub reason: Reason,
}

/// A refusal, answered as `application/problem+json`.
///
/// Boxed inside so `Result<(), Rejection>` stays one pointer wide on the happy path.
#[derive(Clone, Debug)]
pub struct Rejection(Box<RejectionParts>);

#[derive(Clone, Debug)]
struct RejectionParts {
    info: RejectionInfo,
    /// What the audit records when it differs from `info` (see [`Rejection::audited_as`]).
    audit_as: Option<RejectionInfo>,
    detail: Option<String>,
    headers: HeaderMap,
    extra: Map<String, Value>,
}

impl Rejection {
    /// A rejection of `kind`, with an audit `reason` (a [`Reason`], or a string of your own:
    /// see [`Reason::from_static`]).
    pub fn new(kind: RejectionKind, reason: impl Into<Reason>) -> Self {
        Self(Box::new(RejectionParts {
            info: RejectionInfo {
                kind,
                reason: reason.into(),
            },
            audit_as: None,
            detail: None,
            headers: HeaderMap::new(),
            extra: Map::new(),
        }))
    }

    /// 401 with `WWW-Authenticate: Bearer` (RFC 6750 section 3).
    pub fn unauthorized(reason: impl Into<Reason>) -> Self {
        Self::new(RejectionKind::Unauthorized, reason).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"api\""),
        )
    }

    /// 403 `urn:secure-routes:problem:banned` ("Access temporarily blocked") with
    /// `Retry-After` in whole seconds, rounded up (RFC 9110 §10.2.3), and `retryAfter` in the
    /// body: the answer to a banned client (pipeline step 2).
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use secure_routes::response::problem::Rejection;
    /// let res = Rejection::banned(899).into_response();
    /// assert_eq!(res.status(), 403);
    /// assert_eq!(res.headers()["retry-after"], "899");
    /// ```
    pub fn banned(retry_after_secs: u64) -> Self {
        Self::new(RejectionKind::Banned, Reason::Banned)
            .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))
            .with_member("retryAfter", Value::from(retry_after_secs))
    }

    /// Replaces the client-facing `detail`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.append(name, value);
        self
    }

    /// Adds a body member (such as `retryAfter`).
    pub fn with_member(mut self, name: &str, value: Value) -> Self {
        self.0.extra.insert(name.to_owned(), value);
        self
    }

    /// The typed reason.
    pub fn info(&self) -> RejectionInfo {
        self.0.info
    }

    /// Audits this answer as `info` instead of its own reason: one event per decision, so a
    /// bad credential refused by the rate limit is one `unauthorized_access` event with the
    /// status the client saw (429).
    pub(crate) fn audited_as(mut self, info: RejectionInfo) -> Self {
        self.0.audit_as = Some(info);
        self
    }

    /// What the audit records for this answer.
    pub(crate) fn audit_info(&self) -> RejectionInfo {
        self.0.audit_as.unwrap_or(self.0.info)
    }

    /// Headers to add to the response (mutable, for rate-limit headers).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.0.headers
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let this = *self.0;
        let kind = this.info.kind;
        let status = kind.status();
        let mut body = json!({
            "type": kind.type_uri(),
            "title": kind.title(),
            "status": status.as_u16(),
            "detail": this.detail.as_deref().unwrap_or(kind.default_detail()),
            "error": kind.error(),
        });
        if let Value::Object(map) = &mut body {
            map.extend(this.extra);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = Response::new(axum::body::Body::from(bytes));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in this.headers.iter() {
            h.append(name, value.clone());
        }
        res.extensions_mut().insert(this.info);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn body_has_seed_error_field_and_extra_members() {
        let res = Rejection::new(RejectionKind::RateLimited, "quota")
            .with_member("retryAfter", json!(3))
            .into_response();
        assert_eq!(res.status(), 429);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "Rate limit exceeded");
        assert_eq!(v["status"], 429);
        assert_eq!(v["retryAfter"], 3);
        assert_eq!(v["type"], "urn:secure-routes:problem:rate-limited");
    }

    #[test]
    fn unauthorized_sets_www_authenticate() {
        let res = Rejection::unauthorized("missing").into_response();
        assert!(
            res.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }
}
