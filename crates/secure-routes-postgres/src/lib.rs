//! Postgres stores for `secure-routes`: an exact, shared rate-limit store and a batched audit
//! sink, with embedded migrations.
//!
//! * [`PostgresStore`] implements [`RateLimitStore`](secure_routes::rate_limit::RateLimitStore):
//!   one SQL statement (one round trip) per check, atomic under concurrency and across
//!   instances, time from the database (`clock_timestamp()`) so instance clocks cannot skew it,
//!   and the **same decisions** as the core's pure algorithms
//!   ([`sliding_window`](secure_routes::rate_limit::sliding_window),
//!   [`gcra`](secure_routes::rate_limit::gcra)) and the memory store.
//! * [`PostgresAuditSink`] implements [`AuditSink`](secure_routes::audit::AuditSink): one
//!   `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT (id) DO NOTHING` per batch, in one
//!   transaction, so a retried batch never duplicates. [`query`] and [`count`] read it back.
//! * [`migrate`] creates the tables (the original pattern's `rate_limits` and `audit_logs`,
//!   improved) and is safe to call at every start, from several instances at once.
//!
//! # Layout
//!
//! * `migrate`: the embedded SQL files (`src/migrations/`), [`migrate`], [`SCHEMA_VERSION`].
//! * `store`: [`PostgresStore`], its sweeper ([`SweeperHandle`]).
//! * `audit`: [`PostgresAuditSink`], [`AuditQuery`], [`query`], [`count`].
//!
//! # Why this shape
//!
//! The original pattern stored a row per request and decided with a delete, a count and an
//! insert: three or four round trips, a race between the count and the insert (concurrent
//! requests all pass), and a table that grows with traffic. Here each key has one row holding
//! only the algorithm's state (at most `limit` timestamps for the sliding window, one
//! theoretical arrival time for GCRA), and each check is one call of a PL/pgSQL function that
//! locks that row (`SELECT ... FOR UPDATE`), runs the algorithm and writes the new state:
//! concurrent checks on one key are serialised by the row lock, checks on different keys do
//! not wait for each other. Table settings (UNLOGGED, fillfactor, autovacuum) are argued in
//! `src/migrations/0002_rate_limits.sql` and in DESIGN.md, "Postgres store settings".
//!
//! # Supabase
//!
//! Apply the migrations by calling [`migrate`] once with the database's connection string (the
//! `secure-routes` binary should do it at start), or paste `src/migrations/*.sql` into the SQL
//! editor in order and record them with
//! `CREATE TABLE secure_routes_migrations (version integer PRIMARY KEY, name text NOT NULL,
//! applied_at timestamptz NOT NULL DEFAULT now()); INSERT INTO secure_routes_migrations
//! VALUES (1, 'audit_logs'), (2, 'rate_limits');`.
//!
//! * The original `audit_logs.user_id` referenced `auth.users(id)`. Here `user_id` is filled
//!   when the subject is a UUID (Supabase's `sub` is) and carries **no** foreign key, because
//!   this crate cannot know that `auth.users` exists. A Supabase project adds it itself:
//!   `ALTER TABLE audit_logs ADD CONSTRAINT audit_logs_user_id_fkey FOREIGN KEY (user_id)
//!   REFERENCES auth.users(id) ON DELETE SET NULL;` (`SET NULL`: deleting a user must neither
//!   fail nor erase the trail of what they did). With the key in place, an event whose subject
//!   is a UUID unknown to `auth.users` fails its batch, so add it only if every subject is a
//!   Supabase user.
//! * A project that already ran the original SQL has tables of the same names and another
//!   shape: [`migrate`] then fails with "relation already exists" rather than guess. Rename
//!   them first (`ALTER TABLE audit_logs RENAME TO audit_logs_seed; DROP TABLE rate_limits;`,
//!   the old rate-limit rows are worthless after a window), migrate, and copy the old trail
//!   over: `INSERT INTO audit_logs (id, action, user_id, subject, metadata, "timestamp",
//!   created_at, outcome, method, route, path, status, reason, request_id) SELECT id, action,
//!   user_id, user_id::text, metadata, "timestamp", coalesce(created_at, "timestamp"),
//!   'denied', '', '', '', 0, '', '' FROM audit_logs_seed;`.
//! * Keep these tables out of the Data API: enable row level security on them with no policy
//!   (`ALTER TABLE audit_logs ENABLE ROW LEVEL SECURITY;`, same for `rate_limits`), so only
//!   the server's own role (the table owner) reaches them.
//! * Supabase requires TLS: build the [`Pool`] yourself with a TLS connector
//!   (`deadpool_postgres::Manager::from_config(config, tls, ..)`); [`connect`] is plain TCP,
//!   for local and private networks.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use secure_routes::rate_limit::{KeyHasher, Quota, RateLimitStore, Subject};
//! use secure_routes_postgres::{PostgresStore, migrate};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 16)?;
//! migrate(&pool).await?;
//! let store = PostgresStore::new(pool);
//! let _sweeper = store.spawn_sweeper(Duration::from_secs(60))?;
//! let key = KeyHasher::new(b"shared secret").key("route:/api/x", &Subject::Custom("alice".into()));
//! let d = store.acquire(&key, Quota::per_minute(60), 1).await?;
//! assert!(d.allowed);
//! # Ok(()) }
//! ```

mod audit;
mod bans;
mod migrate;
mod store;

use std::str::FromStr;

pub use audit::{AuditQuery, PgAuditReader, PostgresAuditSink, count, query};
pub use deadpool_postgres::Pool;
pub use migrate::{SCHEMA_VERSION, migrate, migrate_client, schema_version};
pub use store::{PostgresStore, SweeperHandle};

/// Errors from connecting, migrating, writing or reading.
///
/// ```
/// let err = secure_routes_postgres::connect("not a url", 4).unwrap_err();
/// assert!(matches!(err, secure_routes_postgres::Error::Config(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection string or pool settings are invalid.
    #[error("postgres configuration: {0}")]
    Config(String),
    /// Postgres reported an error (I/O, SQL, constraint).
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be taken from the pool.
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The database was migrated by a newer version of this crate.
    #[error(
        "secure-routes schema version {found} is not supported by this build (which knows up to {supported})"
    )]
    UnsupportedSchema {
        /// The newest version recorded in `secure_routes_migrations`.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
    /// A stored row could not be turned back into an event.
    #[error("corrupt audit row {id}: {what}")]
    Corrupt {
        /// The row's `id` column.
        id: String,
        /// What was wrong with it.
        what: String,
    },
    /// A background task was started outside a Tokio runtime.
    #[error("no Tokio runtime to spawn the task on")]
    NoRuntime,
}

/// A pool of up to `max_size` plain-TCP connections (no TLS) to `url`
/// (`postgres://user:password@host:port/db?options=...` or `key=value` form).
///
/// Connections are made lazily, so this does not touch the network. Connections are checked
/// with a cheap test on reuse (`RecyclingMethod::Fast`: a closed one is replaced). Waiting for
/// a free connection, connecting and recycling each time out after 5 s (a
/// [`StoreError::Timeout`](secure_routes::StoreError::Timeout) or
/// [`StoreError::Unavailable`](secure_routes::StoreError::Unavailable) from the store).
///
/// ```
/// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1:5432/app", 8).unwrap();
/// assert_eq!(pool.status().max_size, 8);
/// ```
pub fn connect(url: &str, max_size: usize) -> Result<Pool, Error> {
    let config = tokio_postgres::Config::from_str(url).map_err(|e| Error::Config(e.to_string()))?;
    pool_from_config(config, max_size)
}

/// A plain-TCP pool from a parsed [`tokio_postgres::Config`] (set `options`, for example
/// `-c search_path=myschema`, to put the tables in another schema).
///
/// ```
/// let mut config: tokio_postgres::Config = "host=127.0.0.1 user=postgres".parse().unwrap();
/// config.options("-c search_path=audit");
/// let pool = secure_routes_postgres::pool_from_config(config, 4).unwrap();
/// assert_eq!(pool.status().max_size, 4);
/// ```
pub fn pool_from_config(config: tokio_postgres::Config, max_size: usize) -> Result<Pool, Error> {
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        // Bounded waits: an unreachable server or an exhausted pool becomes an error in
        // seconds, never a hung task (the pipeline's own store timeout is shorter still).
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .build()
        .map_err(|e| Error::Config(e.to_string()))
}

/// Longest wait for a pooled connection, a new connection, or a recycle check.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `e` is "relation does not exist" (the schema was never migrated).
pub(crate) fn is_undefined_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}
