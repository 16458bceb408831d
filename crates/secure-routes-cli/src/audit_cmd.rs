//! `secure-routes audit`: lists audit events from any audit location, newest first.
//!
//! `COUNT` (`count` in `--json`) is how many identical refusals a row stands for: the audit
//! writer folds a flood into a few rows, so sum it to count decisions. Text read back is
//! escaped once more before it is printed (controls, U+2028/U+2029, bidirectional controls):
//! the database may have been written by something other than our sanitizing writer, and a
//! raw separator or override would forge or disguise a row on the operator's terminal.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use secure_routes_cli::stores::AuditLocation;
//! let dir = tempfile::tempdir().unwrap();
//! let db = AuditLocation::Sqlite(dir.path().join("none.db"));
//! let err = secure_routes_cli::audit_cmd::list(&db, Some("nope"), None, 10, false).await;
//! assert!(err.unwrap_err().to_string().contains("unknown action"));
//! # });
//! ```

use std::fmt::Write;
use std::time::Duration;

use anyhow::bail;
use secure_routes::audit::{
    AuditAction, AuditEvent, AuditQuery, Outcome, escape_for_display, must_escape,
};
use time::OffsetDateTime;

use crate::stores::{self, AuditLocation};

/// The filters of `secure-routes audit` as given on the command line (text, checked by
/// [`Filters::to_query`]). Text filters match exactly, as stored.
///
/// ```
/// use secure_routes::audit::Outcome;
/// use secure_routes_cli::audit_cmd::Filters;
/// let f = Filters { outcome: Some("denied"), ip: Some("203.0.113.7"), ..Filters::default() };
/// let q = f.to_query(20).unwrap();
/// assert_eq!((q.outcome, q.client_ip.as_deref(), q.limit), (Some(Outcome::Denied), Some("203.0.113.7"), 20));
/// assert!(Filters { outcome: Some("maybe"), ..Filters::default() }.to_query(1).is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Filters<'a> {
    /// `--action`: an audit action name.
    pub action: Option<&'a str>,
    /// `--outcome`: denied, allowed, error or would_deny.
    pub outcome: Option<&'a str>,
    /// `--ip`: the client address as stored.
    pub ip: Option<&'a str>,
    /// `--subject`.
    pub subject: Option<&'a str>,
    /// `--route`: the route template or bucket.
    pub route: Option<&'a str>,
    /// `--fingerprint`.
    pub fingerprint: Option<&'a str>,
    /// `--since`: only events newer than this.
    pub since: Option<Duration>,
}

impl Filters<'_> {
    /// The query these filters make, newest `limit` events; an unknown action or outcome is
    /// an error listing the known ones.
    pub fn to_query(&self, limit: usize) -> anyhow::Result<AuditQuery> {
        let action = match self.action {
            None => None,
            Some(a) => match AuditAction::parse(a) {
                Some(a) => Some(a),
                None => bail!(
                    "unknown action {a:?}; one of: {}",
                    AuditAction::ALL
                        .iter()
                        .map(AuditAction::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
        let outcome = match self.outcome {
            None => None,
            Some(o) => match Outcome::ALL.iter().find(|k| k.as_str() == o) {
                Some(o) => Some(*o),
                None => bail!(
                    "unknown outcome {o:?}; one of: {}",
                    Outcome::ALL
                        .iter()
                        .map(Outcome::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Ok(AuditQuery {
            action,
            outcome,
            client_ip: owned(self.ip),
            subject: owned(self.subject),
            route: owned(self.route),
            fingerprint: owned(self.fingerprint),
            since: self.since.map(|d| OffsetDateTime::now_utc() - d),
            limit,
            ..AuditQuery::default()
        })
    }
}

/// Renders the events matching `action` and `since`, as a table or as JSON lines (the
/// other filters: [`list_filtered`]).
pub async fn list(
    location: &AuditLocation,
    action: Option<&str>,
    since: Option<Duration>,
    limit: usize,
    json: bool,
) -> anyhow::Result<String> {
    let filters = Filters {
        action,
        since,
        ..Filters::default()
    };
    list_filtered(location, &filters, limit, json).await
}

/// Renders the newest `limit` events matching every filter, as a table or as JSON lines.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes_cli::{audit_cmd::{self, Filters}, stores::AuditLocation};
/// let dir = tempfile::tempdir().unwrap();
/// let db = AuditLocation::Jsonl(dir.path().join("a.jsonl"));
/// std::fs::write(dir.path().join("a.jsonl"), "").unwrap();
/// let f = Filters { subject: Some("alice"), ..Filters::default() };
/// assert_eq!(audit_cmd::list_filtered(&db, &f, 10, false).await.unwrap().lines().last(), Some("(no events)"));
/// # });
/// ```
pub async fn list_filtered(
    location: &AuditLocation,
    filters: &Filters<'_>,
    limit: usize,
    json: bool,
) -> anyhow::Result<String> {
    let events = stores::read_audit(location, &filters.to_query(limit)?).await?;
    Ok(if json {
        to_json_lines(&events)?
    } else {
        to_table(&events)
    })
}

fn to_json_lines(events: &[AuditEvent]) -> anyhow::Result<String> {
    let mut out = String::new();
    for e in events {
        // serde_json escapes controls but writes U+2028/U+2029 and bidi controls raw: escape
        // them too (`\uXXXX`, still the same JSON value), so a line-splitting reader or a
        // terminal cannot be fooled by the output.
        for c in serde_json::to_string(e)?.chars() {
            if must_escape(c) {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            } else {
                out.push(c);
            }
        }
        out.push('\n');
    }
    Ok(out)
}

fn to_table(events: &[AuditEvent]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<19} {:<22} {:>6} {:>6} {:<8} {:<15} {:<6} {:<28} {:<16} REASON",
        "TIME (UTC)",
        "ACTION",
        "STATUS",
        "COUNT",
        "OUTCOME",
        "CLIENT",
        "METHOD",
        "ROUTE",
        "SUBJECT",
    );
    for e in events {
        let time = e
            .timestamp
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<19} {:<22} {:>6} {:>6} {:<8} {:<15} {:<6} {:<28} {:<16} {}",
            time,
            e.action.as_str(),
            e.status,
            e.count,
            e.outcome.as_str(),
            escape_for_display(e.client_ip.as_deref().unwrap_or("-")),
            escape_for_display(&e.method),
            escape_for_display(&e.route),
            escape_for_display(e.subject.as_deref().unwrap_or("-")),
            escape_for_display(&e.reason),
        );
    }
    if events.is_empty() {
        out.push_str("(no events)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> AuditEvent {
        // Built field by field, as a database written by another tool could hold it: the
        // builders would already have escaped these.
        let mut e = AuditEvent::new(AuditAction::UnauthorizedAccess).with_count(7);
        e.subject = Some("alice\u{2028}2026-12-04 evil forged row".into());
        e.reason = "bad\u{202e}txt.exe".into();
        e.route = "/api/\u{2066}x\u{2069}".into();
        e
    }

    #[test]
    fn the_table_shows_counts_and_escapes_separators_and_bidi_controls() {
        let table = to_table(&[hostile()]);
        assert!(!table.chars().any(must_escape_but_newline), "{table:?}");
        assert!(table.contains("alice\\u{2028}2026"), "{table}");
        assert!(table.contains("bad\\u{202e}txt.exe"), "{table}");
        assert!(table.contains("/api/\\u{2066}x\\u{2069}"), "{table}");
        let header = table.lines().next().unwrap();
        assert!(header.contains("COUNT"), "{header}");
        let row = table.lines().nth(1).unwrap();
        assert_eq!(table.lines().count(), 2, "one header, one row: {table}");
        assert!(row.split_whitespace().any(|w| w == "7"), "{row}");
    }

    /// The raw characters `hostile` holds, named here rather than through `must_escape`, so
    /// the test does not share the code it checks.
    fn must_escape_but_newline(c: char) -> bool {
        matches!(c, '\u{2028}' | '\u{202e}' | '\u{2066}' | '\u{2069}')
            || (c != '\n' && must_escape(c))
    }

    #[test]
    fn json_lines_carry_count_and_escape_separators() {
        let out = to_json_lines(&[hostile()]).unwrap();
        assert!(!out.chars().any(must_escape_but_newline), "{out:?}");
        assert_eq!(out.lines().count(), 1);
        let back: AuditEvent = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(back.count, 7);
        assert_eq!(
            back.subject,
            hostile().subject,
            "same JSON value, escaped differently"
        );
    }
}
