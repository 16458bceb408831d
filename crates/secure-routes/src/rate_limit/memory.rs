//! In-memory rate-limit store for one process: sharded, bounded, self-cleaning.
//!
//! * **Both algorithms**: each check runs [`sliding_window::acquire`] or [`gcra::acquire`]
//!   (chosen by [`Quota::algorithm`]) on the key's state as one atomic step, so concurrent
//!   requests on one key never admit more than the quota, and the decisions are exactly the
//!   pure functions' decisions for the key's history.
//! * **No global lock**: keys are spread over independent shards (64 by default), each an
//!   `RwLock` over two maps, one per algorithm. A check of a known key takes only the shard's
//!   *read* lock, so checks never wait for each other except on the same sliding-window key:
//!   * a GCRA key is one `AtomicU64` (its TAT), updated with a compare-and-swap: lock-free,
//!     and a refusal does not even write;
//!   * a sliding-window key is a log behind its own `Mutex`, so a client hammering one key
//!     serialises only itself.
//!
//!   The write lock is taken only to insert a new key and to sweep. The shard and the bucket
//!   are taken straight from the key bytes: a [`RateLimitKey`] is an HMAC output under a server
//!   secret, uniform and not choosable by clients, so hashing it again would buy nothing (and
//!   an attacker cannot aim keys at one shard or bucket to degrade it). Keys built by hand with
//!   [`RateLimitKey::from_bytes`] should be uniform too, or they only cost speed.
//! * **Time** read once per check, outside any lock. By default the store keeps its own
//!   monotonic time: the wall clock read once, when the store is built, then advanced by a
//!   calibrated CPU counter (the invariant TSC through `quanta`, governor's clock; the OS
//!   monotonic clock where there is none). Why not [`SystemClock`] on every check: reading the
//!   wall clock cost about 55 ns here against 20 ns for the counter, more than the rest of a
//!   hot-key GCRA check. This is safe because the store's timestamps never leave the process
//!   (decisions carry only durations), so they need to be consistent with each other, not with
//!   the wall clock; and a wall-clock step (NTP, a VM resumed) no longer moves them at all.
//!   An injected [`Clock`] ([`MemoryStoreBuilder::clock`]; tests use a `FakeClock`) is read
//!   instead when given. The algorithms deal with a clock stepping back (see their modules): a
//!   key's state never counts less because the clock went back. One limit: a state swept
//!   because it had expired at the clock's reading is gone, so if the clock then steps back,
//!   that key starts afresh (as in any store that forgets expired state). Deliberately, nothing
//!   store-wide remembers the latest time seen: after a clock that ran ahead is corrected,
//!   that would hold back every new key until the clock caught up, not just the keys used in
//!   the meantime.
//! * **Bounded memory**: see [`MemoryStoreBuilder::max_keys`] for the cap and what happens
//!   at it. Expired entries (those equivalent to a fresh key) are swept opportunistically
//!   every few inserts per shard and by [`MemoryStore::sweep`]; a refused request for an
//!   unknown key stores nothing.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use secure_routes::clock::FakeClock;
//! use secure_routes::rate_limit::{KeyHasher, MemoryStore, Quota, Subject};
//!
//! let clock = FakeClock::new(Duration::from_secs(1_000));
//! let store = MemoryStore::builder().max_keys(10_000).clock(Arc::new(clock.clone())).build();
//! let key = KeyHasher::new(b"secret").key("route:/x", &Subject::Custom("alice".into()));
//! let q = Quota::per_minute(2);
//! assert!(store.acquire_now(&key, q, 1).allowed);
//! assert!(store.acquire_now(&key, q, 1).allowed);
//! assert!(!store.acquire_now(&key, q, 1).allowed);
//! clock.advance(Duration::from_secs(60));
//! assert!(store.acquire_now(&key, q, 1).allowed);
//! assert_eq!(store.len(), 1);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::gcra::{self, GcraState};
use super::sliding_window::{self, SlidingLog};
use super::{Algorithm, BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore, StoreError};
use crate::bans::{Ban, BanKey, BanPolicy, BanStore, MemoryBans, StrikeOutcome};
use crate::clock::{Clock, SystemClock, duration_to_nanos};
use std::time::Duration;

/// Default cap on the number of keys held: one million.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default number of shards.
pub const DEFAULT_SHARDS: usize = 64;
/// Most shards a store may have.
const MAX_SHARDS: usize = 1 << 12;
/// Default number of inserts into a shard between two opportunistic sweeps of it.
pub const DEFAULT_SWEEP_EVERY: u32 = 1_024;
/// At its cap, a shard frees `1 / EVICTION_FRACTION` of its share at once, so that one scan of
/// the shard pays for many inserts.
const EVICTION_FRACTION: usize = 64;

/// In-memory rate-limit store for one process.
///
/// Fast (a shard read lock, one hash lookup and, for GCRA, one compare-and-swap per check; no
/// allocation for a known key, except as a sliding log first grows), exact under concurrency,
/// and bounded. It is per-process: several instances behind a load balancer each count
/// separately; use a shared store for a cluster.
///
/// ```
/// use secure_routes::rate_limit::{KeyHasher, MemoryStore, Quota, Subject};
/// let store = MemoryStore::new();
/// let key = KeyHasher::new(b"secret").key("b", &Subject::Custom("x".into()));
/// let d = store.acquire_now(&key, Quota::per_minute(10), 1);
/// assert!(d.allowed);
/// assert_eq!(d.remaining, 9);
/// ```
pub struct MemoryStore {
    clock: StoreClock,
    shards: Box<[Shard]>,
    shard_mask: usize,
    max_keys: usize,
    sweep_every: u32,
    evictions: AtomicU64,
    /// The bans this store keeps (it is a [`BanStore`] too).
    bans: MemoryBans,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("clock", &self.clock)
            .field("shards", &self.shards.len())
            .field("max_keys", &self.max_keys)
            .field("sweep_every", &self.sweep_every)
            .field("evictions", &self.evictions())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store on its own monotonic clock (see the [module](self)), with the default cap
    /// ([`DEFAULT_MAX_KEYS`]).
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert_eq!(MemoryStore::new().max_keys(), 1_000_000);
    /// ```
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A store on the given clock, with the default cap.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use secure_routes::{clock::FakeClock, rate_limit::MemoryStore};
    /// let store = MemoryStore::with_clock(Arc::new(FakeClock::new(Duration::from_secs(1))));
    /// assert!(store.is_empty());
    /// ```
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::builder().clock(clock).build()
    }

    /// A builder, to set the cap, clock, shard count and sweep interval.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// let store = MemoryStore::builder().max_keys(100).build();
    /// assert_eq!(store.max_keys(), 100);
    /// ```
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// Checks and counts `cost` units for `key` under `quota`, now, without a future: the
    /// synchronous core of [`RateLimitStore::acquire`] (which never waits).
    ///
    /// The decision is exactly what [`sliding_window::acquire`] or [`gcra::acquire`] returns
    /// for the key's history under that algorithm (a key used with both algorithms has one
    /// state for each).
    ///
    /// ```
    /// use secure_routes::rate_limit::{Algorithm, KeyHasher, MemoryStore, Quota, Subject};
    /// let store = MemoryStore::new();
    /// let key = KeyHasher::new(b"secret").key("b", &Subject::Custom("x".into()));
    /// let q = Quota::per_second(3).with_algorithm(Algorithm::Gcra);
    /// assert!(store.acquire_now(&key, q, 3).allowed);
    /// assert!(!store.acquire_now(&key, q, 1).allowed);
    /// ```
    pub fn acquire_now(&self, key: &RateLimitKey, quota: Quota, cost: u32) -> Decision {
        let now = self.clock.now_nanos();
        let shard = self.shard(key);
        // Fast path: a known key, under the shard's read lock.
        let known = {
            let maps = read(&shard.maps);
            match quota.algorithm() {
                Algorithm::Gcra => maps
                    .gcra
                    .get(key)
                    .map(|tat| acquire_gcra(tat, now, quota, cost)),
                Algorithm::SlidingWindow => maps
                    .sliding
                    .get(key)
                    .map(|slot| lock(slot).acquire(now, quota, cost)),
            }
        };
        match known {
            Some(decision) => decision,
            None => self.acquire_new(shard, key, now, quota, cost),
        }
    }

    /// Slow path: the key was not there a moment ago; take the write lock and insert it.
    #[cold]
    fn acquire_new(
        &self,
        shard: &Shard,
        key: &RateLimitKey,
        now: u64,
        quota: Quota,
        cost: u32,
    ) -> Decision {
        let mut maps = write(&shard.maps);
        let mut evicted = 0;
        let decision = match quota.algorithm() {
            Algorithm::Gcra => {
                // Another thread may have inserted the key between the two locks.
                if let Some(tat) = maps.gcra.get(key) {
                    acquire_gcra(tat, now, quota, cost)
                } else {
                    let mut state = GcraState::default();
                    let d = gcra::acquire_nanos(&mut state, now, quota, cost);
                    // Nothing recorded (a refusal, a zero cost): the fresh state is all there is
                    // to know, so store nothing.
                    if state.tat() > now {
                        evicted = maps.make_room(now, self.sweep_every);
                        maps.gcra.insert(*key, AtomicU64::new(state.tat()));
                    }
                    d
                }
            }
            Algorithm::SlidingWindow => {
                if let Some(slot) = maps.sliding.get_mut(key) {
                    slot.get_mut()
                        .unwrap_or_else(PoisonError::into_inner)
                        .acquire(now, quota, cost)
                } else {
                    let mut slot = Slot::default();
                    let d = slot.acquire(now, quota, cost);
                    if slot.expires_at > now {
                        evicted = maps.make_room(now, self.sweep_every);
                        maps.sliding.insert(*key, Mutex::new(slot));
                    }
                    d
                }
            }
        };
        drop(maps);
        if evicted > 0 {
            self.count_evictions(evicted);
        }
        decision
    }

    /// Removes every expired entry (one that would behave exactly as a fresh key) from every
    /// shard, one shard at a time, and returns how many were removed.
    ///
    /// Shards are also swept on their own as keys are inserted; call this from a timer to
    /// return memory after a burst of keys when traffic then goes quiet.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::clock::FakeClock;
    /// use secure_routes::rate_limit::{KeyHasher, MemoryStore, Quota, Subject};
    /// let clock = FakeClock::new(Duration::from_secs(100));
    /// let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    /// let key = KeyHasher::new(b"s").key("b", &Subject::Custom("x".into()));
    /// store.acquire_now(&key, Quota::per_second(5), 1);
    /// assert_eq!(store.sweep(), 0);
    /// clock.advance(Duration::from_secs(1));
    /// assert_eq!(store.sweep(), 1);
    /// assert!(store.is_empty());
    /// ```
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_nanos();
        self.shards
            .iter()
            .map(|s| write(&s.maps).sweep_expired(now))
            .sum()
    }

    /// Number of keys held (expired ones not yet swept included; a key used with both
    /// algorithms counts twice). Never more than [`max_keys`](Self::max_keys).
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert_eq!(MemoryStore::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.maps).len()).sum()
    }

    /// Whether no key is held.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert!(MemoryStore::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| read(&s.maps).len() == 0)
    }

    /// The cap on keys held.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert_eq!(MemoryStore::builder().max_keys(0).build().max_keys(), 1);
    /// ```
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How many live (unexpired) entries have been evicted because the cap was reached, since
    /// the store was built. Also counted in the metric
    /// `secure_routes_rate_limit_evictions_total`.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert_eq!(MemoryStore::new().evictions(), 0);
    /// ```
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The shard owning `key`.
    fn shard(&self, key: &RateLimitKey) -> &Shard {
        // Bytes 14..16 pick the shard; bytes 0..8 (disjoint) hash within it, so the keys of one
        // shard still spread over all of its buckets.
        let [.., hi, lo] = *key.as_bytes();
        let index = usize::from(u16::from_le_bytes([lo, hi])) & self.shard_mask;
        self.shards.get(index).unwrap_or_else(|| {
            unreachable!("the shard count is a power of two and the mask is one less")
        })
    }

    fn count_evictions(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.evictions.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("secure_routes_rate_limit_evictions_total").increment(n);
        tracing::debug!(
            evicted = n,
            max_keys = self.max_keys,
            "rate-limit memory store at its key cap: evicted the entries expiring soonest"
        );
    }
}

impl RateLimitStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let decision = self.acquire_now(key, quota, cost);
        Box::pin(std::future::ready(Ok(decision)))
    }

    fn try_acquire_now(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.acquire_now(key, quota, cost)))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// Builds a [`MemoryStore`].
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use secure_routes::{clock::FakeClock, rate_limit::MemoryStore};
/// let store = MemoryStore::builder()
///     .max_keys(50_000)
///     .clock(Arc::new(FakeClock::new(Duration::from_secs(1))))
///     .shards(16)
///     .sweep_every(256)
///     .build();
/// assert_eq!(store.max_keys(), 50_000);
/// ```
#[derive(Debug)]
#[must_use]
pub struct MemoryStoreBuilder {
    clock: Option<Arc<dyn Clock>>,
    max_keys: usize,
    shards: usize,
    sweep_every: u32,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            clock: None,
            max_keys: DEFAULT_MAX_KEYS,
            shards: DEFAULT_SHARDS,
            sweep_every: DEFAULT_SWEEP_EVERY,
        }
    }
}

impl MemoryStoreBuilder {
    /// The most keys the store holds at once (default [`DEFAULT_MAX_KEYS`]; at least 1).
    ///
    /// The cap is what keeps a flood of fresh keys (spoofed-looking clients, many IPv6 /64s)
    /// from exhausting memory. It is split evenly across the shards, and each shard enforces
    /// its share, so [`MemoryStore::len`] never exceeds the cap. When a new key arrives at a
    /// full shard:
    ///
    /// 1. the shard drops its expired entries first (lossless: they behave as fresh keys);
    /// 2. if that freed less than 1/64 of its share, it evicts the **live entries that expire
    ///    soonest** until 1/64 is free: those hold the least state (a few recent stamps, a
    ///    small debt), so evicting them gives away the least quota. Freeing a batch at a time
    ///    keeps a flood from forcing a full scan on every insert.
    ///
    /// Live evictions are counted ([`MemoryStore::evictions`] and the metric
    /// `secure_routes_rate_limit_evictions_total`): a non-zero rate means the cap is too low
    /// for the traffic, and evicted keys restart with a full quota.
    ///
    /// Memory per key, measured as resident memory (`benches/memory_per_key.rs`, figures in
    /// BENCHMARKS.md): a GCRA key costs 32 to 57 bytes and a sliding-window key holding one
    /// stamp (held inline) 89 to 157 bytes; a sliding log of two or more stamps moves to the
    /// heap, 8 bytes per admission still in its window plus the allocator's overhead (the log
    /// doubles as it grows). The range is the hash tables' fill: each doubles when 7/8 full, so
    /// it is cheapest just before and dearest just after. Full at the default cap of one
    /// million keys, the tables have just doubled: 55 and 157 bytes per key.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert_eq!(MemoryStore::builder().max_keys(10).build().max_keys(), 10);
    /// ```
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n.max(1);
        self
    }

    /// The clock (default: the store's own monotonic clock, the wall clock at build time
    /// advanced by a CPU counter; see the [module](self)).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::{clock::FakeClock, rate_limit::MemoryStore};
    /// let _store = MemoryStore::builder().clock(Arc::new(FakeClock::default())).build();
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The number of shards (default [`DEFAULT_SHARDS`]), rounded down to a power of two
    /// between 1 and 4096, and to at most the cap so every shard may hold a key. More shards
    /// mean less lock contention between threads.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// let _store = MemoryStore::builder().shards(256).build();
    /// ```
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Inserts into a shard between two opportunistic sweeps of its expired entries (default
    /// [`DEFAULT_SWEEP_EVERY`]; at least 1).
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// let _store = MemoryStore::builder().sweep_every(4_096).build();
    /// ```
    pub fn sweep_every(mut self, inserts: u32) -> Self {
        self.sweep_every = inserts.max(1);
        self
    }

    /// The store.
    ///
    /// ```
    /// use secure_routes::rate_limit::MemoryStore;
    /// assert!(MemoryStore::builder().build().is_empty());
    /// ```
    pub fn build(self) -> MemoryStore {
        let max_keys = self.max_keys.max(1);
        let count = floor_pow2(self.shards.clamp(1, MAX_SHARDS).min(max_keys));
        let (share, extra) = (max_keys / count, max_keys % count);
        let shards = (0..count)
            .map(|i| Shard {
                maps: RwLock::new(Maps {
                    gcra: HashMap::default(),
                    sliding: HashMap::default(),
                    cap: share + usize::from(i < extra),
                    inserts: 0,
                }),
            })
            .collect();
        MemoryStore {
            clock: self
                .clock
                .map_or_else(StoreClock::monotonic, StoreClock::Injected),
            shards,
            shard_mask: count - 1,
            max_keys,
            sweep_every: self.sweep_every.max(1),
            evictions: AtomicU64::new(0),
            bans: MemoryBans::new(),
        }
    }
}

/// The memory store keeps bans too (in a [`MemoryBans`]), so the default limits store is also
/// the ban store: one process, nothing shared.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanStore};
/// use secure_routes::rate_limit::MemoryStore;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let key = BanKey::subject("mallory");
/// let now = Duration::from_secs(1_000);
/// store.add(&key, now + Duration::from_secs(60), "manual", now).await.unwrap();
/// assert_eq!(store.check(&key, now).await.unwrap().unwrap().reason, "manual");
/// assert_eq!(BanStore::name(&store), "memory");
/// # });
/// ```
impl BanStore for MemoryStore {
    fn strike<'a>(
        &'a self,
        key: &'a BanKey,
        weight: u32,
        policy: &'a BanPolicy,
        now: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
        self.bans.strike(key, weight, policy, now)
    }

    fn check<'a>(
        &'a self,
        key: &'a BanKey,
        now: Duration,
    ) -> BoxFuture<'a, Result<Option<Ban>, StoreError>> {
        self.bans.check(key, now)
    }

    fn list(&self, now: Duration) -> BoxFuture<'_, Result<Vec<Ban>, StoreError>> {
        self.bans.list(now)
    }

    fn lift<'a>(&'a self, key: &'a BanKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.bans.lift(key)
    }

    fn add<'a>(
        &'a self,
        key: &'a BanKey,
        until: Duration,
        reason: &'a str,
        now: Duration,
    ) -> BoxFuture<'a, Result<Ban, StoreError>> {
        self.bans.add(key, until, reason, now)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// One GCRA check on a shared TAT: compute from a snapshot, then publish with a
/// compare-and-swap, retrying if another thread got there first. Each admission is decided on
/// the exact TAT it replaces, so concurrent checks are linearisable; a refusal writes nothing.
fn acquire_gcra(tat: &AtomicU64, now: u64, quota: Quota, cost: u32) -> Decision {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let mut state = GcraState::from_tat(current);
        let decision = gcra::acquire_nanos(&mut state, now, quota, cost);
        if !decision.allowed || state.tat() == current {
            return decision;
        }
        match tat.compare_exchange_weak(current, state.tat(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

/// The largest power of two `<= n` (`n >= 1`).
fn floor_pow2(n: usize) -> usize {
    match n.checked_ilog2() {
        Some(bits) => 1 << bits,
        None => 1,
    }
}

// Poisoned locks are used as they are. A panic while one was held cannot leave an entry
// half-updated (the algorithms do not panic; an update is a plain assignment or a CAS), so
// recovering is safe, and better than turning one panic into a panic on every later request.

fn read(m: &RwLock<Maps>) -> RwLockReadGuard<'_, Maps> {
    m.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(m: &RwLock<Maps>) -> RwLockWriteGuard<'_, Maps> {
    m.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the store reads time from.
#[derive(Debug)]
enum StoreClock {
    /// The default: the wall clock when the store was built (`start_nanos`, since the epoch)
    /// plus the counter's nanoseconds since then.
    Monotonic {
        counter: quanta::Clock,
        start_raw: u64,
        start_nanos: u64,
    },
    /// A clock given to the builder, read as it is.
    Injected(Arc<dyn Clock>),
}

impl StoreClock {
    fn monotonic() -> Self {
        // The first `quanta::Clock` in a process calibrates the counter against the OS clock
        // (about a millisecond; 200 ms at most); later ones reuse that calibration.
        let counter = quanta::Clock::new();
        let start_raw = counter.raw();
        Self::Monotonic {
            start_nanos: duration_to_nanos(SystemClock.now()),
            start_raw,
            counter,
        }
    }

    /// Now, in nanoseconds since the epoch.
    #[inline]
    fn now_nanos(&self) -> u64 {
        match self {
            // `delta_as_nanos` is zero for a reading at or before the start (counters of two
            // cores a few cycles apart), and the algorithms take a reading that went back.
            Self::Monotonic {
                counter,
                start_raw,
                start_nanos,
            } => start_nanos.saturating_add(counter.delta_as_nanos(*start_raw, counter.raw())),
            Self::Injected(clock) => duration_to_nanos(clock.now()),
        }
    }
}

type KeyMap<V> = HashMap<RateLimitKey, V, BuildHasherDefault<KeyPrefixHasher>>;

/// One shard, alone on its cache lines so that two cores working on two shards do not
/// invalidate each other's lock word (false sharing).
#[repr(align(128))]
struct Shard {
    maps: RwLock<Maps>,
}

struct Maps {
    /// GCRA keys: the TAT, compare-and-swapped under the read lock. Also when it expires.
    gcra: KeyMap<AtomicU64>,
    /// Sliding-window keys, each behind its own lock.
    sliding: KeyMap<Mutex<Slot>>,
    /// This shard's share of the key cap (at least 1).
    cap: usize,
    /// Inserts since the last opportunistic sweep.
    inserts: u32,
}

impl Maps {
    fn len(&self) -> usize {
        self.gcra.len() + self.sliding.len()
    }

    /// Removes the entries that have expired at `now`; returns how many.
    fn sweep_expired(&mut self, now: u64) -> usize {
        let before = self.len();
        self.gcra.retain(|_, tat| *tat.get_mut() > now);
        self.sliding.retain(|_, slot| slot_expiry(slot) > now);
        before - self.len()
    }

    /// Before inserting a new key: sweeps every `sweep_every` inserts, and at the cap frees a
    /// batch (expired first, then soonest to expire). Returns how many live entries were
    /// evicted.
    fn make_room(&mut self, now: u64, sweep_every: u32) -> usize {
        self.inserts = self.inserts.saturating_add(1);
        if self.inserts >= sweep_every {
            self.inserts = 0;
            self.sweep_expired(now);
        }
        if self.len() < self.cap {
            return 0;
        }
        self.sweep_expired(now);
        let batch = (self.cap / EVICTION_FRACTION).max(1);
        let target = self.cap - batch;
        match self.len().checked_sub(target) {
            Some(excess) if excess > 0 => self.evict_soonest(excess),
            _ => 0,
        }
    }

    /// Evicts the `n` entries that expire soonest (`0 < n <= len`); returns how many.
    fn evict_soonest(&mut self, n: usize) -> usize {
        let mut expiries: Vec<u64> = self
            .gcra
            .values_mut()
            .map(|tat| *tat.get_mut())
            .chain(self.sliding.values_mut().map(slot_expiry))
            .collect();
        let Some(nth) = n.checked_sub(1) else {
            return 0;
        };
        if nth >= expiries.len() {
            let all = self.len();
            self.gcra.clear();
            self.sliding.clear();
            return all;
        }
        let (_, &mut threshold, _) = expiries.select_nth_unstable(nth);
        // Everything strictly sooner goes; of the ties at the threshold, only enough to make n.
        let sooner = expiries.iter().filter(|&&e| e < threshold).count();
        let mut ties = n - sooner;
        let mut keep = |expires_at: u64| {
            if expires_at < threshold {
                false
            } else if expires_at == threshold && ties > 0 {
                ties -= 1;
                false
            } else {
                true
            }
        };
        let before = self.len();
        self.gcra.retain(|_, tat| keep(*tat.get_mut()));
        self.sliding.retain(|_, slot| keep(slot_expiry(slot)));
        before - self.len()
    }
}

/// When a sliding-window slot expires (exclusive access: no locking needed).
fn slot_expiry(slot: &mut Mutex<Slot>) -> u64 {
    slot.get_mut()
        .unwrap_or_else(PoisonError::into_inner)
        .expires_at
}

/// A sliding-window key: its log and when the log stops mattering (ns since the epoch).
#[derive(Default)]
struct Slot {
    log: SlidingLog,
    expires_at: u64,
}

impl Slot {
    fn acquire(&mut self, now: u64, quota: Quota, cost: u32) -> Decision {
        let window = duration_to_nanos(quota.window());
        let d = sliding_window::acquire_nanos(&mut self.log, now, window, quota, cost);
        self.expires_at = sliding_window::expires_at_nanos(&self.log, window);
        d
    }
}

/// The in-shard hasher: the first 8 key bytes as they are.
///
/// Safe only because keys are keyed-HMAC outputs: uniform, and not choosable by an attacker
/// (who would otherwise aim many keys at one bucket, the HashDoS attack SipHash exists for).
#[derive(Default)]
struct KeyPrefixHasher(u64);

impl Hasher for KeyPrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(bytes) {
            *w = *b;
        }
        self.0 = self.0.rotate_left(8) ^ u64::from_le_bytes(word);
    }

    // The `[u8; 16]` inside a key hashes its (constant) length first: nothing to mix in.
    fn write_usize(&mut self, _: usize) {}
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::FakeClock;
    use crate::rate_limit::{KeyHasher, Subject};

    fn key(i: usize) -> RateLimitKey {
        KeyHasher::new(b"memory-store-tests").key("bucket", &Subject::Custom(i.to_string()))
    }

    fn store(max_keys: usize) -> (MemoryStore, FakeClock) {
        let clock = FakeClock::new(Duration::from_secs(1_700_000_000));
        let store = MemoryStore::builder()
            .max_keys(max_keys)
            .clock(Arc::new(clock.clone()))
            .build();
        (store, clock)
    }

    #[test]
    fn the_default_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let clock = StoreClock::monotonic();
        let wall = duration_to_nanos(SystemClock.now());
        let first = clock.now_nanos();
        // Anchored on the wall clock when built (a generous bound: this is not a timing test,
        // only a check that the anchor is the epoch-based wall time and not zero or uptime).
        assert!(
            first.abs_diff(wall) < 60 * 1_000_000_000,
            "{first} vs {wall}"
        );
        let mut last = first;
        for _ in 0..10_000 {
            let now = clock.now_nanos();
            assert!(
                now >= last,
                "the store's own time went back: {now} < {last}"
            );
            last = now;
        }
        // The default store uses it; an injected clock is read as it is.
        assert!(matches!(
            MemoryStore::new().clock,
            StoreClock::Monotonic { .. }
        ));
        let fake = FakeClock::new(Duration::from_secs(5));
        let store = MemoryStore::with_clock(Arc::new(fake.clone()));
        assert_eq!(store.clock.now_nanos(), 5_000_000_000);
        fake.advance(Duration::from_nanos(7));
        assert_eq!(store.clock.now_nanos(), 5_000_000_007);
    }

    #[test]
    fn the_hasher_reads_the_key_prefix() {
        use std::hash::{BuildHasher, Hash};
        let k = RateLimitKey::from_bytes([1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9, 9, 9]);
        let h = BuildHasherDefault::<KeyPrefixHasher>::default().hash_one(k);
        assert_eq!(h, u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]));
        let mut other = KeyPrefixHasher::default();
        7u8.hash(&mut other);
        assert_eq!(other.finish(), 7);
    }

    #[test]
    fn shards_are_powers_of_two_no_more_than_the_cap() {
        assert_eq!(MemoryStore::new().shards.len(), 64);
        assert_eq!(MemoryStore::builder().max_keys(10).build().shards.len(), 8);
        assert_eq!(MemoryStore::builder().shards(100).build().shards.len(), 64);
        assert_eq!(MemoryStore::builder().shards(0).build().shards.len(), 1);
        assert_eq!(
            MemoryStore::builder()
                .shards(usize::MAX)
                .build()
                .shards
                .len(),
            MAX_SHARDS
        );
        let s = MemoryStore::builder().max_keys(1_000).build();
        let caps: usize = s.shards.iter().map(|s| read(&s.maps).cap).sum();
        assert_eq!(caps, 1_000);
    }

    #[test]
    fn a_flood_of_fresh_keys_stays_under_the_cap() {
        let (store, clock) = store(1_000);
        let q = Quota::per_hour(5);
        for i in 0..10_000 {
            assert!(store.acquire_now(&key(i), q, 1).allowed, "fresh key {i}");
            assert!(store.len() <= 1_000);
            if i % 1_000 == 0 {
                clock.advance(Duration::from_secs(1));
            }
        }
        assert!(store.len() <= 1_000);
        assert!(store.len() >= 900, "the cap is used, not thrown away");
        // Nothing had expired, so every key beyond the cap cost a live eviction.
        assert!(store.evictions() >= 9_000);
        // The same for GCRA.
        let (store, _) = self::store(1_000);
        let q = q.with_algorithm(Algorithm::Gcra);
        for i in 0..10_000 {
            store.acquire_now(&key(i), q, 1);
        }
        assert!(store.len() <= 1_000);
    }

    #[test]
    fn at_the_cap_expired_entries_go_first_and_then_the_soonest_to_expire() {
        let clock = FakeClock::new(Duration::from_secs(1_000));
        // One shard, so the order of eviction is visible.
        let store = MemoryStore::builder()
            .max_keys(4)
            .shards(1)
            .clock(Arc::new(clock.clone()))
            .build();
        let q = Quota::per_minute(10);
        // k0 expires in 1 s; k1, k2, k3 in 60 s, 100 ms apart.
        store.acquire_now(&key(0), Quota::per_second(10), 1);
        for i in 1..4 {
            store.acquire_now(&key(i), q, 1);
            clock.advance(Duration::from_millis(100));
        }
        assert_eq!(store.len(), 4);
        clock.advance(Duration::from_secs(2));
        // Full: k0 has expired, so it goes and nothing live is evicted.
        store.acquire_now(&key(4), q, 1);
        assert_eq!(store.evictions(), 0);
        assert_eq!(store.len(), 4);
        // Full again, nothing expired: the soonest to expire (k1) is evicted.
        store.acquire_now(&key(5), q, 1);
        assert_eq!(store.evictions(), 1);
        assert_eq!(store.len(), 4);
        let held: Vec<bool> = (0..6)
            .map(|i| read(&store.shards[0].maps).sliding.contains_key(&key(i)))
            .collect();
        assert_eq!(held, [false, false, true, true, true, true]);
        // An evicted key restarts with a full quota (the documented cost of eviction).
        assert_eq!(store.acquire_now(&key(1), q, 1).remaining, 9);
    }

    #[test]
    fn refusals_and_zero_costs_for_unknown_keys_store_nothing() {
        let (store, _) = store(100);
        let d = store.acquire_now(&key(1), Quota::per_minute(1), 2);
        assert!(!d.allowed);
        store.acquire_now(&key(2), Quota::per_minute(1), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn sweeps_remove_only_what_has_expired() {
        let (store, clock) = store(1_000);
        store.acquire_now(&key(1), Quota::per_second(1), 1);
        store.acquire_now(&key(2), Quota::per_minute(1), 1);
        store.acquire_now(
            &key(3),
            Quota::per_minute(1).with_algorithm(Algorithm::Gcra),
            1,
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.len(), 2);
        clock.advance(Duration::from_secs(59));
        assert_eq!(store.sweep(), 2);
        assert!(store.is_empty());
    }

    #[test]
    fn opportunistic_sweeps_run_every_k_inserts() {
        let clock = FakeClock::new(Duration::from_secs(1_000));
        let store = MemoryStore::builder()
            .shards(1)
            .sweep_every(10)
            .clock(Arc::new(clock.clone()))
            .build();
        for i in 0..9 {
            store.acquire_now(&key(i), Quota::per_second(1), 1);
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.len(), 9);
        // The tenth insert sweeps the nine expired keys.
        store.acquire_now(&key(100), Quota::per_second(1), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.evictions(), 0);
    }

    #[test]
    fn a_clock_going_back_keeps_held_state_and_forgets_only_swept_state() {
        let (store, clock) = store(100);
        let k = key(1);
        for q in [
            Quota::per_second(1),
            Quota::per_second(1).with_algorithm(Algorithm::Gcra),
        ] {
            let t = clock.now();
            assert!(store.acquire_now(&k, q, 1).allowed);
            // Half a second back: the admission still counts, and the wait runs from the
            // earlier reading (1.5 s, not 1 s).
            clock.set(t - Duration::from_millis(500));
            let d = store.acquire_now(&k, q, 1);
            assert!(!d.allowed);
            assert_eq!(d.retry_after, Some(Duration::from_millis(1_500)));
            clock.set(t + Duration::from_secs(1));
            assert!(store.acquire_now(&k, q, 1).allowed);
            // Expired at a later reading and swept: after a step back, the key starts afresh
            // (the documented limit).
            clock.set(t + Duration::from_secs(3));
            assert_eq!(store.sweep(), 1);
            clock.set(t + Duration::from_millis(1_500));
            assert!(store.acquire_now(&k, q, 1).allowed);
            clock.set(t + Duration::from_secs(10));
            assert_eq!(store.sweep(), 1);
        }
    }

    #[test]
    fn each_algorithm_keeps_its_own_state() {
        let (store, _) = store(1_000);
        let k = key(1);
        let sliding = Quota::per_minute(1);
        let g = sliding.with_algorithm(Algorithm::Gcra);
        assert!(store.acquire_now(&k, sliding, 1).allowed);
        assert!(!store.acquire_now(&k, sliding, 1).allowed);
        assert!(store.acquire_now(&k, g, 1).allowed);
        assert!(!store.acquire_now(&k, g, 1).allowed);
        assert!(!store.acquire_now(&k, sliding, 1).allowed);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn a_poisoned_shard_or_slot_keeps_working() {
        let (store, _) = store(1_000);
        let store = Arc::new(store);
        let k = key(7);
        let q = Quota::per_minute(3);
        let g = q.with_algorithm(Algorithm::Gcra);
        assert!(store.acquire_now(&k, q, 1).allowed);
        assert!(store.acquire_now(&k, g, 1).allowed);
        // Panic while holding the shard's write lock, then while holding the key's slot.
        let s = Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let _maps = write(&s.shard(&k).maps);
            panic!("poison the shard");
        })
        .join();
        assert!(joined.is_err());
        let s = Arc::clone(&store);
        let joined = std::thread::spawn(move || {
            let maps = read(&s.shard(&k).maps);
            let _slot = maps.sliding.get(&k).map(lock);
            panic!("poison the slot");
        })
        .join();
        assert!(joined.is_err());
        assert!(store.acquire_now(&k, q, 1).allowed);
        assert!(store.acquire_now(&k, q, 1).allowed);
        assert!(!store.acquire_now(&k, q, 1).allowed);
        assert!(store.acquire_now(&k, g, 2).allowed);
        assert!(!store.acquire_now(&k, g, 1).allowed);
        assert_eq!(store.len(), 2);
        assert_eq!(store.sweep(), 0);
        assert!(store.acquire_now(&key(8), q, 1).allowed);
    }

    #[test]
    fn the_trait_answers_what_acquire_now_answers() {
        let (store, _) = store(10);
        let k = key(3);
        let q = Quota::per_minute(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = rt.block_on(store.acquire(&k, q, 1)).unwrap();
        assert!(first.allowed);
        let second = rt.block_on(store.acquire(&k, q, 1)).unwrap();
        assert!(!second.allowed);
        assert_eq!(second.retry_after, Some(Duration::from_secs(60)));
        assert!(!store.acquire_now(&k, q, 1).allowed);
        assert_eq!(RateLimitStore::name(&store), "memory");
    }
}
