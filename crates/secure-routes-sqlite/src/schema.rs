//! The `audit_logs` table and its migrations.
//!
//! The original Postgres table had `id, action, user_id, metadata, timestamp, created_at`;
//! those columns keep their names and meaning (`user_id` holds the subject, which need not be
//! a UUID here), and the columns the pipeline knows about are added next to them, so the
//! common questions ("who was refused on /api/x yesterday?") need no JSON digging.
//!
//! Migrations are numbered by SQLite's `user_version`: migration `n` (1-based) brings a
//! database from version `n - 1` to `n`. They run in one `IMMEDIATE` transaction, so two
//! processes opening a new database at once cannot both apply them.

use rusqlite::{Connection, TransactionBehavior};

use crate::Error;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE TABLE audit_logs (
        id          TEXT PRIMARY KEY NOT NULL,  -- UUIDv7, lower-case hyphenated
        action      TEXT NOT NULL,              -- rate_limit_exceeded, ...
        user_id     TEXT,                       -- the authenticated subject
        metadata    TEXT,                       -- JSON, NULL when empty
        timestamp   TEXT NOT NULL,              -- fixed-width RFC 3339 UTC (see timestamp.rs)
        created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        outcome     TEXT NOT NULL,              -- denied, allowed, error
        client_ip   TEXT,
        method      TEXT NOT NULL,
        route       TEXT NOT NULL,
        path        TEXT NOT NULL,
        status      INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        request_id  TEXT NOT NULL,
        user_agent  TEXT
    );
    -- The timestamp second in each index lets 'newest first' filtered by action or subject
    -- walk one index backwards instead of sorting.
    CREATE INDEX idx_audit_logs_action ON audit_logs(action, timestamp);
    CREATE INDEX idx_audit_logs_user_id ON audit_logs(user_id, timestamp);
    CREATE INDEX idx_audit_logs_timestamp ON audit_logs(timestamp);",
];

/// The schema version this build creates and reads.
///
/// ```
/// assert_eq!(secure_routes_sqlite::SCHEMA_VERSION, 1);
/// ```
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database's `user_version`.
pub(crate) fn version(conn: &Connection) -> Result<i64, Error> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Fails on a database newer than this build.
pub(crate) fn check_supported(found: i64) -> Result<(), Error> {
    if (0..=SCHEMA_VERSION).contains(&found) {
        Ok(())
    } else {
        Err(Error::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        })
    }
}

/// Applies the missing migrations.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read inside the write lock: another process may have migrated since we looked.
    let found = version(&tx)?;
    check_supported(found)?;
    let applied = usize::try_from(found).unwrap_or(0);
    for migration in MIGRATIONS.iter().skip(applied) {
        tx.execute_batch(migration)?;
    }
    if found != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}
