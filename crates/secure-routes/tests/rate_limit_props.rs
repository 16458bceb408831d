//! Property tests for the rate-limit algorithms and the memory store.
//!
//! * The sliding window is exact both ways against a brute-force model: it never admits more
//!   than N units in any window of length W, and it admits whenever the model says there is
//!   room; its `remaining`, `reset_after` and `retry_after` match the model too.
//! * GCRA keeps its documented promise (at most 2N − 1 in any window, a burst of at most N).
//! * A clock going backwards never breaks the sliding window's promise over what it recorded.
//! * The memory store answers exactly what the pure functions answer, keys are isolated, and
//!   concurrent callers on one key admit exactly N.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::gcra::{self, GcraState};
use secure_routes::rate_limit::sliding_window::{self, SlidingLog};
use secure_routes::rate_limit::{
    Algorithm, Decision, KeyHasher, MemoryStore, Quota, RateLimitKey, RateLimitStore, Subject,
};

/// An arbitrary but realistic epoch offset, in nanoseconds.
const START: u64 = 1_700_000_000_000_000_000;

fn at(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// A quota with a small window in nanoseconds, so random gaps often cross it.
fn quota_strategy() -> impl Strategy<Value = Quota> {
    (1u32..=8, 1u64..=1_000).prop_map(|(n, w)| Quota::new(n, at(w)))
}

/// Arrivals: (gap since the previous arrival in ns, cost). Gaps are mostly short, sometimes
/// exactly zero, sometimes longer than any window.
fn arrivals(max_cost: u32) -> impl Strategy<Value = Vec<(u64, u32)>> {
    let gap = prop_oneof![
        3 => Just(0u64),
        6 => 0u64..200,
        2 => 0u64..2_000,
    ];
    prop::collection::vec((gap, 0..=max_cost), 1..200)
}

/// The brute-force model of the sliding window: every admitted unit and its time.
#[derive(Default)]
struct Model {
    admitted: Vec<u64>,
}

impl Model {
    /// Units admitted in `(now - w, now]` (and, for a clock that only moves forward, that is
    /// every unit with `t + w > now`).
    fn used(&self, now: u64, w: u64) -> u64 {
        self.admitted
            .iter()
            .filter(|&&t| t + w > now && t <= now)
            .count() as u64
    }

    /// What the sliding window must answer at `now` for `cost`, recording the admission.
    fn decide(&mut self, now: u64, q: Quota, cost: u32) -> Decision {
        let w = q.window().as_nanos() as u64;
        let n = u64::from(q.limit());
        let used = self.used(now, w);
        let allowed = u64::from(cost) <= n && used + u64::from(cost) <= n;
        if allowed {
            self.admitted
                .extend(std::iter::repeat_n(now, cost as usize));
        }
        let held = self.used(now, w);
        let newest_live = self.admitted.iter().filter(|&&t| t + w > now).max();
        let retry_after = (!allowed).then(|| {
            if u64::from(cost) > n {
                return q.window();
            }
            // The first instant (a stamp leaving the window) at which the cost fits.
            let mut candidates: Vec<u64> = self
                .admitted
                .iter()
                .map(|&t| t + w)
                .filter(|&c| c > now)
                .collect();
            candidates.sort_unstable();
            let first = candidates
                .into_iter()
                .find(|&c| self.used(c, w) + u64::from(cost) <= n)
                .expect("once everything has left the window, any cost <= N fits");
            at(first - now)
        });
        Decision {
            allowed,
            limit: q.limit(),
            remaining: (n - held) as u32,
            reset_after: newest_live.map_or(Duration::ZERO, |&t| at(t + w - now)),
            retry_after,
        }
    }
}

/// The most units any window of length `w` holds, checking the windows that end at each stamp
/// (a window holds the most when its right edge sits on a stamp).
fn worst_window(stamps: &[u64], w: u64) -> usize {
    stamps
        .iter()
        .map(|&end| stamps.iter().filter(|&&t| t <= end && t + w > end).count())
        .max()
        .unwrap_or(0)
}

fn key(i: usize) -> RateLimitKey {
    KeyHasher::new(b"rate-limit-props").key("bucket", &Subject::Custom(i.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Exactness both ways, plus every field of the decision, against the brute-force model.
    #[test]
    fn sliding_window_matches_the_brute_force_model(
        q in quota_strategy(),
        seq in arrivals(10),
    ) {
        let w = q.window().as_nanos() as u64;
        let mut log = SlidingLog::default();
        let mut model = Model::default();
        let mut now = START;
        for (i, &(gap, cost)) in seq.iter().enumerate() {
            now += gap;
            let got = sliding_window::acquire(&mut log, at(now), q, cost);
            let want = model.decide(now, q, cost);
            prop_assert_eq!(got, want, "arrival {} at +{} ns, cost {}", i, now - START, cost);
            prop_assert!(log.len() <= q.limit() as usize);
        }
        prop_assert!(worst_window(&model.admitted, w) <= q.limit() as usize);
    }

    /// Waiting exactly `retry_after` is enough, and a nanosecond less is not.
    #[test]
    fn sliding_window_retry_after_is_exact(q in quota_strategy(), seq in arrivals(8)) {
        let mut log = SlidingLog::default();
        let mut now = START;
        for &(gap, cost) in &seq {
            now += gap;
            let d = sliding_window::acquire(&mut log, at(now), q, cost);
            if let (Some(wait), true) = (d.retry_after, cost <= q.limit()) {
                let wait = wait.as_nanos() as u64;
                prop_assert!(wait > 0);
                let mut early = log.clone();
                prop_assert!(!sliding_window::acquire(&mut early, at(now + wait - 1), q, cost).allowed);
                let mut on_time = log.clone();
                prop_assert!(sliding_window::acquire(&mut on_time, at(now + wait), q, cost).allowed);
            }
        }
    }

    /// With a clock that jumps back and forth, nothing panics, the log stays sorted, and the
    /// recorded admissions never exceed N in any window.
    #[test]
    fn sliding_window_survives_a_clock_going_backwards(
        q in quota_strategy(),
        steps in prop::collection::vec((-2_000i64..2_000, 0u32..=9), 1..200),
    ) {
        let w = q.window().as_nanos() as u64;
        let mut log = SlidingLog::default();
        let mut recorded = Vec::new();
        let mut now = START;
        for &(jump, cost) in &steps {
            now = now.saturating_add_signed(jump);
            let before: Vec<u64> = log.stamps().collect();
            let d = sliding_window::acquire(&mut log, at(now), q, cost);
            let after: Vec<u64> = log.stamps().collect();
            prop_assert!(after.windows(2).all(|p| p[0] <= p[1]), "log out of order");
            if d.allowed && cost > 0 {
                // The new stamps are the last `cost` ones, never earlier than anything held.
                let new = &after[after.len() - cost as usize..];
                prop_assert!(new.iter().all(|&t| t >= now && before.last().is_none_or(|&b| t >= b)));
                recorded.extend_from_slice(new);
            }
            if !d.allowed {
                prop_assert!(d.retry_after.is_some_and(|r| r > Duration::ZERO));
            }
        }
        prop_assert!(worst_window(&recorded, w) <= q.limit() as usize);
    }

    /// GCRA: at most 2N − 1 units in any window of length W, at most N at one instant, and a
    /// long-run rate of at most one unit per T after the first burst.
    #[test]
    fn gcra_keeps_its_documented_bounds(q in quota_strategy(), seq in arrivals(4)) {
        let q = q.with_algorithm(Algorithm::Gcra);
        let w = q.window().as_nanos() as u64;
        let t = gcra::emission_interval(q).as_nanos() as u64;
        let n = q.limit() as usize;
        let mut s = GcraState::default();
        let mut admitted = Vec::new();
        let mut now = START;
        for &(gap, cost) in &seq {
            now += gap;
            let d = gcra::acquire(&mut s, at(now), q, cost);
            if d.allowed {
                admitted.extend(std::iter::repeat_n(now, cost as usize));
            } else if cost <= q.limit() {
                // Exact retry: a nanosecond early is refused, on time is admitted.
                let wait = d.retry_after.unwrap().as_nanos() as u64;
                let mut early = s;
                prop_assert!(!gcra::acquire(&mut early, at(now + wait - 1), q, cost).allowed);
                let mut on_time = s;
                prop_assert!(gcra::acquire(&mut on_time, at(now + wait), q, cost).allowed);
            }
            prop_assert!(d.remaining <= q.limit());
        }
        // At most 2N − 1.
        prop_assert!(worst_window(&admitted, w) < 2 * n);
        prop_assert!(worst_window(&admitted, 1) <= n);
        if let (Some(&first), Some(&last)) = (admitted.first(), admitted.last()) {
            let steady = ((last - first) / t) as usize;
            prop_assert!(admitted.len() <= n + steady);
        }
    }

    /// The store answers what the pure functions answer, key by key, and keys do not interfere,
    /// with sweeps and (for a clock that only moves forward) a cap that evicts nothing live.
    #[test]
    fn memory_store_equals_the_pure_functions_and_isolates_keys(
        q in quota_strategy(),
        gcra_too in any::<bool>(),
        seq in prop::collection::vec((0usize..4, -300i64..300, 0u32..=9), 1..200),
        max_keys in prop_oneof![Just(1_000usize), Just(4usize)],
        back_and_forth in any::<bool>(),
    ) {
        let q = if gcra_too { q.with_algorithm(Algorithm::Gcra) } else { q };
        let clock = FakeClock::new(at(START));
        // A clock that steps back is only compared without sweeps: a state swept at a later
        // reading is forgotten by design (see the memory store's docs).
        let store = MemoryStore::builder()
            .max_keys(max_keys)
            // One shard at the small cap, so that four keys always fit.
            .shards(if max_keys == 4 { 1 } else { 64 })
            .sweep_every(if back_and_forth { u32::MAX } else { 3 })
            .clock(Arc::new(clock.clone()))
            .build();
        let mut logs: HashMap<usize, SlidingLog> = HashMap::new();
        let mut cells: HashMap<usize, GcraState> = HashMap::new();
        let mut now = START;
        for &(k, gap, cost) in &seq {
            now = if back_and_forth {
                now.saturating_add_signed(gap)
            } else {
                now + gap.unsigned_abs()
            };
            clock.set(at(now));
            let got = store.acquire_now(&key(k), q, cost);
            let want = match q.algorithm() {
                Algorithm::SlidingWindow => {
                    sliding_window::acquire(logs.entry(k).or_default(), at(now), q, cost)
                }
                Algorithm::Gcra => gcra::acquire(cells.entry(k).or_default(), at(now), q, cost),
            };
            prop_assert_eq!(got, want, "key {} at +{} ns", k, now as i128 - START as i128);
        }
        // Four keys fit under either cap, so nothing live was ever evicted.
        prop_assert_eq!(store.evictions(), 0);
        prop_assert!(store.len() <= 4);
    }
}

/// Calls on one key from many threads, at one instant, admit exactly the limit.
fn hammer_with_threads(algorithm: Algorithm) {
    let clock = FakeClock::new(at(START));
    let store = Arc::new(MemoryStore::with_clock(Arc::new(clock)));
    let q = Quota::per_minute(500).with_algorithm(algorithm);
    let k = key(1);
    let admitted = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (store, admitted) = (Arc::clone(&store), Arc::clone(&admitted));
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if store.acquire_now(&k, q, 1).allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 500);
    let last = store.acquire_now(&k, q, 1);
    assert!(!last.allowed);
    assert_eq!(last.remaining, 0);
}

#[test]
fn threads_on_one_key_admit_exactly_n_sliding_window() {
    hammer_with_threads(Algorithm::SlidingWindow);
}

#[test]
fn threads_on_one_key_admit_exactly_n_gcra() {
    hammer_with_threads(Algorithm::Gcra);
}

/// The same through the async trait, from tokio tasks on a multi-threaded runtime, with costs
/// above one: exactly N units in all, never a unit more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokio_tasks_on_one_key_admit_exactly_n() {
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let clock = FakeClock::new(at(START));
        let store: Arc<dyn RateLimitStore> = Arc::new(MemoryStore::with_clock(Arc::new(clock)));
        let q = Quota::per_hour(300).with_algorithm(algorithm);
        let tasks: Vec<_> = (0..16u32)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let k = key(9);
                    let cost = 1 + i % 3;
                    let mut units = 0;
                    for _ in 0..50 {
                        if store.acquire(&k, q, cost).await.unwrap().allowed {
                            units += cost;
                        }
                        tokio::task::yield_now().await;
                    }
                    units
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert!(total <= 300, "{algorithm:?}: admitted {total} > 300");
        // Whatever mixed costs left over is still there, unit for unit: nothing was lost and
        // nothing admitted twice.
        let mut drained = 0;
        while store.acquire(&key(9), q, 1).await.unwrap().allowed {
            drained += 1;
        }
        assert_eq!(total + drained, 300, "{algorithm:?}");
    }
}

/// Heavy use of some keys leaves others untouched, also across shards and under the cap.
#[test]
fn keys_are_isolated() {
    let clock = FakeClock::new(at(START));
    let store = MemoryStore::with_clock(Arc::new(clock.clone()));
    let q = Quota::per_minute(3);
    for i in 0..1_000 {
        for _ in 0..5 {
            store.acquire_now(&key(i), q, 1);
        }
    }
    let fresh = store.acquire_now(&key(1_000), q, 1);
    assert!(fresh.allowed);
    assert_eq!(fresh.remaining, 2);
    assert!(!store.acquire_now(&key(0), q, 1).allowed);
    // Same subject, different bucket: a different key, a separate budget.
    let h = KeyHasher::new(b"rate-limit-props");
    let other = h.key("another-bucket", &Subject::Custom("0".into()));
    assert!(store.acquire_now(&other, q, 1).allowed);
    assert_eq!(store.len(), 1_002);
}

/// Threads inserting fresh keys into a small store, both algorithms, while others check a hot
/// key: the cap holds throughout, evictions are counted, and the hot key's count stays exact
/// when eviction does not touch it (it expires last: its window is the longest).
#[test]
fn concurrent_inserts_respect_the_cap() {
    let clock = FakeClock::new(at(START));
    let store = Arc::new(
        MemoryStore::builder()
            .max_keys(256)
            .shards(4)
            .clock(Arc::new(clock))
            .build(),
    );
    let hot = key(usize::MAX);
    let hot_quota = Quota::per_day(1_000);
    let admitted = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4usize)
        .map(|t| {
            let (store, admitted) = (Arc::clone(&store), Arc::clone(&admitted));
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    let q = if i % 2 == 0 {
                        Quota::per_minute(5)
                    } else {
                        Quota::per_minute(5).with_algorithm(Algorithm::Gcra)
                    };
                    assert!(store.acquire_now(&key(t * 1_000_000 + i), q, 1).allowed);
                    if store.acquire_now(&hot, hot_quota, 1).allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    assert!(store.len() <= 256);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(store.len() <= 256);
    assert!(store.evictions() > 0);
    assert_eq!(admitted.load(Ordering::Relaxed), 1_000);
}
