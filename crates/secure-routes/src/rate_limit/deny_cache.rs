//! The deny cache: a key the store refused is refused locally until its retry time, without
//! asking the store again.
//!
//! Why: a hot key (one user hammering a STRICT route from many connections, or a client past
//! its quota retrying in a loop) otherwise sends every request to the shared store, where the
//! checks of one key serialise on one row lock (Postgres) or one Lua call after another
//! (Redis). Under that queue a check can outlive the store timeout, and the client gets a 503
//! where it deserved a 429. The pattern is Upstash's `ephemeralCache` and
//! rate-limiter-flexible's `inMemoryBlockOnConsumed`.
//!
//! Why it is exact: a refusal says no request of this cost is admitted before `retry_after`.
//! Other instances can only consume more of the quota, never give any back, so the store would
//! refuse every check of this key until then as well. A locally refused request never admits
//! and never consumes (refused checks consume nothing in any store), so the decisions are the
//! store's, minus the round trips.
//!
//! Two more rules keep a hot key from queueing on the store:
//! * **One check per key in flight per process** ([`DenyCache::single_flight`]): concurrent
//!   checks of one key wait for the one in flight and then look at the cache again, so a burst
//!   of N same-key requests costs the store about as many calls as it admits plus one, and the
//!   row lock sees at most one waiter per instance. The store timeout bounds each call, not
//!   the wait in line: a healthy store answering one key's checks one after another is not a
//!   failure. Once [`FAIL_AFTER`] checks of a key have failed in a row (timeout, error), the
//!   checks waiting behind them fail at once with the same reason, so a hanging store cannot
//!   chain timeouts one after another; a single slow check (a cold connection on a loaded
//!   machine) only costs itself. The streak holds for one store timeout after its last
//!   failure; then the next check asks the store again, so a recovered store is seen at once
//!   even while the key stays busy. The wait itself is bounded too ([`MAX_WAIT_FACTOR`] store
//!   timeouts); past it a check goes to the store on its own, as it would without the
//!   cache.
//! * **Time is the pipeline's clock** (the injected [`Clock`](crate::clock::Clock), wall time
//!   by default): an entry holds `[refused_at, until)`. A clock that steps back before
//!   `refused_at` expires the entry; a step back after it lengthens the local refusal by the
//!   step (at most the step: each remaining wait is still bounded by the store's
//!   `retry_after`). A step forward ends it early, which only costs a store call.
//!
//! The cache is bounded (entries per shard); when a shard is full, expired entries are swept
//! and, if none expired, the refusal that ends soonest is forgotten (the next check of that
//! key asks the store: slower, never wrong). The in-process
//! [`MemoryStore`](super::MemoryStore) is its own deny cache and is not wrapped (see
//! [`RateLimitStore::is_local`](super::RateLimitStore::is_local)).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{Decision, Quota, RateLimitKey};

const SHARDS: usize = 16;
/// Entries per shard: 16 × 4 096 = 65 536 refused keys remembered at once.
const SHARD_CAPACITY: usize = 4_096;

#[derive(Clone, Copy)]
struct Entry {
    refused_at: Duration,
    until: Duration,
    /// When the quota is fully available again, for the `RateLimit` headers.
    reset_at: Duration,
    limit: u32,
}

type Map = HashMap<(RateLimitKey, Quota), Entry>;
type InFlight = HashMap<RateLimitKey, Arc<Flight>>;

/// A check waits in line for at most this many store timeouts.
pub(crate) const MAX_WAIT_FACTOR: u32 = 20;

/// After this many failed checks of one key in a row, the checks waiting in line fail too.
pub(crate) const FAIL_AFTER: u64 = 2;

/// One key's line of checks.
#[derive(Default)]
struct Flight {
    lock: Arc<tokio::sync::Mutex<()>>,
    streak: Mutex<Streak>,
}

/// Checks of one key failed in a row (reset by a success), when the last one failed (a
/// monotonic instant: tokio's, so paused-time tests drive it) and how.
#[derive(Clone, Copy, Default)]
struct Streak {
    failures: u64,
    last_at: Option<tokio::time::Instant>,
    kind: FlightFailure,
}

/// How a check of the store failed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum FlightFailure {
    Timeout,
    #[default]
    Error,
}

/// Local refusals in front of a shared store; see the [module docs](self).
#[derive(Default)]
pub(crate) struct DenyCache {
    shards: [Mutex<Map>; SHARDS],
    inflight: [Mutex<InFlight>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    /// Requests refused from the cache (no store call).
    hits: AtomicU64,
}

impl std::fmt::Debug for DenyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyCache")
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl DenyCache {
    fn shard_of(&self, key: &RateLimitKey) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    /// A refusal for `key` under `quota` if the store refused it and its retry time has not
    /// come yet at `now`.
    pub(crate) fn check(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        now: Duration,
    ) -> Option<Decision> {
        let shard = &self.shards[self.shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = *map.get(&(*key, quota))?;
        if now < entry.refused_at || now >= entry.until {
            map.remove(&(*key, quota));
            return None;
        }
        drop(map);
        self.hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("secure_routes_deny_cache_hits_total").increment(1);
        Some(Decision {
            allowed: false,
            limit: entry.limit,
            remaining: 0,
            reset_after: entry.reset_at.saturating_sub(now),
            retry_after: Some(entry.until - now),
        })
    }

    /// Remembers a store's refusal made at `now`. Admissions and refusals without a retry time
    /// are not cached.
    pub(crate) fn remember(&self, key: &RateLimitKey, quota: Quota, d: &Decision, now: Duration) {
        let Some(retry) = d.retry_after.filter(|r| !d.allowed && !r.is_zero()) else {
            return;
        };
        let entry = Entry {
            refused_at: now,
            until: now.saturating_add(retry),
            reset_at: now.saturating_add(d.reset_after.max(retry)),
            limit: d.limit,
        };
        let shard = &self.shards[self.shard_of(key)];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= SHARD_CAPACITY && !map.contains_key(&(*key, quota)) {
            map.retain(|_, e| now >= e.refused_at && now < e.until);
            if map.len() >= SHARD_CAPACITY {
                // Full of live refusals (someone spreading over many keys): the one that ends
                // soonest makes room, so a new hot key is still protected. Forgetting a
                // refusal only costs a store call later.
                if let Some(soonest) = map.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k) {
                    map.remove(&soonest);
                }
            }
        }
        map.insert((*key, quota), entry);
    }

    /// Waits (at most `wait`) until no other check of `key` is in flight in this process, and
    /// holds the key until the returned guard drops. `None` when the wait ran out: the caller
    /// goes to the store on its own. [`FlightGuard::failed_ahead`] tells whether the line is
    /// failing: [`FAIL_AFTER`] checks of the key failed in a row, the last less than
    /// `fail_window` ago. Past that window the next check asks the store again (a probe), so
    /// a streak never outlives the store's trouble.
    pub(crate) async fn single_flight(
        &self,
        key: &RateLimitKey,
        wait: Duration,
        fail_window: Duration,
    ) -> Option<FlightGuard<'_>> {
        let idx = self.shard_of(key);
        let flight = {
            let mut map = self.inflight[idx]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(*key).or_default())
        };
        let lock = Arc::clone(&flight.lock);
        // Dropped on every path (also a timed-out wait): the map entry is released with it.
        let mut guard = FlightGuard {
            cache: self,
            idx,
            key: *key,
            flight: Some(flight),
            held: None,
            failed_ahead_kind: None,
        };
        guard.held = Some(tokio::time::timeout(wait, lock.lock_owned()).await.ok()?);
        let streak = *guard
            .streak()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if streak.failures >= FAIL_AFTER
            && streak.last_at.is_some_and(|t| t.elapsed() < fail_window)
        {
            guard.failed_ahead_kind = Some(streak.kind);
        }
        Some(guard)
    }
}

/// Holds one key's place in line; on drop, the key's entry is removed once nobody else waits.
pub(crate) struct FlightGuard<'a> {
    cache: &'a DenyCache,
    idx: usize,
    key: RateLimitKey,
    /// `Some` until dropped (taken under the map lock, see `Drop`).
    flight: Option<Arc<Flight>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    failed_ahead_kind: Option<FlightFailure>,
}

impl FlightGuard<'_> {
    fn streak(&self) -> &Mutex<Streak> {
        match &self.flight {
            Some(f) => &f.streak,
            None => unreachable!("the flight is only taken on drop"),
        }
    }

    /// How the checks ahead of this one failed, if the line is failing (see
    /// [`DenyCache::single_flight`]). A check told so fails without a store call and records
    /// nothing.
    pub(crate) fn failed_ahead(&self) -> Option<FlightFailure> {
        self.failed_ahead_kind
    }

    /// Records that this check got an answer from the store: the failure streak ends.
    pub(crate) fn succeed(&self) {
        let mut s = self.streak().lock().unwrap_or_else(PoisonError::into_inner);
        *s = Streak::default();
    }

    /// Records that this check failed at the store.
    pub(crate) fn fail(&self, kind: FlightFailure) {
        let mut s = self.streak().lock().unwrap_or_else(PoisonError::into_inner);
        s.failures += 1;
        s.last_at = Some(tokio::time::Instant::now());
        s.kind = kind;
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        // Release the line before deciding whether the entry can go.
        self.held = None;
        let mut map = self.cache.inflight[self.idx]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Every clone and drop of a flight's `Arc` happens under this lock (waiters clone it
        // in `single_flight`, guards drop it here), so the count is exact: the map's and ours
        // means nobody else is in line.
        if let Some(ours) = self.flight.take()
            && map
                .get(&self.key)
                .is_some_and(|entry| Arc::ptr_eq(entry, &ours) && Arc::strong_count(&ours) == 2)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> RateLimitKey {
        RateLimitKey::from_bytes([n; 16])
    }

    fn refused(retry_secs: u64) -> Decision {
        Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_after: Duration::from_secs(60),
            retry_after: Some(Duration::from_secs(retry_secs)),
        }
    }

    const Q: Quota = Quota::per_minute(10);

    #[test]
    fn refuses_until_the_retry_time_then_forgets() {
        let c = DenyCache::default();
        let t0 = Duration::from_secs(1_000);
        assert!(c.check(&key(1), Q, t0).is_none());
        c.remember(&key(1), Q, &refused(30), t0);
        let d = c.check(&key(1), Q, t0 + Duration::from_secs(10)).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_secs(20)));
        assert_eq!(d.reset_after, Duration::from_secs(50));
        assert_eq!(d.limit, 10);
        // Other keys and other quotas of the same key are not refused.
        assert!(c.check(&key(2), Q, t0).is_none());
        assert!(c.check(&key(1), Quota::per_minute(11), t0).is_none());
        // At the retry time the store decides again.
        assert!(c.check(&key(1), Q, t0 + Duration::from_secs(30)).is_none());
        assert_eq!(c.hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn admissions_are_never_cached() {
        let c = DenyCache::default();
        let t0 = Duration::from_secs(1_000);
        let mut ok = refused(30);
        ok.allowed = true;
        ok.remaining = 3;
        c.remember(&key(1), Q, &ok, t0);
        assert!(c.check(&key(1), Q, t0).is_none());
        c.remember(&key(1), Q, &refused(0), t0);
        assert!(c.check(&key(1), Q, t0).is_none());
    }

    #[test]
    fn a_clock_stepping_back_expires_the_entry() {
        let c = DenyCache::default();
        let t0 = Duration::from_secs(1_000);
        c.remember(&key(1), Q, &refused(30), t0);
        assert!(c.check(&key(1), Q, t0 - Duration::from_secs(1)).is_none());
        assert!(
            c.check(&key(1), Q, t0).is_none(),
            "expired entries are removed"
        );
    }

    #[test]
    fn bounded() {
        let c = DenyCache::default();
        let t0 = Duration::from_secs(1_000);
        for i in 0..(SHARDS * SHARD_CAPACITY * 2) as u32 {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_be_bytes());
            c.remember(&RateLimitKey::from_bytes(b), Q, &refused(30), t0);
        }
        let total: usize = c.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * SHARD_CAPACITY, "{total}");
        // Once they expire, a full shard makes room again.
        let later = t0 + Duration::from_secs(31);
        c.remember(&key(7), Q, &refused(30), later);
        assert!(c.check(&key(7), Q, later).is_some());
    }

    #[tokio::test]
    async fn single_flight_serialises_one_key_and_cleans_up() {
        let c = Arc::new(DenyCache::default());
        let g = c
            .single_flight(&key(1), Duration::from_secs(5), W)
            .await
            .unwrap();
        // Another key is not blocked.
        assert!(c.single_flight(&key(2), Duration::ZERO, W).await.is_some());
        // The same key waits; with no time to wait it gives up (and goes to the store alone).
        assert!(c.single_flight(&key(1), Duration::ZERO, W).await.is_none());
        let c2 = Arc::clone(&c);
        let waiter = tokio::spawn(async move {
            c2.single_flight(&key(1), Duration::from_secs(5), W)
                .await
                .is_some()
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap()
        );
        let left: usize = c.inflight.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(left, 0, "no entry outlives its flights");
    }

    /// The failure window of these tests.
    const W: Duration = Duration::from_millis(50);

    #[tokio::test(start_paused = true)]
    async fn failures_in_a_row_fail_the_line_for_a_while_a_single_one_does_not() {
        let c = Arc::new(DenyCache::default());
        let wait = Duration::from_secs(5);
        // Queues a check of key 1. It reports what it was told once its turn comes, holds its
        // place until told how it ended (`Some(kind)`: failed, `None`: succeeded), and records
        // that only if it went to the store: a check told the line is failing records nothing,
        // as in the pipeline.
        type Turn = (
            Option<FlightFailure>,
            tokio::sync::oneshot::Sender<Option<FlightFailure>>,
        );
        let queue = |c: &Arc<DenyCache>| {
            let c = Arc::clone(c);
            let (tx, rx) = tokio::sync::oneshot::channel::<Turn>();
            tokio::spawn(async move {
                let g = c.single_flight(&key(1), wait, W).await.unwrap();
                let told = g.failed_ahead();
                let (done_tx, done_rx) = tokio::sync::oneshot::channel();
                let _ = tx.send((told, done_tx));
                let ended = done_rx.await.ok();
                if told.is_none() {
                    match ended {
                        Some(Some(kind)) => g.fail(kind),
                        Some(None) => g.succeed(),
                        None => {}
                    }
                }
            });
            rx
        };
        // Every step queues the next check before ending the current one, so the key never
        // goes quiet (the line, and its streak, live as long as someone is in it).
        let a = queue(&c);
        let (told, end_a) = a.await.unwrap();
        assert_eq!(told, None);
        let b = queue(&c);
        tokio::task::yield_now().await;
        // One slow check costs only itself: the next one in line tries the store.
        end_a.send(Some(FlightFailure::Timeout)).unwrap();
        let (told, end_b) = b.await.unwrap();
        assert_eq!(told, None);
        let d = queue(&c);
        tokio::task::yield_now().await;
        // Two in a row: the store is failing, and the line fails with it.
        end_b.send(Some(FlightFailure::Error)).unwrap();
        let (told, end_d) = d.await.unwrap();
        assert_eq!(told, Some(FlightFailure::Error));
        let e = queue(&c);
        tokio::task::yield_now().await;
        // One failure window later the next check asks the store again (a probe).
        tokio::time::advance(W).await;
        end_d.send(None).unwrap();
        let (told, end_e) = e.await.unwrap();
        assert_eq!(
            told, None,
            "a probe after the window, though the key stayed busy"
        );
        let f = queue(&c);
        tokio::task::yield_now().await;
        end_e.send(None).unwrap();
        let (told, end_f) = f.await.unwrap();
        assert_eq!(told, None, "the probe's success ended the streak");
        drop(end_f);
    }
}
