//! Reading the audit log: read-only connections, newest first. [`SqliteAuditReader`] answers
//! the dashboard's questions ([`AuditReader`]) in SQL; [`query`] is its `events` for callers
//! without a runtime (one copy of the SQL).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, Row, params_from_iter};
use secure_routes::audit::{
    ActionCount, AuditAction, AuditError, AuditEvent, AuditReader, BoxFuture, Outcome, TopBy,
    TopEntry,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::sink::BUSY_TIMEOUT;
use crate::timestamp::{format_timestamp, parse_timestamp};
use crate::{Error, schema};

/// The filter [`query`] takes (defined once in the core, shared with the other stores).
pub use secure_routes::audit::AuditQuery;

const COLUMNS: &str = "id, action, user_id, metadata, timestamp, outcome, client_ip, method, \
                       route, path, status, reason, request_id, user_agent, count, fingerprint";

/// The same for a database from before `fingerprint` (read-only readers do not migrate).
const COLUMNS_V4: &str = "id, action, user_id, metadata, timestamp, outcome, client_ip, method, \
                       route, path, status, reason, request_id, user_agent, count, NULL";

/// The same for a database from before `count`: every row there stands for one occurrence.
const COLUMNS_V2: &str = "id, action, user_id, metadata, timestamp, outcome, client_ip, method, \
                       route, path, status, reason, request_id, user_agent, 1, NULL";

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

/// The `WHERE` clause for every filter of `q` but the limit (and the cursor unless
/// `cursor`), with its parameters: the SQL form of [`AuditQuery::matches`].
struct Filter {
    sql: String,
    params: Vec<Value>,
}

impl Filter {
    fn new(q: &AuditQuery, version: i64, cursor: bool) -> Self {
        let mut conditions: Vec<String> = Vec::new();
        let mut params = Vec::new();
        let mut push = |column: &str, op: &str, value: Value| {
            params.push(value);
            conditions.push(format!("{column} {op} ?{}", params.len()));
        };
        let text = |s: &str| Value::Text(s.to_owned());
        if let Some(action) = q.action {
            push("action", "=", text(action.as_str()));
        }
        if let Some(outcome) = q.outcome {
            push("outcome", "=", text(outcome.as_str()));
        }
        // `=` on text, never LIKE: a `%` or `_` in a filter is that character.
        if let Some(ip) = &q.client_ip {
            push("client_ip", "=", text(ip));
        }
        if let Some(subject) = &q.subject {
            push("user_id", "=", text(subject));
        }
        if let Some(route) = &q.route {
            push("route", "=", text(route));
        }
        if let Some(since) = q.since {
            // Stored timestamps are fixed-width UTC text, so text order is time order.
            push("timestamp", ">=", text(&format_timestamp(since)));
        }
        if let Some(until) = q.until {
            push("timestamp", "<", text(&format_timestamp(until)));
        }
        let mut sql = String::new();
        if let Some(fingerprint) = &q.fingerprint {
            if version >= schema::FINGERPRINT_VERSION {
                push("fingerprint", "=", text(fingerprint));
            } else {
                // No row of an older file has a fingerprint.
                conditions.push("0".to_owned());
            }
        }
        if let (true, Some(before)) = (cursor, q.before) {
            // A keyset cursor (see `AuditQuery`): rows after the cursor's row in the list's
            // order, `(timestamp, id)` descending. Timestamps are fixed-width text (text
            // order is time order); ids are lower-case hyphenated UUIDs, whose text order is
            // the order of their 16 bytes (for UUIDv7 the time order: the 48-bit millisecond
            // time comes first), the tie-break. A cursor naming no row yields NULL: no rows.
            // The timestamp part lets the timestamp indexes serve the page.
            let mut buf = Uuid::encode_buffer();
            params.push(text(before.hyphenated().encode_lower(&mut buf)));
            conditions.push(format!(
                "(timestamp, id) < (SELECT timestamp, id FROM audit_logs WHERE id = ?{})",
                params.len()
            ));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        Self { sql, params }
    }

    /// One more parameter, returning its placeholder.
    fn param(&mut self, value: Value) -> String {
        self.params.push(value);
        format!("?{}", self.params.len())
    }
}

fn limit_value(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn events_in(conn: &Connection, version: i64, q: &AuditQuery) -> Result<Vec<AuditEvent>, Error> {
    let columns = if version >= schema::FINGERPRINT_VERSION {
        COLUMNS
    } else if version >= schema::COUNT_VERSION {
        COLUMNS_V4
    } else {
        COLUMNS_V2
    };
    let mut f = Filter::new(q, version, true);
    let limit = f.param(limit_value(q.limit));
    // The cursor's order (see `AuditQuery`), served by the timestamp indexes.
    let sql = format!(
        "SELECT {columns} FROM audit_logs{} ORDER BY timestamp DESC, id DESC LIMIT {limit}",
        f.sql
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(f.params))?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        events.push(from_row(row)?);
    }
    Ok(events)
}

/// `count` as the database has it: a column from version 3, 1 per row before.
fn count_column(version: i64) -> &'static str {
    if version >= schema::COUNT_VERSION {
        "count"
    } else {
        "1"
    }
}

fn counts_in(
    conn: &Connection,
    version: i64,
    q: &AuditQuery,
    bucket: Duration,
) -> Result<Vec<ActionCount>, Error> {
    let mut f = Filter::new(q, version, false);
    let len = f.param(Value::Integer(
        i64::try_from(bucket.as_secs().max(1)).unwrap_or(i64::MAX),
    ));
    // `unixepoch` reads the stored RFC 3339 text (fractions and `Z` included) as whole
    // seconds; the bucket is the start of its multiple of `len` (a Euclidean remainder, like
    // `bucket_start`, so instants before 1970 fall in the right bucket too). One pass over
    // the matching rows, grouped in SQL: nothing but the sums leaves the database.
    let sql = format!(
        "SELECT b - ((b % {len}) + {len}) % {len} AS bucket, action, SUM({count}) \
         FROM (SELECT unixepoch(timestamp) AS b, action, {count} AS count FROM audit_logs{where_}) \
         GROUP BY bucket, action ORDER BY bucket, action",
        count = count_column(version),
        where_ = f.sql,
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(f.params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let start: i64 = row.get(0)?;
        let action: String = row.get(1)?;
        let sum: i64 = row.get(2)?;
        let corrupt = |what: String| Error::Corrupt {
            id: String::new(),
            what,
        };
        out.push(ActionCount {
            bucket_start: OffsetDateTime::from_unix_timestamp(start)
                .map_err(|e| corrupt(format!("bucket {start}: {e}")))?,
            action: AuditAction::parse(&action)
                .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
            count: u64::try_from(sum).unwrap_or(0),
        });
    }
    Ok(out)
}

fn top_in(
    conn: &Connection,
    version: i64,
    q: &AuditQuery,
    by: TopBy,
    n: usize,
) -> Result<Vec<TopEntry>, Error> {
    let mut f = Filter::new(q, version, false);
    let column = match by {
        TopBy::ClientIp => "client_ip",
        TopBy::Subject => "user_id",
    };
    let limit = f.param(limit_value(n));
    let and = if f.sql.is_empty() { " WHERE" } else { " AND" };
    // Ties by key in BINARY collation: byte order, as the reference sorts `String`s.
    let sql = format!(
        "SELECT {column}, SUM({count}) AS n FROM audit_logs{where_}{and} {column} IS NOT NULL \
         GROUP BY {column} ORDER BY n DESC, {column} LIMIT {limit}",
        count = count_column(version),
        where_ = f.sql,
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(f.params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let sum: i64 = row.get(1)?;
        out.push(TopEntry {
            key: row.get(0)?,
            count: u64::try_from(sum).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Events matching `q` in the database at `path`, newest first (by timestamp, then id).
/// The same answer as [`SqliteAuditReader::events`], for callers without a runtime.
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
    match open_read_only(path.as_ref())? {
        Some((conn, version)) => events_in(&conn, version, q),
        None => Ok(Vec::new()),
    }
}

/// An [`AuditReader`] over a SQLite audit database: every filter, the counts and the top
/// offenders computed in SQL (`GROUP BY`, `SUM(count)`), never by loading the rows.
///
/// Each call opens its own read-only connection on the blocking pool (`spawn_blocking`):
/// rusqlite is blocking, and in WAL mode a reader neither waits for the writer nor holds it
/// up. A file of an older schema version is read as it is (no migration from a reader):
/// before version 3 every row counts one, before version 5 no row has a fingerprint.
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery, AuditReader, AuditSink, TopBy};
/// use secure_routes_sqlite::{SqliteAuditReader, SqliteAuditSink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let db = dir.path().join("audit.db");
/// let sink = SqliteAuditSink::open(&db).unwrap();
/// sink.write_batch(&[
///     AuditEvent::new(AuditAction::UnauthorizedAccess).with_client_ip("203.0.113.7").with_count(40),
///     AuditEvent::new(AuditAction::UnauthorizedAccess).with_client_ip("198.51.100.1"),
/// ]).await.unwrap();
///
/// let reader = SqliteAuditReader::open(&db).unwrap();
/// let top = reader.top(&AuditQuery::default(), TopBy::ClientIp, 1).await.unwrap();
/// assert_eq!((top[0].key.as_str(), top[0].count), ("203.0.113.7", 40));
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct SqliteAuditReader {
    path: Arc<Path>,
}

impl SqliteAuditReader {
    /// A reader of the database at `path`, which must exist (a database without the audit
    /// table yet reads as empty). Opens it once to check it is a database this build can
    /// read. Blocking (a file open).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// assert!(secure_routes_sqlite::SqliteAuditReader::open(dir.path().join("none.db")).is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path: Arc<Path> = Arc::from(path.as_ref());
        open_read_only(&path)?;
        Ok(Self { path })
    }

    /// Runs `f` on a fresh read-only connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, i64) -> Result<Vec<T>, Error> + Send + 'static,
    ) -> Result<Vec<T>, AuditError> {
        let path = Arc::clone(&self.path);
        let done = tokio::task::spawn_blocking(move || match open_read_only(&path)? {
            Some((conn, version)) => f(&conn, version),
            None => Ok(Vec::new()),
        })
        .await
        .map_err(|e| AuditError(format!("SQLite audit read task failed: {e}")))?;
        done.map_err(|e| AuditError(e.to_string()))
    }
}

impl AuditReader for SqliteAuditReader {
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        let q = q.clone();
        Box::pin(self.run(move |conn, version| events_in(conn, version, &q)))
    }

    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>> {
        let q = q.clone();
        Box::pin(self.run(move |conn, version| counts_in(conn, version, &q, bucket)))
    }

    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>> {
        let q = q.clone();
        Box::pin(self.run(move |conn, version| top_in(conn, version, &q, by, n)))
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
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
        fingerprint: row.get(15)?,
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
