//! [`PostgresAuditSink`] and the reader ([`PgAuditReader`], [`query`], [`count`]).
//!
//! **Why `UNNEST` and not binary `COPY`.** The writer retries a failed batch whole, and a
//! batch may have reached the table before the failure was seen (a commit whose reply was
//! lost). So the insert must be idempotent, which `COPY` cannot be (no `ON CONFLICT`): it
//! would need a temporary table and a second `INSERT ... SELECT` per batch. One
//! `INSERT ... SELECT FROM UNNEST($1::uuid[], ...) ON CONFLICT (id) DO NOTHING` sends the
//! batch as seventeen binary arrays in one statement, is idempotent by the UUIDv7 primary key,
//! and its plan is prepared once per connection.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use secure_routes::audit::{
    ActionCount, AuditAction, AuditError, AuditEvent, AuditReader, AuditSink, BoxFuture, Outcome,
    TopBy, TopEntry,
};
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::Error;

/// Rows per statement: large batches are split, inside the batch's one transaction, so no
/// statement carries unbounded arrays.
const CHUNK: usize = 5_000;

const INSERT: &str = "INSERT INTO audit_logs (id, \"timestamp\", action, outcome, subject, user_id, \
     client_ip, method, route, path, status, reason, request_id, user_agent, metadata, count, \
     fingerprint) \
     SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], \
     $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::text[], \
     $13::text[], $14::text[], $15::jsonb[], $16::int8[], $17::text[]) \
     ON CONFLICT (id) DO NOTHING";

/// The columns every schema version has (then `count` and `fingerprint`, which depend on it).
const COLUMNS_BASE: &str = "id, action, subject, metadata, \"timestamp\", outcome, client_ip, \
                            method, route, path, status, reason, request_id, user_agent";

/// An [`AuditSink`] writing to the `audit_logs` table: one transaction per batch, one
/// `INSERT ... SELECT FROM UNNEST(...)` per 5 000 events, idempotent on retry.
///
/// Put it behind an [`AuditWriter`](secure_routes::audit::AuditWriter), which batches events
/// off the request path and retries or spills on failure.
///
/// Stored as given, except: `user_id` is set when the subject parses as a UUID; a NUL
/// character (which Postgres `text` and `jsonb` cannot hold) is written as `\u{0}`; and the
/// timestamp keeps microseconds (Postgres' precision), dropping the nanoseconds.
///
/// ```no_run
/// use std::sync::Arc;
/// use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditWriter};
/// use secure_routes_postgres::{AuditQuery, PostgresAuditSink};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 4)?;
/// secure_routes_postgres::migrate(&pool).await?;
/// let writer = AuditWriter::spawn(Arc::new(PostgresAuditSink::new(pool.clone())), AuditConfig::default());
/// writer.record(AuditEvent::new(AuditAction::RateLimitExceeded).with_status(429)).await;
/// writer.shutdown().await;
/// let newest = secure_routes_postgres::query(&pool, &AuditQuery::default()).await?;
/// assert_eq!(newest[0].status, 429);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresAuditSink {
    pool: Pool,
}

impl PostgresAuditSink {
    /// A sink on `pool`. The schema must be migrated ([`migrate`](crate::migrate)).
    ///
    /// ```
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 2).unwrap();
    /// let sink = secure_routes_postgres::PostgresAuditSink::new(pool);
    /// assert_eq!(sink.pool().status().max_size, 2);
    /// ```
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// The connection pool.
    ///
    /// ```
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 2).unwrap();
    /// assert_eq!(secure_routes_postgres::PostgresAuditSink::new(pool).pool().status().max_size, 2);
    /// ```
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Stores `batch` in one transaction: all of it or none. Events whose id is already
    /// stored are skipped, so writing a batch again (a retry) stores nothing twice.
    ///
    /// ```no_run
    /// use secure_routes::audit::{AuditAction, AuditEvent};
    /// # async fn run(sink: secure_routes_postgres::PostgresAuditSink) -> Result<(), secure_routes_postgres::Error> {
    /// let batch = [AuditEvent::new(AuditAction::CsrfValidationFailed).with_status(403)];
    /// sink.write(&batch).await?;
    /// sink.write(&batch).await?; // a retry: still one row
    /// # Ok(()) }
    /// ```
    pub async fn write(&self, batch: &[AuditEvent]) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx.prepare_cached(INSERT).await?;
        for chunk in batch.chunks(CHUNK) {
            let c = Columns::new(chunk);
            tx.execute(
                &stmt,
                &[
                    &c.id,
                    &c.timestamp,
                    &c.action,
                    &c.outcome,
                    &c.subject,
                    &c.user_id,
                    &c.client_ip,
                    &c.method,
                    &c.route,
                    &c.path,
                    &c.status,
                    &c.reason,
                    &c.request_id,
                    &c.user_agent,
                    &c.metadata(chunk),
                    &c.count,
                    &c.fingerprint,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl AuditSink for PostgresAuditSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            self.write(batch)
                .await
                .map_err(|e| AuditError(e.to_string()))
        })
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// One batch as column arrays (borrowing the events' text where it needs no cleaning).
struct Columns<'a> {
    id: Vec<Uuid>,
    timestamp: Vec<OffsetDateTime>,
    action: Vec<&'static str>,
    outcome: Vec<&'static str>,
    subject: Vec<Option<Cow<'a, str>>>,
    user_id: Vec<Option<Uuid>>,
    client_ip: Vec<Option<Cow<'a, str>>>,
    method: Vec<Cow<'a, str>>,
    route: Vec<Cow<'a, str>>,
    path: Vec<Cow<'a, str>>,
    status: Vec<i32>,
    reason: Vec<Cow<'a, str>>,
    request_id: Vec<Cow<'a, str>>,
    user_agent: Vec<Option<Cow<'a, str>>>,
    /// Occurrences per row (`bigint` is signed; saturates).
    count: Vec<i64>,
    fingerprint: Vec<Option<Cow<'a, str>>>,
    /// Metadata values that needed cleaning (NUL characters), by position.
    cleaned: Vec<Option<Value>>,
}

impl<'a> Columns<'a> {
    fn new(events: &'a [AuditEvent]) -> Self {
        let opt = |s: &'a Option<String>| s.as_deref().map(clean);
        Self {
            id: events.iter().map(|e| e.id).collect(),
            timestamp: events.iter().map(|e| e.timestamp).collect(),
            action: events.iter().map(|e| e.action.as_str()).collect(),
            outcome: events.iter().map(|e| e.outcome.as_str()).collect(),
            subject: events.iter().map(|e| opt(&e.subject)).collect(),
            // Supabase subjects are UUIDs (`auth.users.id`): keep the original column useful.
            user_id: events
                .iter()
                .map(|e| e.subject.as_deref().and_then(|s| Uuid::parse_str(s).ok()))
                .collect(),
            client_ip: events.iter().map(|e| opt(&e.client_ip)).collect(),
            method: events.iter().map(|e| clean(&e.method)).collect(),
            route: events.iter().map(|e| clean(&e.route)).collect(),
            path: events.iter().map(|e| clean(&e.path)).collect(),
            status: events.iter().map(|e| i32::from(e.status)).collect(),
            reason: events.iter().map(|e| clean(&e.reason)).collect(),
            request_id: events.iter().map(|e| clean(&e.request_id)).collect(),
            user_agent: events.iter().map(|e| opt(&e.user_agent)).collect(),
            count: events
                .iter()
                .map(|e| i64::try_from(e.count).unwrap_or(i64::MAX))
                .collect(),
            fingerprint: events.iter().map(|e| opt(&e.fingerprint)).collect(),
            cleaned: events
                .iter()
                .map(|e| has_nul(&e.metadata).then(|| strip_nul(&e.metadata)))
                .collect(),
        }
    }

    /// The metadata column: NULL for `Value::Null`, else the (cleaned) value.
    fn metadata<'b>(&'b self, events: &'b [AuditEvent]) -> Vec<Option<&'b Value>> {
        events
            .iter()
            .zip(&self.cleaned)
            .map(|(e, c)| (!e.metadata.is_null()).then(|| c.as_ref().unwrap_or(&e.metadata)))
            .collect()
    }
}

/// Postgres `text` cannot hold NUL: write it as the core's `sanitize` would (`\u{0}`).
fn clean(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\u{0}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn strip_nul(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(clean(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(strip_nul).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (clean(k).into_owned(), strip_nul(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The filter [`query`] takes (defined once in the core, shared with the other stores).
pub use secure_routes::audit::AuditQuery;

/// Events matching `q`, newest first (by timestamp, then id): [`PgAuditReader::events`],
/// kept as a function for existing callers (one copy of the SQL).
///
/// A database never migrated reads as empty.
///
/// ```no_run
/// use secure_routes::audit::AuditAction;
/// use secure_routes_postgres::AuditQuery;
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), secure_routes_postgres::Error> {
/// let q = AuditQuery { action: Some(AuditAction::UnauthorizedAccess), ..AuditQuery::default() };
/// for e in secure_routes_postgres::query(&pool, &q).await? {
///     assert_eq!(e.action, AuditAction::UnauthorizedAccess);
/// }
/// # Ok(()) }
/// ```
pub async fn query(pool: &Pool, q: &AuditQuery) -> Result<Vec<AuditEvent>, Error> {
    PgAuditReader::new(pool.clone()).read_events(q).await
}

/// The migration that added `count`, and the one that added `fingerprint`.
const COUNT_VERSION: i32 = 3;
const FINGERPRINT_VERSION: i32 = 5;

type Param = Box<dyn ToSql + Sync + Send>;

/// The `WHERE` clause for every filter of `q` but the limit (and the cursor unless
/// `cursor`), with its parameters: the SQL form of [`AuditQuery::matches`]. Filters are
/// always parameters, compared with `=` (a `%` in a filter is that character, not LIKE's).
struct Filter {
    sql: String,
    params: Vec<Param>,
}

impl Filter {
    fn new(q: &AuditQuery, version: i32, cursor: bool) -> Self {
        let mut f = Self {
            sql: String::new(),
            params: Vec::new(),
        };
        let mut conditions: Vec<String> = Vec::new();
        if let Some(action) = q.action {
            conditions.push(format!("action = {}", f.param(action.as_str())));
        }
        if let Some(outcome) = q.outcome {
            conditions.push(format!("outcome = {}", f.param(outcome.as_str())));
        }
        if let Some(ip) = &q.client_ip {
            conditions.push(format!("client_ip = {}", f.param(ip.clone())));
        }
        if let Some(subject) = &q.subject {
            conditions.push(format!("subject = {}", f.param(subject.clone())));
        }
        if let Some(route) = &q.route {
            conditions.push(format!("route = {}", f.param(route.clone())));
        }
        if let Some(fingerprint) = &q.fingerprint {
            if version >= FINGERPRINT_VERSION {
                conditions.push(format!("fingerprint = {}", f.param(fingerprint.clone())));
            } else {
                // No row of an older schema has a fingerprint.
                conditions.push("false".to_owned());
            }
        }
        if let Some(since) = q.since {
            conditions.push(format!("\"timestamp\" >= {}", f.param(since)));
        }
        if let Some(until) = q.until {
            conditions.push(format!("\"timestamp\" < {}", f.param(until)));
        }
        if let (true, Some(before)) = (cursor, q.before) {
            // A keyset cursor (see `AuditQuery`): rows after the cursor's row in the list's
            // order, `("timestamp", id)` descending. Postgres compares `uuid`s as their 16
            // bytes (memcmp), the order of `Uuid`'s `Ord` (for UUIDv7 the time order), the
            // tie-break. A cursor naming no row yields NULL: no rows.
            conditions.push(format!(
                "(\"timestamp\", id) < (SELECT \"timestamp\", id FROM audit_logs WHERE id = {})",
                f.param(before)
            ));
        }
        if !conditions.is_empty() {
            f.sql = format!(" WHERE {}", conditions.join(" AND "));
        }
        f
    }

    /// One more parameter, returning its placeholder.
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `count` as the schema has it: a column from migration 3, 1 per row before.
fn count_column(version: i32) -> &'static str {
    if version >= COUNT_VERSION {
        "count"
    } else {
        "1::int8"
    }
}

/// An [`AuditReader`] over the `audit_logs` table: every filter, the counts and the top
/// offenders computed in SQL (`GROUP BY`, `sum(count)`), never by loading the rows.
///
/// It never migrates: a schema from before migration 3 reads every row as one occurrence,
/// one from before migration 5 has no fingerprints, a database never migrated is empty.
/// Answers with the same order as [`MemoryAuditReader`](secure_routes::audit::MemoryAuditReader):
/// ties between keys (top offenders) and actions (counts) in byte order (`COLLATE "C"`),
/// whatever the database's collation.
///
/// ```no_run
/// use std::time::Duration;
/// use secure_routes::audit::{AuditQuery, AuditReader, TopBy};
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 4)?;
/// let reader = secure_routes_postgres::PgAuditReader::new(pool);
/// let per_minute = reader.counts(&AuditQuery::default(), Duration::from_secs(60)).await?;
/// let worst = reader.top(&AuditQuery::default(), TopBy::ClientIp, 10).await?;
/// # let _ = (per_minute, worst);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgAuditReader {
    pool: Pool,
    /// The schema version once it is the newest (it cannot go back); until then it is read
    /// on every call, so a reader started before the writer migrated sees the new columns.
    current: AtomicBool,
}

impl PgAuditReader {
    /// A reader on `pool` (connections are made when first needed).
    ///
    /// ```
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 2).unwrap();
    /// let reader = secure_routes_postgres::PgAuditReader::new(pool);
    /// # let _ = reader;
    /// ```
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: AtomicBool::new(false),
        }
    }

    async fn client_and_version(&self) -> Result<(deadpool_postgres::Object, i32), Error> {
        let client = self.pool.get().await?;
        if self.current.load(Ordering::Relaxed) {
            return Ok((client, crate::SCHEMA_VERSION));
        }
        let version = crate::migrate::schema_version_of(&client).await?;
        if version >= crate::SCHEMA_VERSION {
            self.current.store(true, Ordering::Relaxed);
        }
        Ok((client, version))
    }

    async fn read_events(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, Error> {
        let (client, version) = self.client_and_version().await?;
        if version == 0 {
            return Ok(Vec::new());
        }
        let mut f = Filter::new(q, version, true);
        let limit = f.param(as_i64(q.limit));
        let fingerprint = if version >= FINGERPRINT_VERSION {
            "fingerprint"
        } else {
            "NULL::text"
        };
        // The cursor's order (see `AuditQuery`). One statement per filter combination, so
        // each gets a plan that uses its index.
        let sql = format!(
            "SELECT {COLUMNS_BASE}, {count}, {fingerprint} FROM audit_logs{} ORDER BY \"timestamp\" DESC, id DESC LIMIT {limit}",
            f.sql,
            count = count_column(version),
        );
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &f.refs()).await?;
        rows.iter().map(from_row).collect()
    }

    async fn read_counts(
        &self,
        q: &AuditQuery,
        bucket: Duration,
    ) -> Result<Vec<ActionCount>, Error> {
        let (client, version) = self.client_and_version().await?;
        if version == 0 {
            return Ok(Vec::new());
        }
        let mut f = Filter::new(q, version, false);
        let len = f.param(i64::try_from(bucket.as_secs().max(1)).unwrap_or(i64::MAX));
        // floor(epoch / len) * len: the bucket's start, as `bucket_start` computes it
        // (floor, so instants before 1970 land in the right bucket). Grouped in SQL: only
        // the sums leave the database.
        let sql = format!(
            "SELECT (floor(extract(epoch FROM \"timestamp\") / {len}::int8) * {len}::int8)::int8 AS bucket, \
             action, sum({count})::int8 FROM audit_logs{} \
             GROUP BY bucket, action ORDER BY bucket, action COLLATE \"C\"",
            f.sql,
            count = count_column(version),
        );
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &f.refs()).await?;
        rows.iter()
            .map(|row| {
                let start: i64 = row.try_get(0)?;
                let action: String = row.try_get(1)?;
                let sum: i64 = row.try_get(2)?;
                let corrupt = |what: String| Error::Corrupt {
                    id: String::new(),
                    what,
                };
                Ok(ActionCount {
                    bucket_start: OffsetDateTime::from_unix_timestamp(start)
                        .map_err(|e| corrupt(format!("bucket {start}: {e}")))?,
                    action: AuditAction::parse(&action)
                        .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
                    count: u64::try_from(sum).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn read_top(&self, q: &AuditQuery, by: TopBy, n: usize) -> Result<Vec<TopEntry>, Error> {
        let (client, version) = self.client_and_version().await?;
        if version == 0 {
            return Ok(Vec::new());
        }
        let mut f = Filter::new(q, version, false);
        let column = match by {
            TopBy::ClientIp => "client_ip",
            TopBy::Subject => "subject",
        };
        let limit = f.param(as_i64(n));
        let and = if f.sql.is_empty() { " WHERE" } else { " AND" };
        let sql = format!(
            "SELECT {column}, sum({count})::int8 AS n FROM audit_logs{}{and} {column} IS NOT NULL \
             GROUP BY {column} ORDER BY n DESC, {column} COLLATE \"C\" LIMIT {limit}",
            f.sql,
            count = count_column(version),
        );
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &f.refs()).await?;
        rows.iter()
            .map(|row| {
                let sum: i64 = row.try_get(1)?;
                Ok(TopEntry {
                    key: row.try_get(0)?,
                    count: u64::try_from(sum).unwrap_or(0),
                })
            })
            .collect()
    }
}

impl AuditReader for PgAuditReader {
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move {
            self.read_events(q)
                .await
                .map_err(|e| AuditError(e.to_string()))
        })
    }

    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>> {
        Box::pin(async move {
            self.read_counts(q, bucket)
                .await
                .map_err(|e| AuditError(e.to_string()))
        })
    }

    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>> {
        Box::pin(async move {
            self.read_top(q, by, n)
                .await
                .map_err(|e| AuditError(e.to_string()))
        })
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// The number of stored events (0 for a database never migrated).
///
/// ```no_run
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), secure_routes_postgres::Error> {
/// let n = secure_routes_postgres::count(&pool).await?;
/// println!("{n} audit events");
/// # Ok(()) }
/// ```
pub async fn count(pool: &Pool) -> Result<u64, Error> {
    let client = pool.get().await?;
    match client
        .query_one("SELECT count(*) FROM audit_logs", &[])
        .await
    {
        Ok(row) => Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0)),
        Err(e) if crate::is_undefined_table(&e) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn parse_outcome(s: &str) -> Option<Outcome> {
    Outcome::ALL.iter().copied().find(|o| o.as_str() == s)
}

/// Rebuilds an event from a row. Stored text is returned as stored: it was escaped and
/// bounded before it was written, and is not trusted to be anything more than text.
fn from_row(row: &tokio_postgres::Row) -> Result<AuditEvent, Error> {
    let id: Uuid = row.try_get(0)?;
    let corrupt = |what: String| Error::Corrupt {
        id: id.to_string(),
        what,
    };
    let action: String = row.try_get(1)?;
    let outcome: String = row.try_get(5)?;
    let status: i32 = row.try_get(10)?;
    let metadata: Option<Value> = row.try_get(3)?;
    let count: i64 = row.try_get(14)?;
    Ok(AuditEvent {
        id,
        timestamp: row.try_get(4)?,
        action: AuditAction::parse(&action)
            .ok_or_else(|| corrupt(format!("unknown action {action:?}")))?,
        outcome: parse_outcome(&outcome)
            .ok_or_else(|| corrupt(format!("unknown outcome {outcome:?}")))?,
        subject: row.try_get(2)?,
        client_ip: row.try_get(6)?,
        method: row.try_get(7)?,
        route: row.try_get(8)?,
        path: row.try_get(9)?,
        status: u16::try_from(status).map_err(|_| corrupt(format!("status {status}")))?,
        reason: row.try_get(11)?,
        request_id: row.try_get(12)?,
        user_agent: row.try_get(13)?,
        fingerprint: row.try_get(15)?,
        metadata: metadata.unwrap_or(Value::Null),
        count: u64::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| corrupt(format!("count {count}")))?,
    })
}
