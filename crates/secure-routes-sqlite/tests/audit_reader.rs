//! `SqliteAuditReader` against the reader conformance suite: the same answers as the core's
//! reference reader over the same events, on a current file, an empty one, and files of
//! older schema versions (read without migrating).

use rusqlite::Connection;
use secure_routes::audit::reader::conformance;
use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery, AuditReader, AuditSink};
use secure_routes_sqlite::{SqliteAuditReader, SqliteAuditSink};

async fn written(dir: &tempfile::TempDir, events: &[AuditEvent]) -> std::path::PathBuf {
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    sink.write_batch(events).await.unwrap();
    db
}

#[tokio::test]
async fn answers_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let events = conformance::fixture();
    let db = written(&dir, &events).await;
    let reader = SqliteAuditReader::open(&db).unwrap();
    conformance::run_all(&reader, &events).await;
    // The fingerprint is stored and read back (run_all compares whole events; this names it).
    let fp = events.iter().find_map(|e| e.fingerprint.clone()).unwrap();
    let q = AuditQuery {
        fingerprint: Some(fp.clone()),
        ..AuditQuery::default()
    };
    let found = reader.events(&q).await.unwrap();
    assert!(!found.is_empty());
    assert!(found.iter().all(|e| e.fingerprint.as_deref() == Some(&*fp)));
    // The function form is the same SQL.
    assert_eq!(
        secure_routes_sqlite::query(&db, &q).unwrap(),
        found,
        "query() and the reader agree"
    );
}

#[tokio::test]
async fn an_empty_store_and_a_file_without_the_schema_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = written(&dir, &[]).await;
    conformance::empty(&SqliteAuditReader::open(&db).unwrap()).await;
    let bare = dir.path().join("bare.db");
    std::fs::write(&bare, b"").unwrap();
    conformance::empty(&SqliteAuditReader::open(&bare).unwrap()).await;
    assert!(SqliteAuditReader::open(dir.path().join("missing.db")).is_err());
}

/// The fixture as an older file holds it: no fingerprints (before 5), every row one
/// occurrence (before 3).
fn as_of(version: i64, events: &[AuditEvent]) -> Vec<AuditEvent> {
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

#[tokio::test]
async fn older_schema_versions_read_without_migrating() {
    for (version, downgrade) in [
        (
            4,
            "DROP INDEX idx_audit_logs_client_ip; ALTER TABLE audit_logs DROP COLUMN fingerprint; \
             PRAGMA user_version = 4;",
        ),
        (
            2,
            "DROP INDEX idx_audit_logs_client_ip; ALTER TABLE audit_logs DROP COLUMN fingerprint; \
             ALTER TABLE audit_logs DROP COLUMN count; DROP TABLE bans; PRAGMA user_version = 2;",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let events = conformance::fixture();
        let db = written(&dir, &events).await;
        Connection::open(&db)
            .unwrap()
            .execute_batch(downgrade)
            .unwrap();
        let reader = SqliteAuditReader::open(&db).unwrap();
        conformance::run_all(&reader, &as_of(version, &events)).await;
        let v: i64 = Connection::open(&db)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, version, "a reader never migrates");
    }
}

#[tokio::test]
async fn a_reader_opened_before_the_writer_migrates_sees_the_new_column() {
    let dir = tempfile::tempdir().unwrap();
    let db = written(&dir, &[AuditEvent::new(AuditAction::InvalidInput)]).await;
    Connection::open(&db)
        .unwrap()
        .execute_batch(
            "DROP INDEX idx_audit_logs_client_ip; ALTER TABLE audit_logs DROP COLUMN fingerprint; \
             PRAGMA user_version = 4;",
        )
        .unwrap();
    let reader = SqliteAuditReader::open(&db).unwrap();
    assert_eq!(
        reader.events(&AuditQuery::default()).await.unwrap().len(),
        1
    );
    // The writer brings the file to version 5 and writes a fingerprinted event.
    let e = AuditEvent::new(AuditAction::InvalidInput).with_fingerprint("fp-1");
    SqliteAuditSink::open(&db)
        .unwrap()
        .write_batch(std::slice::from_ref(&e))
        .await
        .unwrap();
    let q = AuditQuery {
        fingerprint: Some("fp-1".into()),
        ..AuditQuery::default()
    };
    assert_eq!(reader.events(&q).await.unwrap(), [e]);
}
