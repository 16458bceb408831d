//! Reading the audit log: read-only connections, newest first.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Row, params_from_iter};
use secure_routes::audit::{AuditAction, AuditEvent, Outcome};
use uuid::Uuid;

use crate::sink::BUSY_TIMEOUT;
use crate::timestamp::{format_timestamp, parse_timestamp};
use crate::{Error, schema};

/// The filter [`query`] takes (defined once in the core, shared with the other stores).
pub use secure_routes::audit::AuditQuery;

const COLUMNS: &str = "id, action, user_id, metadata, timestamp, outcome, client_ip, method, \
                       route, path, status, reason, request_id, user_agent, count";

/// The same for a database from before `count` (read-only readers do not migrate): every
/// row there stands for one occurrence.
const COLUMNS_V2: &str = "id, action, user_id, metadata, timestamp, outcome, client_ip, method, \
                       route, path, status, reason, request_id, user_agent, 1 AS count";

/// A read-only connection. Works while a writer is active: in WAL mode a reader sees the
/// last committed snapshot and neither blocks nor is blocked by the writer.
fn open_read_only(path: &Path) -> Result<Option<(Connection, i64)>, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let version = schema::version(&conn)?;
    schema::check_supported(version)?;
    // Version 0: an empty or foreign database with no audit table yet: nothing logged.
    Ok((version > 0).then_some((conn, version)))
}

/// Events matching `q` in the database at `path`, newest first (ties broken by id, which is
/// time-ordered too).
///
/// A database without the audit schema yet reads as empty; a missing file is an error.
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditSink};
/// use secure_routes_sqlite::{AuditQuery, SqliteAuditSink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let db = dir.path().join("audit.db");
/// let sink = SqliteAuditSink::open(&db).unwrap();
/// sink.write_batch(&[
///     AuditEvent::new(AuditAction::RateLimitExceeded),
///     AuditEvent::new(AuditAction::UnauthorizedAccess),
/// ]).await.unwrap();
///
/// let q = AuditQuery { action: Some(AuditAction::UnauthorizedAccess), ..AuditQuery::default() };
/// let found = secure_routes_sqlite::query(&db, &q).unwrap();
/// assert_eq!(found.len(), 1);
/// assert_eq!(found[0].action, AuditAction::UnauthorizedAccess);
/// # });
/// ```
pub fn query(path: impl AsRef<Path>, q: &AuditQuery) -> Result<Vec<AuditEvent>, Error> {
    let Some((conn, version)) = open_read_only(path.as_ref())? else {
        return Ok(Vec::new());
    };
    let columns = if version >= schema::COUNT_VERSION {
        COLUMNS
    } else {
        COLUMNS_V2
    };
    let mut sql = format!("SELECT {columns} FROM audit_logs");
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Some(action) = q.action {
        params.push(Value::Text(action.as_str().to_owned()));
        conditions.push(format!("action = ?{}", params.len()));
    }
    if let Some(since) = q.since {
        // Stored timestamps are fixed-width UTC text, so text order is time order.
        params.push(Value::Text(format_timestamp(since)));
        conditions.push(format!("timestamp >= ?{}", params.len()));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    params.push(Value::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(
        " ORDER BY timestamp DESC, id DESC LIMIT ?{}",
        params.len()
    ));

    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(params))?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(from_row(row)?);
    }
    Ok(events)
}

/// The number of stored events.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let db = dir.path().join("audit.db");
/// let _sink = secure_routes_sqlite::SqliteAuditSink::open(&db).unwrap();
/// assert_eq!(secure_routes_sqlite::count(&db).unwrap(), 0);
/// ```
pub fn count(path: impl AsRef<Path>) -> Result<u64, Error> {
    let Some((conn, _)) = open_read_only(path.as_ref())? else {
        return Ok(0);
    };
    let n: i64 = conn.query_row("SELECT count(*) FROM audit_logs", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn parse_outcome(s: &str) -> Option<Outcome> {
    Outcome::ALL.iter().copied().find(|o| o.as_str() == s)
}

/// Rebuilds an event from a row. Stored text is returned as stored: it was escaped and
/// bounded before it was written, and is not trusted to be anything more than text.
fn from_row(row: &Row<'_>) -> Result<AuditEvent, Error> {
    let id: String = row.get(0)?;
    let corrupt = |what: String| Error::Corrupt {
        id: id.clone(),
        what,
    };
    let action: String = row.get(1)?;
    let metadata: Option<String> = row.get(3)?;
    let timestamp: String = row.get(4)?;
    let outcome: String = row.get(5)?;
    let status: i64 = row.get(10)?;
    let count: i64 = row.get(14)?;
    Ok(AuditEvent {
        id: Uuid::parse_str(&id).map_err(|e| corrupt(format!("id: {e}")))?,
        timestamp: parse_timestamp(&timestamp)
            .ok_or_else(|| corrupt(format!("timestamp {timestamp:?}")))?,
        action: AuditAction::parse(&action)
            .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
        outcome: parse_outcome(&outcome)
            .ok_or_else(|| corrupt(format!("unknown outcome {outcome:?}")))?,
        subject: row.get(2)?,
        client_ip: row.get(6)?,
        method: row.get(7)?,
        route: row.get(8)?,
        path: row.get(9)?,
        status: u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?,
        reason: row.get(11)?,
        request_id: row.get(12)?,
        user_agent: row.get(13)?,
        fingerprint: None,
        count: u64::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| corrupt(format!("count {count}")))?,
        metadata: match metadata {
            None => serde_json::Value::Null,
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| corrupt(format!("metadata: {e}")))?
            }
        },
    })
}
