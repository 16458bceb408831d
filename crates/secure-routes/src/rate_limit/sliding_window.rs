//! Exact sliding window (a sliding log): the promise "N per W" kept to the letter.
//!
//! **Meaning.** A quota of `N` per `W` admits a request of cost `c` at time `t` only if the
//! units admitted in the half-open window `(t − W, t]`, plus `c`, do not exceed `N`. So **no
//! window of length `W`, anywhere on the time line, ever holds more than `N` admitted units**,
//! with costs above one and under any interleaving. A fixed-window counter cannot promise this
//! (it admits `2N` across a window boundary), and neither can [GCRA](super::gcra) (up to
//! `2N − 1`). This is the seed's sliding window, done without its race: the check and the count
//! are one step.
//!
//! **State.** One timestamp (nanoseconds since the Unix epoch) per admitted unit still inside
//! the window, oldest first: at most `N` of them, so at most `8 × N` bytes of stamps per key
//! (one stamp is held inline, without a heap block; what a store adds per key is its own: see
//! `MemoryStoreBuilder::max_keys`). A stamp exactly `W` old has expired (a request at `t`
//! frees at `t + W`, not a nanosecond later).
//!
//! **Clock going backwards.** Time comes from the caller (a [`Clock`](crate::clock::Clock) or
//! the shared store's own clock), and it can step back (NTP, a failover to a skewed host). The
//! function never panics on that (all arithmetic saturates), and the log's own time never runs
//! backwards: it remembers the latest time it held stamps at, and a reading behind that is
//! taken as that time. So a stamp keeps counting until the clock is a full window past it, an
//! admission made while the clock is behind is recorded at the log's time (the log stays
//! sorted), and the promise holds over the recorded times whatever the clock does. Waits are
//! reported from the actual reading, so they are never shorter than the wait the clock will
//! see. The price: when a clock that ran ahead is corrected, a key used meanwhile waits for
//! the clock to catch up (GCRA behaves the same). No bounded state can do better: if an
//! earlier reading was the wrong one, the stamps it let expire are gone.
//!
//! ```
//! use std::time::Duration;
//! use secure_routes::rate_limit::Quota;
//! use secure_routes::rate_limit::sliding_window::{self, SlidingLog};
//!
//! let quota = Quota::per_minute(2);
//! let mut log = SlidingLog::default();
//! let t0 = Duration::from_secs(1_000);
//! assert!(sliding_window::acquire(&mut log, t0, quota, 1).allowed);
//! assert!(sliding_window::acquire(&mut log, t0 + Duration::from_secs(30), quota, 1).allowed);
//! let d = sliding_window::acquire(&mut log, t0 + Duration::from_secs(45), quota, 1);
//! assert!(!d.allowed);
//! // The first admission leaves the window at t0 + 60 s: 15 s from now.
//! assert_eq!(d.retry_after, Some(Duration::from_secs(15)));
//! assert!(sliding_window::acquire(&mut log, t0 + Duration::from_secs(60), quota, 1).allowed);
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use super::{Decision, Quota};
use crate::clock::duration_to_nanos;

/// The admission times (nanoseconds since the Unix epoch) still inside the window, oldest
/// first; one stamp per admitted unit of cost.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Quota, sliding_window::{self, SlidingLog}};
///
/// let mut log = SlidingLog::default();
/// sliding_window::acquire(&mut log, Duration::from_secs(5), Quota::per_second(10), 3);
/// assert_eq!(log.len(), 3);
/// assert!(log.stamps().all(|t| t == 5_000_000_000));
/// // A shared store can persist the stamps and rebuild the log from them.
/// let copy = SlidingLog::from_stamps(log.stamps());
/// assert_eq!(copy, log);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SlidingLog {
    stamps: Stamps,
    /// The latest time (ns) the log held or recorded stamps at: its clock never goes back past
    /// this.
    seen: u64,
}

impl SlidingLog {
    /// A log holding `stamps` (nanoseconds since the epoch), in any order: they are sorted.
    /// The log's time starts at the newest of them.
    ///
    /// ```
    /// use secure_routes::rate_limit::sliding_window::SlidingLog;
    /// let log = SlidingLog::from_stamps([30, 10, 20]);
    /// assert_eq!(log.stamps().collect::<Vec<_>>(), [10, 20, 30]);
    /// ```
    pub fn from_stamps(stamps: impl IntoIterator<Item = u64>) -> Self {
        let mut v: Vec<u64> = stamps.into_iter().collect();
        v.sort_unstable();
        let seen = v.last().copied().unwrap_or(0);
        let stamps = match *v {
            [] => Stamps::Empty,
            [one] => Stamps::One(one),
            _ => Stamps::Many(v.into()),
        };
        Self { stamps, seen }
    }

    /// A log holding `stamps` whose own time is `seen` (as read with [`seen`](Self::seen)):
    /// the whole state, for a store that persists it. A `seen` behind the newest stamp is
    /// raised to it.
    ///
    /// [`from_stamps`](Self::from_stamps) alone loses the log's time when it ran ahead of the
    /// newest stamp (a refusal or a zero-cost check records no stamp but moves the time), so a
    /// clock that then steps back would record the next admission earlier than the memory
    /// store does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::rate_limit::{Quota, sliding_window::{self, SlidingLog}};
    /// let q = Quota::per_minute(1);
    /// let mut log = SlidingLog::default();
    /// sliding_window::acquire(&mut log, Duration::from_secs(100), q, 1);
    /// sliding_window::acquire(&mut log, Duration::from_secs(130), q, 1); // refused
    /// assert_eq!(log.seen(), 130_000_000_000);
    /// let copy = SlidingLog::from_parts(log.stamps(), log.seen());
    /// assert_eq!(copy, log);
    /// ```
    pub fn from_parts(stamps: impl IntoIterator<Item = u64>, seen: u64) -> Self {
        let mut log = Self::from_stamps(stamps);
        log.seen = log.seen.max(seen);
        log
    }

    /// The log's own time, nanoseconds since the epoch: the latest time it held or recorded
    /// stamps at. It never goes back, whatever the clock does.
    ///
    /// ```
    /// use secure_routes::rate_limit::sliding_window::SlidingLog;
    /// assert_eq!(SlidingLog::from_stamps([10, 20]).seen(), 20);
    /// assert_eq!(SlidingLog::default().seen(), 0);
    /// ```
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The stamps held, oldest first (including any already expired but not yet pruned: pruning
    /// happens in [`acquire`]).
    ///
    /// ```
    /// use secure_routes::rate_limit::sliding_window::SlidingLog;
    /// assert_eq!(SlidingLog::default().stamps().count(), 0);
    /// ```
    pub fn stamps(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        let (front, back) = self.stamps.as_slices();
        StampIter {
            front: front.iter(),
            back: back.iter(),
        }
    }

    /// Number of stamps held.
    ///
    /// ```
    /// use secure_routes::rate_limit::sliding_window::SlidingLog;
    /// assert_eq!(SlidingLog::from_stamps([1, 2]).len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    /// Whether no stamp is held.
    ///
    /// ```
    /// use secure_routes::rate_limit::sliding_window::SlidingLog;
    /// assert!(SlidingLog::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.stamps.len() == 0
    }

    /// The newest stamp, if any.
    fn newest(&self) -> Option<u64> {
        self.stamps.back()
    }

    /// Drops the stamps that have left the window ending at `now` (`stamp + window <= now`).
    fn prune(&mut self, now: u64, window: u64) {
        while self
            .stamps
            .front()
            .is_some_and(|t| t.saturating_add(window) <= now)
        {
            self.stamps.pop_front();
        }
    }
}

impl PartialEq for SlidingLog {
    /// Equal when they hold the same stamps and the same time, however the stamps are stored.
    fn eq(&self, other: &Self) -> bool {
        self.seen == other.seen
            && self.stamps.len() == other.stamps.len()
            && self.stamps().eq(other.stamps())
    }
}

impl Eq for SlidingLog {}

/// A log's stamps, oldest first. A single stamp is held inline, without a heap block: under a
/// flood of fresh client addresses almost every key is seen once, and a block for its one
/// stamp would cost 32 bytes (glibc's smallest) on top of the entry. The enum is no larger
/// than the `VecDeque` alone (its capacity field leaves room for the other variants).
#[derive(Clone, Debug, Default)]
enum Stamps {
    #[default]
    Empty,
    One(u64),
    /// Two or more at some point (it may have been pruned since: it keeps its block, as a key
    /// that came back is likely to come back again).
    Many(VecDeque<u64>),
}

impl Stamps {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(_) => 1,
            Self::Many(d) => d.len(),
        }
    }

    fn front(&self) -> Option<u64> {
        match self {
            Self::Empty => None,
            Self::One(t) => Some(*t),
            Self::Many(d) => d.front().copied(),
        }
    }

    fn back(&self) -> Option<u64> {
        match self {
            Self::Empty => None,
            Self::One(t) => Some(*t),
            Self::Many(d) => d.back().copied(),
        }
    }

    fn get(&self, i: usize) -> Option<u64> {
        match self {
            Self::Empty => None,
            Self::One(t) => (i == 0).then_some(*t),
            Self::Many(d) => d.get(i).copied(),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Self::Empty => {}
            Self::One(_) => *self = Self::Empty,
            Self::Many(d) => {
                d.pop_front();
            }
        }
    }

    /// Appends `n` copies of `t` (the newest stamp so far).
    fn push(&mut self, t: u64, n: usize) {
        match self {
            Self::Empty if n == 1 => *self = Self::One(t),
            // The hot path (a known key, cost 1): one push.
            Self::Many(d) if n == 1 => d.push_back(t),
            Self::Many(d) => d.extend(std::iter::repeat_n(t, n)),
            Self::Empty | Self::One(_) => {
                // Room for exactly what is held; it grows by doubling if the key comes back.
                let mut d = VecDeque::with_capacity(self.len().saturating_add(n));
                d.extend(self.front());
                d.extend(std::iter::repeat_n(t, n));
                *self = Self::Many(d);
            }
        }
    }

    fn as_slices(&self) -> (&[u64], &[u64]) {
        match self {
            Self::Empty => (&[], &[]),
            Self::One(t) => (std::slice::from_ref(t), &[]),
            Self::Many(d) => d.as_slices(),
        }
    }
}

/// [`SlidingLog::stamps`]: the two halves of the ring, oldest first.
struct StampIter<'a> {
    front: std::slice::Iter<'a, u64>,
    back: std::slice::Iter<'a, u64>,
}

impl Iterator for StampIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        self.front.next().or_else(|| self.back.next()).copied()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.front.len() + self.back.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for StampIter<'_> {}

/// When `log` stops mattering under `quota`: the newest stamp plus the window (zero for an
/// empty log). From then on the log is equivalent to an empty one, so a store may delete it.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Quota, sliding_window::{self, SlidingLog}};
/// let q = Quota::per_minute(5);
/// let mut log = SlidingLog::default();
/// assert_eq!(sliding_window::expires_at(&log, q), Duration::ZERO);
/// sliding_window::acquire(&mut log, Duration::from_secs(100), q, 1);
/// assert_eq!(sliding_window::expires_at(&log, q), Duration::from_secs(160));
/// ```
pub fn expires_at(log: &SlidingLog, quota: Quota) -> Duration {
    Duration::from_nanos(expires_at_nanos(log, duration_to_nanos(quota.window())))
}

/// [`expires_at`] in nanoseconds, for a window already in nanoseconds.
pub(crate) fn expires_at_nanos(log: &SlidingLog, window: u64) -> u64 {
    log.newest().map_or(0, |t| t.saturating_add(window))
}

/// Admits `cost` units at `now` (since the Unix epoch) if they fit in `quota`, recording them;
/// otherwise refuses and records nothing.
///
/// The [`Decision`]:
///
/// * `allowed`: whether the units admitted in `(now − W, now]` plus `cost` fit in the limit.
/// * `remaining`: units that would still fit right now, after this request.
/// * `reset_after`: time until the whole quota is available again (the newest stamp leaves
///   the window); zero when nothing is recorded.
/// * `retry_after` (refusals only): time until enough stamps leave the window for `cost` units
///   to fit. It is exact: one nanosecond earlier would still be refused, so it is never less
///   than the true wait (headers round it up to whole seconds).
///
/// A `cost` larger than the limit can never fit: it is refused with `retry_after` equal to the
/// window (no wait helps; backing off a full window is the most useful answer). A `cost` of
/// zero only checks: it is allowed when the log is within the limit and records nothing.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::{Quota, sliding_window::{self, SlidingLog}};
///
/// let q = Quota::new(5, Duration::from_secs(10));
/// let mut log = SlidingLog::default();
/// let d = sliding_window::acquire(&mut log, Duration::from_secs(100), q, 3);
/// assert!(d.allowed);
/// assert_eq!(d.remaining, 2);
/// assert_eq!(d.reset_after, Duration::from_secs(10));
/// // 3 more do not fit until the three stamps at t=100 leave the window.
/// let d = sliding_window::acquire(&mut log, Duration::from_secs(104), q, 3);
/// assert!(!d.allowed);
/// assert_eq!(d.retry_after, Some(Duration::from_secs(6)));
/// // A cost above the limit never fits.
/// let d = sliding_window::acquire(&mut log, Duration::from_secs(104), q, 6);
/// assert_eq!(d.retry_after, Some(Duration::from_secs(10)));
/// ```
pub fn acquire(log: &mut SlidingLog, now: Duration, quota: Quota, cost: u32) -> Decision {
    acquire_nanos(
        log,
        duration_to_nanos(now),
        duration_to_nanos(quota.window()),
        quota,
        cost,
    )
}

/// [`acquire`] with the clock reading and the window already in nanoseconds (the memory store
/// converts once per check).
pub(crate) fn acquire_nanos(
    log: &mut SlidingLog,
    reading: u64,
    window: u64,
    quota: Quota,
    cost: u32,
) -> Decision {
    // The log's time never runs backwards: after a backwards step it stands still until the
    // clock catches up, so no stamp that was counted can stop counting early, and what is
    // recorded stays sorted. Only a log that holds (or held) stamps needs to remember the time:
    // one that never recorded anything stays equal to a fresh log, so a store need not keep it.
    let now = reading.max(log.seen);
    if log.stamps.len() != 0 {
        log.seen = now;
    }
    let limit = quota.limit();
    log.prune(now, window);

    // u32 -> usize is lossless on every target std supports with 32+ bit pointers.
    let limit_n = limit as usize;
    let cost_n = cost as usize;
    let used = log.stamps.len();
    let allowed = cost <= limit && used.saturating_add(cost_n) <= limit_n;

    if allowed && cost > 0 {
        log.stamps.push(now, cost_n);
        log.seen = now;
    }
    // Waits run from the actual reading: if the clock is behind the log's time, the wait the
    // client will see is that much longer.
    let wait_until = |t: u64| Duration::from_nanos(t.saturating_sub(reading));

    let held = log.stamps.len();
    let remaining = u32::try_from(limit_n.saturating_sub(held)).unwrap_or(u32::MAX);
    let reset_after = wait_until(expires_at_nanos(log, window));
    let retry_after = (!allowed).then(|| {
        if cost > limit {
            return quota.window();
        }
        // `cost` fits once `held + cost - limit` of the oldest stamps have expired: wait for
        // the last of those. The index is in range because cost <= limit; the fallback is only
        // defensive.
        let must_expire = held.saturating_add(cost_n).saturating_sub(limit_n);
        log.stamps
            .get(must_expire.saturating_sub(1))
            .map_or(quota.window(), |t| wait_until(t.saturating_add(window)))
    });

    Decision {
        allowed,
        limit,
        remaining,
        reset_after,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stamp_is_inline_and_the_storage_does_not_change_what_a_log_is() {
        // No larger than the deque alone, so an entry does not grow for the inline stamp.
        assert_eq!(
            std::mem::size_of::<Stamps>(),
            std::mem::size_of::<VecDeque<u64>>()
        );
        let q = Quota::new(3, secs(10));
        let mut log = SlidingLog::default();
        acquire(&mut log, secs(100), q, 1);
        assert!(matches!(log.stamps, Stamps::One(t) if t == 100 * S));
        // A second stamp moves both to the heap, oldest first.
        acquire(&mut log, secs(105), q, 2);
        assert_eq!(
            log.stamps().collect::<Vec<_>>(),
            [100 * S, 105 * S, 105 * S]
        );
        assert_eq!(log.stamps().len(), 3);
        // Pruned back to two, then compared with a log built from the same parts.
        acquire(&mut log, secs(110), q, 0);
        assert_eq!(log.len(), 2);
        assert_eq!(log, SlidingLog::from_parts([105 * S, 105 * S], 110 * S));
        assert_ne!(log, SlidingLog::from_parts([105 * S, 105 * S], 111 * S));
        // Heap-held and inline-held single stamps are the same log.
        let mut heap = SlidingLog::from_stamps([1, 2]);
        heap.prune(1 + 5, 5);
        assert!(matches!(heap.stamps, Stamps::Many(_)));
        assert_eq!(heap, SlidingLog::from_parts([2], 2));
        assert_eq!(SlidingLog::from_stamps([]), SlidingLog::default());
        // A cost of several on a fresh log goes to the heap at once.
        let mut big = SlidingLog::default();
        acquire(&mut big, secs(1), q, 3);
        assert_eq!(big.stamps().collect::<Vec<_>>(), [S, S, S]);
    }

    const S: u64 = 1_000_000_000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// One step of a table: at `at` seconds after the start, a request of `cost`.
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
        let mut log = SlidingLog::default();
        for (i, s) in steps.iter().enumerate() {
            let now = start + Duration::from_millis(s.at_ms);
            let d = acquire(&mut log, now, quota, s.cost);
            let want = Decision {
                allowed: s.allowed,
                limit: quota.limit(),
                remaining: s.remaining,
                reset_after: Duration::from_millis(s.reset_ms),
                retry_after: s.retry_ms.map(Duration::from_millis),
            };
            assert_eq!(d, want, "step {i} (t = {} ms, cost {})", s.at_ms, s.cost);
            assert!(
                log.len() <= quota.limit() as usize,
                "step {i}: log exceeds limit"
            );
        }
    }

    #[test]
    fn admits_exactly_the_limit_then_refuses_until_the_oldest_leaves() {
        // 3 per 10 s.
        run(
            Quota::new(3, secs(10)),
            &[
                step(0, 1, true, 2, 10_000, None),
                step(1_000, 1, true, 1, 10_000, None),
                step(2_000, 1, true, 0, 10_000, None),
                // Full: the stamp at 0 leaves at 10 000.
                step(2_500, 1, false, 0, 9_500, Some(7_500)),
                step(9_999, 1, false, 0, 2_001, Some(1)),
                // Exactly W after the first admission: it has expired.
                step(10_000, 1, true, 0, 10_000, None),
                // Next to leave: the stamp at 1 000, at 11 000.
                step(10_500, 1, false, 0, 9_500, Some(500)),
            ],
        );
    }

    #[test]
    fn cost_above_one_counts_every_unit() {
        // 5 per 10 s.
        run(
            Quota::new(5, secs(10)),
            &[
                step(0, 2, true, 3, 10_000, None),
                step(1_000, 3, true, 0, 10_000, None),
                // Needs 2: both stamps at 0 must leave (at 10 000).
                step(2_000, 2, false, 0, 9_000, Some(8_000)),
                // Needs 4: two at 0 and two of the three at 1 000 must leave (at 11 000).
                step(2_000, 4, false, 0, 9_000, Some(9_000)),
                step(10_000, 2, true, 0, 10_000, None),
                step(10_000, 1, false, 0, 10_000, Some(1_000)),
            ],
        );
    }

    #[test]
    fn cost_above_limit_is_refused_with_the_window_and_records_nothing() {
        run(
            Quota::new(3, secs(10)),
            &[
                step(0, 4, false, 3, 0, Some(10_000)),
                step(0, 3, true, 0, 10_000, None),
                step(1_000, 4, false, 0, 9_000, Some(10_000)),
            ],
        );
    }

    #[test]
    fn zero_cost_only_checks() {
        run(
            Quota::new(1, secs(10)),
            &[
                step(0, 0, true, 1, 0, None),
                step(0, 1, true, 0, 10_000, None),
                step(1_000, 0, true, 0, 9_000, None),
            ],
        );
    }

    #[test]
    fn a_stamp_exactly_one_window_old_has_expired() {
        let q = Quota::new(1, Duration::from_nanos(100));
        let mut log = SlidingLog::default();
        assert!(acquire(&mut log, Duration::from_nanos(1_000), q, 1).allowed);
        let d = acquire(&mut log, Duration::from_nanos(1_099), q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_nanos(1)));
        assert!(acquire(&mut log, Duration::from_nanos(1_100), q, 1).allowed);
    }

    #[test]
    fn retry_after_is_exact_so_never_short() {
        let q = Quota::new(4, Duration::from_millis(1_000));
        let mut log = SlidingLog::default();
        let t0 = secs(50);
        for (ms, cost) in [(0, 1), (100, 2), (333, 1)] {
            assert!(acquire(&mut log, t0 + Duration::from_millis(ms), q, cost).allowed);
        }
        let at = t0 + Duration::from_millis(400);
        let d = acquire(&mut log, at, q, 3);
        let wait = d.retry_after.unwrap();
        assert_eq!(wait, Duration::from_millis(700)); // the stamps at 0 and 100 must go
        let mut early = log.clone();
        assert!(!acquire(&mut early, at + wait - Duration::from_nanos(1), q, 3).allowed);
        assert!(acquire(&mut log, at + wait, q, 3).allowed);
    }

    #[test]
    fn clock_going_backwards_neither_panics_nor_admits_extra() {
        let q = Quota::new(2, secs(10));
        let mut log = SlidingLog::default();
        assert!(acquire(&mut log, secs(10_000), q, 1).allowed);
        // The clock steps back an hour: the stamp at 10 000 s is in the future but still counts.
        let d = acquire(&mut log, secs(10_000 - 3_600), q, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // Recorded at the log's time (10 000 s), so the log stays sorted.
        assert_eq!(log.stamps().collect::<Vec<_>>(), [10_000 * S, 10_000 * S]);
        // Waits are measured from the (earlier) reading: never shorter than the real wait.
        assert_eq!(d.reset_after, secs(3_610));
        let d = acquire(&mut log, secs(10_000 - 3_600), q, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(3_610)));
        // Back to normal: both leave at 10 010 s.
        assert!(!acquire(&mut log, secs(10_009), q, 1).allowed);
        assert!(acquire(&mut log, secs(10_010), q, 2).allowed);
        // Time zero and the far future do not overflow.
        let _ = acquire(&mut log, Duration::ZERO, q, 1);
        let _ = acquire(&mut log, Duration::MAX, Quota::new(2, Duration::MAX), 1);
        let _ = acquire(
            &mut log,
            Duration::ZERO,
            Quota::new(2, Duration::MAX),
            u32::MAX,
        );
    }

    #[test]
    fn the_log_time_never_runs_backwards() {
        let q = Quota::new(1, Duration::from_nanos(60));
        let mut log = SlidingLog::default();
        assert!(acquire(&mut log, Duration::from_nanos(1_000), q, 1).allowed);
        // A later reading lets the stamp expire (and prunes it)...
        assert!(acquire(&mut log, Duration::from_nanos(2_000), q, 0).allowed);
        assert!(log.is_empty());
        // ...then the clock steps back: the admission is recorded at the log's time, 2 000,
        // not at 1 010, which would put two admissions 10 ns apart in the log.
        let d = acquire(&mut log, Duration::from_nanos(1_010), q, 1);
        assert!(d.allowed);
        assert_eq!(log.stamps().collect::<Vec<_>>(), [2_000]);
        assert_eq!(d.reset_after, Duration::from_nanos(1_050));
        let d = acquire(&mut log, Duration::from_nanos(1_020), q, 1);
        assert_eq!(d.retry_after, Some(Duration::from_nanos(1_040)));
        assert!(!acquire(&mut log, Duration::from_nanos(2_059), q, 1).allowed);
        assert!(acquire(&mut log, Duration::from_nanos(2_060), q, 1).allowed);
    }

    #[test]
    fn degenerate_quotas_do_not_panic() {
        let mut log = SlidingLog::default();
        let d = acquire(&mut log, secs(1), Quota::new(0, secs(1)), 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(secs(1)));
        assert!(acquire(&mut log, secs(1), Quota::new(0, secs(1)), 0).allowed);
        // A zero window keeps nothing.
        let q = Quota::new(1, Duration::ZERO);
        assert!(acquire(&mut log, secs(1), q, 1).allowed);
        assert!(acquire(&mut log, secs(1), q, 1).allowed);
    }

    #[test]
    fn a_lowered_limit_counts_what_is_already_held() {
        let mut log = SlidingLog::default();
        assert!(acquire(&mut log, secs(0), Quota::new(5, secs(10)), 5).allowed);
        let d = acquire(&mut log, secs(1), Quota::new(2, secs(10)), 0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // 5 held, limit 2: four must go before one more fits; they all leave at 10 s.
        let d = acquire(&mut log, secs(1), Quota::new(2, secs(10)), 1);
        assert_eq!(d.retry_after, Some(secs(9)));
    }

    #[test]
    fn expiry_tracks_the_newest_stamp() {
        let q = Quota::new(3, secs(10));
        let mut log = SlidingLog::default();
        acquire(&mut log, secs(100), q, 1);
        acquire(&mut log, secs(104), q, 1);
        assert_eq!(expires_at(&log, q), secs(114));
        // After that the log behaves as empty.
        let d = acquire(&mut log, secs(114), q, 3);
        assert!(d.allowed);
    }
}
