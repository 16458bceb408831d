//! `SqliteStore` beyond the conformance suite: restarts, sharing a file with the audit sink,
//! errors at open and at check time, abandoned checks, batching across keys, sweeping.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::Connection;
use secure_routes::audit::{AuditAction, AuditEvent, AuditSink};
use secure_routes::clock::{Clock, FakeClock};
use secure_routes::rate_limit::gcra::{self, GcraState};
use secure_routes::rate_limit::sliding_window::{self, SlidingLog};
use secure_routes::rate_limit::{Algorithm, Quota, RateLimitKey, StoreError};
use secure_routes_sqlite::{Error, SCHEMA_VERSION, SqliteAuditSink, SqliteStore, count};

const START: Duration = Duration::from_secs(1_700_000_000);

fn key(n: u8) -> RateLimitKey {
    RateLimitKey::from_bytes([n; 16])
}

fn open(path: &std::path::Path, clock: &FakeClock) -> SqliteStore {
    SqliteStore::open_with_clock(path, Arc::new(clock.clone())).unwrap()
}

fn user_version(path: &std::path::Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn limits_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("limits.db");
    let clock = FakeClock::new(START);
    let sliding = Quota::per_minute(3);
    let bucket = Quota::per_minute(2).with_algorithm(Algorithm::Gcra);

    let store = open(&db, &clock);
    for _ in 0..3 {
        assert!(store.check(&key(1), sliding, 1).await.unwrap().allowed);
    }
    for _ in 0..2 {
        assert!(store.check(&key(1), bucket, 1).await.unwrap().allowed);
    }
    clock.advance(Duration::from_secs(5));
    let refused_sliding = store.check(&key(1), sliding, 1).await.unwrap();
    let refused_bucket = store.check(&key(1), bucket, 1).await.unwrap();
    assert!(!refused_sliding.allowed && !refused_bucket.allowed);
    drop(store);

    // A new process: same file, same time. Both keys are still exhausted, with the same waits.
    let store = open(&db, &clock);
    assert_eq!(store.len().await.unwrap(), 2);
    assert_eq!(
        store.check(&key(1), sliding, 1).await.unwrap(),
        refused_sliding
    );
    assert_eq!(
        store.check(&key(1), bucket, 1).await.unwrap(),
        refused_bucket
    );
    // And they recover exactly when the algorithms say.
    clock.advance(refused_bucket.retry_after.unwrap());
    assert!(store.check(&key(1), bucket, 1).await.unwrap().allowed);
    clock.set(START + Duration::from_secs(60));
    assert!(store.check(&key(1), sliding, 3).await.unwrap().allowed);
}

/// Restarting before every step changes no decision, even with the clock stepping back: the
/// whole state (the sliding log's own time included) is on disk.
#[tokio::test]
async fn every_decision_after_a_restart_is_the_algorithms() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("limits.db");
    let clock = FakeClock::new(START);
    // (clock change in ms, cost), against 2 per second.
    let steps: &[(i64, u32)] = &[
        (0, 1),
        (900, 0),  // no stamp, but the sliding log's time moves to +900
        (-800, 1), // admitted at the log's time (+900), not the clock's (+100)
        (950, 1),
        (100, 1),
        (-1_000, 1),
        (2_000, 2),
        (10, 1),
    ];
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        clock.set(START);
        let quota = Quota::new(2, Duration::from_secs(1)).with_algorithm(algorithm);
        let mut log = SlidingLog::default();
        let mut tat = GcraState::default();
        for (i, &(change, cost)) in steps.iter().enumerate() {
            let now = clock.now();
            let delta = Duration::from_millis(change.unsigned_abs());
            clock.set(if change < 0 { now - delta } else { now + delta });
            let want = match algorithm {
                Algorithm::SlidingWindow => {
                    sliding_window::acquire(&mut log, clock.now(), quota, cost)
                }
                Algorithm::Gcra => gcra::acquire(&mut tat, clock.now(), quota, cost),
            };
            let store = open(&db, &clock);
            let got = store.check(&key(2), quota, cost).await.unwrap();
            assert_eq!(got, want, "{algorithm:?} step {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_sink_and_the_store_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let clock = FakeClock::new(START);
    let sink = SqliteAuditSink::open(&db).unwrap();
    let store = open(&db, &clock);
    assert_eq!(user_version(&db), SCHEMA_VERSION);

    // Both writers at once, on their own threads and connections.
    let writes = {
        let sink = sink.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                let batch: Vec<_> = (0..50)
                    .map(|_| AuditEvent::new(AuditAction::RateLimitExceeded).with_status(429))
                    .collect();
                sink.write_batch(&batch).await.unwrap();
            }
        })
    };
    let mut admitted = 0;
    for i in 0..200u8 {
        if store
            .check(&key(i % 4), Quota::per_hour(10), 1)
            .await
            .unwrap()
            .allowed
        {
            admitted += 1;
        }
    }
    writes.await.unwrap();
    assert_eq!(admitted, 40);
    assert_eq!(count(&db).unwrap(), 1_000);
    assert_eq!(store.len().await.unwrap(), 4);
    drop((sink, store));

    // Reopened in the other order: both tables intact.
    let store = open(&db, &clock);
    let sink = SqliteAuditSink::open(&db).unwrap();
    assert!(
        !store
            .check(&key(0), Quota::per_hour(10), 1)
            .await
            .unwrap()
            .allowed
    );
    sink.write_batch(&[AuditEvent::new(AuditAction::InternalError)])
        .await
        .unwrap();
    assert_eq!(count(&db).unwrap(), 1_001);
}

#[tokio::test]
async fn an_audit_only_database_gains_the_rate_limit_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let sink = SqliteAuditSink::open(&db).unwrap();
    sink.write_batch(&[AuditEvent::new(AuditAction::UnauthorizedAccess)])
        .await
        .unwrap();
    drop(sink);
    // Make it what a version-1 build left behind: the audit log only.
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(
        "DROP TABLE rate_limits; DROP TABLE bans; DROP INDEX idx_audit_logs_client_ip; \
         ALTER TABLE audit_logs DROP COLUMN count; ALTER TABLE audit_logs DROP COLUMN fingerprint; \
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);

    let clock = FakeClock::new(START);
    let store = open(&db, &clock);
    assert_eq!(user_version(&db), SCHEMA_VERSION);
    assert!(
        store
            .check(&key(1), Quota::per_minute(1), 1)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(count(&db).unwrap(), 1, "the audit log is untouched");
}

#[test]
fn a_bad_path_fails_at_open_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("no/such/dir/limits.db");
    let err = SqliteStore::open(&missing).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("no/such/dir/limits.db"), "{err}");

    // A directory where the file should be.
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");

    // A file that is not a database.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&garbage).unwrap_err();
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("not a database"), "{err}");
    assert!(err.to_string().contains("garbage.db"), "{err}");

    // A database from a newer build.
    let future = dir.path().join("future.db");
    Connection::open(&future)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let err = SqliteStore::open(&future).unwrap_err();
    assert!(matches!(err, Error::UnsupportedSchema { .. }), "{err:?}");
}

#[tokio::test]
async fn a_locked_database_is_a_store_error_and_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("limits.db");
    let clock = FakeClock::new(START);
    let store = open(&db, &clock);

    // Another process holds the write lock (an IMMEDIATE transaction) and does not let go.
    let other = Connection::open(&db).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store
        .check(&key(1), Quota::per_minute(1), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(store.is_empty().await.is_err());

    other.execute_batch("ROLLBACK").unwrap();
    // Nothing was counted by the failed check.
    let d = store.check(&key(1), Quota::per_minute(1), 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(store.len().await.unwrap(), 1);
}

/// A clock that panics once armed, to kill the writer thread.
#[derive(Debug, Default)]
struct PanicClock {
    armed: AtomicBool,
}

impl Clock for PanicClock {
    fn now(&self) -> Duration {
        assert!(!self.armed.load(Ordering::SeqCst), "the clock broke");
        START
    }
}

#[tokio::test]
async fn a_stopped_writer_thread_is_a_store_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(PanicClock::default());
    let store = SqliteStore::open_with_clock(dir.path().join("l.db"), clock.clone()).unwrap();
    assert!(
        store
            .check(&key(1), Quota::per_minute(5), 1)
            .await
            .unwrap()
            .allowed
    );

    clock.armed.store(true, Ordering::SeqCst);
    let err = store
        .check(&key(1), Quota::per_minute(5), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("stopped"), "{err}");
    // Every later call fails too (at once, or as the dying thread drops its queue).
    let err = store
        .check(&key(1), Quota::per_minute(5), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("stopped"), "{err}");
    assert!(matches!(
        store.sweep().await,
        Err(StoreError::Unavailable(_))
    ));
}

/// A fake clock whose next reading waits for the test's go-ahead: it holds the writer thread
/// inside a batch.
#[derive(Debug)]
struct GateClock {
    time: FakeClock,
    gate: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            std::sync::mpsc::Receiver<()>,
        )>,
    >,
}

impl Clock for GateClock {
    fn now(&self) -> Duration {
        let gate = self.gate.lock().unwrap().take();
        if let Some((entered, release)) = gate {
            let _ = entered.send(());
            let _ = release.recv();
        }
        self.time.now()
    }
}

#[tokio::test]
async fn a_check_abandoned_before_it_runs_uses_no_quota() {
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let clock = Arc::new(GateClock {
        time: FakeClock::new(START),
        gate: Mutex::new(Some((entered_tx, release_rx))),
    });
    let store = SqliteStore::open_with_clock(dir.path().join("l.db"), clock).unwrap();
    let q = Quota::per_minute(2);

    // A is running: the thread is inside its transaction, reading the clock.
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.check(&key(1), q, 1).await }
    });
    entered.await.unwrap();
    // B is queued, then its caller gives up (as the core does on its store timeout).
    {
        let k = key(1);
        let mut abandoned = Box::pin(store.check(&k, q, 1));
        let poll = abandoned
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(poll, Poll::Pending));
    }
    release.send(()).unwrap();
    assert!(first.await.unwrap().unwrap().allowed);

    // Only A counted: C gets the second unit.
    let third = store.check(&key(1), q, 1).await.unwrap();
    assert!(third.allowed);
    assert_eq!(third.remaining, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_on_many_keys_each_admit_exactly_their_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(&dir.path().join("l.db"), &clock);
    let quotas = [
        Quota::per_hour(20),
        Quota::per_hour(20).with_algorithm(Algorithm::Gcra),
    ];
    let tasks: Vec<_> = (0..16u8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut admitted = [[0u32; 8]; 2];
                for i in 0..80u8 {
                    let k = (t + i) % 8;
                    let a = usize::from(i % 2);
                    if store.check(&key(k), quotas[a], 1).await.unwrap().allowed {
                        admitted[a][usize::from(k)] += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = [[0u32; 8]; 2];
    for task in tasks {
        let admitted = task.await.unwrap();
        for a in 0..2 {
            for k in 0..8 {
                total[a][k] += admitted[a][k];
            }
        }
    }
    // 16 tasks x 40 checks per algorithm over 8 keys: 80 per key, 20 admitted.
    assert_eq!(total, [[20; 8]; 2]);
    assert_eq!(store.len().await.unwrap(), 16);
}

#[tokio::test]
async fn a_corrupt_row_fails_only_its_own_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let clock = FakeClock::new(START);
    let store = open(&db, &clock);
    let q = Quota::per_minute(5);
    store.check(&key(1), q, 1).await.unwrap();
    store.check(&key(2), q, 1).await.unwrap();
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE rate_limits SET stamps = x'010203' WHERE key = ?1",
            [&key(1).as_bytes()[..]],
        )
        .unwrap();

    let err = store.check(&key(1), q, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Protocol(_)), "{err:?}");
    assert!(err.to_string().contains("corrupt"), "{err}");
    let d = store.check(&key(2), q, 1).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 3);
}

#[tokio::test]
async fn expired_rows_are_swept_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(&dir.path().join("l.db"), &clock);
    // Each key is used once and expires a second later; the clock moves 2 s per check.
    for i in 0..3_000u32 {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&i.to_le_bytes());
        assert!(
            store
                .check(&RateLimitKey::from_bytes(k), Quota::per_second(1), 1)
                .await
                .unwrap()
                .allowed
        );
        clock.advance(Duration::from_secs(2));
    }
    // The thread swept after checks 1 024 and 2 048 (a sweep may run just before or after
    // the clock moves past the newest row), so only the rows since then, give or take one,
    // are left: not 3 000.
    let held = store.len().await.unwrap();
    assert!((952..=953).contains(&held), "{held} rows held");
    // Everything has expired by now: an explicit sweep takes the rest.
    assert_eq!(store.sweep().await.unwrap(), held);
    assert!(store.is_empty().await.unwrap());
}

#[tokio::test]
async fn refusals_and_zero_costs_of_unknown_keys_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(START);
    let store = open(&dir.path().join("l.db"), &clock);
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let q = Quota::per_minute(2).with_algorithm(algorithm);
        assert!(!store.check(&key(9), q, 3).await.unwrap().allowed);
        assert!(store.check(&key(9), q, 0).await.unwrap().allowed);
    }
    assert!(store.is_empty().await.unwrap());
}
