//! The audit trail: one [`AuditEvent`] per security decision, written off the request path.
//!
//! The pipeline hands events to an [`AuditWriter`], which batches them through a bounded
//! queue into an [`AuditSink`] (SQLite, Postgres, JSON lines, `tracing`). Nothing is dropped
//! silently: a failing sink is retried with backoff, a full queue makes the caller wait
//! briefly and then spills the event to a local JSON-lines file, and every retry, spill and
//! failure is counted in [`AuditStats`].
//!
//! What never reaches a sink: `Authorization`, `Cookie`, tokens, passwords, bodies. Text
//! fields are bounded in length and their control characters, Unicode line separators and
//! bidirectional controls escaped, so a hostile `User-Agent` or subject cannot forge log
//! lines or disguise itself in a terminal (see [`must_escape`]).
//!
//! A flood of identical refusals is folded into a few rows carrying a [`count`](AuditEvent::count)
//! (see [`writer`]): counts stay exact, nothing is dropped.
//!
//! ```
//! use secure_routes::audit::{AuditAction, AuditEvent};
//! let e = AuditEvent::new(AuditAction::RateLimitExceeded)
//!     .with_status(429)
//!     .with_user_agent("curl/8\n[forged line]");
//! assert_eq!(e.action, AuditAction::RateLimitExceeded);
//! assert_eq!(e.user_agent.as_deref(), Some("curl/8\\n[forged line]"));
//! ```

mod fold;
pub mod observer;
pub mod reader;
mod reason;
pub mod sinks;
pub mod writer;

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub use crate::rate_limit::BoxFuture;
pub use observer::{AuditObserver, Emitted};
pub use reader::{ActionCount, AuditQuery, AuditReader, MemoryAuditReader, TopBy, TopEntry};
pub use reason::Reason;
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
    /// The gateway's upstream failed: unreachable (502) or too slow (504).
    UpstreamFailure,
    /// An alert rule fired (the `alerts` module, feature `alerts`): the reason is the rule's
    /// name, the metadata names the rule, its key, the count and the window.
    AlertTriggered,
    /// A client was banned for repeated violations (see [`bans`](crate::bans)), or a banned
    /// client was refused (403, reason `banned`).
    IpBanned,
    /// A ban was lifted by an operator.
    BanLifted,
}

impl AuditAction {
    /// Every action, for parsers and CLIs.
    ///
    /// A slice, not an array: its length is not part of the type, so a new action is not a
    /// breaking change.
    pub const ALL: &'static [AuditAction] = &[
        AuditAction::UnauthorizedAccess,
        AuditAction::AuthzFail,
        AuditAction::RateLimitExceeded,
        AuditAction::CsrfValidationFailed,
        AuditAction::InvalidInput,
        AuditAction::SecurityEvent,
        AuditAction::StoreFailure,
        AuditAction::AuthenticatorFailure,
        AuditAction::InternalError,
        AuditAction::UpstreamFailure,
        AuditAction::AlertTriggered,
        AuditAction::IpBanned,
        AuditAction::BanLifted,
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
            AuditAction::UpstreamFailure => "upstream_failure",
            AuditAction::AlertTriggered => "alert_triggered",
            AuditAction::IpBanned => "ip_banned",
            AuditAction::BanLifted => "ban_lifted",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|a| a.as_str() == s)
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
    /// A dry-run policy would have refused the request; it was let through
    /// ([`PolicyBuilder::dry_run`](crate::PolicyBuilder::dry_run)).
    WouldDeny,
}

impl Outcome {
    /// Every outcome, for parsers (a slice: a new outcome is not a breaking change).
    ///
    /// ```
    /// use secure_routes::audit::Outcome;
    /// assert!(Outcome::ALL.iter().any(|o| o.as_str() == "would_deny"));
    /// ```
    pub const ALL: &'static [Outcome] = &[
        Outcome::Denied,
        Outcome::Allowed,
        Outcome::Error,
        Outcome::WouldDeny,
    ];

    /// The `snake_case` name.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Allowed => "allowed",
            Outcome::Error => "error",
            Outcome::WouldDeny => "would_deny",
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
    /// Extra structured detail (never secrets). A row written by folding also carries
    /// `"folded": {"first_seen", "last_seen"}` (RFC 3339) for the occurrences it counts.
    pub metadata: serde_json::Value,
    /// How many identical occurrences this row stands for: 1 for a single event, `n` for a
    /// row the [`AuditWriter`] wrote for `n` refusals it folded within one window (same
    /// action, outcome, status, method, route, reason, client and subject; this row's other
    /// fields are those of the first of them). Summing `count` over rows gives the number of
    /// decisions. Reads as 1 when absent, so JSON written before the field existed still
    /// parses.
    #[serde(default = "one")]
    pub count: u64,
    /// The request's HTTP fingerprint (see the `fingerprint` module): which client software
    /// sent it, told apart by the shape of its headers. `None` for an event with no request
    /// (a lifted ban, an alert) and in rows written before the field existed.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

fn one() -> u64 {
    1
}

impl AuditEvent {
    /// A new event stamped now (the system's UTC time, not an injected [`Clock`](crate::clock::Clock)),
    /// with a fresh UUIDv7 and outcome `Denied`.
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
            count: 1,
            fingerprint: None,
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
    ///
    /// Non-ASCII text is kept (escaped like every field), so a caller can pass
    /// `String::from_utf8_lossy` of the raw header bytes rather than dropping a header that is
    /// not visible ASCII:
    ///
    /// ```
    /// use secure_routes::audit::{AuditAction, AuditEvent};
    /// let raw = "Mozilla/5.0 (Bücher\u{202e}gnp.exe)".as_bytes();
    /// let e = AuditEvent::new(AuditAction::InvalidInput)
    ///     .with_user_agent(&String::from_utf8_lossy(raw));
    /// assert_eq!(e.user_agent.as_deref(), Some("Mozilla/5.0 (Bücher\\u{202e}gnp.exe)"));
    /// ```
    pub fn with_user_agent(mut self, ua: &str) -> Self {
        self.user_agent = Some(sanitize(ua, MAX_USER_AGENT_LEN));
        self
    }
    /// Sets the metadata. Callers must not put credentials or bodies here.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }
    /// Sets the request fingerprint (escaped, bounded).
    pub fn with_fingerprint(mut self, fingerprint: &str) -> Self {
        self.fingerprint = Some(sanitize(fingerprint, 64));
        self
    }
    /// Sets how many occurrences the event stands for (see [`AuditEvent::count`]; at least 1).
    pub fn with_count(mut self, count: u64) -> Self {
        self.count = count.max(1);
        self
    }
}

/// Whether `c` must never appear raw in audit output:
///
/// * C0 and C1 controls (`\n`, `\r`, ESC, NEL, ...): a new log line or a terminal escape
///   sequence.
/// * U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR: JavaScript, many JSON-lines
///   readers and log viewers split lines on them, so a subject holding one forges a row.
/// * Bidirectional controls U+202A-U+202E (embeddings, overrides), U+2066-U+2069
///   (isolates), and the marks U+200E, U+200F, U+061C: they reorder how text is shown, so a
///   field can display as something it is not ("Trojan Source", CVE-2021-42574).
///
/// ```
/// use secure_routes::audit::must_escape;
/// assert!(must_escape('\u{2028}') && must_escape('\u{202e}') && must_escape('\n'));
/// assert!(!must_escape('é'));
/// ```
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
        )
}

/// Escapes what the event fields escape except the backslash, without a length bound: for
/// showing text that is already stored (a terminal table), where a stored `\n` (the
/// two characters) must stay as it is but a raw separator, control or bidi character read
/// back from a database written by something else must not reach the screen.
///
/// ```
/// use secure_routes::audit::escape_for_display;
/// assert_eq!(escape_for_display("alice\u{2028}bob"), "alice\\u{2028}bob");
/// assert_eq!(escape_for_display("a\\nb"), "a\\nb"); // already escaped: unchanged
/// ```
pub fn escape_for_display(s: &str) -> Cow<'_, str> {
    if !s.chars().any(must_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        push_escaped(&mut out, c, false);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char, backslash: bool) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' if backslash => out.push_str("\\\\"),
        c if must_escape(c) => {
            use fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Escapes control characters, Unicode line separators and bidirectional controls (as `\n`,
/// `\t`, `\u{..}`; the backslash itself as `\\`) and cuts to at most `max` bytes at a
/// character boundary. Log-injection defence: a value can never start a new log line, in a
/// tool that splits on `\n` or on U+2028/U+2029, and cannot reorder how a terminal shows
/// the row (see [`must_escape`] for the list and the attacks). Other non-ASCII
/// text is kept as it is. Every [`AuditEvent`] field passes through it.
pub(crate) fn sanitize(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let start = out.len();
        push_escaped(&mut out, c, true);
        if out.len() > max {
            out.truncate(start);
            break;
        }
    }
    out
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
        assert_eq!(sanitize("alice\u{2028}admin", 64), "alice\\u{2028}admin");
        assert_eq!(sanitize("user\u{202e}nimda", 64), "user\\u{202e}nimda");
        assert_eq!(sanitize("zoë", 64), "zoë");
    }

    #[test]
    fn sanitize_escapes_separators_and_bidi_controls() {
        for c in [
            '\u{2028}', '\u{2029}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
            '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{200e}', '\u{200f}', '\u{61c}',
            '\u{85}',
        ] {
            let raw = format!("a{c}b");
            let want = format!("a\\u{{{:x}}}b", c as u32);
            assert_eq!(sanitize(&raw, 64), want, "{:x}", c as u32);
            assert_eq!(escape_for_display(&raw), want, "{:x}", c as u32);
        }
        // Neighbours that are harmless stay as they are.
        assert_eq!(
            sanitize("\u{2027}\u{2030}\u{2065}é漢", 64),
            "\u{2027}\u{2030}\u{2065}é漢"
        );
    }

    #[test]
    fn count_defaults_to_one_when_absent() {
        let e = AuditEvent::new(AuditAction::InvalidInput);
        let mut json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["count"], 1);
        json.as_object_mut().unwrap().remove("count");
        let back: AuditEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back.count, 1);
        assert_eq!(e.with_count(0).count, 1);
    }

    #[test]
    fn action_names_round_trip() {
        for &a in AuditAction::ALL {
            assert_eq!(AuditAction::parse(a.as_str()), Some(a));
            assert_eq!(serde_json::to_value(a).unwrap(), a.as_str());
        }
    }
}
