//! One rule's sliding windows: per key, the times of its last `count` occurrences and when its
//! cooldown ends, with at most `max_keys` keys (the least recently seen evicted first).
//!
//! Bounded memory: a key's log never holds more than `count` times (older ones cannot change
//! the decision: the rule fires when the `count`-th most recent occurrence is still inside the
//! window), and the table never more than `max_keys` keys, so an attacker rotating addresses
//! costs at most `max_keys * count` stored times per rule. Evicting the least recently seen
//! key keeps the keys that are active now, which are the ones an alert is about; an evicted key
//! loses its log and its cooldown (it must reach `count` again to fire).

use std::collections::{BTreeMap, HashMap, VecDeque};

/// The rule's numbers, in milliseconds of the injected clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) count: u32,
    pub(crate) within_ms: u64,
    pub(crate) cooldown_ms: u64,
}

#[derive(Debug)]
struct KeyLog {
    /// Occurrence times, oldest first, at most `count`.
    times: VecDeque<u64>,
    /// No firing before this time (the cooldown after the last firing).
    quiet_until: u64,
    /// Occurrences since the last firing or suppression: a suppression is counted when the
    /// rule would have fired without a cooldown (`count` new occurrences, all in the window).
    fresh: u64,
    /// Position in the recency order (`Windows::lru`).
    seq: u64,
}

/// What one occurrence did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hit {
    /// Below the count (or in the cooldown, short of another `count`).
    Counted,
    /// The rule fires.
    Fired,
    /// The rule would have fired had the key not been in its cooldown (counted once per
    /// `count` occurrences, as firing without a cooldown would).
    Suppressed,
}

/// The keys of one rule.
#[derive(Debug)]
pub(crate) struct Windows {
    max_keys: usize,
    keys: HashMap<Box<str>, KeyLog>,
    /// Keys by their last occurrence, oldest first.
    lru: BTreeMap<u64, Box<str>>,
    next_seq: u64,
}

impl Windows {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            max_keys: max_keys.max(1),
            keys: HashMap::new(),
            lru: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Keys held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds `n` occurrences of `key` at `now`. The rule fires at `count` occurrences within
    /// the window ending now, outside the cooldown. Firing clears the key's log and starts its
    /// cooldown; occurrences during the cooldown are still logged, so an attack still going on
    /// when it ends fires again at once (one alert per cooldown). In the cooldown, each time
    /// the rule would have fired without one is [`Hit::Suppressed`] (for the metrics).
    pub(crate) fn hit(&mut self, key: &str, n: u64, now: u64, limits: Limits) -> Hit {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(log) = self.keys.get_mut(key) {
            if let Some(k) = self.lru.remove(&log.seq) {
                self.lru.insert(seq, k);
            }
            log.seq = seq;
        } else {
            if self.keys.len() >= self.max_keys
                && let Some((_, oldest)) = self.lru.pop_first()
            {
                self.keys.remove(&oldest);
            }
            self.keys.insert(
                key.into(),
                KeyLog {
                    times: VecDeque::new(),
                    quiet_until: 0,
                    fresh: 0,
                    seq,
                },
            );
            self.lru.insert(seq, key.into());
        }
        let Some(log) = self.keys.get_mut(key) else {
            return Hit::Counted;
        };
        let count = limits.count.max(1) as usize;
        // The window is (now - within, now]: a time at or before `now - within` is out.
        // (Nothing is out while `now` is less than one window after the epoch.)
        if let Some(horizon) = now.checked_sub(limits.within_ms) {
            while log.times.front().is_some_and(|&t| t <= horizon) {
                log.times.pop_front();
            }
        }
        let n = usize::try_from(n.max(1)).unwrap_or(usize::MAX).min(count);
        for _ in 0..n {
            if log.times.len() == count {
                log.times.pop_front();
            }
            log.times.push_back(now);
        }
        log.fresh = log
            .fresh
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if log.times.len() < count {
            return Hit::Counted;
        }
        if now < log.quiet_until {
            // The last `count` times are all in the window; if all are also new since the
            // last firing or suppression, this is an alert the cooldown held back.
            if log.fresh >= u64::try_from(count).unwrap_or(u64::MAX) {
                log.fresh = 0;
                return Hit::Suppressed;
            }
            return Hit::Counted;
        }
        log.quiet_until = now.saturating_add(limits.cooldown_ms);
        log.times.clear();
        log.fresh = 0;
        Hit::Fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        count: 3,
        within_ms: 60_000,
        cooldown_ms: 600_000,
    };

    #[test]
    fn fires_at_the_count_within_the_window_not_before() {
        let mut w = Windows::new(10);
        assert_ne!(Hit::Fired, w.hit("a", 1, 0, L));
        assert_ne!(Hit::Fired, w.hit("a", 1, 1_000, L));
        assert_eq!(Hit::Fired, w.hit("a", 1, 2_000, L));
    }

    #[test]
    fn occurrences_outside_the_window_do_not_count() {
        let mut w = Windows::new(10);
        assert_ne!(Hit::Fired, w.hit("a", 1, 0, L));
        assert_ne!(Hit::Fired, w.hit("a", 1, 1_000, L));
        // 60 s after the first: it has left the window (the window is 60 s, ending now).
        assert_ne!(Hit::Fired, w.hit("a", 1, 60_000, L));
        assert_eq!(Hit::Fired, w.hit("a", 1, 60_500, L));
    }

    #[test]
    fn quiet_during_the_cooldown_then_fires_again() {
        let mut w = Windows::new(10);
        assert_eq!(Hit::Fired, w.hit("a", 3, 0, L));
        for t in 1..600 {
            assert_ne!(
                Hit::Fired,
                w.hit("a", 1, t * 1_000, L),
                "fired in cooldown at {t}s"
            );
        }
        // Cooldown over, the attack still going: the next occurrence fires.
        assert_ne!(Hit::Fired, w.hit("a", 1, 599_999, L));
        assert_eq!(Hit::Fired, w.hit("a", 1, 600_000, L));
    }

    #[test]
    fn suppressed_once_per_count_occurrences_in_the_cooldown() {
        let mut w = Windows::new(10);
        assert_eq!(w.hit("a", 3, 0, L), Hit::Fired);
        let mut suppressed = 0;
        // 9 more in the cooldown, 1 s apart: without a cooldown they would fire 3 times.
        for t in 1..=9 {
            match w.hit("a", 1, t * 1_000, L) {
                Hit::Suppressed => suppressed += 1,
                Hit::Counted => {}
                Hit::Fired => panic!("fired in cooldown at {t}s"),
            }
        }
        assert_eq!(suppressed, 3);
        // Spread beyond the window, they would not have fired: nothing suppressed.
        let mut w = Windows::new(10);
        assert_eq!(w.hit("b", 3, 0, L), Hit::Fired);
        for t in 1..=9 {
            assert_eq!(w.hit("b", 1, t * 40_000, L), Hit::Counted, "at {t}");
        }
    }

    #[test]
    fn keys_are_separate_and_bounded_least_recent_first() {
        let mut w = Windows::new(2);
        assert_ne!(Hit::Fired, w.hit("a", 1, 0, L));
        assert_ne!(Hit::Fired, w.hit("b", 1, 1, L));
        assert_ne!(Hit::Fired, w.hit("a", 1, 2, L)); // `a` is now the most recently seen
        assert_ne!(Hit::Fired, w.hit("c", 1, 3, L)); // full: evicts `b`, the least recently seen
        assert_eq!(w.len(), 2);
        assert_eq!(
            Hit::Fired,
            w.hit("a", 1, 4, L),
            "a kept its log: three occurrences"
        );
        assert_ne!(
            Hit::Fired,
            w.hit("b", 2, 5, L),
            "b was evicted: starts again from two"
        );
        assert!(
            Hit::Fired != w.hit("c", 1, 6, L),
            "c was evicted by b: starts again from one"
        );
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_log_never_exceeds_count() {
        let mut w = Windows::new(1);
        let big = Limits {
            count: 5,
            within_ms: 10,
            cooldown_ms: 0,
        };
        assert_eq!(Hit::Fired, w.hit("a", 1_000_000, 0, big));
        assert!(w.keys["a"].times.is_empty());
        assert_ne!(Hit::Fired, w.hit("a", 4, 100, big));
        assert_eq!(w.keys["a"].times.len(), 4);
    }
}
