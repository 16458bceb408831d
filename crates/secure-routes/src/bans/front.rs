//! [`Bans`]: a store and a policy, with the two calls the pipeline makes, a per-instance
//! snapshot of the active bans, and the background work that keeps both off the request path.
//!
//! Why a snapshot: the ban check runs on every request (pipeline step 2), and issue 12 part 7
//! gives it 100 ns with nothing banned. A store round trip (or even building the key string)
//! costs more, so [`Bans::check`] reads an in-process copy of the active bans instead: one
//! atomic load when nothing is banned, one hash lookup otherwise. The copy is kept fresh by
//!
//! * the bans this instance issues or learns from a strike (entered at once),
//! * [`Bans::lift`] and [`Bans::add`] through this instance (applied at once), and
//! * for a shared store ([`BanStore::is_shared`]), a background task reading
//!   [`BanStore::list`] every [`sync interval`](Bans::with_sync_interval) (500 ms by default,
//!   at most 1 s), so a ban issued or lifted through any instance is honoured by every
//!   instance within 1 s.
//!
//! Why strikes are queued: a refusal must not wait for the store (an attacker's loop would
//! otherwise hold a connection per store round trip, and a slow store would slow every
//! refusal). The pipeline hands each strike to a bounded queue drained by one background task;
//! a full queue or a store error is counted (`secure_routes_ban_strikes_dropped_total`,
//! `secure_routes_ban_store_errors_total`) and logged at most every 10 s, never silent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;

use super::{Ban, BanKey, BanPolicy, BanStore, StoreError, StrikeOutcome, Violation};
use crate::audit::{AuditAction, AuditEvent, AuditWriter, Outcome, Reason};
use crate::clock::{Clock, SystemClock};
use crate::response::problem::{Rejection, RejectionKind};

/// The default interval between two reads of a shared store's bans.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// The longest sync interval allowed: the bound within which every instance honours a ban
/// issued or lifted through another.
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest sync interval allowed (a store read per instance per 10 ms at most).
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// Bans held in the local snapshot at most. Above it, the bans ending last are kept (the
/// repeat offenders), the others are enforced only by the instance that issued them until
/// the set shrinks; the overflow is counted (`secure_routes_ban_snapshot_overflow_total`) and
/// logged.
pub const MAX_LOCAL_BANS: usize = 65_536;
/// Strikes waiting for the store at most; a strike arriving at a full queue is dropped and
/// counted.
pub const STRIKE_QUEUE: usize = 4_096;

/// How often a repeated failure is logged at most.
const LOG_EVERY_MS: u64 = 10_000;

/// Metric names (documented in DESIGN.md, "Metrics").
pub(crate) mod metric {
    pub(crate) const ACTIVE: &str = "secure_routes_bans_active";
    pub(crate) const ISSUED: &str = "secure_routes_bans_issued_total";
    pub(crate) const STRIKES: &str = "secure_routes_ban_strikes_total";
    pub(crate) const STORE_ERRORS: &str = "secure_routes_ban_store_errors_total";
    pub(crate) const DROPPED: &str = "secure_routes_ban_strikes_dropped_total";
    pub(crate) const OVERFLOW: &str = "secure_routes_ban_snapshot_overflow_total";
}

/// A ban store with its policy: what the pipeline holds to check a client (step 2) and to
/// count its refusals. Cloning is cheap (one `Arc`); clones share the local snapshot.
///
/// * [`check`](Self::check): the ban on the resolved client address, and on the subject once
///   it is known, whichever ends later, read from this instance's snapshot (no store call).
/// * [`record`](Self::record): a strike of the refusal's weight against the address and the
///   subject; returns the bans it issued (each one an `ip_banned` event). Refusals that are
///   no [`Violation`] (404, 5xx, the ban itself) and requests from allow-listed addresses
///   strike nothing. The pipeline queues its strikes to a background task that calls this.
/// * [`lift`](Self::lift), [`add`](Self::add): an operator's changes, in the store and in the
///   snapshot at once; [`sync_now`](Self::sync_now): read the store's bans into the snapshot;
///   [`flush`](Self::flush): wait for the queued strikes.
///
/// Give one `Bans` to one [`Security`](crate::Security): it takes that Security's clock
/// (ban expiry) and audit writer (`ip_banned` events, store failures).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanPolicy, Bans, MemoryBans};
/// use secure_routes::response::problem::RejectionKind;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::builder().threshold(4).build().unwrap());
/// let ip = "203.0.113.7".parse().unwrap();
/// let now = Duration::from_secs(1_000);
/// // A CSRF failure weighs 2: the second one bans the address and the subject.
/// assert!(bans.record(RejectionKind::CsrfFailed, ip, Some("eve"), now).await.unwrap().is_empty());
/// let issued = bans.record(RejectionKind::CsrfFailed, ip, Some("eve"), now).await.unwrap();
/// assert_eq!(issued.len(), 2);
/// let ban = bans.check(ip, None, now).unwrap();
/// assert_eq!(ban.retry_after_secs(now), 900);
/// // Another address of the same subject is refused once the subject is known.
/// let other = "198.51.100.1".parse().unwrap();
/// assert!(bans.check(other, None, now).is_none());
/// assert!(bans.check(other, Some("eve"), now).is_some());
/// // A 404 is no violation.
/// assert!(bans.record(RejectionKind::NotFound, other, None, now).await.unwrap().is_empty());
/// // Lifted in the store and in the snapshot.
/// assert!(bans.lift(&BanKey::ip(ip)).await.unwrap());
/// assert!(bans.check(ip, None, now).is_none());
/// // The ban ends by the clock.
/// assert!(bans.check(other, Some("eve"), now + Duration::from_secs(900)).is_none());
/// # });
/// ```
#[derive(Clone)]
pub struct Bans {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn BanStore>,
    policy: BanPolicy,
    /// The active bans as this instance knows them; read lock-free by every request.
    local: ArcSwap<Snapshot>,
    /// Entries in `local`: 0 is the fast path (no load of the snapshot, no clock read).
    len: AtomicUsize,
    /// Serialises the writers of `local` (copy, change, swap).
    write: Mutex<()>,
    sync_interval_ms: AtomicU64,
    /// Whether the background task (sync or prune) was started.
    started: AtomicBool,
    /// Whether the last read of a shared store failed (one `store_failure` event per outage).
    outage: AtomicBool,
    clock: OnceLock<Arc<dyn Clock>>,
    audit: OnceLock<AuditWriter>,
    strikes: OnceLock<mpsc::Sender<Job>>,
    /// Rate limit of the warnings for failed or dropped strikes and failed syncs.
    next_log_ms: AtomicU64,
    suppressed: AtomicU64,
    #[cfg(test)]
    counts: TestCounts,
}

#[cfg(test)]
#[derive(Default)]
struct TestCounts {
    issued: AtomicU64,
    strikes: AtomicU64,
    store_errors: AtomicU64,
    dropped: AtomicU64,
}

/// The active bans: addresses by their grouped address (no key string to build per request),
/// subjects by key.
#[derive(Default)]
struct Snapshot {
    ips: HashMap<IpAddr, Ban>,
    subjects: HashMap<BanKey, Ban>,
}

impl Snapshot {
    fn len(&self) -> usize {
        self.ips.len() + self.subjects.len()
    }

    fn insert(&mut self, ban: Ban) {
        match ban.key.ip_addr() {
            Some(ip) => {
                let keep = self.ips.get(&ip).is_none_or(|old| old.until < ban.until);
                if keep {
                    self.ips.insert(ip, ban);
                }
            }
            None => {
                let keep = self
                    .subjects
                    .get(&ban.key)
                    .is_none_or(|old| old.until < ban.until);
                if keep {
                    self.subjects.insert(ban.key.clone(), ban);
                }
            }
        }
    }

    fn remove(&mut self, key: &BanKey) -> bool {
        match key.ip_addr() {
            Some(ip) => self.ips.remove(&ip).is_some(),
            None => self.subjects.remove(key).is_some(),
        }
    }

    fn without_expired(&self, now: Duration) -> Self {
        Self {
            ips: self
                .ips
                .iter()
                .filter(|(_, b)| b.until > now)
                .map(|(k, b)| (*k, b.clone()))
                .collect(),
            subjects: self
                .subjects
                .iter()
                .filter(|(_, b)| b.until > now)
                .map(|(k, b)| (k.clone(), b.clone()))
                .collect(),
        }
    }

    fn bans(&self) -> impl Iterator<Item = &Ban> {
        self.ips.values().chain(self.subjects.values())
    }
}

/// What the strike worker is asked to do.
enum Job {
    Strike(Box<Strike>),
    /// Answer once every strike queued before has been handled.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A strike waiting for the store, with the event to record if it issues a ban.
struct Strike {
    kind: RejectionKind,
    ip: IpAddr,
    subject: Option<String>,
    now: Duration,
    event: AuditEvent,
}

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("store", &self.inner.store.name())
            .field("policy", &self.inner.policy)
            .field("local", &self.inner.len.load(Ordering::Relaxed))
            .finish()
    }
}

impl Bans {
    /// Bans kept in `store` under `policy`.
    pub fn new(store: Arc<dyn BanStore>, policy: BanPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                policy,
                local: ArcSwap::from_pointee(Snapshot::default()),
                len: AtomicUsize::new(0),
                write: Mutex::new(()),
                sync_interval_ms: AtomicU64::new(ms(DEFAULT_SYNC_INTERVAL)),
                started: AtomicBool::new(false),
                outage: AtomicBool::new(false),
                clock: OnceLock::new(),
                audit: OnceLock::new(),
                strikes: OnceLock::new(),
                next_log_ms: AtomicU64::new(0),
                suppressed: AtomicU64::new(0),
                #[cfg(test)]
                counts: TestCounts::default(),
            }),
        }
    }

    /// How often a shared store's bans are read into the snapshot (default 500 ms), clamped
    /// to [`MIN_SYNC_INTERVAL`]..=[`MAX_SYNC_INTERVAL`]. Takes effect when the background
    /// task starts (the first request).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use secure_routes::bans::{BanPolicy, Bans, MemoryBans};
    /// let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default())
    ///     .with_sync_interval(Duration::from_secs(5));
    /// assert_eq!(bans.sync_interval(), Duration::from_secs(1));
    /// ```
    pub fn with_sync_interval(self, interval: Duration) -> Self {
        let clamped = interval.clamp(MIN_SYNC_INTERVAL, MAX_SYNC_INTERVAL);
        self.inner
            .sync_interval_ms
            .store(ms(clamped), Ordering::Relaxed);
        self
    }

    /// The interval set by [`with_sync_interval`](Self::with_sync_interval).
    pub fn sync_interval(&self) -> Duration {
        Duration::from_millis(self.inner.sync_interval_ms.load(Ordering::Relaxed))
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BanStore> {
        &self.inner.store
    }

    /// The policy.
    pub fn policy(&self) -> &BanPolicy {
        &self.inner.policy
    }

    /// The ban in force at `now` on `ip` (the resolved client address) or on `subject`, the
    /// one that ends later; `None` when neither is banned or the address is allow-listed.
    /// Reads this instance's snapshot only (see the module docs for how fresh it is).
    pub fn check(&self, ip: IpAddr, subject: Option<&str>, now: Duration) -> Option<Ban> {
        let by_ip = self.check_ip(ip, || now);
        let by_subject = subject.and_then(|s| self.check_subject(s, || now));
        match (by_ip, by_subject) {
            (Some(a), Some(b)) => Some(if b.until > a.until { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The ban on `ip`, the clock read only when something is banned.
    #[inline]
    fn check_ip(&self, ip: IpAddr, now: impl FnOnce() -> Duration) -> Option<Ban> {
        self.ensure_started();
        if self.inner.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let snapshot = self.inner.local.load();
        if snapshot.ips.is_empty() {
            return None;
        }
        let ban = snapshot.ips.get(&crate::client_ip::group(ip))?;
        let now = now();
        // An allow-listed address is never refused, even under a ban added by hand.
        (ban.until > now && !self.inner.policy.exempts(&ban.key)).then(|| ban.clone())
    }

    /// The ban on `subject`.
    fn check_subject(&self, subject: &str, now: impl FnOnce() -> Duration) -> Option<Ban> {
        self.ensure_started();
        if self.inner.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let snapshot = self.inner.local.load();
        if snapshot.subjects.is_empty() {
            return None;
        }
        let ban = snapshot.subjects.get(&BanKey::subject(subject))?;
        (ban.until > now()).then(|| ban.clone())
    }

    /// Step 2's refusal for `ip`, if banned: 403 with `Retry-After`.
    #[inline]
    pub(crate) fn refuse_ip(&self, ip: IpAddr, clock: &dyn Clock) -> Option<Rejection> {
        let mut now = Duration::ZERO;
        let ban = self.check_ip(ip, || {
            now = clock.now();
            now
        })?;
        Some(Rejection::banned(ban.retry_after_secs(now)))
    }

    /// The refusal for an authenticated `subject`, if banned.
    pub(crate) fn refuse_subject(&self, subject: &str, clock: &dyn Clock) -> Option<Rejection> {
        let mut now = Duration::ZERO;
        let ban = self.check_subject(subject, || {
            now = clock.now();
            now
        })?;
        Some(Rejection::banned(ban.retry_after_secs(now)))
    }

    /// Counts a refusal of `kind` against `ip` and `subject` in the store, now; returns the
    /// bans this issued (also entered in the snapshot, and counted in
    /// `secure_routes_bans_issued_total`). The pipeline does not wait for this: it queues its
    /// strikes to a background task.
    ///
    /// # Errors
    ///
    /// The store's error (a strike is lost; nothing else depends on it).
    pub async fn record(
        &self,
        kind: RejectionKind,
        ip: IpAddr,
        subject: Option<&str>,
        now: Duration,
    ) -> Result<Vec<Ban>, StoreError> {
        let Some(weight) = self.weight_of(kind, ip) else {
            return Ok(Vec::new());
        };
        let mut issued = Vec::new();
        let mut known = Vec::new();
        let keys = std::iter::once(BanKey::ip(ip)).chain(subject.map(BanKey::subject));
        let mut result = Ok(());
        for key in keys {
            match self
                .inner
                .store
                .strike(&key, weight, &self.inner.policy, now)
                .await
            {
                Ok(outcome) => {
                    self.inner.count(metric::STRIKES, 1);
                    match outcome {
                        StrikeOutcome::Banned { ban, new: true } => issued.push(ban),
                        // A ban this instance had not seen yet (issued elsewhere).
                        StrikeOutcome::Banned { ban, new: false } => known.push(ban),
                        StrikeOutcome::Counted { .. } | StrikeOutcome::Exempt => {}
                    }
                }
                Err(e) => {
                    self.inner.store_error("strike", &e);
                    result = Err(e);
                }
            }
        }
        self.inner.count(metric::ISSUED, issued.len() as u64);
        self.inner.insert(issued.iter().chain(&known).cloned(), now);
        result.map(|()| issued)
    }

    /// The weight of a refusal of `kind` from `ip`: `None` when it strikes nothing (no
    /// violation, weight 0, an allow-listed address).
    fn weight_of(&self, kind: RejectionKind, ip: IpAddr) -> Option<u32> {
        let violation = Violation::of(kind)?;
        let weight = self.inner.policy.weight(violation);
        (weight > 0 && !self.inner.policy.exempts(&BanKey::ip(ip))).then_some(weight)
    }

    /// Lifts `key`'s ban in the store and in this instance's snapshot (other instances drop
    /// it at their next sync, within 1 s); returns whether the store held anything for it.
    /// The caller audits the lift (`ban_lifted`): it knows who asked.
    ///
    /// # Errors
    ///
    /// The store's error; the snapshot is left as it was.
    pub async fn lift(&self, key: &BanKey) -> Result<bool, StoreError> {
        let lifted = self.inner.store.lift(key).await.inspect_err(|e| {
            self.inner.store_error("lift", e);
        })?;
        self.inner.remove(key);
        Ok(lifted)
    }

    /// Bans `key` until `until` with `reason`, in the store and in this instance's snapshot
    /// (see [`BanStore::add`]).
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn add(
        &self,
        key: &BanKey,
        until: Duration,
        reason: &str,
        now: Duration,
    ) -> Result<Ban, StoreError> {
        let ban = self
            .inner
            .store
            .add(key, until, reason, now)
            .await
            .inspect_err(|e| self.inner.store_error("add", e))?;
        self.inner.insert(std::iter::once(ban.clone()), now);
        Ok(ban)
    }

    /// Reads every ban in force from the store into the snapshot (what the background task
    /// does every sync interval for a shared store); returns how many the snapshot holds.
    ///
    /// # Errors
    ///
    /// The store's error: the snapshot keeps what it had (see DESIGN.md, "Bans").
    pub async fn sync_now(&self) -> Result<usize, StoreError> {
        self.inner.sync().await
    }

    /// Waits until every strike the pipeline queued before this call has reached the store
    /// (and its bans are in the snapshot and audited): for tests and graceful shutdowns.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::bans::{BanPolicy, Bans, MemoryBans};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default());
    /// bans.flush().await; // nothing queued: returns at once
    /// # });
    /// ```
    pub async fn flush(&self) {
        let Some(tx) = self.inner.strikes.get() else {
            return;
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Takes the Security's clock and audit writer (the first Security a `Bans` is given to).
    pub(crate) fn attach(&self, clock: Arc<dyn Clock>, audit: Option<AuditWriter>) {
        let _ = self.inner.clock.set(clock);
        if let Some(a) = audit {
            let _ = self.inner.audit.set(a);
        }
    }

    /// Queues the strike of a refusal of `kind`; `event` (built only when the refusal strikes)
    /// is the refusal's audit event, the base of the `ip_banned` event if a ban is issued.
    /// Never waits: a full queue drops the strike (counted and logged).
    pub(crate) fn queue_strike(
        &self,
        kind: RejectionKind,
        ip: IpAddr,
        subject: Option<&str>,
        now: Duration,
        event: impl FnOnce() -> AuditEvent,
    ) {
        if self.weight_of(kind, ip).is_none() {
            return;
        }
        let Some(tx) = self.strike_sender() else {
            self.inner.dropped("no_runtime");
            return;
        };
        let job = Strike {
            kind,
            ip,
            subject: subject.map(str::to_owned),
            now,
            event: event(),
        };
        match tx.try_send(Job::Strike(Box::new(job))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.inner.dropped("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => self.inner.dropped("closed"),
        }
    }

    /// The strike queue, its worker spawned on the current runtime the first time.
    fn strike_sender(&self) -> Option<&mpsc::Sender<Job>> {
        if let Some(tx) = self.inner.strikes.get() {
            return Some(tx);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.inner.strikes.get_or_init(|| {
            let (tx, rx) = mpsc::channel(STRIKE_QUEUE);
            runtime.spawn(strike_worker(Arc::downgrade(&self.inner), rx));
            tx
        }))
    }

    /// Starts the background task once, on the current runtime (nothing outside one: the
    /// snapshot then changes only through this instance's calls).
    #[inline]
    fn ensure_started(&self) {
        if !self.inner.started.load(Ordering::Relaxed) {
            self.start();
        }
    }

    #[cold]
    fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(background(
            Arc::downgrade(&self.inner),
            self.sync_interval(),
        ));
    }
}

/// Every interval: a shared store's bans read into the snapshot; a local store's snapshot
/// pruned of expired bans (the gauge stays true). Ends when the `Bans` is dropped.
async fn background(inner: Weak<Inner>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.store.is_shared() {
            // Errors are counted, logged and audited inside.
            let _ = inner.sync().await;
        } else {
            inner.prune();
        }
    }
}

/// Drains the strike queue: one store call per strike, in order. Ends when the `Bans` is
/// dropped (its sender with it).
async fn strike_worker(inner: Weak<Inner>, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let job = match job {
            Job::Strike(s) => s,
            Job::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        let bans = Bans { inner };
        let issued = match bans
            .record(job.kind, job.ip, job.subject.as_deref(), job.now)
            .await
        {
            Ok(issued) => issued,
            // Counted and logged in `record`.
            Err(_) => continue,
        };
        for ban in issued {
            let event = ban_event(job.event.clone(), &ban);
            bans.inner.emit(event).await;
        }
    }
}

/// The `ip_banned` event of a new ban, from the audit event of the refusal that issued it.
fn ban_event(base: AuditEvent, ban: &Ban) -> AuditEvent {
    let mut event = base
        .with_outcome(Outcome::Denied)
        .with_reason(Reason::BanIssued.as_str());
    event.action = AuditAction::IpBanned;
    if ban.key.ip_addr().is_none() && event.subject.is_none() {
        event.subject = Some(ban.key.as_str().to_owned());
    }
    let policy = std::mem::take(&mut event.metadata);
    event.with_metadata(serde_json::json!({
        "policy": policy.get("policy"),
        "key": ban.key.as_str(),
        "until": u64::try_from(ban.until.as_millis()).unwrap_or(u64::MAX),
        "strikes": ban.strikes,
        "ban_reason": ban.reason,
    }))
}

impl Inner {
    fn now(&self) -> Duration {
        match self.clock.get() {
            Some(c) => c.now(),
            None => SystemClock.now(),
        }
    }

    /// Copies the snapshot, changes the copy (expired bans dropped), swaps it in.
    fn update(&self, now: Duration, change: impl FnOnce(&mut Snapshot)) {
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = self.local.load().without_expired(now);
        change(&mut next);
        self.publish(next);
    }

    /// Swaps in `next`, capped at [`MAX_LOCAL_BANS`] (the latest-ending kept).
    fn publish(&self, mut next: Snapshot) {
        let n = next.len();
        if n > MAX_LOCAL_BANS {
            let mut ends: Vec<Duration> = next.bans().map(|b| b.until).collect();
            ends.sort_unstable();
            let cut = ends[n - MAX_LOCAL_BANS];
            next.ips.retain(|_, b| b.until >= cut);
            next.subjects.retain(|_, b| b.until >= cut);
            // Ties at the cut may leave a few over: drop arbitrary ones of them.
            let mut over = next.len().saturating_sub(MAX_LOCAL_BANS);
            next.ips.retain(|_, b| {
                let drop = over > 0 && b.until == cut;
                over -= usize::from(drop);
                !drop
            });
            next.subjects.retain(|_, b| {
                let drop = over > 0 && b.until == cut;
                over -= usize::from(drop);
                !drop
            });
            let dropped = (n - next.len()) as u64;
            metrics::counter!(metric::OVERFLOW).increment(dropped);
            self.warn_limited(|suppressed| {
                tracing::warn!(
                    dropped,
                    cap = MAX_LOCAL_BANS,
                    suppressed,
                    "more bans than the local snapshot holds: the earliest-ending are not enforced locally"
                );
            });
        }
        let len = next.len();
        self.local.store(Arc::new(next));
        self.len.store(len, Ordering::Release);
        metrics::gauge!(metric::ACTIVE).set(len as f64);
    }

    fn insert(&self, bans: impl Iterator<Item = Ban>, now: Duration) {
        let bans: Vec<Ban> = bans.filter(|b| b.until > now).collect();
        if bans.is_empty() {
            return;
        }
        self.update(now, |s| bans.into_iter().for_each(|b| s.insert(b)));
    }

    fn remove(&self, key: &BanKey) {
        let now = self.now();
        self.update(now, |s| {
            s.remove(key);
        });
    }

    fn prune(&self) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let now = self.now();
        let expired = self.local.load().bans().any(|b| b.until <= now);
        if expired {
            self.update(now, |_| {});
        }
    }

    async fn sync(&self) -> Result<usize, StoreError> {
        let now = self.now();
        match self.store.list(now).await {
            Ok(list) => {
                if self.outage.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        store = self.store.name(),
                        "ban store answers again: bans synced"
                    );
                }
                let mut next = Snapshot::default();
                for ban in list.into_iter().filter(|b| b.until > now) {
                    next.insert(ban);
                }
                let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
                self.publish(next);
                Ok(self.len.load(Ordering::Acquire))
            }
            Err(e) => {
                self.store_error("list", &e);
                if !self.outage.swap(true, Ordering::AcqRel) {
                    // Once per outage: the last snapshot stays (fail-open for new bans).
                    let event = AuditEvent::new(AuditAction::StoreFailure)
                        .with_outcome(Outcome::Allowed)
                        .with_reason(Reason::StoreError.as_str())
                        .with_metadata(serde_json::json!({
                            "component": "bans",
                            "store": self.store.name(),
                            "op": "list",
                        }));
                    self.emit(event).await;
                }
                Err(e)
            }
        }
    }

    /// Records an event through the audit writer, else `tracing`.
    async fn emit(&self, event: AuditEvent) {
        match self.audit.get() {
            Some(w) => w.record(event).await,
            None => tracing::info!(
                target: "secure_routes::audit",
                action = event.action.as_str(),
                reason = %event.reason,
                "security event"
            ),
        }
    }

    fn count(&self, name: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!(name).increment(n);
        #[cfg(test)]
        {
            let c = match name {
                metric::ISSUED => &self.counts.issued,
                _ => &self.counts.strikes,
            };
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    fn store_error(&self, op: &'static str, e: &StoreError) {
        metrics::counter!(metric::STORE_ERRORS, "op" => op).increment(1);
        #[cfg(test)]
        self.counts.store_errors.fetch_add(1, Ordering::Relaxed);
        let store = self.store.name();
        self.warn_limited(|suppressed| {
            tracing::warn!(store, op, error = %e, suppressed, "ban store failed");
        });
    }

    fn dropped(&self, reason: &'static str) {
        metrics::counter!(metric::DROPPED, "reason" => reason).increment(1);
        #[cfg(test)]
        self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        self.warn_limited(|suppressed| {
            tracing::warn!(reason, suppressed, "ban strike dropped");
        });
    }

    /// Runs `log` at most once per 10 s (by the monotonic-enough wall clock), passing how
    /// many warnings were suppressed since the last one.
    fn warn_limited(&self, log: impl FnOnce(u64)) {
        let now = ms(SystemClock.now());
        let next = self.next_log_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_log_ms
                .compare_exchange(
                    next,
                    now + LOG_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn ms(d: Duration) -> u64 {
    super::duration_ms(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bans::MemoryBans;
    use crate::bans::memory::sort_bans;
    use crate::clock::FakeClock;
    use std::sync::atomic::AtomicBool;

    const T0: Duration = Duration::from_secs(1_700_000_000);
    const MIN: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A memory store that says it is shared (another process could write it), can fail its
    /// reads, and can hang its strikes.
    #[derive(Default)]
    struct Shared {
        inner: MemoryBans,
        fail: AtomicBool,
        hang: AtomicBool,
    }

    impl Shared {
        fn down(&self) -> Result<(), StoreError> {
            if self.fail.load(Ordering::Relaxed) {
                Err(StoreError::Unavailable("connection refused".into()))
            } else {
                Ok(())
            }
        }
    }

    impl BanStore for Shared {
        fn strike<'a>(
            &'a self,
            key: &'a BanKey,
            weight: u32,
            policy: &'a BanPolicy,
            now: Duration,
        ) -> super::super::BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
            Box::pin(async move {
                if self.hang.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
                self.down()?;
                self.inner.strike(key, weight, policy, now).await
            })
        }
        fn check<'a>(
            &'a self,
            key: &'a BanKey,
            now: Duration,
        ) -> super::super::BoxFuture<'a, Result<Option<Ban>, StoreError>> {
            self.inner.check(key, now)
        }
        fn list(&self, now: Duration) -> super::super::BoxFuture<'_, Result<Vec<Ban>, StoreError>> {
            Box::pin(async move {
                self.down()?;
                self.inner.list(now).await
            })
        }
        fn lift<'a>(
            &'a self,
            key: &'a BanKey,
        ) -> super::super::BoxFuture<'a, Result<bool, StoreError>> {
            self.inner.lift(key)
        }
        fn add<'a>(
            &'a self,
            key: &'a BanKey,
            until: Duration,
            reason: &'a str,
            now: Duration,
        ) -> super::super::BoxFuture<'a, Result<Ban, StoreError>> {
            self.inner.add(key, until, reason, now)
        }
        fn name(&self) -> &'static str {
            "shared-test"
        }
        fn is_shared(&self) -> bool {
            true
        }
    }

    fn bans_on(store: &Arc<Shared>, clock: &FakeClock, threshold: u32) -> Bans {
        let policy = BanPolicy::builder()
            .threshold(threshold)
            .allow("10.0.0.0/8")
            .build()
            .unwrap();
        let bans = Bans::new(Arc::clone(store) as Arc<dyn BanStore>, policy);
        bans.attach(Arc::new(clock.clone()), None);
        bans
    }

    fn event() -> AuditEvent {
        AuditEvent::new(AuditAction::UnauthorizedAccess)
    }

    #[tokio::test]
    async fn nothing_banned_is_the_fast_path_and_a_ban_is_found_by_grouped_address() {
        let clock = FakeClock::new(T0);
        let bans = bans_on(&Arc::default(), &clock, 1);
        assert_eq!(bans.inner.len.load(Ordering::Relaxed), 0);
        assert!(bans.check(ip("2001:db8:1:2::5"), Some("x"), T0).is_none());
        bans.record(RejectionKind::Unauthorized, ip("2001:db8:1:2::5"), None, T0)
            .await
            .unwrap();
        // Another address of the same /64 is the same client.
        let ban = bans.check(ip("2001:db8:1:2:ffff::1"), None, T0).unwrap();
        assert_eq!(ban.key.as_str(), "ip:2001:db8:1:2::/64");
        assert!(bans.check(ip("2001:db8:1:3::1"), None, T0).is_none());
        let r = bans.refuse_ip(ip("2001:db8:1:2::9"), &clock).unwrap();
        assert_eq!(r.info().kind, RejectionKind::Banned);
        // Expiry by the injected clock, not the system's.
        clock.advance(15 * MIN);
        assert!(bans.refuse_ip(ip("2001:db8:1:2::9"), &clock).is_none());
    }

    #[tokio::test]
    async fn allow_listed_addresses_are_never_refused_nor_struck() {
        let clock = FakeClock::new(T0);
        let store = Arc::new(Shared::default());
        let bans = bans_on(&store, &clock, 1);
        let inside = ip("10.1.2.3");
        assert!(
            bans.record(RejectionKind::Forbidden, inside, None, T0)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store.inner.is_empty(),
            "nothing stored for an allow-listed address"
        );
        // Even a ban added by hand is not enforced on it.
        bans.add(&BanKey::ip(inside), T0 + MIN, "manual", T0)
            .await
            .unwrap();
        assert!(bans.check(inside, None, T0).is_none());
    }

    #[tokio::test]
    async fn queued_strikes_ban_and_count_without_the_caller_waiting() {
        let clock = FakeClock::new(T0);
        let bans = bans_on(&Arc::default(), &clock, 2);
        let peer = ip("203.0.113.9");
        for _ in 0..2 {
            bans.queue_strike(RejectionKind::Unauthorized, peer, Some("sam"), T0, event);
        }
        // Queued, not yet stored: the caller did not wait.
        bans.flush().await;
        assert!(bans.check(peer, None, T0).is_some());
        assert!(bans.check(ip("198.51.100.1"), Some("sam"), T0).is_some());
        assert_eq!(bans.inner.counts.issued.load(Ordering::Relaxed), 2);
        assert_eq!(bans.inner.counts.strikes.load(Ordering::Relaxed), 4);
        // A refusal that is no violation is not queued at all.
        bans.queue_strike(RejectionKind::NotFound, peer, None, T0, || unreachable!());
    }

    #[tokio::test]
    async fn a_full_queue_and_a_store_error_are_counted() {
        let clock = FakeClock::new(T0);
        let store = Arc::new(Shared::default());
        let bans = bans_on(&store, &clock, 50);
        store.hang.store(true, Ordering::Relaxed);
        // The worker takes one strike and hangs in the store; the queue fills behind it.
        for _ in 0..STRIKE_QUEUE + 3 {
            bans.queue_strike(
                RejectionKind::Unauthorized,
                ip("203.0.113.1"),
                None,
                T0,
                event,
            );
            tokio::task::yield_now().await;
        }
        assert!(bans.inner.counts.dropped.load(Ordering::Relaxed) >= 2);

        let store = Arc::new(Shared::default());
        let bans = bans_on(&store, &clock, 50);
        store.fail.store(true, Ordering::Relaxed);
        let err = bans
            .record(RejectionKind::Unauthorized, ip("203.0.113.1"), None, T0)
            .await;
        assert!(err.is_err());
        bans.queue_strike(
            RejectionKind::Unauthorized,
            ip("203.0.113.1"),
            None,
            T0,
            event,
        );
        bans.flush().await;
        assert_eq!(bans.inner.counts.store_errors.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_shared_store_is_synced_and_a_failed_sync_keeps_the_last_snapshot() {
        let clock = FakeClock::new(T0);
        let store = Arc::new(Shared::default());
        let (a, b) = (bans_on(&store, &clock, 1), bans_on(&store, &clock, 1));
        let peer = ip("192.0.2.44");
        a.record(RejectionKind::Unauthorized, peer, None, T0)
            .await
            .unwrap();
        assert!(a.check(peer, None, T0).is_some());
        assert!(b.check(peer, None, T0).is_none(), "B has not synced");
        assert_eq!(b.sync_now().await.unwrap(), 1);
        assert!(b.check(peer, None, T0).is_some());
        // The store goes down: B keeps what it knew; the failure is counted each time.
        store.fail.store(true, Ordering::Relaxed);
        assert!(b.sync_now().await.is_err());
        assert!(b.sync_now().await.is_err());
        assert!(b.check(peer, None, T0).is_some());
        assert_eq!(b.inner.counts.store_errors.load(Ordering::Relaxed), 2);
        assert!(b.inner.outage.load(Ordering::Relaxed));
        store.fail.store(false, Ordering::Relaxed);
        // A lift through A: A at once, B at its next sync.
        assert!(a.lift(&BanKey::ip(peer)).await.unwrap());
        assert!(a.check(peer, None, T0).is_none());
        assert!(b.check(peer, None, T0).is_some());
        assert_eq!(b.sync_now().await.unwrap(), 0);
        assert!(b.check(peer, None, T0).is_none());
        assert!(!b.inner.outage.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_sync_honours_a_ban_from_another_instance_within_one_interval() {
        let clock = FakeClock::new(T0);
        let store = Arc::new(Shared::default());
        let (a, b) = (bans_on(&store, &clock, 1), bans_on(&store, &clock, 1));
        let peer = ip("192.0.2.45");
        // The first check starts B's background task (its first tick is immediate).
        assert!(b.check(peer, None, T0).is_none());
        tokio::task::yield_now().await;
        a.add(&BanKey::ip(peer), T0 + MIN, "manual", T0)
            .await
            .unwrap();
        // Tokio's paused clock: this advances virtual time by one interval, no real wait.
        tokio::time::sleep(DEFAULT_SYNC_INTERVAL + Duration::from_millis(1)).await;
        assert!(
            b.check(peer, None, T0).is_some(),
            "synced within one interval"
        );
        a.lift(&BanKey::ip(peer)).await.unwrap();
        tokio::time::sleep(DEFAULT_SYNC_INTERVAL).await;
        assert!(
            b.check(peer, None, T0).is_none(),
            "lift synced within one interval"
        );
    }

    #[tokio::test]
    async fn the_snapshot_is_capped_keeping_the_latest_ending_bans() {
        let clock = FakeClock::new(T0);
        let bans = bans_on(&Arc::default(), &clock, 1);
        let mut list: Vec<Ban> = (0..MAX_LOCAL_BANS as u32 + 10)
            .map(|i| Ban {
                key: BanKey::ip(IpAddr::from((0x0b00_0000 + i).to_be_bytes())),
                until: T0 + MIN + Duration::from_secs(u64::from(i)),
                strikes: 1,
                reason: "threshold".into(),
            })
            .collect();
        sort_bans(&mut list);
        let mut next = Snapshot::default();
        list.into_iter().for_each(|b| next.insert(b));
        bans.inner.publish(next);
        assert_eq!(bans.inner.len.load(Ordering::Relaxed), MAX_LOCAL_BANS);
        // The 10 ending first are the ones left out.
        assert!(bans.check(ip("11.0.0.9"), None, T0).is_none());
        assert!(bans.check(ip("11.0.0.10"), None, T0).is_some());
    }

    #[test]
    fn sync_interval_is_clamped() {
        let b = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default());
        assert_eq!(b.sync_interval(), DEFAULT_SYNC_INTERVAL);
        let b = b.with_sync_interval(Duration::ZERO);
        assert_eq!(b.sync_interval(), MIN_SYNC_INTERVAL);
    }
}
