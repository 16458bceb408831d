//! `secure-routes audit`: lists audit events from any audit location, newest first.
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
use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery};
use time::OffsetDateTime;

use crate::stores::{self, AuditLocation};

/// Renders the events matching the filters, as a table or as JSON lines.
pub async fn list(
    location: &AuditLocation,
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
    let since = since.map(|d| OffsetDateTime::now_utc() - d);
    let events = stores::read_audit(
        location,
        &AuditQuery {
            action,
            since,
            limit,
        },
    )
    .await?;
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
