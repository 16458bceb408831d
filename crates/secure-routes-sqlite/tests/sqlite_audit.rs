//! `SqliteAuditSink` and the query helpers: exact round trips, filters, schema, WAL readers
//! during writes, batch atomicity, and volume through the `AuditWriter`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;
use secure_routes::audit::{
    AuditAction, AuditConfig, AuditEvent, AuditSink, AuditWriter, Outcome, replay_spill,
};
use secure_routes_sqlite::{AuditQuery, Error, SCHEMA_VERSION, SqliteAuditSink, count, query};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

fn all(limit: usize) -> AuditQuery {
    AuditQuery {
        limit,
        ..AuditQuery::default()
    }
}

fn full_event() -> AuditEvent {
    AuditEvent::new(AuditAction::CsrfValidationFailed)
        .with_outcome(Outcome::Allowed)
        .with_status(403)
        .with_subject("alice@example.com")
        .with_client_ip("2001:db8::/48")
        .with_request("POST", "/api/notes/{id}", "/api/notes/42")
        .with_reason("cross_origin")
        .with_request_id("0190c1d2-aaaa-7bbb-8ccc-123456789abc")
        .with_user_agent("Mozilla/5.0\r\nX-Injected: 1\u{1b}[31m\u{0}")
        .with_metadata(serde_json::json!({
            "origin": "https://evil.example",
            "nested": { "list": [1, 2.5, null, true], "text": "line\nbreak \"quoted\" ünïcode ✓" },
        }))
}

#[tokio::test]
async fn every_field_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    let full = full_event();
    // Minimal: optional fields absent, metadata null, a non-UTC offset and odd nanoseconds.
    let mut minimal = AuditEvent::new(AuditAction::InternalError).with_outcome(Outcome::Error);
    minimal.timestamp = datetime!(2030-06-15 08:30:00.123456789 +05:30);
    sink.write_batch(&[full.clone(), minimal.clone()])
        .await
        .unwrap();

    let mut back = query(&db, &all(10)).unwrap();
    back.sort_by_key(|e| e.id);
    let mut expected = vec![full.clone(), minimal.clone()];
    expected.sort_by_key(|e| e.id);
    assert_eq!(back, expected);

    // The escaped user agent is stored as escaped text: no raw control characters at all.
    let ua = back
        .iter()
        .find(|e| e.id == full.id)
        .unwrap()
        .user_agent
        .clone()
        .unwrap();
    assert!(!ua.chars().any(char::is_control), "{ua:?}");
    assert!(
        ua.starts_with("Mozilla/5.0\\r\\nX-Injected: 1\\u{1b}"),
        "{ua:?}"
    );

    // The raw columns: seed names, JSON metadata, fixed-width UTC timestamps.
    let conn = Connection::open(&db).unwrap();
    let (user_id, metadata_valid, ts, created): (Option<String>, bool, String, String) = conn
        .query_row(
            "SELECT user_id, json_valid(metadata), timestamp, created_at FROM audit_logs WHERE id = ?1",
            [full.id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(user_id.as_deref(), Some("alice@example.com"));
    assert!(metadata_valid);
    assert_eq!(ts.len(), 30);
    assert!(ts.ends_with('Z'));
    assert_eq!(created.len(), 30);
    let (meta, ts): (Option<String>, String) = conn
        .query_row(
            "SELECT metadata, timestamp FROM audit_logs WHERE id = ?1",
            [minimal.id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(meta, None, "null metadata is stored as NULL");
    assert_eq!(ts, "2030-06-15T03:00:00.123456789Z");
}

/// Ten events a minute apart, actions alternating, ending at `end`.
fn timeline(end: OffsetDateTime) -> Vec<AuditEvent> {
    (0..10)
        .map(|i| {
            let action = if i % 2 == 0 {
                AuditAction::RateLimitExceeded
            } else {
                AuditAction::UnauthorizedAccess
            };
            let mut e = AuditEvent::new(action).with_request_id(&format!("req-{i}"));
            e.timestamp = end - Duration::minutes(9 - i);
            e
        })
        .collect()
}

fn request_ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.request_id.clone()).collect()
}

#[tokio::test]
async fn query_filters_by_action_since_and_limit_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    let end = datetime!(2025-05-01 12:00 UTC);
    let mut events = timeline(end);
    // Written out of order, and one with an offset: the order must come from the time.
    events.reverse();
    events.swap(2, 7);
    events[0].timestamp = events[0].timestamp.to_offset(time::macros::offset!(-07:00));
    sink.write_batch(&events).await.unwrap();

    let newest = query(&db, &all(100)).unwrap();
    assert_eq!(
        request_ids(&newest),
        (0..10)
            .rev()
            .map(|i| format!("req-{i}"))
            .collect::<Vec<_>>()
    );

    let limited = query(&db, &all(3)).unwrap();
    assert_eq!(request_ids(&limited), ["req-9", "req-8", "req-7"]);
    assert!(query(&db, &all(0)).unwrap().is_empty());

    let unauthorized = query(
        &db,
        &AuditQuery {
            action: Some(AuditAction::UnauthorizedAccess),
            ..all(100)
        },
    )
    .unwrap();
    assert_eq!(
        request_ids(&unauthorized),
        ["req-9", "req-7", "req-5", "req-3", "req-1"]
    );

    // `since` is inclusive, and may be given in any offset.
    let since = (end - Duration::minutes(3)).to_offset(time::macros::offset!(+09:00));
    let recent = query(
        &db,
        &AuditQuery {
            since: Some(since),
            ..all(100)
        },
    )
    .unwrap();
    assert_eq!(request_ids(&recent), ["req-9", "req-8", "req-7", "req-6"]);

    let combined = query(
        &db,
        &AuditQuery {
            action: Some(AuditAction::RateLimitExceeded),
            since: Some(end - Duration::minutes(5)),
            limit: 2,
            ..AuditQuery::default()
        },
    )
    .unwrap();
    assert_eq!(request_ids(&combined), ["req-8", "req-6"]);

    let none = query(
        &db,
        &AuditQuery {
            action: Some(AuditAction::StoreFailure),
            ..all(100)
        },
    )
    .unwrap();
    assert!(none.is_empty());
}

#[test]
fn schema_is_versioned_indexed_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    drop(SqliteAuditSink::open(&db).unwrap());
    // Reopening an up-to-date database is fine (migrations are not re-applied).
    drop(SqliteAuditSink::open(&db).unwrap());

    let conn = Connection::open(&db).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_logs' AND sql IS NOT NULL ORDER BY name")
        .unwrap();
    let indexes: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "idx_audit_logs_action",
            "idx_audit_logs_client_ip",
            "idx_audit_logs_timestamp",
            "idx_audit_logs_user_id"
        ]
    );
    // Newest-first by action is served by an index, not a sort.
    let plan: Vec<String> = conn
        .prepare("EXPLAIN QUERY PLAN SELECT id FROM audit_logs WHERE action = 'x' ORDER BY timestamp DESC LIMIT 5")
        .unwrap()
        .query_map([], |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("idx_audit_logs_action")),
        "{plan:?}"
    );
    assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
}

#[test]
fn a_newer_schema_is_refused_and_an_empty_database_reads_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    Connection::open(&empty).unwrap();
    assert_eq!(count(&empty).unwrap(), 0);
    assert!(query(&empty, &all(10)).unwrap().is_empty());

    let future = dir.path().join("future.db");
    let conn = Connection::open(&future).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteAuditSink::open(&future).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedSchema { found: 99, .. }),
        "{err}"
    );
    assert!(matches!(
        query(&future, &all(1)),
        Err(Error::UnsupportedSchema { found: 99, .. })
    ));

    assert!(matches!(
        count(dir.path().join("missing.db")),
        Err(Error::Sqlite(_))
    ));
}

#[test]
fn a_corrupt_row_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    drop(SqliteAuditSink::open(&db).unwrap());
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO audit_logs (id, action, timestamp, outcome, method, route, path, status, reason, request_id)
         VALUES ('not-a-uuid', 'martian_landing', '2025-01-01T00:00:00.000000000Z', 'denied', 'GET', '/', '/', 200, '', '')",
        [],
    )
    .unwrap();
    let err = query(&db, &all(10)).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { ref id, .. } if id == "not-a-uuid"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_batches_while_the_writer_is_active() {
    const BATCH: usize = 250;
    const BATCHES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (db, done) = (db.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let n = count(&db).expect("reading while the writer is active");
                let newest = query(&db, &all(5)).expect("querying while the writer is active");
                assert!(newest.len() <= 5);
                seen.push(n);
                if finished {
                    return seen;
                }
            }
        })
    };
    for b in 0..BATCHES {
        let batch: Vec<_> = (0..BATCH)
            .map(|i| {
                AuditEvent::new(AuditAction::SecurityEvent).with_request_id(&format!("{b}-{i}"))
            })
            .collect();
        sink.write_batch(&batch).await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();

    assert_eq!(*seen.last().unwrap(), (BATCH * BATCHES) as u64);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "counts never go back"
    );
    // A batch is one transaction: a reader never sees part of one.
    assert!(
        seen.iter().all(|n| n % BATCH as u64 == 0),
        "a reader saw a partial batch: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_through_the_writer_are_persisted_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let writer = AuditWriter::spawn(
        Arc::new(SqliteAuditSink::open(&db).unwrap()),
        AuditConfig {
            max_batch: 512,
            spill_path: dir.path().join("spill.jsonl"),
            // Ten thousand rows, one per event: identical ones must not fold here.
            fold_window: std::time::Duration::ZERO,
            ..AuditConfig::default()
        },
    );
    let mut ids = HashSet::new();
    for i in 0..10_000 {
        let e = AuditEvent::new(AuditAction::RateLimitExceeded)
            .with_status(429)
            .with_request_id(&i.to_string());
        ids.insert(e.id);
        writer.record(e).await;
    }
    writer.shutdown().await;

    let stats = writer.stats();
    assert_eq!((stats.recorded, stats.written), (10_000, 10_000));
    assert_eq!((stats.spilled, stats.lost, stats.sink_errors), (0, 0, 0));
    assert!(stats.batches >= 10_000 / 512);
    assert_eq!(count(&db).unwrap(), 10_000);
    let stored: HashSet<_> = query(&db, &all(20_000))
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(stored, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_are_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = Arc::new(SqliteAuditSink::open(&db).unwrap());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for b in 0..50 {
                    let batch: Vec<_> = (0..10)
                        .map(|i| {
                            AuditEvent::new(AuditAction::InvalidInput)
                                .with_request_id(&format!("{t}-{b}-{i}"))
                        })
                        .collect();
                    sink.write_batch(&batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(count(&db).unwrap(), 8 * 50 * 10);
}

#[tokio::test]
async fn replaying_a_spill_file_twice_does_not_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    let events: Vec<_> = (0..20)
        .map(|i| AuditEvent::new(AuditAction::UnauthorizedAccess).with_request_id(&i.to_string()))
        .collect();
    let lines = |evs: &[AuditEvent]| -> String {
        evs.iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect()
    };
    let spill = dir.path().join("spill.jsonl");
    std::fs::write(&spill, lines(&events)).unwrap();
    assert_eq!(replay_spill(&spill, &sink).await.unwrap().replayed, 20);
    // As after a crash mid-replay: the same events come again.
    std::fs::write(&spill, lines(&events[..10])).unwrap();
    assert_eq!(replay_spill(&spill, &sink).await.unwrap().replayed, 10);
    assert_eq!(count(&db).unwrap(), 20, "duplicate ids are ignored");
}

#[tokio::test]
async fn a_closed_wal_database_without_its_side_files_is_readable() {
    // After the last connection closes, SQLite checkpoints and deletes `-wal` and `-shm`;
    // a read-only open must still work then (the CLI reads a stopped demo's log). Reproduce
    // that state deterministically: checkpoint, then copy only the main file.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    let event = full_event();
    sink.write_batch(std::slice::from_ref(&event))
        .await
        .unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    assert!(!dir.path().join("copy.db-wal").exists());

    assert_eq!(query(&copy, &all(5)).unwrap(), vec![event]);
    assert_eq!(count(&copy).unwrap(), 1);
}

#[tokio::test]
async fn counts_are_stored_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    let single = AuditEvent::new(AuditAction::InvalidInput).with_status(405);
    let folded = AuditEvent::new(AuditAction::InvalidInput)
        .with_status(405)
        .with_count(99_999);
    sink.write_batch(&[single.clone(), folded.clone()])
        .await
        .unwrap();
    let back = query(&db, &all(10)).unwrap();
    let mut counts: Vec<u64> = back.iter().map(|e| e.count).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 99_999]);
    let raw: i64 = Connection::open(&db)
        .unwrap()
        .query_row("SELECT sum(count) FROM audit_logs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, 100_000);
}

#[test]
fn a_version_2_database_gains_count_and_its_rows_count_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    // A database as version 2 left it (the audit table without `count`), with one row.
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE audit_logs (id TEXT PRIMARY KEY NOT NULL, action TEXT NOT NULL,
                 user_id TEXT, metadata TEXT, timestamp TEXT NOT NULL,
                 created_at TEXT NOT NULL DEFAULT 'x', outcome TEXT NOT NULL, client_ip TEXT,
                 method TEXT NOT NULL, route TEXT NOT NULL, path TEXT NOT NULL,
                 status INTEGER NOT NULL, reason TEXT NOT NULL, request_id TEXT NOT NULL,
                 user_agent TEXT);
             CREATE TABLE rate_limits (key BLOB NOT NULL, algorithm INTEGER NOT NULL,
                 stamps BLOB, seen INTEGER NOT NULL DEFAULT 0, tat INTEGER,
                 expires_at INTEGER NOT NULL, PRIMARY KEY (key, algorithm));
             INSERT INTO audit_logs (id, action, timestamp, outcome, method, route, path, status,
                 reason, request_id)
             VALUES ('0190c1d2-aaaa-7bbb-8ccc-123456789abc', 'invalid_input',
                 '2026-01-01T00:00:00.000000000Z', 'denied', 'PUT', 'r', '/p', 405, 'm', 'q');
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    // Read-only readers do not migrate: the old rows read as count 1.
    assert_eq!(query(&db, &all(10)).unwrap()[0].count, 1);
    // The writer migrates once.
    drop(SqliteAuditSink::open(&db).unwrap());
    drop(SqliteAuditSink::open(&db).unwrap());
    let conn = Connection::open(&db).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(query(&db, &all(10)).unwrap()[0].count, 1);
}

#[tokio::test]
async fn line_separators_and_bidi_controls_are_stored_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    let e = AuditEvent::new(AuditAction::UnauthorizedAccess)
        .with_subject("alice\u{2028}2026-12-04 admin login ok")
        .with_reason("bad\u{202e}gnp.exe")
        .with_user_agent(&String::from_utf8_lossy(
            "Bücher-Client/1.0 \u{2069}".as_bytes(),
        ));
    sink.write_batch(&[e]).await.unwrap();
    // Read the raw columns, not through our reader.
    let conn = Connection::open(&db).unwrap();
    let (subject, reason, ua): (String, String, String) = conn
        .query_row(
            "SELECT user_id, reason, user_agent FROM audit_logs",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(subject, "alice\\u{2028}2026-12-04 admin login ok");
    assert_eq!(reason, "bad\\u{202e}gnp.exe");
    assert_eq!(
        ua, "Bücher-Client/1.0 \\u{2069}",
        "non-ASCII kept, bidi escaped"
    );
    for text in [&subject, &reason, &ua] {
        assert!(
            !text.chars().any(secure_routes::audit::must_escape),
            "{text:?}"
        );
    }
}

#[cfg(unix)]
#[test]
fn a_new_database_is_owner_only_and_an_existing_one_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    drop(SqliteAuditSink::open(&db).unwrap());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600, "created owner-only");
    // The operator opened it to a group: a restart leaves that alone.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    drop(SqliteAuditSink::open(&db).unwrap());
    assert_eq!(mode(&db), 0o640);
}
