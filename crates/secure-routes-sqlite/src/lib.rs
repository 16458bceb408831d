//! Embedded SQLite stores for `secure-routes`, the defaults on one machine: the audit log and
//! a rate-limit store whose limits survive restarts.
//!
//! [`SqliteAuditSink`] implements [`AuditSink`](secure_routes::audit::AuditSink): put it behind
//! an [`AuditWriter`](secure_routes::audit::AuditWriter) and every security decision lands in
//! the `audit_logs` table, a batch per transaction. [`query`] and [`count`] read it back (the
//! `secure-routes audit` command is built on them), safely while the writer is running.
//!
//! [`SqliteStore`] implements [`RateLimitStore`](secure_routes::rate_limit::RateLimitStore):
//! exact limits with both algorithms, the core's pure algorithms run on state kept in the
//! `rate_limits` table (one row per key and algorithm), so a restarted process keeps counting
//! where it stopped. Both may share one file.
//!
//! # Layout
//!
//! * `schema`: the `audit_logs` table (the original's columns plus ours), the `rate_limits`
//!   table, their indexes, and migrations numbered by SQLite's `user_version`.
//! * `sink`: [`SqliteAuditSink`], one writer thread owning the connection.
//! * `store`: [`SqliteStore`], another writer thread: checks in, decisions out, one
//!   transaction per batch of waiting checks.
//! * `row`: batches encoded for that thread (all text in one buffer).
//! * `query`: [`SqliteAuditReader`] (the dashboard's questions in SQL), [`AuditQuery`],
//!   [`query`], [`count`]: read-only connections.
//! * `timestamp`: the fixed-width text form timestamps are stored in.
//!
//! # Why this shape
//!
//! SQLite allows one writer at a time, and rusqlite connections are blocking. So one
//! dedicated thread owns the write connection; batches reach it over a channel and the async
//! caller awaits a reply, so the runtime never blocks on disk. Each batch is one transaction
//! with a cached prepared statement: a commit costs far more than a row, so batching is what
//! makes this fast (see the `audit` and `store` benches). For the rate-limit store the thread
//! is also what makes checks exact: it runs them one at a time. The database runs in WAL mode, so readers see a
//! consistent snapshot while the writer appends, and `synchronous=NORMAL`, which in WAL mode
//! cannot corrupt the database and loses at most the last commits on power loss, not on a
//! process crash.
//!
//! ```
//! use std::sync::Arc;
//! use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditWriter};
//! use secure_routes_sqlite::{AuditQuery, SqliteAuditSink};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let db = dir.path().join("audit.db");
//! let writer = AuditWriter::spawn(
//!     Arc::new(SqliteAuditSink::open(&db).unwrap()),
//!     AuditConfig { spill_path: dir.path().join("spill.jsonl"), ..AuditConfig::default() },
//! );
//! writer.record(AuditEvent::new(AuditAction::RateLimitExceeded).with_status(429)).await;
//! writer.record(AuditEvent::new(AuditAction::UnauthorizedAccess).with_status(401)).await;
//! writer.shutdown().await;
//!
//! let newest = secure_routes_sqlite::query(&db, &AuditQuery { limit: 10, ..AuditQuery::default() }).unwrap();
//! assert_eq!(newest.len(), 2);
//! assert_eq!(newest[0].status, 401); // newest first
//! assert_eq!(secure_routes_sqlite::count(&db).unwrap(), 2);
//! # });
//! ```
//!
//! The rate-limit store, on the same file:
//!
//! ```
//! use secure_routes::rate_limit::{KeyHasher, Quota, RateLimitStore, Subject};
//! use secure_routes_sqlite::SqliteStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path().join("app.db")).unwrap();
//! let key = KeyHasher::new(b"secret").key("route:/login", &Subject::Custom("alice".into()));
//! let quota = Quota::per_minute(3);
//! for _ in 0..3 {
//!     assert!(store.acquire(&key, quota, 1).await.unwrap().allowed);
//! }
//! let refused = store.acquire(&key, quota, 1).await.unwrap();
//! assert!(!refused.allowed);
//! assert_eq!(refused.retry_after_secs(), Some(60));
//! # });
//! ```

mod bans;
mod query;
mod row;
mod schema;
mod sink;
mod store;
mod timestamp;

pub use query::{AuditQuery, SqliteAuditReader, count, query};
pub use schema::SCHEMA_VERSION;
pub use sink::SqliteAuditSink;
pub use store::SqliteStore;
pub use timestamp::{format_timestamp, parse_timestamp};

/// Errors from opening, migrating or reading a database.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let err = secure_routes_sqlite::count(dir.path().join("missing.db")).unwrap_err();
/// assert!(matches!(err, secure_routes_sqlite::Error::Sqlite(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite reported an error (I/O, locking, SQL).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file could not be opened as a writable SQLite database (missing directory, not a
    /// database, no permission).
    #[error("opening SQLite database {}: {source}", path.display())]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is write-protected, so SQLite could only open it read-only.
    #[error("SQLite database {} is read-only", path.display())]
    ReadOnly {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The database was created by a newer version of this crate.
    #[error(
        "database schema version {found} is not supported by this build (which knows up to {supported})"
    )]
    UnsupportedSchema {
        /// The database's `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A stored row could not be turned back into an event.
    #[error("corrupt audit row {id}: {what}")]
    Corrupt {
        /// The row's `id` column.
        id: String,
        /// What was wrong with it.
        what: String,
    },
    /// The writer thread could not be started.
    #[error("starting the SQLite writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}
