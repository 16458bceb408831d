//! `PostgresAuditSink` and the reader: every field round-trips, big batches are stored
//! exactly, retries do not duplicate.

mod common;

use std::sync::Arc;

use common::TestDb;
use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditSink, AuditWriter, Outcome};
use secure_routes_postgres::{AuditQuery, PostgresAuditSink, count, query};
use time::OffsetDateTime;

/// `t` cut to whole microseconds: Postgres' `timestamptz` precision.
fn micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap()
}

fn full_event() -> AuditEvent {
    let mut e = AuditEvent::new(AuditAction::CsrfValidationFailed)
        .with_outcome(Outcome::Allowed)
        .with_subject("5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f")
        .with_client_ip("2001:db8::/64")
        .with_request("POST", "/api/user/notes", "/api/user/notes")
        .with_status(403)
        .with_reason("cross_origin")
        .with_request_id("req-123")
        .with_user_agent("curl/8\n[forged]")
        .with_metadata(serde_json::json!({"origin": "https://evil.example", "n": [1, 2.5, null]}));
    e.timestamp = micros(e.timestamp);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_round_trips() {
    let Some(db) = TestDb::migrated("every_field_round_trips", 2).await else {
        return;
    };
    let sink = PostgresAuditSink::new(db.pool.clone());
    let full = full_event();
    let mut bare = AuditEvent::new(AuditAction::InternalError).with_outcome(Outcome::Error);
    bare.timestamp = micros(bare.timestamp) + time::Duration::seconds(1);
    sink.write_batch(&[full.clone(), bare.clone()])
        .await
        .unwrap();

    let got = query(&db.pool, &AuditQuery::default()).await.unwrap();
    assert_eq!(got, [bare, full.clone()]); // newest first
    // A UUID subject also fills the original `user_id` column; a free-text one would not.
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM audit_logs WHERE user_id = '5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f' \
             AND subject = user_id::text AND metadata->>'origin' = 'https://evil.example'"
        )
        .await,
        1
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nanoseconds_are_cut_and_nul_is_escaped() {
    let Some(db) = TestDb::migrated("nanoseconds_are_cut_and_nul_is_escaped", 2).await else {
        return;
    };
    let sink = PostgresAuditSink::new(db.pool.clone());
    let mut e = AuditEvent::new(AuditAction::InvalidInput).with_subject("free-text subject");
    e.timestamp = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
    // Public fields can carry what the builders would have escaped; Postgres text cannot hold
    // NUL, and one such event must not poison its whole batch.
    e.path = "/a\0b".into();
    e.metadata = serde_json::json!({"k\0": ["v\0"]});
    sink.write_batch(std::slice::from_ref(&e)).await.unwrap();
    let got = query(&db.pool, &AuditQuery::default()).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].timestamp, micros(e.timestamp));
    assert_eq!(got[0].path, "/a\\u{0}b");
    assert_eq!(got[0].metadata, serde_json::json!({"k\\u{0}": ["v\\u{0}"]}));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM audit_logs WHERE user_id IS NULL")
            .await,
        1
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_10k_is_stored_exactly_and_a_retry_adds_nothing() {
    let Some(db) = TestDb::migrated("a_batch_of_10k", 2).await else {
        return;
    };
    let sink = PostgresAuditSink::new(db.pool.clone());
    let batch: Vec<AuditEvent> = (0..10_000)
        .map(|i| {
            AuditEvent::new(AuditAction::RateLimitExceeded)
                .with_status(429)
                .with_request_id(&format!("r{i}"))
        })
        .collect();
    sink.write_batch(&batch).await.unwrap();
    assert_eq!(count(&db.pool).await.unwrap(), 10_000);
    // The writer retries a whole batch when it could not see the commit: nothing doubles.
    sink.write_batch(&batch).await.unwrap();
    assert_eq!(count(&db.pool).await.unwrap(), 10_000);
    // A retry that overlaps a new batch stores only the new events.
    let mut mixed = batch[..100].to_vec();
    mixed.push(AuditEvent::new(AuditAction::SecurityEvent));
    sink.write_batch(&mixed).await.unwrap();
    assert_eq!(count(&db.pool).await.unwrap(), 10_001);
    assert_eq!(
        db.scalar_i64("SELECT count(DISTINCT request_id) FROM audit_logs WHERE status = 429")
            .await,
        10_000
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_stores_nothing() {
    let Some(db) = TestDb::migrated("a_failing_batch_stores_nothing", 2).await else {
        return;
    };
    let sink = PostgresAuditSink::new(db.pool.clone());
    // The second chunk of this batch (past 5 000 rows) violates a constraint added for the
    // test: the whole batch, first chunk included, must roll back.
    db.exec("ALTER TABLE audit_logs ADD CONSTRAINT no_teapots CHECK (status <> 418)")
        .await;
    let mut batch: Vec<AuditEvent> = (0..6_000)
        .map(|_| AuditEvent::new(AuditAction::InvalidInput).with_status(400))
        .collect();
    batch[5_500].status = 418;
    assert!(sink.write_batch(&batch).await.is_err());
    assert_eq!(count(&db.pool).await.unwrap(), 0);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_filters_by_action_and_time_newest_first() {
    let Some(db) = TestDb::migrated("query_filters", 2).await else {
        return;
    };
    let sink = PostgresAuditSink::new(db.pool.clone());
    let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let events: Vec<AuditEvent> = (0..10i64)
        .map(|i| {
            let action = if i % 2 == 0 {
                AuditAction::RateLimitExceeded
            } else {
                AuditAction::UnauthorizedAccess
            };
            let mut e = AuditEvent::new(action).with_status(u16::try_from(i).unwrap());
            e.timestamp = t0 + time::Duration::seconds(i);
            e
        })
        .collect();
    sink.write_batch(&events).await.unwrap();

    let statuses = |v: Vec<AuditEvent>| v.into_iter().map(|e| e.status).collect::<Vec<_>>();
    let q = |action, since, limit| AuditQuery {
        action,
        since,
        limit,
        ..AuditQuery::default()
    };
    assert_eq!(
        statuses(query(&db.pool, &q(None, None, 3)).await.unwrap()),
        [9, 8, 7]
    );
    assert_eq!(
        statuses(
            query(
                &db.pool,
                &q(Some(AuditAction::UnauthorizedAccess), None, 100)
            )
            .await
            .unwrap()
        ),
        [9, 7, 5, 3, 1]
    );
    let since = Some(t0 + time::Duration::seconds(6));
    assert_eq!(
        statuses(
            query(
                &db.pool,
                &q(Some(AuditAction::RateLimitExceeded), since, 100)
            )
            .await
            .unwrap()
        ),
        [8, 6]
    );
    assert!(query(&db.pool, &q(None, None, 0)).await.unwrap().is_empty());
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_database_reads_as_empty() {
    let Some(db) = TestDb::new("an_unmigrated_database_reads_as_empty", 1).await else {
        return;
    };
    assert!(
        query(&db.pool, &AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count(&db.pool).await.unwrap(), 0);
    // Writing, though, is an error (for the writer to retry and spill), not a silent drop.
    let sink = PostgresAuditSink::new(db.pool.clone());
    assert!(
        sink.write_batch(&[AuditEvent::new(AuditAction::SecurityEvent)])
            .await
            .is_err()
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_audit_writer_every_event_lands() {
    let Some(db) = TestDb::migrated("behind_the_audit_writer", 2).await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("{}-spill.jsonl", db.schema));
    let writer = AuditWriter::spawn(
        Arc::new(PostgresAuditSink::new(db.pool.clone())),
        AuditConfig {
            spill_path: dir.clone(),
            // One row per event here; folding is the core's (tests/audit_fold.rs).
            fold_window: std::time::Duration::ZERO,
            ..AuditConfig::default()
        },
    );
    for i in 0..1_000u16 {
        writer
            .record(AuditEvent::new(AuditAction::RateLimitExceeded).with_status(i))
            .await;
    }
    writer.shutdown().await;
    assert_eq!(count(&db.pool).await.unwrap(), 1_000);
    assert!(!dir.exists(), "nothing should have been spilled");
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_stored_and_read_back() {
    let Some(db) = TestDb::migrated("counts_are_stored_and_read_back", 2).await else {
        return;
    };
    let sink = PostgresAuditSink::new(db.pool.clone());
    let single = AuditEvent::new(AuditAction::InvalidInput).with_status(405);
    let mut folded = AuditEvent::new(AuditAction::InvalidInput)
        .with_status(405)
        .with_count(99_999);
    folded.timestamp = micros(single.timestamp) + time::Duration::seconds(1);
    sink.write_batch(&[single.clone(), folded.clone()])
        .await
        .unwrap();
    let got = query(&db.pool, &AuditQuery::default()).await.unwrap();
    let counts: Vec<u64> = got.iter().map(|e| e.count).collect();
    assert_eq!(counts, [99_999, 1]); // newest first
    assert_eq!(
        db.scalar_i64("SELECT sum(count)::int8 FROM audit_logs")
            .await,
        100_000
    );
    db.drop().await;
}
