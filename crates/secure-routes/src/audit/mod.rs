//! The audit trail: one [`AuditEvent`] per security decision, written off the request path.
//!
//! The pipeline hands events to an [`AuditWriter`], which batches them through a bounded
//! queue into an [`AuditSink`] (SQLite, Postgres, JSON lines, `tracing`). Nothing is dropped
//! silently: a failing sink is retried with backoff, a full queue makes the caller wait
//! briefly and then spills the event to a local JSON-lines file, and every retry, spill and
//! failure is counted in [`AuditStats`].
//!
//! What never reaches a sink: `Authorization`, `Cookie`, tokens, passwords, bodies. Text
//! fields are bounded in length and their control characters escaped, so a hostile
//! `User-Agent` cannot forge log lines.
//!
//! ```
//! use secure_routes::audit::{AuditAction, AuditEvent};
//! let e = AuditEvent::new(AuditAction::RateLimitExceeded)
//!     .with_status(429)
//!     .with_user_agent("curl/8\n[forged line]");
//! assert_eq!(e.action, AuditAction::RateLimitExceeded);
//! assert_eq!(e.user_agent.as_deref(), Some("curl/8\\n[forged line]"));
//! ```

pub mod sinks;
pub mod writer;

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use crate::rate_limit::BoxFuture;
pub use writer::{
    AuditConfig, AuditStats, AuditWriter, NoRuntime, ReplayError, ReplayReport, replay_spill,
};

/// What happened. Serialized in `snake_case`, as the original `audit_logs.action` column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditAction {
    /// Authentication missing or invalid (401).
    UnauthorizedAccess,
    /// Authenticated, but not allowed on the route: a role or claim requirement failed (403).
    AuthzFail,
    /// Rate limit refused a request (429).
    RateLimitExceeded,
    /// CSRF check failed (403).
    CsrfValidationFailed,
    /// Malformed or oversized input (405, 413, ...).
    InvalidInput,
    /// Any other security-relevant event.
    SecurityEvent,
    /// A rate-limit or ban store failed (the policy's failure mode applied).
    StoreFailure,
    /// The authenticator could not decide (key set unreachable, timeout): 503, never admitted.
    AuthenticatorFailure,
    /// The handler panicked (500).
    InternalError,
}

impl AuditAction {
    /// Every action, for parsers and CLIs.
    pub const ALL: [AuditAction; 9] = [
        AuditAction::UnauthorizedAccess,
        AuditAction::AuthzFail,
        AuditAction::RateLimitExceeded,
        AuditAction::CsrfValidationFailed,
        AuditAction::InvalidInput,
        AuditAction::SecurityEvent,
        AuditAction::StoreFailure,
        AuditAction::AuthenticatorFailure,
        AuditAction::InternalError,
    ];

    /// The `snake_case` name stored in the `action` column.
    pub const fn as_str(&self) -> &'static str {
        match self {
            AuditAction::UnauthorizedAccess => "unauthorized_access",
            AuditAction::AuthzFail => "authz_fail",
            AuditAction::RateLimitExceeded => "rate_limit_exceeded",
            AuditAction::CsrfValidationFailed => "csrf_validation_failed",
            AuditAction::InvalidInput => "invalid_input",
            AuditAction::SecurityEvent => "security_event",
            AuditAction::StoreFailure => "store_failure",
            AuditAction::AuthenticatorFailure => "authenticator_failure",
            AuditAction::InternalError => "internal_error",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of the decision an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request was refused.
    Denied,
    /// The request was let through (for example fail-open on a store error).
    Allowed,
    /// Something failed on our side.
    Error,
}

impl Outcome {
    /// The `snake_case` name.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Allowed => "allowed",
            Outcome::Error => "error",
        }
    }
}

/// Longest text field kept, in bytes (longer values are cut at a character boundary).
pub const MAX_FIELD_LEN: usize = 256;
/// Longest user agent kept, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 128;

/// One audited security decision.
///
/// Build with [`AuditEvent::new`] and the `with_*` methods, which bound and escape text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UUIDv7: time-ordered, so ids sort like timestamps.
    pub id: Uuid,
    /// When the decision was made (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
    /// What happened.
    pub action: AuditAction,
    /// Denied, allowed or error.
    pub outcome: Outcome,
    /// The authenticated subject, if any.
    pub subject: Option<String>,
    /// The client address (possibly truncated by configuration).
    pub client_ip: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Matched route template or policy bucket, never the raw URL.
    pub route: String,
    /// Request path without the query string.
    pub path: String,
    /// HTTP status answered.
    pub status: u16,
    /// Short machine-readable reason (`"missing_credential"`, `"cross_origin"`, ...).
    pub reason: String,
    /// The request id (also sent to the client as `x-request-id`).
    pub request_id: String,
    /// The user agent, truncated.
    pub user_agent: Option<String>,
    /// Extra structured detail (never secrets).
    pub metadata: serde_json::Value,
}

impl AuditEvent {
    /// A new event stamped now, with a fresh UUIDv7 and outcome `Denied`.
    pub fn new(action: AuditAction) -> Self {
        Self {
            id: Uuid::now_v7(),
            timestamp: OffsetDateTime::now_utc(),
            action,
            outcome: Outcome::Denied,
            subject: None,
            client_ip: None,
            method: String::new(),
            route: String::new(),
            path: String::new(),
            status: 0,
            reason: String::new(),
            request_id: String::new(),
            user_agent: None,
            metadata: serde_json::Value::Null,
        }
    }

    /// Sets the outcome.
    pub fn with_outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }
    /// Sets the status code.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    /// Sets the subject (escaped, bounded).
    pub fn with_subject(mut self, subject: &str) -> Self {
        self.subject = Some(sanitize(subject, MAX_FIELD_LEN));
        self
    }
    /// Sets the client address.
    pub fn with_client_ip(mut self, ip: impl fmt::Display) -> Self {
        self.client_ip = Some(ip.to_string());
        self
    }
    /// Sets method, route and path (path escaped and bounded; pass it without the query).
    pub fn with_request(mut self, method: &str, route: &str, path: &str) -> Self {
        self.method = sanitize(method, 16);
        self.route = sanitize(route, MAX_FIELD_LEN);
        self.path = sanitize(path, MAX_FIELD_LEN);
        self
    }
    /// Sets the reason (escaped, bounded).
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = sanitize(reason, MAX_FIELD_LEN);
        self
    }
    /// Sets the request id (escaped, bounded).
    pub fn with_request_id(mut self, id: &str) -> Self {
        self.request_id = sanitize(id, 64);
        self
    }
    /// Sets the user agent (escaped, truncated to [`MAX_USER_AGENT_LEN`]).
    pub fn with_user_agent(mut self, ua: &str) -> Self {
        self.user_agent = Some(sanitize(ua, MAX_USER_AGENT_LEN));
        self
    }
    /// Sets the metadata. Callers must not put credentials or bodies here.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// Escapes control characters (as `\n`, `\t`, `\u{..}`) and cuts to at most `max` bytes at a
/// character boundary. Log-injection defence: a value can never start a new log line.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let start = out.len();
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                use fmt::Write;
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
        if out.len() > max {
            out.truncate(start);
            break;
        }
    }
    out
}

/// A filter for reading audit events back, shared by every store that can list them
/// (`secure-routes-sqlite`, `secure-routes-postgres`): which events their `query` returns.
///
/// ```
/// use secure_routes::audit::AuditAction;
/// use secure_routes::audit::AuditQuery;
/// let q = AuditQuery {
///     action: Some(AuditAction::RateLimitExceeded),
///     since: Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(10)),
///     limit: 50,
/// };
/// assert_eq!(AuditQuery::default().limit, 100);
/// # let _ = q;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AuditQuery {
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// At most this many events (the newest ones). `0` returns none.
    pub limit: usize,
}

impl Default for AuditQuery {
    /// Every action, any time, the newest 100.
    fn default() -> Self {
        Self {
            action: None,
            since: None,
            limit: 100,
        }
    }
}

/// A sink failed to store a batch.
#[derive(Debug, thiserror::Error)]
#[error("audit sink error: {0}")]
pub struct AuditError(pub String);

/// Where audit events end up. Receives whole batches; must store all or none of a batch
/// (the writer retries the whole batch on error).
///
/// ```
/// use secure_routes::audit::{AuditError, AuditEvent, AuditSink, BoxFuture};
/// struct Nowhere;
/// impl AuditSink for Nowhere {
///     fn write_batch<'a>(&'a self, _batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
///         Box::pin(async { Ok(()) })
///     }
///     fn name(&self) -> &'static str { "nowhere" }
/// }
/// ```
pub trait AuditSink: Send + Sync + 'static {
    /// Stores a batch atomically.
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_and_bounds() {
        assert_eq!(sanitize("a\u{1b}[31mb", 64), "a\\u{1b}[31mb");
        assert_eq!(sanitize("héllo", 2), "h");
        assert_eq!(sanitize("abc", 3), "abc");
        assert_eq!(sanitize("a\\n", 10), "a\\\\n");
    }

    #[test]
    fn action_names_round_trip() {
        for a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }
}
