//! `PgAuditReader` against the reader conformance suite: the same answers as the core's
//! reference reader over the same events, on a migrated schema, an empty one, one never
//! migrated, and older schema versions (read without migrating). Each test has its own
//! schema (`TestDb`).

mod common;

use common::TestDb;
use secure_routes::audit::reader::conformance;
use secure_routes::audit::{AuditEvent, AuditQuery, AuditReader};
use secure_routes_postgres::{PgAuditReader, PostgresAuditSink};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_like_the_reference() {
    let Some(db) = TestDb::migrated("reader_answers_like_the_reference", 4).await else {
        return;
    };
    let events = conformance::fixture();
    PostgresAuditSink::new(db.pool.clone())
        .write(&events)
        .await
        .unwrap();
    let reader = PgAuditReader::new(db.pool.clone());
    conformance::run_all(&reader, &events).await;
    let q = AuditQuery {
        client_ip: Some("203.0.113.1".into()),
        ..AuditQuery::default()
    };
    assert_eq!(
        secure_routes_postgres::query(&db.pool, &q).await.unwrap(),
        reader.events(&q).await.unwrap(),
        "query() and the reader agree"
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_never_migrated_schemas_read_as_empty() {
    let Some(db) = TestDb::migrated("reader_empty", 2).await else {
        return;
    };
    conformance::empty(&PgAuditReader::new(db.pool.clone())).await;
    db.drop().await;
    let Some(db) = TestDb::new("reader_never_migrated", 2).await else {
        return;
    };
    conformance::empty(&PgAuditReader::new(db.pool.clone())).await;
    db.drop().await;
}

fn as_of(version: i32, events: &[AuditEvent]) -> Vec<AuditEvent> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.fingerprint = None;
            if version < 3 {
                e.count = 1;
            }
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_schema_versions_read_without_migrating() {
    for (version, downgrade) in [
        (
            4,
            "DROP INDEX audit_logs_client_ip_timestamp_idx; \
             ALTER TABLE audit_logs DROP COLUMN fingerprint; \
             DELETE FROM secure_routes_migrations WHERE version > 4;",
        ),
        (
            2,
            "DROP INDEX audit_logs_client_ip_timestamp_idx; \
             ALTER TABLE audit_logs DROP COLUMN fingerprint, DROP COLUMN count; \
             DELETE FROM secure_routes_migrations WHERE version > 2;",
        ),
    ] {
        let Some(db) = TestDb::migrated("reader_older_schema", 2).await else {
            return;
        };
        let events = conformance::fixture();
        PostgresAuditSink::new(db.pool.clone())
            .write(&events)
            .await
            .unwrap();
        db.exec(downgrade).await;
        conformance::run_all(
            &PgAuditReader::new(db.pool.clone()),
            &as_of(version, &events),
        )
        .await;
        assert_eq!(
            secure_routes_postgres::schema_version(&db.pool)
                .await
                .unwrap(),
            version,
            "a reader never migrates"
        );
        db.drop().await;
    }
}
