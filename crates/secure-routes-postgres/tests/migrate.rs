//! Migrations: idempotent, safe when several instances run them at once.

mod common;

use common::TestDb;
use secure_routes_postgres::{Error, SCHEMA_VERSION, migrate, schema_version};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_is_idempotent() {
    let Some(db) = TestDb::new("migrate_is_idempotent", 2).await else {
        return;
    };
    assert_eq!(schema_version(&db.pool).await.unwrap(), 0);
    assert_eq!(migrate(&db.pool).await.unwrap(), SCHEMA_VERSION as u32);
    assert_eq!(migrate(&db.pool).await.unwrap(), 0);
    assert_eq!(migrate(&db.pool).await.unwrap(), 0);
    assert_eq!(schema_version(&db.pool).await.unwrap(), SCHEMA_VERSION);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM secure_routes_migrations")
            .await,
        i64::from(SCHEMA_VERSION)
    );
    // The tables are there, with the settings DESIGN.md promises.
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relname = 'rate_limits' \
             AND c.relpersistence = 'u' AND 'fillfactor=50' = ANY (c.reloptions)"
        )
        .await,
        1
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() \
             AND tablename = 'audit_logs'"
        )
        .await,
        6 // primary key, action, subject, user_id, timestamp, client_ip
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_apply_each_once() {
    let Some(db) = TestDb::new("concurrent_migrations_apply_each_once", 8).await else {
        return;
    };
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move { migrate(&pool).await })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap().unwrap();
    }
    // Exactly one of them did the work; the others found the schema current.
    assert_eq!(applied, SCHEMA_VERSION as u32);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM secure_routes_migrations")
            .await,
        i64::from(SCHEMA_VERSION)
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let Some(db) = TestDb::migrated("a_newer_schema_is_refused", 2).await else {
        return;
    };
    db.exec("INSERT INTO secure_routes_migrations (version, name) VALUES (999, 'future')")
        .await;
    let err = migrate(&db.pool).await.unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedSchema { found: 999, supported } if supported == SCHEMA_VERSION),
        "{err}"
    );
    db.drop().await;
}
