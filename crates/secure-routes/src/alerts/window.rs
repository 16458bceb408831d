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
    /// Position in the recency order (`Windows::lru`).
    seq: u64,
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

    /// Adds `n` occurrences of `key` at `now`. Returns whether the rule fires: at least
    /// `count` occurrences within the window ending now, outside the cooldown. Firing clears
    /// the key's log and starts its cooldown; occurrences during the cooldown are still logged,
    /// so an attack still going on when it ends fires again at once (one alert per cooldown).
    pub(crate) fn hit(&mut self, key: &str, n: u64, now: u64, limits: Limits) -> bool {
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
                    seq,
                },
            );
            self.lru.insert(seq, key.into());
        }
        let Some(log) = self.keys.get_mut(key) else {
            return false;
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
        if now < log.quiet_until || log.times.len() < count {
            return false;
        }
        log.quiet_until = now.saturating_add(limits.cooldown_ms);
        log.times.clear();
        true
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
        assert!(!w.hit("a", 1, 0, L));
        assert!(!w.hit("a", 1, 1_000, L));
        assert!(w.hit("a", 1, 2_000, L));
    }

    #[test]
    fn occurrences_outside_the_window_do_not_count() {
        let mut w = Windows::new(10);
        assert!(!w.hit("a", 1, 0, L));
        assert!(!w.hit("a", 1, 1_000, L));
        // 60 s after the first: it has left the window (the window is 60 s, ending now).
        assert!(!w.hit("a", 1, 60_000, L));
        assert!(w.hit("a", 1, 60_500, L));
    }

    #[test]
    fn quiet_during_the_cooldown_then_fires_again() {
        let mut w = Windows::new(10);
        assert!(w.hit("a", 3, 0, L));
        for t in 1..600 {
            assert!(!w.hit("a", 1, t * 1_000, L), "fired in cooldown at {t}s");
        }
        // Cooldown over, the attack still going: the next occurrence fires.
        assert!(!w.hit("a", 1, 599_999, L));
        assert!(w.hit("a", 1, 600_000, L));
    }

    #[test]
    fn keys_are_separate_and_bounded_least_recent_first() {
        let mut w = Windows::new(2);
        assert!(!w.hit("a", 1, 0, L));
        assert!(!w.hit("b", 1, 1, L));
        assert!(!w.hit("a", 1, 2, L)); // `a` is now the most recently seen
        assert!(!w.hit("c", 1, 3, L)); // full: evicts `b`, the least recently seen
        assert_eq!(w.len(), 2);
        assert!(w.hit("a", 1, 4, L), "a kept its log: three occurrences");
        assert!(!w.hit("b", 2, 5, L), "b was evicted: starts again from two");
        assert!(
            !w.hit("c", 1, 6, L),
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
        assert!(w.hit("a", 1_000_000, 0, big));
        assert!(w.keys["a"].times.is_empty());
        assert!(!w.hit("a", 4, 100, big));
        assert_eq!(w.keys["a"].times.len(), 4);
    }
}
