//! Embedded migrations, applied by an explicit call.
//!
//! Each migration is a SQL file under `src/migrations/`, compiled into the binary with
//! `include_str!`. [`migrate`] applies the missing ones in one transaction and records each in
//! the `secure_routes_migrations` table. It first takes a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`), so instances starting together apply each migration exactly
//! once: the others wait, then find nothing left to do.

use deadpool_postgres::Pool;
use tokio_postgres::Client;

use crate::Error;

/// `(version, name, sql)`, in order; versions are 1, 2, ...
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "audit_logs",
        include_str!("migrations/0001_audit_logs.sql"),
    ),
    (
        2,
        "rate_limits",
        include_str!("migrations/0002_rate_limits.sql"),
    ),
    (
        3,
        "audit_count",
        include_str!("migrations/0003_audit_count.sql"),
    ),
    (4, "bans", include_str!("migrations/0004_bans.sql")),
    (
        5,
        "audit_fingerprint",
        include_str!("migrations/0005_audit_fingerprint.sql"),
    ),
];

/// The schema version this build creates and reads: the number of embedded migrations.
///
/// ```
/// assert_eq!(secure_routes_postgres::SCHEMA_VERSION, 5);
/// ```
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key migrations serialise on ("secure-r" in ASCII). Database-wide, so two
/// instances migrating different schemas of one database also take turns: harmless.
const LOCK_KEY: i64 = 0x7365_6375_7265_2d72;

/// Applies the missing migrations using a connection from `pool`; returns how many were
/// applied (0 when the schema is current). Safe to call at every start and from several
/// instances at once.
///
/// The tables are created in the connection's current schema (the first one on its
/// `search_path`, normally `public`).
///
/// ```no_run
/// # async fn run() -> Result<(), secure_routes_postgres::Error> {
/// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 16)?;
/// let applied = secure_routes_postgres::migrate(&pool).await?;
/// assert!(applied <= secure_routes_postgres::SCHEMA_VERSION as u32);
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &Pool) -> Result<u32, Error> {
    let mut client = pool.get().await?;
    migrate_client(&mut client).await
}

/// [`migrate`] on a client you manage yourself.
///
/// ```no_run
/// # async fn run() -> Result<(), secure_routes_postgres::Error> {
/// let (mut client, conn) =
///     tokio_postgres::connect("postgres://postgres@127.0.0.1/app", tokio_postgres::NoTls).await?;
/// tokio::spawn(conn);
/// secure_routes_postgres::migrate_client(&mut client).await?;
/// # Ok(()) }
/// ```
pub async fn migrate_client(client: &mut Client) -> Result<u32, Error> {
    let tx = client.transaction().await?;
    // `CREATE ... IF NOT EXISTS` on an existing object (every start after the first) makes the
    // server send a NOTICE ("relation ... already exists, skipping"), which tokio-postgres logs
    // at INFO: noise on every start. Warnings and errors still come through; `SET LOCAL` ends
    // with this transaction, so the pooled connection keeps its usual level afterwards.
    tx.batch_execute("SET LOCAL client_min_messages = warning")
        .await?;
    // Held until commit or rollback: concurrent migrators queue here.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS secure_routes_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    // Read under the lock: another instance may have migrated while we waited.
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM secure_routes_migrations",
            &[],
        )
        .await?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(Error::UnsupportedSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO secure_routes_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied += 1;
        tracing::info!(version, name, "secure-routes postgres migration applied");
    }
    tx.commit().await?;
    Ok(applied)
}

/// The schema version recorded in the current schema (0 when never migrated).
///
/// ```no_run
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), secure_routes_postgres::Error> {
/// let v = secure_routes_postgres::schema_version(&pool).await?;
/// assert!(v <= secure_routes_postgres::SCHEMA_VERSION);
/// # Ok(()) }
/// ```
pub async fn schema_version(pool: &Pool) -> Result<i32, Error> {
    let client = pool.get().await?;
    schema_version_of(&client).await
}

/// [`schema_version`] on one client.
pub(crate) async fn schema_version_of(client: &Client) -> Result<i32, Error> {
    let row = client
        .query_one(
            "SELECT CASE WHEN to_regclass('secure_routes_migrations') IS NULL THEN 0
                    ELSE (SELECT coalesce(max(version), 0) FROM secure_routes_migrations) END",
            &[],
        )
        .await;
    // The subquery is planned even when the table is missing; treat that as version 0.
    match row {
        Ok(row) => Ok(row.get(0)),
        Err(e) if crate::is_undefined_table(&e) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
