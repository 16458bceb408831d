//! Generic cell rate algorithm (GCRA): a token bucket kept as a single timestamp.
//!
//! **Meaning.** A quota of `N` per `W` becomes a bucket of `N` tokens refilled one every
//! *emission interval* `T = W / N` (rounded **up** to the nanosecond, so the refill rate never
//! exceeds `N` per `W`). Each unit of cost takes a token. Hence:
//!
//! * a client that has been idle for `W` may send a **burst of `N`** at once;
//! * after that, **one unit every `T`**, steadily;
//! * over a long run, at most `N` per `W` on average.
//!
//! It is **not** "at most `N` in any window of length `W`": `N` admitted at `t`, then one at
//! each of `t + T, …, t + (N−1)·T` puts `2N − 1` inside one window of length `W` (and that is
//! the most any window can hold). Use [the sliding window](super::sliding_window) when the
//! per-window promise matters; use GCRA for constant-size state (one `u64` per key) and very
//! large limits.
//!
//! **State.** The *theoretical arrival time* (TAT), in nanoseconds since the Unix epoch: the
//! time at which the bucket would be full again. When `TAT <= now` the bucket is full (the
//! state is then equivalent to a fresh one, so a store may delete it). A request of cost `c` at
//! `now` is admitted iff `max(TAT, now) + c·T <= now + N·T`, and then `TAT ← max(TAT, now) +
//! c·T`; a refusal changes nothing.
//!
//! **Clock going backwards.** All arithmetic saturates, and a TAT ahead of `now` simply reads
//! as a bucket that is emptier than it would be: a backwards step never admits extra, and
//! waits are reported from `now`, so they are never shorter than the clock will see.
//!
//! ```
//! use std::time::Duration;
//! use secure_routes::rate_limit::{Algorithm, Quota};
//! use secure_routes::rate_limit::gcra::{self, GcraState};
//!
//! // 10 per 10 s: burst of 10, then one per second.
//! let q = Quota::new(10, Duration::from_secs(10)).with_algorithm(Algorithm::Gcra);
//! let mut s = GcraState::default();
//! let t0 = Duration::from_secs(1_000);
//! for _ in 0..10 {
//!     assert!(gcra::acquire(&mut s, t0, q, 1).allowed);
//! }
//! let d = gcra::acquire(&mut s, t0, q, 1);
//! assert!(!d.allowed);
//! assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
//! assert!(gcra::acquire(&mut s, t0 + Duration::from_secs(1), q, 1).allowed);
//! ```

use std::time::Duration;

use super::{Decision, Quota};
use crate::clock::duration_to_nanos;

/// GCRA state: the theoretical arrival time, nanoseconds since the Unix epoch (`0` = fresh).
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Quota, gcra::{self, GcraState}};
/// let mut s = GcraState::default();
/// gcra::acquire(&mut s, Duration::from_secs(100), Quota::per_second(4), 1);
/// // One unit costs T = 250 ms of "debt".
/// assert_eq!(s.tat(), 100_250_000_000);
/// // A shared store can persist the TAT and rebuild the state from it.
/// assert_eq!(GcraState::from_tat(s.tat()), s);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GcraState {
    tat: u64,
}

impl GcraState {
    /// The state with the given theoretical arrival time (nanoseconds since the epoch).
    ///
    /// ```
    /// use secure_routes::rate_limit::gcra::GcraState;
    /// assert_eq!(GcraState::from_tat(42).tat(), 42);
    /// ```
    pub const fn from_tat(tat: u64) -> Self {
        Self { tat }
    }

    /// The theoretical arrival time, nanoseconds since the epoch.
    ///
    /// ```
    /// use secure_routes::rate_limit::gcra::GcraState;
    /// assert_eq!(GcraState::default().tat(), 0);
    /// ```
    pub const fn tat(&self) -> u64 {
        self.tat
    }
}

/// The emission interval `T = W / N`, rounded up to the nanosecond (at least 1 ns; a zero limit
/// is treated as one for this purpose).
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Quota, gcra};
/// assert_eq!(gcra::emission_interval(Quota::per_minute(60)), Duration::from_secs(1));
/// assert_eq!(gcra::emission_interval(Quota::new(3, Duration::from_nanos(10))), Duration::from_nanos(4));
/// ```
pub fn emission_interval(quota: Quota) -> Duration {
    Duration::from_nanos(interval_nanos(quota))
}

fn interval_nanos(quota: Quota) -> u64 {
    duration_to_nanos(quota.window())
        .div_ceil(u64::from(quota.limit().max(1)))
        .max(1)
}

/// When `state` stops mattering: its TAT. From then on the bucket is full and the state is
/// equivalent to a fresh one, so a store may delete it.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Quota, gcra::{self, GcraState}};
/// let mut s = GcraState::default();
/// gcra::acquire(&mut s, Duration::from_secs(100), Quota::per_minute(6), 2);
/// assert_eq!(gcra::expires_at(&s), Duration::from_secs(120));
/// ```
pub fn expires_at(state: &GcraState) -> Duration {
    Duration::from_nanos(state.tat)
}

/// Admits `cost` units at `now` (since the Unix epoch) if the bucket holds them, updating the
/// TAT; otherwise refuses and changes nothing.
///
/// The [`Decision`]:
///
/// * `remaining`: whole units the bucket holds right now, after this request.
/// * `reset_after`: time until the bucket is full again (`TAT − now`).
/// * `retry_after` (refusals only): the exact time until `cost` units fit (one nanosecond
///   earlier would still be refused), so never less than the true wait.
///
/// A `cost` larger than the limit can never fit: it is refused with `retry_after` equal to the
/// window, as in the sliding window. A `cost` of zero only checks.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Algorithm, Quota, gcra::{self, GcraState}};
/// let q = Quota::per_minute(6).with_algorithm(Algorithm::Gcra); // T = 10 s
/// let mut s = GcraState::default();
/// let d = gcra::acquire(&mut s, Duration::from_secs(1_000), q, 4);
/// assert!(d.allowed);
/// assert_eq!(d.remaining, 2);
/// assert_eq!(d.reset_after, Duration::from_secs(40));
/// let d = gcra::acquire(&mut s, Duration::from_secs(1_000), q, 3);
/// assert!(!d.allowed);
/// assert_eq!(d.retry_after, Some(Duration::from_secs(10)));
/// ```
pub fn acquire(state: &mut GcraState, now: Duration, quota: Quota, cost: u32) -> Decision {
    acquire_nanos(state, duration_to_nanos(now), quota, cost)
}

/// [`acquire`] with the clock reading already in nanoseconds (the memory store converts once
/// per check).
pub(crate) fn acquire_nanos(state: &mut GcraState, now: u64, quota: Quota, cost: u32) -> Decision {
    let limit = quota.limit();
    let t = interval_nanos(quota);
    // The bucket's depth in time: N·T (>= W because T is rounded up).
    let capacity = t.saturating_mul(u64::from(limit));
    let increment = t.saturating_mul(u64::from(cost));
    // A TAT in the past means a full bucket; one in the future (including after the clock
    // stepped back) is debt still to be repaid.
    let base = state.tat.max(now);
    let new_tat = base.saturating_add(increment);
    let allowed = cost <= limit && new_tat <= now.saturating_add(capacity);
    // A zero cost only checks: it must not move the TAT (not even up to `now`).
    if allowed && cost > 0 {
        state.tat = new_tat;
    }

    let debt = state.tat.saturating_sub(now);
    let remaining = u32::try_from(capacity.saturating_sub(debt) / t)
        .unwrap_or(u32::MAX)
        .min(limit);
    let retry_after = (!allowed).then(|| {
        if cost > limit {
            return quota.window();
        }
        // Admissible from the first instant `now'` with `TAT + c·T <= now' + N·T` (refused
        // with cost <= limit implies TAT > now, so `max(TAT, now') = TAT` up to that point).
        Duration::from_nanos(
            state
                .tat
                .saturating_add(increment)
                .saturating_sub(capacity)
                .saturating_sub(now),
        )
    });

    Decision {
        allowed,
        limit,
        remaining,
        reset_after: Duration::from_nanos(debt),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Algorithm;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn gcra(limit: u32, window: Duration) -> Quota {
        Quota::new(limit, window).with_algorithm(Algorithm::Gcra)
    }

    struct Step {
        at_ms: u64,
        cost: u32,
        allowed: bool,
        remaining: u32,
        reset_ms: u64,
        retry_ms: Option<u64>,
    }

    const fn step(
        at_ms: u64,
        cost: u32,
        allowed: bool,
        remaining: u32,
        reset_ms: u64,
        retry_ms: Option<u64>,
    ) -> Step {
        Step {
            at_ms,
            cost,
            allowed,
            remaining,
            reset_ms,
            retry_ms,
        }
    }

    fn run(quota: Quota, steps: &[Step]) {
        let start = secs(1_700_000_000);
        let mut s = GcraState::default();
        for (i, st) in steps.iter().enumerate() {
            let d = acquire(
                &mut s,
                start + Duration::from_millis(st.at_ms),
                quota,
                st.cost,
            );
            let want = Decision {
                allowed: st.allowed,
                limit: quota.limit(),
                remaining: st.remaining,
                reset_after: Duration::from_millis(st.reset_ms),
                retry_after: st.retry_ms.map(Duration::from_millis),
            };
            assert_eq!(d, want, "step {i} (t = {} ms, cost {})", st.at_ms, st.cost);
        }
    }

    #[test]
    fn burst_of_n_then_one_per_interval() {
        // 4 per 4 s: T = 1 s.
        run(
            gcra(4, secs(4)),
            &[
                step(0, 1, true, 3, 1_000, None),
                step(0, 1, true, 2, 2_000, None),
                step(0, 1, true, 1, 3_000, None),
                step(0, 1, true, 0, 4_000, None),
                step(0, 1, false, 0, 4_000, Some(1_000)),
                step(999, 1, false, 0, 3_001, Some(1)),
                // One token back after T.
                step(1_000, 1, true, 0, 4_000, None),
                step(1_500, 1, false, 0, 3_500, Some(500)),
                step(2_000, 1, true, 0, 4_000, None),
                step(3_000, 1, true, 0, 4_000, None),
                // Idle for a full window: the whole burst is back.
                step(8_000, 4, true, 0, 4_000, None),
            ],
        );
    }

    #[test]
    fn steady_rate_admits_one_per_interval_and_no_more() {
        let q = gcra(10, secs(10)); // T = 1 s
        let mut s = GcraState::default();
        let t0 = secs(5_000);
        // Drain the burst.
        assert!(acquire(&mut s, t0, q, 10).allowed);
        // Then every 100 ms for 20 s: exactly one admission per elapsed second.
        let mut admitted = 0;
        for i in 1..=200u64 {
            if acquire(&mut s, t0 + Duration::from_millis(100 * i), q, 1).allowed {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 20);
    }

    #[test]
    fn cost_above_one_takes_that_many_intervals() {
        // 5 per 10 s: T = 2 s.
        run(
            gcra(5, secs(10)),
            &[
                step(0, 2, true, 3, 4_000, None),
                step(0, 3, true, 0, 10_000, None),
                // 2 units need 4 s of refill.
                step(1_000, 2, false, 0, 9_000, Some(3_000)),
                step(4_000, 2, true, 0, 10_000, None),
                // Cost above the limit: never fits, retry after the window.
                step(4_000, 6, false, 0, 10_000, Some(10_000)),
            ],
        );
    }

    #[test]
    fn zero_cost_only_checks() {
        run(
            gcra(1, secs(10)),
            &[
                step(0, 0, true, 1, 0, None),
                step(0, 1, true, 0, 10_000, None),
                step(0, 0, true, 0, 10_000, None),
            ],
        );
    }

    #[test]
    fn zero_cost_never_moves_the_tat() {
        let q = gcra(1, Duration::from_nanos(10));
        let mut s = GcraState::default();
        assert!(acquire(&mut s, Duration::from_nanos(1_000), q, 0).allowed);
        assert_eq!(s, GcraState::default());
        // So a later check at an earlier reading sees a fresh state.
        let d = acquire(&mut s, Duration::from_nanos(990), q, 0);
        assert_eq!(d.remaining, 1);
        assert_eq!(d.reset_after, Duration::ZERO);
    }

    #[test]
    fn retry_after_is_exact() {
        let q = gcra(3, Duration::from_millis(1_000)); // T = 333 333 334 ns
        let mut s = GcraState::default();
        let t0 = secs(77);
        assert!(acquire(&mut s, t0, q, 3).allowed);
        let d = acquire(&mut s, t0 + Duration::from_millis(10), q, 2);
        let wait = d.retry_after.unwrap();
        let at = t0 + Duration::from_millis(10) + wait;
        let mut early = s;
        assert!(!acquire(&mut early, at - Duration::from_nanos(1), q, 2).allowed);
        assert!(acquire(&mut s, at, q, 2).allowed);
    }

    #[test]
    fn interval_rounds_up_so_the_burst_is_exactly_n() {
        // W = 10 ns, N = 4: T = 3 ns (not 2, which would allow a burst of 5).
        let q = gcra(4, Duration::from_nanos(10));
        assert_eq!(emission_interval(q), Duration::from_nanos(3));
        let mut s = GcraState::default();
        let now = Duration::from_nanos(1_000);
        let admitted = (0..10)
            .filter(|_| acquire(&mut s, now, q, 1).allowed)
            .count();
        assert_eq!(admitted, 4);
    }

    #[test]
    fn clock_going_backwards_neither_panics_nor_admits_extra() {
        let q = gcra(2, secs(10)); // T = 5 s
        let mut s = GcraState::default();
        assert!(acquire(&mut s, secs(10_000), q, 2).allowed);
        // An hour back: the debt is still there, measured from the earlier reading.
        let d = acquire(&mut s, secs(10_000 - 3_600), q, 1);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(secs(3_605)));
        assert_eq!(d.reset_after, secs(3_610));
        assert_eq!(s.tat(), 10_010 * 1_000_000_000);
        assert!(acquire(&mut s, secs(10_005), q, 1).allowed);
        let _ = acquire(&mut s, Duration::ZERO, q, u32::MAX);
        let _ = acquire(
            &mut s,
            Duration::MAX,
            gcra(u32::MAX, Duration::MAX),
            u32::MAX,
        );
        let _ = acquire(&mut s, Duration::MAX, gcra(0, Duration::ZERO), 0);
    }

    #[test]
    fn degenerate_quotas_do_not_panic() {
        let mut s = GcraState::default();
        let d = acquire(&mut s, secs(1), gcra(0, secs(1)), 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(1)));
        assert!(acquire(&mut s, secs(1), gcra(0, secs(1)), 0).allowed);
        assert_eq!(
            emission_interval(gcra(5, Duration::ZERO)),
            Duration::from_nanos(1)
        );
    }

    #[test]
    fn any_window_holds_at_most_2n_minus_1() {
        // The documented worst case, reached by a burst followed by the steady rate.
        let q = gcra(5, secs(5)); // T = 1 s
        let mut s = GcraState::default();
        let t0 = secs(1_000);
        let mut admitted = Vec::new();
        for ms in (0..5_000u64).step_by(50) {
            let now = t0 + Duration::from_millis(ms);
            while acquire(&mut s, now, q, 1).allowed {
                admitted.push(now);
            }
        }
        let worst = admitted
            .iter()
            .map(|&start| {
                admitted
                    .iter()
                    .filter(|&&t| t >= start && t < start + secs(5))
                    .count()
            })
            .max()
            .unwrap();
        assert_eq!(worst, 9);
    }
}
