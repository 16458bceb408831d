//! Folding identical refusals (issue 9, part 4): a flood becomes a few rows whose counts sum
//! to the number of `record` calls, nothing dropped; and spills never run on the recording
//! task.
//!
//! Fold windows are measured with an injected `FakeClock`; the writer task's tick runs on
//! tokio's paused clock where a test needs it. Every wait is bounded by a timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secure_routes::audit::{
    AuditAction, AuditConfig, AuditError, AuditEvent, AuditSink, AuditWriter, BoxFuture, Outcome,
};
use secure_routes::clock::FakeClock;
use tokio::sync::Notify;

/// A bound on waits that only a bug would reach.
const BOUND: Duration = Duration::from_secs(10);

/// Stores every row it is given.
#[derive(Default)]
struct RowSink {
    rows: Mutex<Vec<AuditEvent>>,
    stored: Notify,
}

impl RowSink {
    fn rows(&self) -> Vec<AuditEvent> {
        self.rows.lock().unwrap().clone()
    }
    fn counts(&self) -> Vec<u64> {
        self.rows().iter().map(|e| e.count).collect()
    }
    /// Waits (bounded) until the rows stored stand for at least `n` occurrences.
    async fn wait_for_occurrences(&self, n: u64) {
        tokio::time::timeout(BOUND, async {
            loop {
                let notified = self.stored.notified();
                if self.rows().iter().map(|e| e.count).sum::<u64>() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the sink never saw {n} occurrences: {:?}", self.counts()));
    }
}

impl AuditSink for RowSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        self.rows.lock().unwrap().extend_from_slice(batch);
        self.stored.notify_waiters();
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &'static str {
        "rows"
    }
}

/// A pipelined 405 from one anonymous client, as the layer records it.
fn refusal(i: usize) -> AuditEvent {
    AuditEvent::new(AuditAction::InvalidInput)
        .with_status(405)
        .with_client_ip("203.0.113.7")
        .with_request("PUT", "route:/api/strict", "/api/strict")
        .with_reason("method_not_allowed")
        .with_request_id(&format!("req-{i}"))
        .with_metadata(serde_json::json!({ "policy": "strict" }))
}

struct Setup {
    writer: AuditWriter,
    sink: Arc<RowSink>,
    clock: FakeClock,
    _dir: tempfile::TempDir,
}

fn setup(configure: impl FnOnce(AuditConfig) -> AuditConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(Duration::from_secs(1_700_000_000));
    let sink = Arc::new(RowSink::default());
    let config = configure(AuditConfig {
        spill_path: dir.path().join("spill.jsonl"),
        clock: Arc::new(clock.clone()),
        ..AuditConfig::default()
    });
    Setup {
        writer: AuditWriter::spawn(sink.clone(), config),
        sink,
        clock,
        _dir: dir,
    }
}

fn sum(rows: &[AuditEvent]) -> u64 {
    rows.iter().map(|e| e.count).sum()
}

#[tokio::test]
async fn a_thousand_identical_refusals_in_a_window_write_two_rows_whose_counts_sum_to_1000() {
    let s = setup(|c| c);
    for i in 0..1_000 {
        s.writer.record(refusal(i)).await;
        s.clock.advance(Duration::from_millis(5)); // 5 s in all: one window
    }
    // The first is written at once, before the window ends.
    s.sink.wait_for_occurrences(1).await;
    assert_eq!(s.sink.counts(), [1]);
    s.writer.shutdown().await;

    let rows = s.sink.rows();
    assert_eq!(
        s.sink.counts(),
        [1, 999],
        "the first, then one row for the rest"
    );
    assert_eq!(rows[0].request_id, "req-0");
    // The follow-up row is the first folded occurrence, saying which span it covers.
    assert_eq!(rows[1].request_id, "req-1");
    let folded = &rows[1].metadata["folded"];
    assert_eq!(rows[1].metadata["policy"], "strict", "metadata kept");
    let first = time::OffsetDateTime::parse(
        folded["first_seen"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let last = time::OffsetDateTime::parse(
        folded["last_seen"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(first <= last, "{folded}");
    assert_eq!(first, rows[1].timestamp);

    let stats = s.writer.stats();
    assert_eq!(stats.recorded, 1_000);
    assert_eq!(stats.folded, 998, "rows = recorded - folded");
    assert_eq!(stats.recorded - stats.folded, rows.len() as u64);
    assert_eq!(stats.written, 1_000, "written counts occurrences");
    assert_eq!(stats.recorded, stats.written + stats.spilled + stats.lost);
}

#[tokio::test]
async fn different_keys_do_not_merge() {
    let s = setup(|c| c);
    let variants: Vec<AuditEvent> = vec![
        refusal(0),
        refusal(0).with_client_ip("203.0.113.8"),
        refusal(0).with_subject("alice"),
        refusal(0).with_reason("other_reason"),
        refusal(0).with_request("PUT", "route:/api/other", "/api/other"),
        refusal(0).with_request("DELETE", "route:/api/strict", "/api/strict"),
        refusal(0).with_status(413),
        AuditEvent {
            action: AuditAction::RateLimitExceeded,
            ..refusal(0)
        },
        refusal(0).with_outcome(Outcome::Allowed),
    ];
    for _ in 0..3 {
        for v in &variants {
            s.writer.record(v.clone()).await;
        }
    }
    s.writer.shutdown().await;
    let rows = s.sink.rows();
    // Per key: the first row (count 1) and one folded row (count 2).
    assert_eq!(rows.len(), 2 * variants.len(), "{:?}", s.sink.counts());
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &rows {
        let key = format!(
            "{} {:?} {} {} {} {} {:?} {:?}",
            r.action, r.outcome, r.status, r.method, r.route, r.reason, r.client_ip, r.subject
        );
        per_key.entry(key).or_default().push(r.count);
    }
    assert_eq!(per_key.len(), variants.len());
    for counts in per_key.values() {
        assert_eq!(counts, &[1, 2]);
    }
    assert_eq!(sum(&rows), 3 * variants.len() as u64);
}

#[tokio::test]
async fn the_window_rolls_over_by_the_clock() {
    let s = setup(|c| c);
    for i in 0..5 {
        s.writer.record(refusal(i)).await;
    }
    s.clock.advance(Duration::from_secs(10)); // the window is over
    s.writer.record(refusal(5)).await;
    // Without shutdown: the count of the ended window and the new first row are written.
    s.sink.wait_for_occurrences(6).await;
    assert_eq!(s.sink.counts(), [1, 4, 1]);
    for i in 6..9 {
        s.writer.record(refusal(i)).await;
    }
    s.writer.shutdown().await;
    assert_eq!(s.sink.counts(), [1, 4, 1, 3]);
}

#[tokio::test(start_paused = true)]
async fn the_writer_tick_writes_a_count_once_its_window_ends() {
    let s = setup(|c| c);
    for i in 0..3 {
        s.writer.record(refusal(i)).await;
    }
    s.sink.wait_for_occurrences(1).await;
    s.clock.advance(Duration::from_secs(10));
    // No further event of that key and no shutdown: the writer's own tick finds the ended
    // window (tokio's paused clock moves the tick along).
    s.sink.wait_for_occurrences(3).await;
    assert_eq!(s.sink.counts(), [1, 2]);
    s.writer.shutdown().await;
    assert_eq!(s.sink.counts(), [1, 2]);
}

#[tokio::test]
async fn shutdown_and_flush_write_pending_counts() {
    let s = setup(|c| c);
    for i in 0..3 {
        s.writer.record(refusal(i)).await;
    }
    s.writer.flush_folds().await;
    s.sink.wait_for_occurrences(3).await;
    assert_eq!(s.sink.counts(), [1, 2]);
    for i in 3..7 {
        s.writer.record(refusal(i)).await;
    }
    s.writer.shutdown().await;
    assert_eq!(s.sink.counts(), [1, 2, 1, 3]);
    // After shutdown nothing folds any more: each event is spilled on its own.
    s.writer.record(refusal(7)).await;
    s.writer.record(refusal(8)).await;
    s.writer.shutdown().await;
    let stats = s.writer.stats();
    assert_eq!((stats.recorded, stats.written, stats.spilled), (9, 7, 2));
}

#[tokio::test]
async fn a_full_table_evicts_by_writing_never_by_dropping() {
    // 16 keys at most (one per shard): 100 clients, three refusals each.
    let s = setup(|c| AuditConfig {
        fold_max_keys: 16,
        ..c
    });
    for client in 0..100 {
        for _ in 0..3 {
            let e = refusal(client).with_client_ip(format!("198.51.100.{client}"));
            s.writer.record(e).await;
        }
    }
    // Before shutdown, evicted windows have been written with their counts: at most the 16
    // keys still in the table hold a pending count (of 2 each).
    s.sink.wait_for_occurrences(300 - 16 * 2).await;
    s.writer.shutdown().await;
    let rows = s.sink.rows();
    assert_eq!(sum(&rows), 300);
    assert_eq!(rows.len(), 200, "{:?}", s.sink.counts());
    let stats = s.writer.stats();
    assert_eq!(
        (stats.recorded, stats.folded, stats.written),
        (300, 100, 300)
    );
}

#[tokio::test]
async fn allowed_events_fold_and_errors_never_do() {
    let s = setup(|c| c);
    let allowed = refusal(0)
        .with_outcome(Outcome::Allowed)
        .with_reason("store_failure");
    let error = AuditEvent {
        action: AuditAction::InternalError,
        ..refusal(0).with_outcome(Outcome::Error).with_status(500)
    };
    for _ in 0..4 {
        s.writer.record(allowed.clone()).await;
        s.writer.record(error.clone()).await;
    }
    s.writer.shutdown().await;
    let rows = s.sink.rows();
    let of = |o: Outcome| -> Vec<u64> {
        rows.iter()
            .filter(|e| e.outcome == o)
            .map(|e| e.count)
            .collect()
    };
    assert_eq!(of(Outcome::Allowed), [1, 3], "fail-open floods fold too");
    assert_eq!(
        of(Outcome::Error),
        [1, 1, 1, 1],
        "each error keeps its own row"
    );
}

#[tokio::test]
async fn a_zero_window_turns_folding_off() {
    let s = setup(|c| AuditConfig {
        fold_window: Duration::ZERO,
        ..c
    });
    for i in 0..5 {
        s.writer.record(refusal(i)).await;
    }
    s.writer.shutdown().await;
    assert_eq!(s.sink.counts(), [1; 5]);
    assert_eq!(s.writer.stats().folded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_floods_keep_exact_counts() {
    let s = setup(|c| c);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let writer = s.writer.clone();
            tokio::spawn(async move {
                for i in 0..1_000 {
                    // Two keys, so shards and keys are both contended.
                    let e = refusal(t * 1_000 + i).with_client_ip(format!("192.0.2.{}", t % 2));
                    writer.record(e).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    s.writer.shutdown().await;
    let rows = s.sink.rows();
    assert_eq!(sum(&rows), 8_000);
    assert_eq!(rows.len(), 4, "two rows per key: {:?}", s.sink.counts());
    let stats = s.writer.stats();
    assert_eq!(stats.recorded - stats.folded, 4);
}

/// A sink that never answers, so the queue fills up. Says when it was first called.
#[derive(Default)]
struct StuckSink {
    called: AtomicBool,
    first_call: Notify,
}

impl AuditSink for StuckSink {
    fn write_batch<'a>(&'a self, _: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        self.called.store(true, Ordering::SeqCst);
        self.first_call.notify_waiters();
        Box::pin(std::future::pending())
    }
    fn name(&self) -> &'static str {
        "stuck"
    }
}

/// The spill path is a FIFO: opening it for writing blocks until a reader opens it. A spill
/// done on the recording task would block that task's runtime thread in `open` until the
/// reader comes, so `record` would not return; done on the blocking pool, `record` returns
/// and the event reaches the file once the test opens the reader.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spill_never_blocks_the_recording_task() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("spill.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let sink = Arc::new(StuckSink::default());
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            queue_capacity: 1,
            max_batch: 1,
            block_timeout: Duration::from_millis(1),
            fold_window: Duration::ZERO,
            replay_interval: Duration::ZERO, // never read the FIFO back
            spill_path: fifo.clone(),
            ..AuditConfig::default()
        },
    );
    let called = sink.first_call.notified();
    writer.record(refusal(1)).await; // taken by the task into the stuck sink
    if !sink.called.load(Ordering::SeqCst) {
        tokio::time::timeout(BOUND, called)
            .await
            .expect("sink called");
    }
    writer.record(refusal(2)).await; // fills the queue

    // A spill on a runtime thread blocks it in `open`, and can stall the runtime's timers
    // with it (seen here: the timeout below never fired). So a watchdog outside the runtime
    // frees a stuck `open` after BOUND by opening the reader itself, and says so.
    let (stand_down, watch) = std::sync::mpsc::channel::<()>();
    let rescued = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (fifo, rescued) = (fifo.clone(), rescued.clone());
        std::thread::spawn(move || {
            if watch.recv_timeout(BOUND).is_err() {
                rescued.store(true, Ordering::SeqCst);
                let _ = std::fs::read_to_string(fifo);
            }
        })
    };
    let recording = {
        let writer = writer.clone();
        tokio::spawn(async move { writer.record(refusal(3)).await }) // full: spills
    };
    let returned = tokio::time::timeout(BOUND, recording).await;
    let _ = stand_down.send(());
    watchdog.join().unwrap();
    assert!(
        !rescued.load(Ordering::SeqCst),
        "record blocked until the watchdog opened the FIFO: the spill ran on its task's thread"
    );

    // Open the reader either way, on a thread of its own (not the runtime's pool, which a
    // failing test's shutdown would cancel): it also frees a thread stuck in `open`.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(std::fs::read_to_string(fifo)));
    }
    assert!(
        returned.is_ok(),
        "record waited on a spill that could not finish: the spill ran on its task"
    );
    let text = tokio::task::spawn_blocking(move || rx.recv_timeout(BOUND))
        .await
        .unwrap()
        .expect("the spill reached the FIFO")
        .unwrap();
    let spilled: AuditEvent = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(spilled.request_id, "req-3");
    tokio::time::timeout(BOUND, async {
        while writer.stats().spilled < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the spill is counted");
}
