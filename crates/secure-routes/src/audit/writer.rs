//! Batching audit writer: a bounded queue between the request path and an [`AuditSink`].
//!
//! Why a queue: a request must never wait on a database to record that it was refused,
//! and an attacker flooding an endpoint must not be able to turn the audit log into the
//! bottleneck. Why bounded, with a spill file: an unbounded queue turns a slow sink into an
//! out-of-memory crash, and a queue that drops on overflow lets an attacker erase their own
//! trail by flooding first. So:
//!
//! * [`AuditWriter::record`] first folds identical refusals: within
//!   [`AuditConfig::fold_window`] (10 s) the first event of a key (action, outcome, status,
//!   method, route, reason, client, subject) is queued at once and the others only raise a
//!   counter, written as one more row with [`count`](super::AuditEvent::count) `= n` when the
//!   window ends. A flood of refusals therefore costs a few rows, never a full queue, and
//!   counts stay exact. `Denied` events fold, and so do `Allowed` ones (fail-open store
//!   failures: an outage writes one per request); `Error` events never do. The fold table is
//!   sharded, bounded ([`AuditConfig::fold_max_keys`]) and never dropped from: a full shard
//!   writes out its oldest count early.
//! * Then it puts the event on a bounded `tokio` queue. When the queue is full it waits up to
//!   [`AuditConfig::block_timeout`] (back-pressure), then hands the event to a blocking-pool
//!   thread that appends it to the JSON-lines spill file ([`AuditConfig::spill_path`]); the
//!   request never does file I/O itself.
//! * One background task drains the queue in batches of up to [`AuditConfig::max_batch`]:
//!   it takes whatever is queued the moment it wakes, so an idle writer flushes a single event
//!   at once (no timer, no added latency) and a busy one writes large batches.
//! * A failed batch is retried with exponential backoff ([`AuditConfig::max_attempts`],
//!   [`AuditConfig::retry_base_delay`]), then spilled. A sink that hangs is cut off after
//!   [`AuditConfig::sink_timeout`] and one that panics is treated as failed.
//! * Spilled events go back to the sink by themselves: once the sink accepts a batch again, or
//!   every [`AuditConfig::replay_interval`] while the writer is idle, it replays the spill file
//!   (a file left by an earlier process included), removing it only after the sink accepted
//!   every event in it. [`replay_spill`] (or [`AuditWriter::replay_spill`]) does the same on
//!   demand, for example from an operator's tool.
//! * Every outcome is counted in [`AuditStats`] and as `metrics` counters
//!   (`secure_routes_audit_{recorded,folded,written,spilled,replayed,sink_errors,retries,blocked,lost}_total`,
//!   gauge `secure_routes_audit_queue_depth`). An event is only ever lost if the spill file
//!   itself cannot be written; it is then logged in full at `error` level and counted as `lost`.
//!
//! Delivery is at-least-once: a batch that timed out may still have been stored by the sink
//! and is then retried, so sinks should ignore duplicate ids (the SQLite sink does).
//!
//! ```
//! use std::sync::Arc;
//! use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditWriter};
//! use secure_routes::audit::sinks::JsonlSink;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let sink = Arc::new(JsonlSink::open(dir.path().join("audit.jsonl")).unwrap());
//! let writer = AuditWriter::spawn(sink, AuditConfig {
//!     spill_path: dir.path().join("spill.jsonl"),
//!     ..AuditConfig::default()
//! });
//! writer.record(AuditEvent::new(AuditAction::RateLimitExceeded).with_status(429)).await;
//! writer.shutdown().await;
//! let stats = writer.stats();
//! assert_eq!((stats.recorded, stats.written, stats.spilled), (1, 1, 0));
//! # });
//! ```

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Notify, mpsc, watch};

use super::fold::{Admit, FoldTable};
use super::observer::{AuditObserver, observe_all};
use super::{AuditError, AuditEvent, AuditSink};
use crate::clock::{Clock, SystemClock};

/// Writer settings. Out-of-range values are clamped when the writer starts (a zero capacity,
/// batch size or attempt count becomes 1).
///
/// ```
/// use std::time::Duration;
/// use secure_routes::audit::AuditConfig;
/// let config = AuditConfig {
///     max_batch: 1024,
///     block_timeout: Duration::from_millis(10),
///     spill_path: "/var/lib/myapp/audit-spill.jsonl".into(),
///     ..AuditConfig::default()
/// };
/// assert_eq!(config.queue_capacity, 10_000);
/// ```
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Queue capacity in events.
    pub queue_capacity: usize,
    /// Largest batch handed to the sink.
    pub max_batch: usize,
    /// How long `record` waits on a full queue before spilling.
    pub block_timeout: Duration,
    /// JSON-lines file receiving events that could not be queued or stored. Created on first
    /// use, owner-readable only on Unix (it holds client addresses and subjects).
    pub spill_path: PathBuf,
    /// Attempts per batch before it is spilled, the first included (default 4).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled before each further retry (default 50 ms).
    pub retry_base_delay: Duration,
    /// Longest wait between two attempts (default 2 s).
    pub retry_max_delay: Duration,
    /// Longest a single sink call may take before it counts as failed (default 30 s).
    pub sink_timeout: Duration,
    /// While spilled events wait, how often an idle writer tries to replay them (default 5 s).
    /// A batch the sink accepts also triggers a replay at once. Zero turns automatic replay
    /// off (the spill file then waits for [`AuditWriter::replay_spill`] or [`replay_spill`]).
    pub replay_interval: Duration,
    /// How long identical refusals fold into one count (default 10 s; see the module docs).
    /// [`Duration::ZERO`] turns folding off: one row per event.
    pub fold_window: Duration,
    /// Most keys with an open fold window (default 10 000). A new key beyond that first
    /// clears ended windows, then writes out the oldest one's count early: never drops it.
    pub fold_max_keys: usize,
    /// The clock fold windows are measured with (default [`SystemClock`]; tests inject a
    /// [`FakeClock`](crate::clock::FakeClock)).
    pub clock: Arc<dyn Clock>,
    /// Called with every recorded event before it is folded or queued (default none), such
    /// as the alert engine; see [`observer`](super::observer).
    pub observers: Vec<Arc<dyn AuditObserver>>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            max_batch: 512,
            block_timeout: Duration::from_millis(50),
            spill_path: "secure-routes-audit-spill.jsonl".into(),
            max_attempts: 4,
            retry_base_delay: Duration::from_millis(50),
            retry_max_delay: Duration::from_secs(2),
            sink_timeout: Duration::from_secs(30),
            replay_interval: Duration::from_secs(5),
            fold_window: Duration::from_secs(10),
            fold_max_keys: 10_000,
            clock: Arc::new(SystemClock),
            observers: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// The delay before retry number `retry` (1-based): `base * 2^(retry-1)`, capped.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.retry_base_delay
            .checked_mul(factor)
            .unwrap_or(self.retry_max_delay)
            .min(self.retry_max_delay)
    }

    fn normalized(mut self) -> Self {
        self.queue_capacity = self.queue_capacity.max(1);
        self.max_batch = self.max_batch.max(1);
        self.max_attempts = self.max_attempts.max(1);
        self.fold_max_keys = self.fold_max_keys.max(1);
        self
    }

    /// How often the writer task looks for ended fold windows: a tenth of the window, between
    /// 10 ms and 1 s, so a count is written at most that long after its window ends.
    fn fold_tick(&self) -> Duration {
        (self.fold_window / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// Counters, a snapshot taken by [`AuditWriter::stats`].
///
/// `written`, `spilled`, `lost` and `replayed` count occurrences (the sum of
/// [`count`](super::AuditEvent::count) over the rows concerned), so once the writer is shut
/// down, `recorded == written + spilled + lost` whatever was folded; and the rows produced
/// number `recorded - folded`.
///
/// ```
/// use secure_routes::audit::AuditStats;
/// let s = AuditStats::default();
/// assert_eq!(s.recorded, s.written + s.spilled + s.lost);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Calls of `record` (events queued, folded or spilled).
    pub recorded: u64,
    /// Recorded events that got no row of their own: they were added to another row's count.
    pub folded: u64,
    /// Occurrences stored by the sink.
    pub written: u64,
    /// Occurrences spilled to the file (full queue, sink failures, or recorded after shutdown).
    pub spilled: u64,
    /// Spilled events later stored by the sink through a replay, automatic or on demand
    /// (events spilled by an earlier process included).
    pub replayed: u64,
    /// Failed sink attempts (errors, timeouts and panics).
    pub sink_errors: u64,
    /// Retries after a failed attempt.
    pub retries: u64,
    /// Batches handed to the sink successfully.
    pub batches: u64,
    /// Times `record` found the queue full and had to wait.
    pub blocked: u64,
    /// Events that could be neither stored nor spilled (logged in full at `error` level).
    pub lost: u64,
    /// Events waiting in the queue right now.
    pub queue_depth: u64,
}

/// Metric names, kept in one place.
mod metric {
    pub(super) const RECORDED: &str = "secure_routes_audit_recorded_total";
    pub(super) const FOLDED: &str = "secure_routes_audit_folded_total";
    pub(super) const WRITTEN: &str = "secure_routes_audit_written_total";
    pub(super) const SPILLED: &str = "secure_routes_audit_spilled_total";
    pub(super) const REPLAYED: &str = "secure_routes_audit_replayed_total";
    pub(super) const SINK_ERRORS: &str = "secure_routes_audit_sink_errors_total";
    pub(super) const RETRIES: &str = "secure_routes_audit_retries_total";
    pub(super) const BLOCKED: &str = "secure_routes_audit_blocked_total";
    pub(super) const LOST: &str = "secure_routes_audit_lost_total";
    pub(super) const QUEUE_DEPTH: &str = "secure_routes_audit_queue_depth";
}

#[derive(Default)]
struct Counters {
    recorded: AtomicU64,
    folded: AtomicU64,
    written: AtomicU64,
    spilled: AtomicU64,
    replayed: AtomicU64,
    sink_errors: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    blocked: AtomicU64,
    lost: AtomicU64,
}

/// State shared by the handles and the background task.
struct Shared {
    config: AuditConfig,
    sink_name: &'static str,
    counters: Counters,
    spill: SpillFile,
    /// Set when events are spilled (or a spill file was found at start), cleared when a replay
    /// starts: whether the background task has a spill file to replay.
    spill_pending: AtomicBool,
    /// One replay at a time (the background task's and an on-demand one share the claimed file).
    replay_lock: tokio::sync::Mutex<()>,
    /// Identical refusals folded into counts, before the queue.
    folds: FoldTable,
    /// Spills handed to the blocking pool and not finished yet; `shutdown` waits for them.
    spills_in_flight: AtomicUsize,
    spills_done: Notify,
}

/// The sum of `count` over `events`: the occurrences they stand for.
fn occurrences(events: &[AuditEvent]) -> u64 {
    events.iter().map(|e| e.count).sum()
}

/// What one spill did, in occurrences.
#[derive(Clone, Copy, Default)]
struct SpillCount {
    spilled: u64,
    lost: u64,
}

impl SpillCount {
    fn emit_metrics(self) {
        if self.spilled > 0 {
            metrics::counter!(metric::SPILLED).increment(self.spilled);
        }
        if self.lost > 0 {
            metrics::counter!(metric::LOST).increment(self.lost);
        }
    }
}

/// Where a spill's result meets whoever waits for it. The metrics are emitted once, on the
/// waiting task's thread when it is still waiting (so a thread-local metrics recorder sees
/// them, as it saw every other audit metric), else by the job itself.
#[derive(Default)]
struct SpillSlot(Mutex<SlotState>);

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    GaveUp,
    Done(SpillCount),
}

impl SpillSlot {
    /// The job finished.
    fn finish(&self, count: SpillCount) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            SlotState::GaveUp => count.emit_metrics(),
            _ => *state = SlotState::Done(count),
        }
    }

    /// The waiter stops waiting (done or not).
    fn leave(&self) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let SlotState::Done(count) = std::mem::replace(&mut *state, SlotState::GaveUp) {
            count.emit_metrics();
        }
    }
}

/// One spill handed to the blocking pool. If the pool drops it unrun (the runtime is shutting
/// down), `Drop` writes it on the dropping thread instead, so shutdown cannot lose it.
struct SpillJob {
    shared: Arc<Shared>,
    events: Vec<AuditEvent>,
    why: &'static str,
    slot: Arc<SpillSlot>,
}

impl SpillJob {
    fn run(mut self) {
        let events = std::mem::take(&mut self.events);
        let count = self.shared.spill(&events, self.why);
        self.slot.finish(count);
    }
}

impl Drop for SpillJob {
    fn drop(&mut self) {
        if !self.events.is_empty() {
            let count = self.shared.spill(&self.events, self.why);
            self.slot.finish(count);
        }
        self.shared.spills_in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared.spills_done.notify_waiters();
    }
}

/// Spills `events` on a blocking-pool thread (inline only outside a runtime) and waits for it
/// at most `wait` (`None`: until done) without blocking this thread. A spill still running
/// then finishes in the background; [`AuditWriter::shutdown`] waits for it.
async fn spill_off_thread(
    shared: &Arc<Shared>,
    events: Vec<AuditEvent>,
    why: &'static str,
    wait: Option<Duration>,
) {
    shared.spills_in_flight.fetch_add(1, Ordering::SeqCst);
    let slot = Arc::new(SpillSlot::default());
    let job = SpillJob {
        shared: Arc::clone(shared),
        events,
        why,
        slot: Arc::clone(&slot),
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let handle = rt.spawn_blocking(move || job.run());
            // A join error means the runtime dropped the job, which then spilled in `Drop`.
            match wait {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, handle).await;
                }
                None => {
                    let _ = handle.await;
                }
            }
        }
        Err(_) => job.run(),
    }
    slot.leave();
}

impl Shared {
    fn add(counter: &AtomicU64, name: &'static str, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(name).increment(n);
    }

    /// Appends events to the spill file; if even that fails, logs each event in full and
    /// counts it as lost, so nothing disappears without a trace.
    ///
    /// Updates the counters here; the metrics are emitted by whoever reports the returned
    /// [`SpillCount`] (see [`SpillSlot`]).
    fn spill(&self, events: &[AuditEvent], why: &'static str) -> SpillCount {
        let n = occurrences(events);
        match self.spill.append(events) {
            Ok(()) => {
                self.counters.spilled.fetch_add(n, Ordering::Relaxed);
                self.spill_pending.store(true, Ordering::Release);
                tracing::warn!(
                    target: "secure_routes::audit",
                    events = n,
                    reason = why,
                    path = %self.spill.path.display(),
                    "audit events spilled to file"
                );
                SpillCount {
                    spilled: n,
                    lost: 0,
                }
            }
            Err(err) => {
                self.counters.lost.fetch_add(n, Ordering::Relaxed);
                for e in events {
                    let json = serde_json::to_string(e).unwrap_or_else(|_| format!("{e:?}"));
                    tracing::error!(
                        target: "secure_routes::audit",
                        error = %err,
                        reason = why,
                        event = %json,
                        "audit event could not be stored or spilled"
                    );
                }
                SpillCount {
                    spilled: 0,
                    lost: n,
                }
            }
        }
    }

    /// Replays the spill file into `sink`, counting what it stored. Called by the background
    /// task (so replayed events queue behind nothing and never race a batch) and by
    /// [`AuditWriter::replay_spill`].
    async fn replay(&self, sink: &dyn AuditSink) -> Result<ReplayReport, ReplayError> {
        // Cleared before the file is claimed: an event spilled while the replay runs sets it
        // again and lands in a fresh file, picked up by the next replay.
        let _one_at_a_time = self.replay_lock.lock().await;
        self.spill_pending.store(false, Ordering::Release);
        let mut report = ReplayReport::default();
        let result = replay(
            &self.spill.path,
            sink,
            |to| self.spill.claim(to),
            &mut report,
        )
        .await;
        if report.replayed > 0 {
            Self::add(&self.counters.replayed, metric::REPLAYED, report.replayed);
            tracing::info!(
                target: "secure_routes::audit",
                events = report.replayed,
                sink = self.sink_name,
                "spilled audit events replayed"
            );
        }
        match result {
            Ok(()) => Ok(report),
            Err(e) => {
                self.spill_pending.store(true, Ordering::Release);
                self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(metric::SINK_ERRORS, "sink" => self.sink_name).increment(1);
                tracing::warn!(
                    target: "secure_routes::audit",
                    sink = self.sink_name,
                    error = %super::sanitize(&e.to_string(), 512),
                    path = %self.spill.path.display(),
                    "audit spill replay failed; the file is kept for the next attempt"
                );
                Err(e)
            }
        }
    }

    /// The background task's replay: bounded by the sink timeout, so a sink that hangs cannot
    /// stall the queue. An interrupted replay keeps its claimed file (delivery is
    /// at-least-once, and sinks ignore duplicate ids).
    async fn replay_in_background(&self, sink: &dyn AuditSink) {
        let call = AssertUnwindSafe(self.replay(sink)).catch_unwind();
        if !matches!(
            tokio::time::timeout(self.config.sink_timeout, call).await,
            Ok(Ok(Ok(_)))
        ) {
            self.spill_pending.store(true, Ordering::Release);
        }
    }

    /// Hands one batch to the sink, retrying with exponential backoff, then spills it (on the
    /// blocking pool; the writer task waits for it, no request does). Returns whether the
    /// sink accepted it.
    async fn deliver(self: &Arc<Self>, sink: &dyn AuditSink, batch: &[AuditEvent]) -> bool {
        let config = &self.config;
        let mut attempt = 1;
        loop {
            let call = AssertUnwindSafe(sink.write_batch(batch)).catch_unwind();
            let error = match tokio::time::timeout(config.sink_timeout, call).await {
                Ok(Ok(Ok(()))) => {
                    let n = occurrences(batch);
                    self.counters.written.fetch_add(n, Ordering::Relaxed);
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(metric::WRITTEN, "sink" => self.sink_name).increment(n);
                    return true;
                }
                Ok(Ok(Err(AuditError(msg)))) => msg,
                Ok(Err(_panic)) => "the sink panicked".to_owned(),
                Err(_elapsed) => format!("no answer within {:?}", config.sink_timeout),
            };
            self.counters.sink_errors.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::SINK_ERRORS, "sink" => self.sink_name).increment(1);
            tracing::warn!(
                target: "secure_routes::audit",
                sink = self.sink_name,
                attempt,
                max_attempts = config.max_attempts,
                events = batch.len(),
                error = %super::sanitize(&error, 512),
                "audit sink failed"
            );
            if attempt >= config.max_attempts {
                spill_off_thread(self, batch.to_vec(), "sink_failed", None).await;
                return false;
            }
            tokio::time::sleep(config.backoff(attempt)).await;
            Self::add(&self.counters.retries, metric::RETRIES, 1);
            attempt += 1;
        }
    }
}

/// The spill file: appends under a mutex, the file opened per append.
///
/// Appends run on the blocking pool (`spill_off_thread`), never on a request's runtime
/// thread: a spill is usually one `write` to the page cache, but a full or slow disk, a
/// network filesystem or a spill path that blocks would otherwise stall every refused request
/// behind this mutex, at the moment the system is already degraded. The old worry about the
/// hop, events spilled while the runtime shuts down, is met by `SpillJob`: a job the pool
/// drops unrun is written by its `Drop` on the dropping thread. Opening per append lets
/// [`replay_spill`] rename the file away under the same mutex without losing a concurrent
/// append to the old inode.
struct SpillFile {
    path: PathBuf,
    lock: Mutex<()>,
}

impl SpillFile {
    fn append(&self, events: &[AuditEvent]) -> io::Result<()> {
        let buf = to_json_lines(events)?;
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        append_bytes(&self.path, &buf)
    }

    /// Renames the spill file to `to` while no append is in flight. `Ok(false)`: no file.
    fn claim(&self, to: &Path) -> io::Result<bool> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        claim_file(&self.path, to)
    }
}

/// Serializes events as JSON lines (one object per line, `\n`-terminated). JSON escapes every
/// control character, so a hostile field can never start a new line.
pub(crate) fn to_json_lines(events: &[AuditEvent]) -> Result<Vec<u8>, serde_json::Error> {
    let mut buf = Vec::with_capacity(events.len() * 384);
    for e in events {
        serde_json::to_writer(&mut buf, e)?;
        buf.push(b'\n');
    }
    Ok(buf)
}

/// Opens `path` for appending (creating it, mode 0600 on Unix) and writes `buf` in one call.
pub(crate) fn append_bytes(path: &Path, buf: &[u8]) -> io::Result<()> {
    let mut file = open_append(path)?;
    file.write_all(buf)?;
    file.flush()
}

/// Opens a file for appending, creating it readable by its owner only on Unix: audit records
/// carry client addresses and subjects.
pub(crate) fn open_append(path: &Path) -> io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn claim_file(from: &Path, to: &Path) -> io::Result<bool> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

struct Handle {
    tx: mpsc::Sender<AuditEvent>,
    shared: Arc<Shared>,
    close: Arc<Notify>,
    done: watch::Receiver<bool>,
}

/// Batching writer handle (cheap to clone; all clones feed the same queue).
///
/// When every handle is dropped without [`shutdown`](AuditWriter::shutdown), the task still
/// drains the queue and stops, provided the runtime keeps running.
///
/// ```
/// use std::sync::Arc;
/// use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditWriter};
/// use secure_routes::audit::sinks::TracingSink;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig {
///     spill_path: dir.path().join("spill.jsonl"),
///     ..AuditConfig::default()
/// });
/// writer.record(AuditEvent::new(AuditAction::UnauthorizedAccess).with_status(401)).await;
/// writer.shutdown().await;
/// // After shutdown nothing is lost: the event goes to the spill file.
/// writer.record(AuditEvent::new(AuditAction::UnauthorizedAccess)).await;
/// assert_eq!(writer.stats().written, 1);
/// assert_eq!(writer.stats().spilled, 1);
/// # });
/// ```
#[derive(Clone)]
pub struct AuditWriter {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("sink", &self.inner.shared.sink_name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// `spawn` was called outside a tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("the audit writer needs a running tokio runtime")]
pub struct NoRuntime;

impl AuditWriter {
    /// Starts the writer task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (like `tokio::spawn`); [`AuditWriter::try_spawn`] returns an
    /// error instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::audit::{AuditConfig, AuditWriter, sinks::TracingSink};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig::default());
    /// assert_eq!(writer.stats().recorded, 0);
    /// # });
    /// ```
    pub fn spawn(sink: Arc<dyn AuditSink>, config: AuditConfig) -> Self {
        match Self::try_spawn(sink, config) {
            Ok(w) => w,
            Err(NoRuntime) => panic!("AuditWriter::spawn must be called within a tokio runtime"),
        }
    }

    /// Starts the writer task on the current tokio runtime, or fails outside one.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::audit::{AuditConfig, AuditWriter, sinks::TracingSink};
    /// assert!(AuditWriter::try_spawn(Arc::new(TracingSink), AuditConfig::default()).is_err());
    /// ```
    pub fn try_spawn(sink: Arc<dyn AuditSink>, config: AuditConfig) -> Result<Self, NoRuntime> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let config = config.normalized();
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (done_tx, done_rx) = watch::channel(false);
        let close = Arc::new(Notify::new());
        // A spill file left by an earlier process (or an interrupted replay) is replayed like
        // one of ours.
        let leftover = config.spill_path.exists()
            || with_suffix(&config.spill_path, REPLAYING_SUFFIX).exists();
        let folds = FoldTable::new(
            config.fold_window,
            config.fold_max_keys,
            Arc::clone(&config.clock),
        );
        let shared = Arc::new(Shared {
            folds,
            spills_in_flight: AtomicUsize::new(0),
            spills_done: Notify::new(),
            spill: SpillFile {
                path: config.spill_path.clone(),
                lock: Mutex::new(()),
            },
            config,
            sink_name: sink.name(),
            counters: Counters::default(),
            spill_pending: AtomicBool::new(leftover),
            replay_lock: tokio::sync::Mutex::new(()),
        });
        runtime.spawn(run(
            rx,
            sink,
            Arc::clone(&shared),
            Arc::clone(&close),
            done_tx,
        ));
        Ok(Self {
            inner: Arc::new(Handle {
                tx,
                shared,
                close,
                done: done_rx,
            }),
        })
    }

    /// Records one event: folds it into a count when an identical refusal was recorded
    /// within [`AuditConfig::fold_window`] (no I/O, no wait), else queues it. Waits at most
    /// [`AuditConfig::block_timeout`] when the queue is full, then spills the event; after
    /// [`shutdown`](AuditWriter::shutdown) it spills at once. Spills run on the blocking pool:
    /// this waits for one at most `block_timeout` more (10 ms at least) without blocking the
    /// runtime thread, and a spill that takes longer finishes in the background. Never fails
    /// and never drops the event silently.
    ///
    /// Every [`AuditConfig::observers`] entry sees the event first, before folding; events
    /// they emit are recorded right after it (see [`observer`](super::observer)).
    pub async fn record(&self, event: AuditEvent) {
        let observers = &self.inner.shared.config.observers;
        if observers.is_empty() {
            return self.record_observed(event).await;
        }
        let emitted = observe_all(observers, &event).into_events();
        self.record_observed(event).await;
        for e in emitted {
            // Shown to the observers (a live view sees alerts too), but what they emit in
            // answer is dropped: no observer can start a loop.
            let replies = observe_all(observers, &e);
            if !replies.is_empty() {
                tracing::debug!(
                    target: "secure_routes::audit",
                    dropped = replies.len(),
                    "events emitted in answer to an emitted event are not recorded"
                );
            }
            self.record_observed(e).await;
        }
    }

    /// [`record`](Self::record) after the observers.
    async fn record_observed(&self, event: AuditEvent) {
        let shared = &self.inner.shared;
        Shared::add(&shared.counters.recorded, metric::RECORDED, 1);
        match shared.folds.admit(event) {
            Admit::Folded { merged } => {
                if merged {
                    Shared::add(&shared.counters.folded, metric::FOLDED, 1);
                }
            }
            Admit::Queue(events) => {
                for e in events {
                    self.enqueue(e).await;
                }
            }
        }
    }

    /// Queues one event (no folding), spilling it when the queue stays full or is closed.
    async fn enqueue(&self, event: AuditEvent) {
        let shared = &self.inner.shared;
        let event = match self.inner.tx.try_send(event) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(event)) => {
                return self.spill(event, "writer_stopped").await;
            }
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        // Back-pressure: the request waits a little for the sink to catch up, bounded so an
        // audit backlog can never stall the service.
        Shared::add(&shared.counters.blocked, metric::BLOCKED, 1);
        let timeout = shared.config.block_timeout;
        match self.inner.tx.send_timeout(event, timeout).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(event)) => {
                self.spill(event, "queue_full").await;
            }
            Err(mpsc::error::SendTimeoutError::Closed(event)) => {
                self.spill(event, "writer_stopped").await;
            }
        }
    }

    /// Spills from a request: on the blocking pool, waited for a bounded time (so the file
    /// and the counters usually show the event when `record` returns) without blocking this
    /// thread or holding a lock on it.
    async fn spill(&self, event: AuditEvent, why: &'static str) {
        let shared = &self.inner.shared;
        let wait = shared.config.block_timeout.max(Duration::from_millis(10));
        spill_off_thread(shared, vec![event], why, Some(wait)).await;
    }

    /// Writes out every pending fold count now (each as a row with its `count`), without
    /// waiting for the windows to end; the next identical refusal then opens a new window.
    /// For tools and tests that read the log right away; [`shutdown`](AuditWriter::shutdown)
    /// does this by itself.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditWriter, sinks::TracingSink};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig {
    ///     spill_path: dir.path().join("spill.jsonl"),
    ///     ..AuditConfig::default()
    /// });
    /// let refusal = AuditEvent::new(AuditAction::InvalidInput).with_status(405).with_reason("method_not_allowed");
    /// for _ in 0..3 {
    ///     writer.record(refusal.clone()).await;
    /// }
    /// assert_eq!(writer.stats().folded, 1); // rows: the first, then one with count 2
    /// writer.flush_folds().await;
    /// writer.shutdown().await;
    /// assert_eq!(writer.stats().written, 3);
    /// # });
    /// ```
    pub async fn flush_folds(&self) {
        for e in self.inner.shared.folds.take_all() {
            self.enqueue(e).await;
        }
    }

    /// Writes out every pending fold count, closes the queue, waits until every queued event
    /// is written or spilled (spills in flight included), and stops the task. Idempotent;
    /// concurrent callers all wait for the same end. Events recorded afterwards go to the
    /// spill file, unfolded.
    pub async fn shutdown(&self) {
        self.inner.close.notify_one();
        let mut done = self.inner.done.clone();
        // An error means the task is gone (its runtime is shutting down): nothing to wait for.
        let _ = done.wait_for(|finished| *finished).await;
        let shared = &self.inner.shared;
        loop {
            let finished = shared.spills_done.notified();
            if shared.spills_in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            finished.await;
        }
    }

    /// Current counters.
    pub fn stats(&self) -> AuditStats {
        let c = &self.inner.shared.counters;
        let tx = &self.inner.tx;
        AuditStats {
            recorded: c.recorded.load(Ordering::Relaxed),
            folded: c.folded.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            spilled: c.spilled.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            sink_errors: c.sink_errors.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            blocked: c.blocked.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            queue_depth: tx.max_capacity().saturating_sub(tx.capacity()) as u64,
        }
    }

    /// The spill file this writer appends to.
    pub fn spill_path(&self) -> &Path {
        &self.inner.shared.spill.path
    }

    /// Replays this writer's spill file into `sink` (see [`replay_spill`]). Safe while the
    /// writer runs: the file is claimed under the same lock its appends take, and new spills
    /// start a fresh file.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::audit::{AuditConfig, AuditWriter, sinks::TracingSink};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig {
    ///     spill_path: dir.path().join("spill.jsonl"),
    ///     ..AuditConfig::default()
    /// });
    /// let report = writer.replay_spill(&TracingSink).await.unwrap();
    /// assert_eq!(report.replayed, 0); // nothing was spilled
    /// # });
    /// ```
    pub async fn replay_spill(&self, sink: &dyn AuditSink) -> Result<ReplayReport, ReplayError> {
        self.inner.shared.replay(sink).await
    }
}

/// The background task: drain, deliver, repeat; on close, drain what is left and stop.
async fn run(
    mut rx: mpsc::Receiver<AuditEvent>,
    sink: Arc<dyn AuditSink>,
    shared: Arc<Shared>,
    close: Arc<Notify>,
    done: watch::Sender<bool>,
) {
    let max = shared.config.max_batch;
    let replay_interval = shared.config.replay_interval;
    let auto_replay = !replay_interval.is_zero();
    let pending = || auto_replay && shared.spill_pending.load(Ordering::Acquire);
    let mut batch = Vec::with_capacity(max);
    let mut closing = false;
    let mut sink_ok = false;
    let folding = shared.folds.enabled();
    let mut fold_tick = tokio::time::interval(shared.config.fold_tick());
    fold_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The idle replay timer restarts after every batch or replay, but not on a fold tick:
    // ticks come every second and would otherwise postpone the replay forever.
    let replay_timer = tokio::time::sleep(replay_interval);
    tokio::pin!(replay_timer);
    let mut restart_replay_timer = false;
    loop {
        if std::mem::take(&mut restart_replay_timer) {
            replay_timer
                .as_mut()
                .reset(tokio::time::Instant::now() + replay_interval);
        }
        let n = if closing {
            rx.recv_many(&mut batch, max).await
        } else {
            let replay_due = pending();
            tokio::select! {
                // Close first, so a steady stream of events cannot postpone shutdown forever.
                biased;
                () = close.notified() => {
                    // Senders now fail fast (and spill); buffered events are still drained.
                    rx.close();
                    closing = true;
                    continue;
                }
                // Ended fold windows: their counts go to the sink from here (this task is the
                // queue's only reader, so it must not wait on the queue itself). Ready once a
                // tick, so it cannot starve the queue.
                _ = fold_tick.tick(), if folding => {
                    let rows = shared.folds.take_ended();
                    if !rows.is_empty() {
                        sink_ok = shared.deliver(&*sink, &rows).await;
                        restart_replay_timer = true;
                    }
                    continue;
                }
                n = rx.recv_many(&mut batch, max) => {
                    restart_replay_timer = true;
                    n
                }
                // Idle with spilled events waiting: try the sink again now and then, so events
                // spilled during an outage reach it even if no new event ever comes.
                () = &mut replay_timer, if replay_due => {
                    shared.replay_in_background(&*sink).await;
                    restart_replay_timer = true;
                    continue;
                }
            }
        };
        if n == 0 {
            // Closed (or every handle dropped) and empty. Pending counts last: they follow
            // the rows they count, and an event recorded from now on passes the fold table.
            let rows = shared.folds.close();
            if !rows.is_empty() {
                sink_ok = shared.deliver(&*sink, &rows).await;
            }
            break;
        }
        metrics::gauge!(metric::QUEUE_DEPTH).set(rx.len() as f64);
        sink_ok = shared.deliver(&*sink, &batch).await;
        batch.clear();
        // The sink just took a batch: the outage (if any) is over, replay what it missed.
        if sink_ok && pending() {
            shared.replay_in_background(&*sink).await;
        }
    }
    // Last chance before stopping, only when the sink was answering: a sink that is down
    // would hold shutdown for up to `sink_timeout`, and the file is replayed at next start.
    if sink_ok && pending() {
        shared.replay_in_background(&*sink).await;
    }
    metrics::gauge!(metric::QUEUE_DEPTH).set(0.0);
    let _ = done.send(true);
}

/// What a replay did.
///
/// ```
/// use secure_routes::audit::ReplayReport;
/// assert_eq!(ReplayReport::default().replayed, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Occurrences the sink accepted (the sum of their rows' `count`).
    pub replayed: u64,
    /// Lines that did not parse as an event (a torn write after a crash, say). They are kept
    /// in `<spill file>.rejected`, never discarded.
    pub rejected: u64,
}

/// A replay stopped. The events not yet accepted stay in `<spill file>.replaying` and the
/// next replay resumes from there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Reading, writing or renaming the spill files failed.
    #[error("spill file: {0}")]
    Io(#[from] io::Error),
    /// The sink refused a batch.
    #[error(transparent)]
    Sink(#[from] AuditError),
}

/// Events per batch during a replay.
const REPLAY_BATCH: usize = 512;

/// Re-sends the events in a spill file to `sink`, then deletes the file.
///
/// The file is first renamed to `<path>.replaying`, so events spilled meanwhile start a fresh
/// file and are kept for the next replay. If the sink fails part-way, the events it has not
/// accepted are written back to `<path>.replaying` (atomically, via a temporary file) and the
/// next call resumes there; a crash mid-replay can resend a batch, so sinks should ignore
/// duplicate ids. Lines that do not parse go to `<path>.rejected`.
///
/// While an [`AuditWriter`] in this process may spill to the same file, prefer
/// [`AuditWriter::replay_spill`], which claims the file under the writer's lock.
///
/// ```
/// use secure_routes::audit::{replay_spill, sinks::JsonlSink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let spill = dir.path().join("spill.jsonl");
/// let event = secure_routes::audit::AuditEvent::new(secure_routes::audit::AuditAction::InvalidInput);
/// std::fs::write(&spill, serde_json::to_string(&event).unwrap() + "\n").unwrap();
///
/// let sink = JsonlSink::open(dir.path().join("audit.jsonl")).unwrap();
/// let report = replay_spill(&spill, &sink).await.unwrap();
/// assert_eq!(report.replayed, 1);
/// assert!(!spill.exists());
/// # });
/// ```
pub async fn replay_spill(
    path: impl AsRef<Path>,
    sink: &dyn AuditSink,
) -> Result<ReplayReport, ReplayError> {
    let path = path.as_ref();
    let mut report = ReplayReport::default();
    replay(path, sink, |to| claim_file(path, to), &mut report).await?;
    Ok(report)
}

/// Suffix of a spill file claimed by a replay.
const REPLAYING_SUFFIX: &str = ".replaying";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Replays the spill file at `path` (claimed with `claim`), adding to `report` as it goes so a
/// failure still tells how much was stored.
async fn replay(
    path: &Path,
    sink: &dyn AuditSink,
    claim: impl Fn(&Path) -> io::Result<bool>,
    report: &mut ReplayReport,
) -> Result<(), ReplayError> {
    let claimed = with_suffix(path, REPLAYING_SUFFIX);
    // First a file left by an interrupted replay (if any), then the current spill file.
    for _ in 0..2 {
        if !tokio::fs::try_exists(&claimed).await? && !claim(&claimed)? {
            break;
        }
        let bytes = tokio::fs::read(&claimed).await?;
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for line in bytes.split(|b| *b == b'\n') {
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditEvent>(line) {
                Ok(e) => events.push(e),
                Err(_) => {
                    rejected.extend_from_slice(line);
                    rejected.push(b'\n');
                    report.rejected += 1;
                }
            }
        }
        if !rejected.is_empty() {
            append_bytes(&with_suffix(path, ".rejected"), &rejected)?;
            rejected.clear();
        }
        let mut sent = 0;
        for chunk in events.chunks(REPLAY_BATCH) {
            if let Err(e) = sink.write_batch(chunk).await {
                // Keep exactly what the sink has not accepted, replacing the claimed file
                // atomically so a crash here cannot lose or duplicate the remainder.
                let rest = events.get(sent..).unwrap_or_default();
                let tmp = with_suffix(path, ".replaying.tmp");
                tokio::fs::write(&tmp, to_json_lines(rest).map_err(io::Error::from)?).await?;
                tokio::fs::rename(&tmp, &claimed).await?;
                return Err(ReplayError::Sink(e));
            }
            sent += chunk.len();
            report.replayed += occurrences(chunk);
        }
        tokio::fs::remove_file(&claimed).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let c = AuditConfig {
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(50),
            ..AuditConfig::default()
        };
        let delays: Vec<_> = (1..=5).map(|r| c.backoff(r).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
        assert_eq!(c.backoff(200), Duration::from_millis(50));
    }

    #[test]
    fn zero_sizes_are_clamped() {
        let c = AuditConfig {
            queue_capacity: 0,
            max_batch: 0,
            max_attempts: 0,
            ..AuditConfig::default()
        }
        .normalized();
        assert_eq!((c.queue_capacity, c.max_batch, c.max_attempts), (1, 1, 1));
    }
}
