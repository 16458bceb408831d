//! The conformance suite every [`RateLimitStore`] must pass (feature `conformance`).
//!
//! Each store crate runs these public async functions from its own tests (the memory store
//! always; Redis, Postgres and SQLite when their service is reachable), in the style of
//! tower-sessions' shared store tests. A store that passes makes **the same decisions as the
//! pure algorithms** ([`sliding_window::acquire`], [`gcra::acquire`]) for the same history, so
//! the memory store and every shared store can be swapped without changing what clients see.
//!
//! Every function takes `make_store`: a constructor that builds a **fresh, empty** store reading
//! its time from the given [`FakeClock`] (shared stores take time from the store itself in
//! production, e.g. Redis `TIME`; for the suite they must accept an injected clock). Each
//! scenario builds its own store, so a store built on a shared server must not see another
//! scenario's keys (a random key prefix per store does it).
//!
//! **Time resolution.** Decisions are compared **exactly**. Every clock reading the suite
//! produces, every window and every GCRA emission interval (`window / limit`) is a whole number
//! of milliseconds, so a store that keeps time in milliseconds or finer (Redis and Postgres keep
//! microseconds) must match to the nanosecond. Outside the suite such a store rounds windows and
//! intervals *up* to its resolution, which never admits more than the pure algorithm.
//!
//! **What is checked.**
//!
//! * [`sliding_window_matches_the_algorithm`], [`gcra_matches_the_algorithm`]: scripted and
//!   pseudo-random sequences of (clock advance, cost) steps, costs of zero and above the limit
//!   included, give the reference's [`Decision`] at every step (`allowed`, `limit`,
//!   `remaining`, `reset_after`, `retry_after`).
//! * [`decisions_carry_the_header_fields`]: the same fields against hand-computed values, so a
//!   store and a reference cannot agree on a wrong answer unnoticed.
//! * [`remaining_stays_within_the_limit`]: the edges where a store's own arithmetic could
//!   leave `0..=limit` (a limit of one, a key filled under a wider quota then checked under a
//!   narrower one, long idle, costs far above the limit) give the reference's decision, with
//!   `remaining` never above the limit (see [`Decision::from_store`]).
//! * [`keys_are_isolated`]: different [`RateLimitKey`]s (other subject, other bucket) never
//!   interfere, and the two algorithms keep separate state on one key.
//! * [`quotas_on_one_key_share_its_state`]: the documented behaviour when one key is checked
//!   under different quotas of the same algorithm: the key has **one** state per algorithm
//!   (the admission log, or the TAT), and each check judges it under the quota it is given.
//! * [`clock_stepping_back_admits_nothing_extra`]: a clock that steps back neither forgets
//!   admissions nor shortens the waits it reports.
//! * [`concurrent_acquires_admit_exactly_the_limit`]: many concurrent checks on one key admit
//!   exactly the limit, under both algorithms.
//! * [`state_is_bounded`]: state for a key lives exactly as long as it matters. The store's own
//!   way of looking at its state is a hook the caller passes (a count of entries for the memory
//!   store, key TTLs for Redis, rows for SQL stores).
//!
//! [`run_all`] runs everything except [`state_is_bounded`], which needs the hook.
//!
//! ```
//! use std::sync::Arc;
//! use secure_routes::rate_limit::{MemoryStore, conformance};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! conformance::run_all(|clock| async move { MemoryStore::with_clock(Arc::new(clock)) }).await;
//! # });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::gcra::{self, GcraState};
use super::sliding_window::{self, SlidingLog};
use super::{Algorithm, Decision, KeyHasher, Quota, RateLimitKey, RateLimitStore, Subject};
use crate::clock::{Clock, FakeClock};

/// Where the suite's fake clock starts: 2023-11-14T22:13:20Z, a whole second.
pub const START: Duration = Duration::from_secs(1_700_000_000);

/// The key the suite uses for `subject` in `bucket` (a fixed hasher secret, so runs repeat).
///
/// ```
/// use secure_routes::rate_limit::conformance::key;
/// assert_eq!(key("a", "x"), key("a", "x"));
/// assert_ne!(key("a", "x"), key("b", "x"));
/// ```
pub fn key(bucket: &str, subject: &str) -> RateLimitKey {
    KeyHasher::new(b"secure-routes conformance suite")
        .key(bucket, &Subject::User(subject.to_owned()))
}

/// Runs every store-agnostic check: all of this module's functions except
/// [`state_is_bounded`] (call that one too, with the store's own hook).
///
/// `make_store(clock)` must build a fresh, empty store reading time from `clock`.
///
/// # Panics
///
/// On the first difference from the expected behaviour, with a message naming the scenario
/// and step.
pub async fn run_all<S, F, Fut>(make_store: F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    sliding_window_matches_the_algorithm(&make_store).await;
    gcra_matches_the_algorithm(&make_store).await;
    decisions_carry_the_header_fields(&make_store).await;
    remaining_stays_within_the_limit(&make_store).await;
    keys_are_isolated(&make_store).await;
    quotas_on_one_key_share_its_state(&make_store).await;
    clock_stepping_back_admits_nothing_extra(&make_store).await;
    concurrent_acquires_admit_exactly_the_limit(&make_store).await;
}

/// The reference: the pure algorithms, one state per (key, algorithm), never swept (an expired
/// state is equivalent to a fresh one, so a store that deletes it decides the same).
#[derive(Default)]
struct Reference {
    logs: HashMap<RateLimitKey, SlidingLog>,
    tats: HashMap<RateLimitKey, GcraState>,
}

impl Reference {
    fn acquire(&mut self, key: &RateLimitKey, now: Duration, quota: Quota, cost: u32) -> Decision {
        match quota.algorithm() {
            Algorithm::SlidingWindow => {
                sliding_window::acquire(self.logs.entry(*key).or_default(), now, quota, cost)
            }
            Algorithm::Gcra => gcra::acquire(self.tats.entry(*key).or_default(), now, quota, cost),
        }
    }
}

/// One step of a sequence: move the clock, then check `cost` units of `quota` for `key`.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// Advance by this much.
    Forward(Duration),
    /// Step back by this much.
    Back(Duration),
}

#[derive(Clone, Copy, Debug)]
struct Step {
    time: Move,
    key: RateLimitKey,
    quota: Quota,
    cost: u32,
}

/// Runs `steps` against a fresh store and the reference, comparing every decision exactly.
async fn compare<S, F, Fut>(make_store: &F, scenario: &str, steps: &[Step])
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    let clock = FakeClock::new(START);
    let store = make_store(clock.clone()).await;
    let mut reference = Reference::default();
    for (i, step) in steps.iter().enumerate() {
        match step.time {
            Move::Forward(d) => clock.advance(d),
            Move::Back(d) => clock.set(clock.now().saturating_sub(d)),
        }
        let now = clock.now();
        let want = reference.acquire(&step.key, now, step.quota, step.cost);
        let got = store
            .acquire(&step.key, step.quota, step.cost)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{scenario}: step {i} ({step:?}): store {} failed: {e}",
                    store.name()
                )
            });
        assert_eq!(
            got,
            want,
            "{scenario}: step {i} at +{:?} ({step:?}): store {} differs from the algorithm",
            now.saturating_sub(START),
            store.name()
        );
    }
}

/// A small deterministic generator (SplitMix64), so sequences repeat from run to run.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform-enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Quotas whose windows and emission intervals are whole milliseconds.
fn quotas(algorithm: Algorithm) -> [Quota; 5] {
    [
        Quota::new(3, Duration::from_secs(9)),
        Quota::new(5, Duration::from_secs(1)),
        Quota::new(10, Duration::from_secs(60)),
        Quota::new(7, Duration::from_millis(700)),
        Quota::new(4, Duration::from_secs(10)),
    ]
    .map(|q| q.with_algorithm(algorithm))
}

/// `n` pseudo-random steps on one key: bursts at one instant, small and large advances,
/// costs of zero, one, several and above the limit.
fn random_steps(seed: u64, key: RateLimitKey, quota: Quota, n: usize) -> Vec<Step> {
    let mut rng = SplitMix(seed);
    let window_ms = u64::try_from(quota.window().as_millis()).unwrap_or(u64::MAX);
    let limit = u64::from(quota.limit());
    let interval_ms = (window_ms / limit.max(1)).max(1);
    (0..n)
        .map(|_| {
            let advance_ms = match rng.below(10) {
                0..=2 => 0,
                3..=6 => rng.below(interval_ms + 1),
                7 | 8 => rng.below(window_ms + 1),
                _ => window_ms + rng.below(window_ms + 1),
            };
            let cost = match rng.below(20) {
                0 => 0,
                1 => limit + 1,
                2..=4 => 1 + rng.below(limit),
                _ => 1,
            };
            Step {
                time: Move::Forward(Duration::from_millis(advance_ms)),
                key,
                quota,
                cost: u32::try_from(cost).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

/// Steps at given offsets (ms since the previous step) and costs.
fn scripted(key: RateLimitKey, quota: Quota, steps: &[(u64, u32)]) -> Vec<Step> {
    steps
        .iter()
        .map(|&(advance_ms, cost)| Step {
            time: Move::Forward(Duration::from_millis(advance_ms)),
            key,
            quota,
            cost,
        })
        .collect()
}

/// The boundary cases every algorithm must get right: filling up, the instant a unit leaves the
/// window, costs above one, above the limit, and zero.
const SCRIPT: &[(u64, u32)] = &[
    (0, 1),
    (0, 1),
    (1, 1),
    (0, 1),
    (0, 0),
    (100, 2),
    (1_000, 1),
    (1, 99),
    (2_000, 1),
    (0, 0),
    (5_000, 3),
    (1, 1),
    (2_998, 1),
    (1, 1),
    (1, 1),
    (10_000, 4),
    (0, 1),
    (1_000, 2),
];

/// Steps that land one millisecond either side of the instants a unit becomes free: a full
/// burst, then the first GCRA refill (`window / limit`), then the burst leaving the window.
fn boundaries(quota: Quota) -> Vec<(u64, u32)> {
    let window_ms = u64::try_from(quota.window().as_millis()).unwrap_or(u64::MAX);
    let interval_ms = (window_ms / u64::from(quota.limit().max(1))).max(1);
    let limit = quota.limit();
    vec![
        (0, limit),
        (interval_ms - 1, 1),
        (1, 1),
        (0, 1),
        (window_ms - interval_ms - 1, 1),
        (1, 1),
        (0, limit),
        (window_ms - 1, limit),
        (1, limit),
    ]
}

async fn matches_the_algorithm<S, F, Fut>(make_store: &F, algorithm: Algorithm)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    for (i, quota) in quotas(algorithm).into_iter().enumerate() {
        let k = key("route:/conformance", &format!("scripted-{i}"));
        compare(
            make_store,
            &format!("{algorithm:?} scripted {quota:?}"),
            &scripted(k, quota, SCRIPT),
        )
        .await;
        let k = key("route:/conformance", &format!("boundary-{i}"));
        compare(
            make_store,
            &format!("{algorithm:?} boundaries {quota:?}"),
            &scripted(k, quota, &boundaries(quota)),
        )
        .await;
        let k = key("route:/conformance", &format!("random-{i}"));
        let seed = 0x5eed_0000 + i as u64;
        compare(
            make_store,
            &format!("{algorithm:?} random (seed {seed:#x}) {quota:?}"),
            &random_steps(seed, k, quota, 150),
        )
        .await;
    }
}

/// The store decides what [`sliding_window::acquire`] decides, step by step, for scripted and
/// pseudo-random sequences.
///
/// # Panics
///
/// On the first decision that differs.
pub async fn sliding_window_matches_the_algorithm<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    matches_the_algorithm(make_store, Algorithm::SlidingWindow).await;
}

/// The store decides what [`gcra::acquire`] decides, step by step, for scripted and
/// pseudo-random sequences.
///
/// # Panics
///
/// On the first decision that differs.
pub async fn gcra_matches_the_algorithm<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    matches_the_algorithm(make_store, Algorithm::Gcra).await;
}

async fn acquire_ok<S: RateLimitStore>(
    store: &S,
    key: &RateLimitKey,
    quota: Quota,
    cost: u32,
) -> Decision {
    store
        .acquire(key, quota, cost)
        .await
        .unwrap_or_else(|e| panic!("store {} failed: {e}", store.name()))
}

fn decision(
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset_ms: u64,
    retry_ms: Option<u64>,
) -> Decision {
    Decision {
        allowed,
        limit,
        remaining,
        reset_after: Duration::from_millis(reset_ms),
        retry_after: retry_ms.map(Duration::from_millis),
    }
}

/// The decision fields the headers are built from, against hand-computed values.
///
/// # Panics
///
/// On a field that differs.
pub async fn decisions_carry_the_header_fields<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    let clock = FakeClock::new(START);
    let store = make_store(clock.clone()).await;
    let k = key("route:/fields", "alice");
    let sw = Quota::new(3, Duration::from_secs(10));
    let ms = Duration::from_millis;
    let name = store.name();

    // Sliding window, 3 per 10 s.
    assert_eq!(
        acquire_ok(&store, &k, sw, 2).await,
        decision(true, 3, 1, 10_000, None),
        "{name}: sliding, first"
    );
    clock.advance(ms(4_000));
    assert_eq!(
        acquire_ok(&store, &k, sw, 1).await,
        decision(true, 3, 0, 10_000, None),
        "{name}: sliding, last unit"
    );
    clock.advance(ms(1_500));
    // Two units at +0 leave at +10 s: 4.5 s from now; the newest (+4 s) at +14 s.
    assert_eq!(
        acquire_ok(&store, &k, sw, 1).await,
        decision(false, 3, 0, 8_500, Some(4_500)),
        "{name}: sliding, refused"
    );
    assert_eq!(
        acquire_ok(&store, &k, sw, 3).await,
        decision(false, 3, 0, 8_500, Some(8_500)),
        "{name}: sliding, refused, cost 3 waits for the newest"
    );
    assert_eq!(
        acquire_ok(&store, &k, sw, 4).await,
        decision(false, 3, 0, 8_500, Some(10_000)),
        "{name}: sliding, cost above the limit waits a window"
    );
    clock.advance(ms(4_500));
    assert_eq!(
        acquire_ok(&store, &k, sw, 0).await,
        decision(true, 3, 2, 4_000, None),
        "{name}: sliding, zero cost after two units left"
    );

    // GCRA, 4 per 10 s: T = 2.5 s.
    let g = Quota::new(4, Duration::from_secs(10)).with_algorithm(Algorithm::Gcra);
    assert_eq!(
        acquire_ok(&store, &k, g, 3).await,
        decision(true, 4, 1, 7_500, None),
        "{name}: gcra, first"
    );
    assert_eq!(
        acquire_ok(&store, &k, g, 2).await,
        decision(false, 4, 1, 7_500, Some(2_500)),
        "{name}: gcra, refused"
    );
    clock.advance(ms(1_000));
    assert_eq!(
        acquire_ok(&store, &k, g, 2).await,
        decision(false, 4, 1, 6_500, Some(1_500)),
        "{name}: gcra, still refused"
    );
    clock.advance(ms(1_500));
    assert_eq!(
        acquire_ok(&store, &k, g, 2).await,
        decision(true, 4, 0, 10_000, None),
        "{name}: gcra, admitted after the wait"
    );
    assert_eq!(
        acquire_ok(&store, &k, g, 5).await,
        decision(false, 4, 0, 10_000, Some(10_000)),
        "{name}: gcra, cost above the limit waits a window"
    );
}

/// At the edges where a store's own arithmetic could step outside `0..=limit`, the store
/// decides what the reference decides, and `remaining` stays within the limit of the quota
/// the check was made under:
///
/// * a limit of one: zero cost on an empty key, the one unit, refusals, a cost of two;
/// * one key filled under a wide quota, then checked under a narrow one (it holds more than
///   the narrow limit: `remaining` is zero, not negative), then after a long idle (the full
///   narrow limit, not the wide one);
/// * costs far above the limit (refused with a full window's wait, nothing counted).
///
/// # Panics
///
/// On a decision that differs from the reference, or a `remaining` above the limit.
pub async fn remaining_stays_within_the_limit<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let one = Quota::new(1, Duration::from_secs(1)).with_algorithm(algorithm);
        let wide = Quota::new(10, Duration::from_secs(10)).with_algorithm(algorithm);
        let narrow = Quota::new(2, Duration::from_secs(10)).with_algorithm(algorithm);
        let k1 = key("route:/edges", "limit-one");
        let k2 = key("route:/edges", "wide-then-narrow");
        let step = |advance_ms: u64, key: RateLimitKey, quota: Quota, cost: u32| Step {
            time: Move::Forward(Duration::from_millis(advance_ms)),
            key,
            quota,
            cost,
        };
        let steps = [
            step(0, k1, one, 0),
            step(0, k1, one, 1),
            step(0, k1, one, 1),
            step(0, k1, one, 0),
            step(0, k1, one, 2),
            step(999, k1, one, 1),
            step(1, k1, one, 1),
            step(1_000, k1, one, u32::MAX),
            step(0, k1, one, 0),
            step(0, k2, wide, 8),
            step(0, k2, narrow, 0),
            step(0, k2, narrow, 1),
            step(0, k2, narrow, 1_000),
            step(1_000, k2, wide, 0),
            step(4_000, k2, narrow, 0),
            step(0, k2, wide, 2),
            step(0, k2, wide, 1),
            step(0, k2, narrow, 0),
            step(60_000, k2, narrow, 0),
            step(0, k2, wide, 0),
            step(0, k2, narrow, 2),
            step(0, k2, wide, 0),
        ];
        compare(
            make_store,
            &format!("{algorithm:?} remaining at the edges"),
            &steps,
        )
        .await;
    }
    // `compare` checks equality with the reference; the bound itself, on the same edges.
    let clock = FakeClock::new(START);
    let store = make_store(clock.clone()).await;
    let name = store.name();
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let k = key("route:/edges/bound", &format!("{algorithm:?}"));
        let wide = Quota::new(10, Duration::from_secs(10)).with_algorithm(algorithm);
        let narrow = Quota::new(2, Duration::from_secs(10)).with_algorithm(algorithm);
        for (quota, cost) in [(wide, 9), (narrow, 0), (narrow, 1), (wide, 0), (narrow, 5)] {
            let d = acquire_ok(&store, &k, quota, cost).await;
            assert!(
                d.remaining <= quota.limit() && d.limit == quota.limit(),
                "{name} {algorithm:?}: {d:?} under {quota:?}"
            );
        }
        clock.advance(Duration::from_secs(3_600));
        let d = acquire_ok(&store, &k, narrow, 0).await;
        assert_eq!(
            d.remaining, 2,
            "{name} {algorithm:?}: idle key under the narrow quota"
        );
    }
}

/// Different keys never interfere: exhausting one subject or one bucket leaves the others
/// whole, and on one key the two algorithms keep separate state.
///
/// # Panics
///
/// On interference.
pub async fn keys_are_isolated<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    let clock = FakeClock::new(START);
    let store = make_store(clock.clone()).await;
    let name = store.name();
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let q = Quota::per_minute(2).with_algorithm(algorithm);
        let alice = key(&format!("route:/a/{algorithm:?}"), "alice");
        let bob = key(&format!("route:/a/{algorithm:?}"), "bob");
        let alice_elsewhere = key(&format!("route:/b/{algorithm:?}"), "alice");
        assert!(acquire_ok(&store, &alice, q, 2).await.allowed);
        assert!(
            !acquire_ok(&store, &alice, q, 1).await.allowed,
            "{name} {algorithm:?}: alice exhausted"
        );
        for (who, k) in [("bob", bob), ("alice on another route", alice_elsewhere)] {
            let d = acquire_ok(&store, &k, q, 1).await;
            assert_eq!(
                d,
                decision(
                    true,
                    2,
                    1,
                    if algorithm == Algorithm::Gcra {
                        30_000
                    } else {
                        60_000
                    },
                    None
                ),
                "{name} {algorithm:?}: {who} is not affected by alice"
            );
        }
    }
    // One key, both algorithms: separate state.
    let k = key("route:/both", "carol");
    let sw = Quota::per_minute(1);
    let g = sw.with_algorithm(Algorithm::Gcra);
    assert!(acquire_ok(&store, &k, sw, 1).await.allowed);
    assert!(
        acquire_ok(&store, &k, g, 1).await.allowed,
        "{name}: the GCRA state of a key is not its sliding log"
    );
    assert!(!acquire_ok(&store, &k, sw, 1).await.allowed);
    assert!(!acquire_ok(&store, &k, g, 1).await.allowed);
}

/// One key checked under different quotas of one algorithm has one state, judged under each
/// check's quota (as the reference does). Policies that should not share a budget must use
/// different buckets, hence different keys.
///
/// # Panics
///
/// On a decision that differs from the reference.
pub async fn quotas_on_one_key_share_its_state<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let k = key("route:/shared", "dave");
        let wide = Quota::new(5, Duration::from_secs(10)).with_algorithm(algorithm);
        let narrow = Quota::new(2, Duration::from_secs(2)).with_algorithm(algorithm);
        let steps: Vec<Step> = [
            (0, wide, 3),
            (0, narrow, 1),
            (500, wide, 1),
            (1_000, narrow, 1),
            (1_000, narrow, 1),
            (0, wide, 2),
            (2_000, narrow, 2),
            (0, wide, 1),
            (4_000, wide, 5),
        ]
        .into_iter()
        .map(|(advance_ms, quota, cost)| Step {
            time: Move::Forward(Duration::from_millis(advance_ms)),
            key: k,
            quota,
            cost,
        })
        .collect();
        compare(
            make_store,
            &format!("{algorithm:?} quotas sharing a key"),
            &steps,
        )
        .await;
    }
}

/// A clock that steps back (NTP, a failover) neither forgets admissions nor reports waits
/// shorter than the clock will see.
///
/// # Panics
///
/// On a decision that differs from the reference.
pub async fn clock_stepping_back_admits_nothing_extra<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let k = key("route:/skew", "erin");
        let q = Quota::new(2, Duration::from_secs(1)).with_algorithm(algorithm);
        let at = |time, cost| Step {
            time,
            key: k,
            quota: q,
            cost,
        };
        let ms = Duration::from_millis;
        compare(
            make_store,
            &format!("{algorithm:?} clock stepping back"),
            &[
                at(Move::Forward(ms(0)), 2),
                at(Move::Back(ms(500)), 1),
                at(Move::Forward(ms(200)), 1),
                at(Move::Forward(ms(1_300)), 1),
                at(Move::Back(ms(300)), 1),
                at(Move::Forward(ms(1_300)), 2),
            ],
        )
        .await;
    }
}

/// Many concurrent checks on one key admit exactly the limit (the seed's race, where every
/// concurrent request counted before any inserted, must be impossible).
///
/// Runs 200 checks as separate tasks (`tokio::spawn`; use a multi-threaded runtime for real
/// parallelism) against a limit of 50, for both algorithms, all at one instant.
///
/// # Panics
///
/// If the number admitted is not exactly the limit, or a check fails.
pub async fn concurrent_acquires_admit_exactly_the_limit<S, F, Fut>(make_store: &F)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
{
    const CALLS: usize = 200;
    const LIMIT: u32 = 50;
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let clock = FakeClock::new(START);
        let store = Arc::new(make_store(clock.clone()).await);
        let q = Quota::per_hour(LIMIT).with_algorithm(algorithm);
        let k = key("route:/race", "mallory");
        let tasks: Vec<_> = (0..CALLS)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.acquire(&k, q, 1).await.map(|d| d.allowed) })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            match task.await {
                Ok(Ok(true)) => admitted += 1,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => panic!("{algorithm:?}: store {} failed: {e}", store.name()),
                Err(e) => panic!("{algorithm:?}: a check panicked: {e}"),
            }
        }
        assert_eq!(
            admitted,
            LIMIT,
            "{algorithm:?}: {CALLS} concurrent checks on store {} admitted {admitted}, not {LIMIT}",
            store.name()
        );
        let d = acquire_ok(&*store, &k, q, 1).await;
        assert!(!d.allowed && d.remaining == 0, "{algorithm:?}: {d:?}");
    }
}

/// State for a key lives exactly as long as it matters, then the store drops it.
///
/// `check(store, clock, key, lifetime)` is the store's own assertion (it may panic):
///
/// * `lifetime > 0`: the store holds state for `key` that it will drop `lifetime` after the
///   clock's current reading (to the store's resolution; a TTL-based store keyed to its own
///   clock may allow for the real time the test took), and not before;
/// * `lifetime == 0`: the store holds nothing for `key`.
///
/// The memory store checks by advancing the clock and sweeping; Redis by the keys' `PTTL`.
/// Each scenario uses a fresh store holding only that one key, so a check may count every
/// entry of the store. `check` is called at the fake instant of the key's last write, so a
/// store that expires keys on its own clock (Redis `PEXPIRE`) can compare its TTLs with
/// `lifetime` directly.
///
/// Scenarios: a sliding log lives until its newest admission leaves the window; a GCRA state
/// until its TAT (the bucket is full again); a refusal or a zero-cost check on an unknown key
/// stores nothing.
///
/// # Panics
///
/// If the store or `check` fails.
pub async fn state_is_bounded<S, F, Fut, C, CFut>(make_store: F, check: C)
where
    S: RateLimitStore,
    F: Fn(FakeClock) -> Fut,
    Fut: Future<Output = S>,
    C: Fn(Arc<S>, FakeClock, RateLimitKey, Duration) -> CFut,
    CFut: Future<Output = ()>,
{
    let ms = Duration::from_millis;

    // Sliding window, 3 per 60 s: the log lives until the newest stamp is 60 s old.
    let clock = FakeClock::new(START);
    let store = Arc::new(make_store(clock.clone()).await);
    let k = key("route:/bounded", "sliding");
    let q = Quota::per_minute(3);
    assert!(acquire_ok(&*store, &k, q, 2).await.allowed);
    clock.advance(ms(10_000));
    assert!(acquire_ok(&*store, &k, q, 1).await.allowed);
    assert!(!acquire_ok(&*store, &k, q, 1).await.allowed);
    check(Arc::clone(&store), clock.clone(), k, ms(60_000)).await;

    // GCRA, 6 per 60 s (T = 10 s): two units put the TAT 20 s ahead.
    let clock = FakeClock::new(START);
    let store = Arc::new(make_store(clock.clone()).await);
    let k = key("route:/bounded", "gcra");
    let q = Quota::per_minute(6).with_algorithm(Algorithm::Gcra);
    assert!(acquire_ok(&*store, &k, q, 2).await.allowed);
    assert!(!acquire_ok(&*store, &k, q, 6).await.allowed);
    check(Arc::clone(&store), clock.clone(), k, ms(20_000)).await;

    // Refusals and zero costs on unknown keys store nothing.
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let clock = FakeClock::new(START);
        let store = Arc::new(make_store(clock.clone()).await);
        let k = key("route:/bounded", "nothing");
        let q = Quota::per_minute(2).with_algorithm(algorithm);
        assert!(!acquire_ok(&*store, &k, q, 3).await.allowed);
        assert!(acquire_ok(&*store, &k, q, 0).await.allowed);
        check(Arc::clone(&store), clock.clone(), k, Duration::ZERO).await;
    }
}
