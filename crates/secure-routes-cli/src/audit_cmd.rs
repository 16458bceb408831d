//! `secure-routes audit`: lists audit events from the SQLite log, newest first.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let err = secure_routes_cli::audit_cmd::list(&dir.path().join("none.db"), Some("nope"), None, 10, false);
//! assert!(err.unwrap_err().to_string().contains("unknown action"));
//! ```

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use secure_routes::audit::{AuditAction, AuditEvent};
use secure_routes_sqlite::AuditQuery;
use time::OffsetDateTime;

/// Renders the events matching the filters, as a table or as JSON lines.
pub fn list(
    db: &Path,
    action: Option<&str>,
    since: Option<Duration>,
    limit: usize,
    json: bool,
) -> anyhow::Result<String> {
    let action = match action {
        None => None,
        Some(a) => match AuditAction::parse(a) {
            Some(a) => Some(a),
            None => bail!(
                "unknown action {a:?}; one of: {}",
                AuditAction::ALL.map(|a| a.as_str()).join(", ")
            ),
        },
    };
    if !db.exists() {
        bail!(
            "no audit database at {} (run `secure-routes demo` first)",
            db.display()
        );
    }
    let since = since.map(|d| OffsetDateTime::now_utc() - d);
    let events = secure_routes_sqlite::query(
        db,
        &AuditQuery {
            action,
            since,
            limit,
        },
    )
    .with_context(|| format!("reading {}", db.display()))?;
    Ok(if json {
        to_json_lines(&events)?
    } else {
        to_table(&events)
    })
}

fn to_json_lines(events: &[AuditEvent]) -> anyhow::Result<String> {
    let mut out = String::new();
    for e in events {
        out.push_str(&serde_json::to_string(e)?);
        out.push('\n');
    }
    Ok(out)
}

fn to_table(events: &[AuditEvent]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<19} {:<22} {:>6} {:<8} {:<15} {:<6} {:<28} {:<16} REASON",
        "TIME (UTC)", "ACTION", "STATUS", "OUTCOME", "CLIENT", "METHOD", "ROUTE", "SUBJECT",
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
            "{:<19} {:<22} {:>6} {:<8} {:<15} {:<6} {:<28} {:<16} {}",
            time,
            e.action.as_str(),
            e.status,
            e.outcome.as_str(),
            e.client_ip.as_deref().unwrap_or("-"),
            e.method,
            e.route,
            e.subject.as_deref().unwrap_or("-"),
            e.reason
        );
    }
    if events.is_empty() {
        out.push_str("(no events)\n");
    }
    out
}
