//! The database's tables (`audit_logs`, `rate_limits`), their migrations, and opening a write
//! connection.
//!
//! The original Postgres table had `id, action, user_id, metadata, timestamp, created_at`;
//! those columns keep their names and meaning (`user_id` holds the subject, which need not be
//! a UUID here), and the columns the pipeline knows about are added next to them, so the
//! common questions ("who was refused on /api/x yesterday?") need no JSON digging.
//!
//! Migrations are numbered by SQLite's `user_version`: migration `n` (1-based) brings a
//! database from version `n - 1` to `n`. They run in one `IMMEDIATE` transaction, so two
//! processes opening a new database at once cannot both apply them.
//!
//! One numbering covers both tables, and the audit sink and the rate-limit store both apply
//! every migration when they open a file, so one file can hold both (each opener brings it to
//! the newest version) and an audit-only database from version 1 simply gains the empty
//! `rate_limits` table.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

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
    // Version 2: rate-limit state (see store.rs). One row per (key, algorithm), never one
    // per request. Times are nanoseconds since the Unix epoch (INTEGER: good until 2262), the
    // unit of the core's pure algorithms.
    "CREATE TABLE rate_limits (
        key         BLOB    NOT NULL,           -- 16-byte keyed hash (never a raw IP or user id)
        algorithm   INTEGER NOT NULL,           -- 0 = sliding window, 1 = GCRA
        stamps      BLOB,                       -- sliding window: admission times, 8-byte LE each, oldest first (<= limit)
        seen        INTEGER NOT NULL DEFAULT 0, -- sliding window: the log's own time (never goes back)
        tat         INTEGER,                    -- GCRA: theoretical arrival time
        expires_at  INTEGER NOT NULL,           -- from then on the row equals a fresh key: sweepable
        PRIMARY KEY (key, algorithm)
    );
    -- Sweeps delete `expires_at <= now`: the index makes that touch only the expired rows,
    -- at the price of one index update per changed row.
    CREATE INDEX idx_rate_limits_expires_at ON rate_limits(expires_at);",
    // Version 3: how many identical refusals a row stands for (the audit writer folds a
    // flood into a few rows; see `secure_routes::audit::AuditEvent::count`). Rows written
    // before it stand for one each.
    "ALTER TABLE audit_logs ADD COLUMN count INTEGER NOT NULL DEFAULT 1;",
    // Version 4: bans (see bans.rs and `secure_routes::bans`). One row per key with points
    // or history; times are milliseconds since the Unix epoch. Keys are readable
    // (`ip:203.0.113.7`, `sub:alice`): operators list and lift bans by name.
    "CREATE TABLE bans (
        key         TEXT    PRIMARY KEY NOT NULL,
        log         TEXT    NOT NULL DEFAULT '',  -- strikes in the window: 'ms:weight,...'
        level       INTEGER NOT NULL DEFAULT 0,   -- bans in a row (the escalation)
        last_ban    INTEGER NOT NULL DEFAULT 0,   -- when the last ban was issued
        until       INTEGER NOT NULL DEFAULT 0,   -- when the current ban ends
        reason      TEXT    NOT NULL DEFAULT '',
        expires_at  INTEGER NOT NULL              -- from then on the row equals a fresh key
    );
    CREATE INDEX idx_bans_until ON bans(until);",
    // Version 5: the request fingerprint (`AuditEvent::fingerprint`; NULL for events with no
    // request and for rows written before it), and an index for the dashboard's "this
    // address" filter and its top-offenders ranking (see DESIGN.md, "Reading the audit
    // trail"). Readers of version 3 and 4 files read the fingerprint as absent.
    "ALTER TABLE audit_logs ADD COLUMN fingerprint TEXT;
    CREATE INDEX idx_audit_logs_client_ip ON audit_logs(client_ip, timestamp);",
];

/// The first version with `audit_logs.count`.
pub(crate) const COUNT_VERSION: i64 = 3;

/// The first version with `audit_logs.fingerprint`.
pub(crate) const FINGERPRINT_VERSION: i64 = 5;

/// The schema version this build creates and reads.
///
/// ```
/// assert_eq!(secure_routes_sqlite::SCHEMA_VERSION, 5);
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

/// Creates the file at `path` readable and writable by its owner only (0600) on Unix, unless
/// it exists: audit rows hold client addresses and subjects, and SQLite would create it with
/// the process umask (usually world-readable). SQLite gives the `-wal` and `-shm` files it
/// creates later the database file's mode. An existing file keeps its mode: an operator who
/// opened it to a group (a dashboard's account, say) chose that, and a chmod on every start
/// would silently undo it. `create_new` also makes a concurrent creator harmless: whoever
/// comes second sees the file and leaves it alone.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens (or creates, mode 0600 on Unix) the database at `path` for writing: busy timeout,
/// WAL, `synchronous=NORMAL`, migrations. Blocking.
pub(crate) fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection, Error> {
    let open_error = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    // Special names (`:memory:`, URIs) are not files of ours to create.
    if !path.as_os_str().is_empty() && path.as_os_str() != ":memory:" {
        // An error here (a missing directory, say) is reported by the open below, in the
        // same words as before.
        let _ = create_private(path);
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    // SQLite silently falls back to read-only on a write-protected file; say so now rather
    // than on the first write.
    if conn.is_readonly(rusqlite::MAIN_DB).map_err(open_error)? {
        return Err(Error::ReadOnly {
            path: path.to_path_buf(),
        });
    }
    conn.busy_timeout(busy_timeout).map_err(open_error)?;
    // WAL: readers (the CLI, a dashboard) see a consistent snapshot while the writer works,
    // and a commit is one sequential append to the log. This is also the first read of the
    // file, so a file that is not a database fails here, at open.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, path = %path.display(), "SQLite database is not in WAL mode");
    }
    // NORMAL is safe in WAL mode: no corruption, and a process crash loses nothing; only a
    // power cut may lose the last commits. FULL would add an fsync to every commit.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_error)?;
    migrate(&mut conn)?;
    Ok(conn)
}
