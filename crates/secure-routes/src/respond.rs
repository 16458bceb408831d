//! The responders: every answer the pipeline gives instead of (or on top of) the handler's.
//! Refusals (audited, with CORS and security headers), the CORS preflight answer, the
//! decoration of every response (step 10), the 500 for a handler panic and the 403 for a
//! failed Fetch Metadata check.
//!
//! Why apart from the steps: a step decides and returns a [`Rejection`]; how a decision
//! becomes a response (headers, audit event, request id) is the same for all of them, so it
//! lives here once.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use tower_http::csrf::{ProtectionError, ProtectionErrorKind, ResponseForProtectionError};

use crate::audit::{Outcome, Reason, sanitize};
use crate::context::{Ctx, RouteState, Template};
use crate::rate_limit::headers::{LimitHeaders, RATELIMIT};
use crate::request_id::{X_REQUEST_ID, fresh_request_id_at};
use crate::response::cors::merge_cors;
use crate::response::problem::{Rejection, RejectionInfo, RejectionKind};

/// The most headers step 10 and the CORS merge add over the handler's: five rate-limit
/// headers and `Retry-After`, `Cache-Control`, the request id, and four CORS headers.
const ADDED_BY_DECORATE: usize = 12;

impl Ctx {
    /// Audits a refusal and turns it into the final response (one event per decision: the
    /// rejection's [`Rejection::audit_info`]).
    pub(crate) async fn reject(&self, rejection: Rejection) -> Response {
        let info = rejection.audit_info();
        let status = rejection.info().kind.status().as_u16();
        if let Some(store) = self.failed_open {
            // The store failed and the policy let the request on; a later step refused it.
            // Both happened: the store failure is its own event.
            self.audit(store, status, Outcome::Allowed).await;
        }
        self.audit(info, status, Outcome::Denied).await;
        self.strike(info, status);
        let mut res = rejection.into_response();
        // The CORS grant too (and `Vary`), so a browser app can read why it was refused.
        match &self.origin {
            Some(o) => {
                let mut request_headers = HeaderMap::new();
                request_headers.insert(header::ORIGIN, o.clone());
                let cors = self.state.cors_headers(&request_headers, false);
                merge_cors(res.headers_mut(), &cors);
            }
            None => merge_cors(res.headers_mut(), &self.state.cors_without_origin),
        }
        self.decorate(&mut res, self.request_id.clone());
        res
    }

    /// Queues a strike for a refusal the client caused (a [`Violation`]) when bans are on;
    /// the refusal is answered without waiting for the store.
    ///
    /// The subject strikes only when its credential is not ambient. A cookie is sent by the
    /// browser on requests another site starts (a cross-site form without the CSRF token,
    /// a navigation to a route the user may not see), so such a refusal does not show that
    /// the subject misbehaved: counting it would let any page the user visits lock the
    /// account out from every address (a forced ban). The address still strikes.
    ///
    /// [`Violation`]: crate::bans::Violation
    pub(crate) fn strike(&self, info: RejectionInfo, status: u16) {
        if let Some(bans) = &self.state.shared.bans {
            let subject = self
                .subject
                .as_ref()
                .filter(|p| !p.is_ambient())
                .map(|p| p.subject());
            let now = self.state.shared.clock.now();
            bans.queue_strike(info.kind, self.ip, subject, now, || {
                self.event(info, status, Outcome::Denied)
            });
        }
    }

    /// Step 3's answer: a CORS preflight, 204 (tower-http answers 200): no content, and what
    /// the docs promise. The handler is not called.
    pub(crate) fn preflight(&self, request_headers: &HeaderMap) -> Response {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = http::StatusCode::NO_CONTENT;
        merge_cors(
            res.headers_mut(),
            &self.state.cors_headers(request_headers, true),
        );
        self.decorate(&mut res, self.request_id.clone());
        res
    }

    /// Step 10 for a handler's answer from the policy's [`Template`], when the answer fits
    /// one: it has a `Content-Type` and no header whose value step 10 or CORS decide
    /// ([`Template::sets`]), and the decision needs only the per-decision numbers. Returns
    /// `Err(request_id)`, with `res` untouched, otherwise ([`decorate`](Self::decorate) then,
    /// with the id handed back).
    ///
    /// `request_id` is this request's (`self.request_id`), passed by value so the caller that
    /// ends the request can move it into the answer instead of copying it: a copy is a
    /// reference count taken and dropped, two atomic instructions (issue 10 part 7).
    ///
    /// The result is the same multiset of header lines as `decorate` followed by merging
    /// the constant CORS headers (when `constant_cors`): the handler's own headers go over
    /// the security headers, and nothing else they could touch is in the template.
    pub(crate) fn decorate_from_template(
        &self,
        res: &mut Response,
        constant_cors: bool,
        request_id: HeaderValue,
    ) -> Result<(), HeaderValue> {
        let state = &self.state;
        let Some(t) = state
            .decoration
            .template(self.subject.is_some(), constant_cors)
        else {
            return Err(request_id);
        };
        let mut has_content_type = false;
        for name in res.headers().keys() {
            if Template::sets(name) {
                return Err(request_id);
            }
            has_content_type |= *name == header::CONTENT_TYPE;
        }
        if !has_content_type {
            return Err(request_id);
        }
        let varying = match (&self.limit, &state.limit_headers) {
            (_, None) => None,
            (Some(decision), Some(limit)) if limit.varying_only(decision) => {
                match limit.varying_values(decision, self.now) {
                    [Some(a), Some(b), Some(c)] => Some([a, b, c]),
                    _ => return Err(request_id),
                }
            }
            _ => return Err(request_id),
        };
        let mut own = std::mem::replace(res.headers_mut(), t.map.clone());
        // The common answer has `Content-Type` alone (the loop above found it): its value
        // goes into its placeholder by position too, so no name is hashed at all.
        let mut content_type = (own.len() == 1)
            .then(|| own.values_mut().next())
            .flatten()
            .map(|v| std::mem::replace(v, HeaderValue::from_static("")));
        let alone = content_type.is_some();
        let h = res.headers_mut();
        // The placeholders, by position (every entry up to the request id has one value).
        let mut varying = varying.into_iter().flatten();
        let mut request_id = Some(request_id);
        for (at, slot) in h.values_mut().enumerate().take(t.request_id + 1) {
            if at == t.request_id {
                if let Some(id) = request_id.take() {
                    *slot = id;
                }
            } else if at == t.content_type {
                if let Some(v) = content_type.take() {
                    *slot = v;
                }
            } else if at > t.content_type
                && let Some(v) = varying.next()
            {
                *slot = v;
            }
        }
        if t.spare {
            // The last entry: removing it is a `pop`, the room stays.
            h.remove(header::CONTENT_LENGTH);
        }
        // The handler's other headers: `Content-Type` takes its placeholder's place (an
        // insert over an existing name neither moves nor grows the entries).
        if !alone {
            insert_all(h, own);
        }
        Ok(())
    }

    /// Step 10: security headers, rate-limit headers, no-store when authenticated, request id.
    ///
    /// The headers that never change on the route come from a copy of
    /// [`Decoration`](crate::context::Decoration), then the rate-limit headers that are the
    /// same for every decision, with the response's own put over them (a security header the
    /// handler set wins, as `SecurityHeaders::apply` has it); then the rate-limit numbers of
    /// this decision. The rate-limit headers are added only with a decision and when the
    /// response has no `RateLimit` of its own, and replace any the response had.
    ///
    /// `request_id`: this request's, as for [`decorate_from_template`](Self::decorate_from_template).
    pub(crate) fn decorate(&self, res: &mut Response, request_id: HeaderValue) {
        let h = res.headers_mut();
        // Both come from the policy's quota: a decision exists only on a rate-limited route.
        let limit = match (&self.limit, &self.state.limit_headers) {
            (Some(decision), Some(limit_headers)) if !h.contains_key(RATELIMIT) => {
                Some((decision, limit_headers))
            }
            _ => None,
        };
        let own = std::mem::replace(h, self.state.decoration.base.clone());
        // Room for the handler's headers and all of ours (rate limit, request id, no-store,
        // CORS), so the copy grows once (see `Decoration::base`).
        h.reserve(own.len() + ADDED_BY_DECORATE);
        if let Some((_, limit_headers)) = limit {
            limit_headers.apply_constant(h);
        }
        let constant_overridden = own.keys().any(LimitHeaders::is_constant);
        insert_all(h, own);
        if let Some((decision, limit_headers)) = limit {
            if constant_overridden {
                limit_headers.apply_constant(h);
            }
            limit_headers.apply_varying(h, decision, self.now);
        }
        if self.subject.is_some() {
            // Authenticated answers are per-user: no shared cache may keep them.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        h.insert(X_REQUEST_ID, request_id);
    }
}

/// Puts `own`'s headers over `target`'s: each name's values replace what `target` had.
fn insert_all(target: &mut HeaderMap, own: HeaderMap) {
    let mut last: Option<HeaderName> = None;
    for (name, value) in own {
        match name {
            Some(name) => {
                target.insert(&name, value);
                last = Some(name);
            }
            None => {
                if let Some(name) = &last {
                    target.append(name, value);
                }
            }
        }
    }
}

/// A refusal before the request has an audit context (no client address): the policy's
/// security headers and a fresh request id, no audit event (there is no client to record).
/// The id's time is the pipeline's `Clock`, as every other id the policy makes.
pub(crate) fn unaudited(state: &RouteState, rejection: Rejection) -> Response {
    let mut res = rejection.into_response();
    let h = res.headers_mut();
    state.policy.security_headers().apply(h, state.shared.https);
    h.insert(X_REQUEST_ID, fresh_request_id_at(state.shared.clock.now()));
    res
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// Answers a handler panic with a generic 500 problem; the panic message goes to the log only.
pub(crate) fn handler_panicked(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = panic_message(&*payload);
    tracing::error!(panic = %sanitize(&msg, 512), "handler panicked");
    Rejection::new(RejectionKind::Internal, Reason::HandlerPanicked).into_response()
}

/// Answers a failed Fetch Metadata / `Origin` check with the CSRF problem body.
///
/// `pub` in a private module for the reason `service::IntoBody` is: unreachable from outside
/// the crate, named by the service's [`ResponseFuture`](crate::layer::ResponseFuture)'s
/// parameter.
#[derive(Clone, Copy, Debug)]
#[allow(unreachable_pub)]
pub struct CsrfProblem;

impl ResponseForProtectionError<Body> for CsrfProblem {
    fn response_for_protection_error(&mut self, error: ProtectionError) -> Response {
        let reason = match error.kind() {
            ProtectionErrorKind::CrossOriginRequest => Reason::CrossSiteFetch,
            _ => Reason::CrossOrigin,
        };
        Rejection::new(RejectionKind::CsrfFailed, reason)
            .with_detail("Cross-origin state-changing requests are not allowed.")
            .into_response()
    }
}
