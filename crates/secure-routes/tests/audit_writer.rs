//! The batching audit writer: batching, prompt flushes, retry with backoff, spill on failure
//! or overflow, replay, shutdown semantics, and the built-in sinks.
//!
//! Time is tokio's paused clock where waits are involved (`start_paused`): backoff and block
//! timeouts advance virtually, so nothing here sleeps or times itself. Every wait for the
//! writer to get somewhere is bounded ([`bounded`], [`until`]): a writer that never gets there
//! fails its test with what it was waiting for, instead of hanging the run.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secure_routes::audit::sinks::{JsonlSink, TracingSink};
use secure_routes::audit::{
    AuditAction, AuditConfig, AuditError, AuditEvent, AuditSink, AuditWriter, BoxFuture, Outcome,
    ReplayError, replay_spill,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// Upper bound on any wait for the writer. Under a paused clock this is virtual time, which
/// tokio moves on only when every task is idle: a stuck wait fails at once, a healthy one never
/// comes near it (the longest, a few replay intervals, is about 15 s). On the current-thread
/// runtime these tests use, tokio does not move a paused clock while a `spawn_blocking` task
/// (the writer's file I/O) runs, so slow disk I/O cannot trip it.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

/// How often [`until`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT_LIMIT`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("gave up after {WAIT_LIMIT:?} waiting for {what}"))
}

/// Waits until `done()` holds, looking every [`POLL`], failing the test after [`WAIT_LIMIT`].
/// (A loop of `yield_now` would not do: it keeps the runtime busy, so a paused clock never
/// reaches the limit and a writer that never gets there hangs the test.)
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    bounded(what, async {
        while !done() {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
}

/// What a test sink should do on each call.
#[derive(Default)]
struct Behaviour {
    /// Fail this many calls first.
    fail_first: u32,
    /// Fail every call (after `ok_calls` successes).
    always_fail_after: Option<u32>,
    /// Panic instead of returning an error.
    panic: bool,
    /// Never answer.
    hang: bool,
    /// Wait for a permit before storing (a slow sink).
    gate: Option<Arc<Semaphore>>,
    /// Fail every call while this is set (an outage the test ends).
    down: Option<Arc<AtomicBool>>,
}

/// An in-memory sink that records what it stored and when it was called.
#[derive(Default)]
struct MemorySink {
    behaviour: Behaviour,
    calls: AtomicU32,
    stored: Mutex<Vec<AuditEvent>>,
    batch_sizes: Mutex<Vec<usize>>,
    call_times: Mutex<Vec<Instant>>,
    stored_notify: Notify,
}

impl MemorySink {
    fn new(behaviour: Behaviour) -> Arc<Self> {
        Arc::new(Self {
            behaviour,
            ..Self::default()
        })
    }
    fn stored(&self) -> Vec<AuditEvent> {
        self.stored.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.stored.lock().unwrap().len()
    }
    /// Waits (bounded) until the sink has stored at least `n` events.
    async fn wait_for(&self, n: usize) {
        bounded(&format!("{n} stored events"), async {
            loop {
                let notified = self.stored_notify.notified();
                if self.count() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

impl AuditSink for MemorySink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.call_times.lock().unwrap().push(Instant::now());
            let b = &self.behaviour;
            if b.hang {
                std::future::pending::<()>().await;
            }
            if let Some(gate) = &b.gate {
                gate.acquire().await.unwrap().forget();
            }
            let fail = call <= b.fail_first
                || b.always_fail_after.is_some_and(|ok| call > ok)
                || b.down.as_ref().is_some_and(|d| d.load(Ordering::SeqCst));
            if fail {
                if b.panic {
                    panic!("sink exploded");
                }
                return Err(AuditError(format!("call {call} refused")));
            }
            self.stored.lock().unwrap().extend_from_slice(batch);
            self.batch_sizes.lock().unwrap().push(batch.len());
            self.stored_notify.notify_waiters();
            Ok(())
        })
    }
    fn name(&self) -> &'static str {
        "memory"
    }
}

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(AuditAction::RateLimitExceeded)
        .with_status(429)
        .with_request("GET", "/api/items", &format!("/api/items/{i}"))
        .with_reason("rate_limited")
        .with_request_id(&format!("req-{i}"))
        .with_metadata(serde_json::json!({ "i": i }))
}

fn config(dir: &Path) -> AuditConfig {
    AuditConfig {
        spill_path: dir.join("spill.jsonl"),
        // These tests count rows of identical events; folding is tested in audit_fold.rs.
        fold_window: Duration::ZERO,
        ..AuditConfig::default()
    }
}

fn read_spill(path: &Path) -> Vec<AuditEvent> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).expect("spill line parses"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn batches_and_flushes_everything_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            max_batch: 16,
            ..config(dir.path())
        },
    );
    let events: Vec<_> = (0..1000).map(event).collect();
    for e in &events {
        writer.record(e.clone()).await;
    }
    writer.shutdown().await;

    assert_eq!(sink.stored(), events, "every event, in order");
    let sizes = sink.batch_sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|&n| (1..=16).contains(&n)), "{sizes:?}");
    assert!(sizes.len() >= 1000 / 16);
    let stats = writer.stats();
    assert_eq!(stats.recorded, 1000);
    assert_eq!(stats.written, 1000);
    assert_eq!(stats.batches, sizes.len() as u64);
    assert_eq!((stats.spilled, stats.lost, stats.sink_errors), (0, 0, 0));
    assert_eq!(stats.queue_depth, 0);
    assert!(!dir.path().join("spill.jsonl").exists());
}

#[tokio::test(start_paused = true)]
async fn an_idle_writer_flushes_a_single_event_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(sink.clone(), config(dir.path()));
    let start = Instant::now();
    writer.record(event(1)).await;
    sink.wait_for(1).await;
    // The clock is paused and only moves when every task waits on a timer: had the writer
    // waited for a batch to fill or a flush tick, virtual time would have moved.
    assert_eq!(Instant::now(), start);
    assert_eq!(writer.stats().written, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_sink_is_retried_with_backoff_then_spilled_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let failing = MemorySink::new(Behaviour {
        always_fail_after: Some(0),
        ..Behaviour::default()
    });
    let writer = AuditWriter::spawn(
        failing.clone(),
        AuditConfig {
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(10),
            ..config(dir.path())
        },
    );
    let events: Vec<_> = (0..5).map(event).collect();
    for e in &events {
        writer.record(e.clone()).await;
    }
    writer.shutdown().await;

    let stats = writer.stats();
    assert_eq!(stats.written, 0);
    assert_eq!(stats.spilled, 5, "{stats:?}");
    assert_eq!(stats.lost, 0);
    // Each batch: 3 attempts, 2 retries.
    assert_eq!(
        stats.sink_errors,
        u64::from(failing.calls.load(Ordering::SeqCst))
    );
    assert_eq!(stats.sink_errors % 3, 0);
    assert_eq!(stats.retries, stats.sink_errors / 3 * 2);

    // Exponential backoff between the attempts of the first batch: 100 ms, then 200 ms.
    let times = failing.call_times.lock().unwrap().clone();
    assert_eq!(times[1] - times[0], Duration::from_millis(100));
    assert_eq!(times[2] - times[1], Duration::from_millis(200));

    // The spill file holds exactly the events, and they parse back unchanged.
    let spill = dir.path().join("spill.jsonl");
    assert_eq!(read_spill(&spill), events);

    // Replay into a healthy sink: everything arrives and the file is gone.
    let healthy = MemorySink::new(Behaviour::default());
    let report = replay_spill(&spill, healthy.as_ref()).await.unwrap();
    assert_eq!((report.replayed, report.rejected), (5, 0));
    assert_eq!(healthy.stored(), events);
    assert!(!spill.exists());
    // A second replay finds nothing.
    assert_eq!(
        replay_spill(&spill, healthy.as_ref())
            .await
            .unwrap()
            .replayed,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_flaky_sink_succeeds_on_retry_without_spilling() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour {
        fail_first: 2,
        ..Behaviour::default()
    });
    let writer = AuditWriter::spawn(sink.clone(), config(dir.path()));
    writer.record(event(7)).await;
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!((stats.written, stats.spilled), (1, 0));
    assert_eq!((stats.sink_errors, stats.retries), (2, 2));
    let stored = sink.stored();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].request_id, "req-7");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_sink_counts_as_failed_and_spills() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour {
        always_fail_after: Some(0),
        panic: true,
        ..Behaviour::default()
    });
    let writer = AuditWriter::spawn(
        sink,
        AuditConfig {
            max_attempts: 2,
            ..config(dir.path())
        },
    );
    writer.record(event(1)).await;
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!((stats.sink_errors, stats.spilled, stats.written), (2, 1, 0));
    assert_eq!(read_spill(&dir.path().join("spill.jsonl")).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_sink_times_out_and_spills() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour {
        hang: true,
        ..Behaviour::default()
    });
    let writer = AuditWriter::spawn(
        sink,
        AuditConfig {
            max_attempts: 2,
            sink_timeout: Duration::from_secs(5),
            ..config(dir.path())
        },
    );
    let start = Instant::now();
    writer.record(event(1)).await;
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!((stats.sink_errors, stats.spilled), (2, 1));
    // Two timeouts plus one 50 ms backoff, in virtual time.
    assert_eq!(Instant::now() - start, Duration::from_millis(10_050));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_blocks_for_the_timeout_then_spills_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let sink = MemorySink::new(Behaviour {
        gate: Some(gate.clone()),
        ..Behaviour::default()
    });
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            queue_capacity: 1,
            max_batch: 1,
            block_timeout: Duration::from_millis(40),
            ..config(dir.path())
        },
    );
    writer.record(event(1)).await; // queued
    writer.record(event(2)).await; // waits until the task takes event 1 into the stuck sink
    assert_eq!(writer.stats().queue_depth, 1);
    let start = Instant::now();
    writer.record(event(3)).await; // queue full, sink stuck: waits 40 ms, then spills
    assert_eq!(Instant::now() - start, Duration::from_millis(40));

    let stats = writer.stats();
    assert_eq!((stats.recorded, stats.spilled), (3, 1));
    assert_eq!(stats.blocked, 2);
    let spilled = read_spill(&dir.path().join("spill.jsonl"));
    assert_eq!(spilled.len(), 1);
    assert_eq!(spilled[0].request_id, "req-3");

    gate.add_permits(10);
    writer.shutdown().await;
    let stats = writer.stats();
    assert_eq!((stats.written, stats.spilled, stats.lost), (2, 1, 0));
    assert_eq!(stats.recorded, stats.written + stats.spilled);
}

#[tokio::test]
async fn events_recorded_after_shutdown_are_spilled_and_shutdown_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(sink.clone(), config(dir.path()));
    writer.record(event(1)).await;
    let clone = writer.clone();
    tokio::join!(writer.shutdown(), clone.shutdown());
    writer.shutdown().await;

    writer.record(event(2)).await;
    clone.record(event(3)).await;
    let stats = writer.stats();
    assert_eq!((stats.recorded, stats.written, stats.spilled), (3, 1, 2));
    let spilled = read_spill(writer.spill_path());
    let ids: Vec<_> = spilled.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["req-2", "req-3"]);
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn dropping_every_handle_still_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(sink.clone(), config(dir.path()));
    for i in 0..100 {
        writer.record(event(i)).await;
    }
    drop(writer);
    sink.wait_for(100).await;
    assert_eq!(sink.count(), 100);
}

/// Fails the `n`th call (1-based), accepts the others.
struct FailNth {
    n: u32,
    calls: AtomicU32,
    inner: MemorySink,
}

impl AuditSink for FailNth {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.n {
            return Box::pin(async { Err(AuditError("down".into())) });
        }
        self.inner.write_batch(batch)
    }
    fn name(&self) -> &'static str {
        "fail-nth"
    }
}

#[tokio::test]
async fn an_interrupted_replay_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let events: Vec<_> = (0..1200).map(event).collect();
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
        if i == 10 {
            text.push_str("{\"torn\": tr\n"); // a torn line from a crash
        }
    }
    std::fs::write(&spill, text).unwrap();

    // Batches of 512: the second batch fails.
    let sink = FailNth {
        n: 2,
        calls: AtomicU32::new(0),
        inner: MemorySink::default(),
    };
    let err = replay_spill(&spill, &sink).await.unwrap_err();
    assert!(matches!(err, ReplayError::Sink(_)), "{err}");
    assert_eq!(sink.inner.count(), 512);

    // Meanwhile the writer spills more to a fresh file.
    let later = event(5000);
    std::fs::write(&spill, serde_json::to_string(&later).unwrap() + "\n").unwrap();

    let report = replay_spill(&spill, &sink).await.unwrap();
    assert_eq!(report.replayed, 1200 - 512 + 1);
    let mut expected = events.clone();
    expected.push(later);
    assert_eq!(sink.inner.stored(), expected, "each event exactly once");
    assert!(!spill.exists());
    assert!(!dir.path().join("spill.jsonl.replaying").exists());
    // The torn line is kept aside, not dropped.
    let rejected = std::fs::read_to_string(dir.path().join("spill.jsonl.rejected")).unwrap();
    assert_eq!(rejected, "{\"torn\": tr\n");
}

#[tokio::test(start_paused = true)]
async fn a_running_writer_can_replay_its_own_spill_file() {
    let dir = tempfile::tempdir().unwrap();
    let down = MemorySink::new(Behaviour {
        always_fail_after: Some(0),
        ..Behaviour::default()
    });
    let writer = AuditWriter::spawn(
        down,
        AuditConfig {
            max_attempts: 1,
            ..config(dir.path())
        },
    );
    writer.record(event(1)).await;
    writer.record(event(2)).await;
    // Wait until both are spilled (the failing sink answers at once).
    until("2 spilled events", || writer.stats().spilled >= 2).await;
    let recovered = MemorySink::new(Behaviour::default());
    let report = writer.replay_spill(recovered.as_ref()).await.unwrap();
    assert_eq!(report.replayed, 2);
    assert!(!writer.spill_path().exists());
    // Later spills start a fresh file.
    writer.record(event(3)).await;
    writer.shutdown().await;
    let ids: Vec<_> = read_spill(writer.spill_path())
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    assert_eq!(ids, ["req-3"]);
}

#[tokio::test]
async fn jsonl_sink_appends_batches_that_parse_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = Arc::new(JsonlSink::open(&path).unwrap());
    let writer = AuditWriter::spawn(sink, config(dir.path()));
    let mut events: Vec<_> = (0..300).map(event).collect();
    events[0] = events[0]
        .clone()
        .with_user_agent("evil\nagent\u{1b}[2J")
        .with_metadata(serde_json::json!({"nested": {"line": "a\nb"}}));
    for e in &events {
        writer.record(e.clone()).await;
    }
    writer.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 300, "no value split a line");
    assert_eq!(read_spill(&path), events);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "audit file readable by others: {mode:o}");
    }
}

/// Captures events for one target with their fields, as text.
#[derive(Default)]
struct Capture {
    events: Mutex<Vec<(tracing::Level, HashMap<String, String>)>>,
}

struct FieldVisitor<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if event.metadata().target() != "secure_routes::audit" {
            return;
        }
        let mut fields = HashMap::new();
        event.record(&mut FieldVisitor(&mut fields));
        let level = *event.metadata().level();
        self.events.lock().unwrap().push((level, fields));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn tracing_sink_emits_one_structured_event_per_audit_event() {
    let capture = Arc::new(Capture::default());
    let batch = [
        event(1).with_subject("alice").with_client_ip("203.0.113.7"),
        AuditEvent::new(AuditAction::StoreFailure)
            .with_outcome(Outcome::Allowed)
            .with_reason("store_unavailable"),
    ];
    tracing::subscriber::with_default(capture.clone(), || {
        // TracingSink logs during the call; the returned future is already complete.
        drop(TracingSink.write_batch(&batch));
    });
    let events = capture.events.lock().unwrap();
    assert_eq!(events.len(), 2);
    let (level, f) = &events[0];
    assert_eq!(*level, tracing::Level::INFO);
    assert_eq!(f["action"], "rate_limit_exceeded");
    assert_eq!(f["outcome"], "denied");
    assert_eq!(f["status"], "429");
    assert_eq!(f["subject"], "alice");
    assert_eq!(f["client_ip"], "203.0.113.7");
    assert_eq!(f["request_id"], "req-1");
    assert_eq!(f["metadata"], "{\"i\":1}");
    assert_eq!(f["id"], batch[0].id.to_string());
    let (level, f) = &events[1];
    assert_eq!(*level, tracing::Level::WARN, "fail-open is worth a warning");
    assert_eq!(f["action"], "store_failure");
    assert!(
        !f.contains_key("subject"),
        "absent fields are left out: {f:?}"
    );
}

/// A `metrics` recorder counting increments per metric name.
#[derive(Default)]
struct Counts(Arc<Mutex<HashMap<String, u64>>>);

struct CountHandle(Arc<Mutex<HashMap<String, u64>>>, String);

impl metrics::CounterFn for CountHandle {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }
    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::Recorder for Counts {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Arc::new(CountHandle(self.0.clone(), key.name().to_owned())))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn outcomes_are_exported_as_metrics() {
    let counts = Counts::default();
    let seen = counts.0.clone();
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour {
        fail_first: 1,
        ..Behaviour::default()
    });
    // A current-thread runtime runs the writer task on this thread, inside the local recorder.
    metrics::with_local_recorder(&counts, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let writer = AuditWriter::spawn(sink, config(dir.path()));
            writer.record(event(1)).await;
            writer.shutdown().await;
            writer.record(event(2)).await; // spilled
        });
    });
    let seen = seen.lock().unwrap();
    let get = |k: &str| seen.get(k).copied().unwrap_or(0);
    assert_eq!(get("secure_routes_audit_recorded_total"), 2);
    assert_eq!(get("secure_routes_audit_written_total"), 1);
    assert_eq!(get("secure_routes_audit_sink_errors_total"), 1);
    assert_eq!(get("secure_routes_audit_retries_total"), 1);
    assert_eq!(get("secure_routes_audit_spilled_total"), 1);
    assert_eq!(get("secure_routes_audit_lost_total"), 0);
}

#[tokio::test]
async fn an_unwritable_spill_path_counts_events_as_lost_not_silently_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(
        sink,
        AuditConfig {
            spill_path: dir.path().join("missing-dir").join("spill.jsonl"),
            ..AuditConfig::default()
        },
    );
    writer.shutdown().await;
    writer.record(event(1)).await;
    let stats = writer.stats();
    assert_eq!((stats.recorded, stats.spilled, stats.lost), (1, 0, 1));
}

#[test]
fn try_spawn_outside_a_runtime_is_an_error_not_a_panic() {
    let r = AuditWriter::try_spawn(Arc::new(TracingSink), AuditConfig::default());
    assert!(r.is_err());
}

/// Waits until the writer has counted `n` replayed events (the sink stores them just before
/// the count moves), then checks it went no further.
async fn replayed(writer: &AuditWriter, n: u64) {
    until(&format!("{n} replayed events"), || {
        writer.stats().replayed >= n
    })
    .await;
    assert_eq!(writer.stats().replayed, n);
}

/// A sink in an outage the test ends: the writer spills, then replays by itself.
fn outage() -> (Arc<MemorySink>, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(true));
    let sink = MemorySink::new(Behaviour {
        down: Some(Arc::clone(&down)),
        ..Behaviour::default()
    });
    (sink, down)
}

#[tokio::test(start_paused = true)]
async fn spilled_events_are_replayed_once_the_sink_takes_a_batch_again() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, down) = outage();
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            max_attempts: 1,
            // Longer than the test runs: only the recovered batch may trigger the replay.
            replay_interval: Duration::from_secs(3600),
            ..config(dir.path())
        },
    );
    for i in 0..3 {
        writer.record(event(i)).await;
    }
    until("3 spilled events", || writer.stats().spilled >= 3).await;
    assert_eq!(sink.count(), 0);

    down.store(false, Ordering::SeqCst);
    writer.record(event(3)).await;
    sink.wait_for(4).await;
    writer.shutdown().await;

    let mut ids: Vec<_> = sink.stored().into_iter().map(|e| e.request_id).collect();
    ids.sort();
    assert_eq!(ids, ["req-0", "req-1", "req-2", "req-3"], "each event once");
    let stats = writer.stats();
    assert_eq!((stats.written, stats.spilled, stats.replayed), (1, 3, 3));
    assert_eq!(stats.recorded, stats.written + stats.spilled + stats.lost);
    assert!(!writer.spill_path().exists());
}

#[tokio::test(start_paused = true)]
async fn an_idle_writer_retries_its_spill_file_every_replay_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, down) = outage();
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            max_attempts: 1,
            replay_interval: Duration::from_secs(5),
            ..config(dir.path())
        },
    );
    writer.record(event(1)).await;
    writer.record(event(2)).await;
    until("2 spilled events", || writer.stats().spilled >= 2).await;
    let start = Instant::now();
    // Still down: a tick's replay fails, is counted, and keeps the file. Polled in steps of
    // virtual time.
    until("3 sink errors", || writer.stats().sink_errors >= 3).await;
    // Not before the first tick.
    assert!(Instant::now() - start >= Duration::from_secs(5));
    assert_eq!(sink.count(), 0);
    assert!(writer.spill_path().exists() || dir.path().join("spill.jsonl.replaying").exists());

    // Back up, and no new event arrives: a following tick replays on its own.
    down.store(false, Ordering::SeqCst);
    sink.wait_for(2).await;
    replayed(&writer, 2).await;
    assert!(!writer.spill_path().exists());
    assert!(!dir.path().join("spill.jsonl.replaying").exists());
    writer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_spill_file_left_by_an_earlier_process_is_replayed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let earlier: Vec<_> = (0..4).map(event).collect();
    let mut text = String::new();
    for e in &earlier {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    std::fs::write(&spill, text).unwrap();

    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(sink.clone(), config(dir.path()));
    // No event recorded: the interval alone brings the old file in.
    sink.wait_for(4).await;
    assert_eq!(sink.stored(), earlier);
    replayed(&writer, 4).await;
    assert!(!spill.exists());
    writer.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_zero_replay_interval_leaves_the_spill_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let spill = dir.path().join("spill.jsonl");
    std::fs::write(&spill, serde_json::to_string(&event(0)).unwrap() + "\n").unwrap();
    let sink = MemorySink::new(Behaviour::default());
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            replay_interval: Duration::ZERO,
            ..config(dir.path())
        },
    );
    writer.record(event(1)).await;
    sink.wait_for(1).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    writer.shutdown().await;
    assert_eq!(sink.count(), 1);
    assert_eq!(writer.stats().replayed, 0);
    assert!(spill.exists());
}
