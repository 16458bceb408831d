//! Folding identical refusals into one row with a count, before the queue.
//!
//! Why: one client pipelining refused requests writes one row per request (11,700 rows, 6.8 MB
//! a second were measured), so the audit log, its disk and the queue become the attacker's
//! target. Dropping repeats would let a flood hide what follows it; folding keeps every
//! occurrence in a count:
//!
//! * The first event of a key (action, outcome, status, method, route, reason, client,
//!   subject) opens a window and goes to the queue at once, as before (count 1).
//! * Later events of that key within [`AuditConfig::fold_window`](super::AuditConfig) only
//!   raise a counter under a short-held shard lock: no allocation beyond the key, no I/O, no
//!   await.
//! * When the window is over (seen by the writer task's tick, or by the next event of that
//!   key), one row is written for the folded ones: the first of them with `count = n` and
//!   `metadata.folded = {first_seen, last_seen}`. So the sum of `count` over rows equals the
//!   number of `record` calls.
//! * The table is bounded: a new key in a full shard first clears that shard's ended windows,
//!   then evicts the oldest window, emitting (never dropping) what it had folded.
//! * On close every pending count is emitted; events arriving after close pass through (to
//!   the spill file), so no count can be stranded.
//!
//! Only `Denied` and `Allowed` events fold. `Allowed` events are fail-open store failures:
//! during a store outage every request writes one, which is a flood of its own. `Error`
//! events (handler panics, internal failures) never fold: each is a bug report whose request
//! id must be kept.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AuditAction, AuditEvent, Outcome};
use crate::clock::Clock;

/// Shards of the fold table: concurrent refusals of different keys rarely share a lock.
const SHARDS: usize = 16;

#[derive(Clone, PartialEq, Eq, Hash)]
struct FoldKey {
    action: AuditAction,
    outcome: Outcome,
    status: u16,
    method: String,
    route: String,
    reason: String,
    client_ip: Option<String>,
    subject: Option<String>,
}

impl FoldKey {
    fn of(e: &AuditEvent) -> Self {
        Self {
            action: e.action,
            outcome: e.outcome,
            status: e.status,
            method: e.method.clone(),
            route: e.route.clone(),
            reason: e.reason.clone(),
            client_ip: e.client_ip.clone(),
            subject: e.subject.clone(),
        }
    }
}

/// The occurrences folded so far in one window.
struct Pending {
    /// The first folded occurrence: the row written for all of them.
    event: AuditEvent,
    count: u64,
    last_seen: OffsetDateTime,
}

impl Pending {
    /// The row standing for every folded occurrence.
    fn into_event(self) -> AuditEvent {
        let mut e = self.event;
        let first = e.timestamp.format(&Rfc3339).unwrap_or_default();
        let last = self.last_seen.format(&Rfc3339).unwrap_or_default();
        let folded = serde_json::json!({ "first_seen": first, "last_seen": last });
        match &mut e.metadata {
            serde_json::Value::Object(map) => {
                map.insert("folded".to_owned(), folded);
            }
            serde_json::Value::Null => e.metadata = serde_json::json!({ "folded": folded }),
            other => {
                let value = other.take();
                e.metadata = serde_json::json!({ "value": value, "folded": folded });
            }
        }
        e.count = self.count;
        e
    }
}

struct Entry {
    /// When the window opened (by the injected clock).
    opened: Duration,
    pending: Option<Pending>,
}

/// What [`FoldTable::admit`] decided.
pub(super) enum Admit {
    /// Not folded: queue these (the event itself last, after a pending count it closed or an
    /// evicted one).
    Queue(Vec<AuditEvent>),
    /// Folded into a count; nothing to queue now. `merged`: the event joined an existing
    /// count (it will have no row of its own).
    Folded { merged: bool },
}

pub(super) struct FoldTable {
    window: Duration,
    per_shard: usize,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<FoldKey, Entry>>]>,
    closed: AtomicBool,
}

impl FoldTable {
    pub(super) fn new(window: Duration, max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        Self {
            window,
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            clock,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            closed: AtomicBool::new(false),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    fn ended(&self, entry: &Entry, now: Duration) -> bool {
        // A clock that went backwards ends no window (saturating), one far ahead ends it.
        now.saturating_sub(entry.opened) >= self.window
    }

    /// Folds `event` or tells what to queue.
    pub(super) fn admit(&self, event: AuditEvent) -> Admit {
        if !self.enabled() || event.outcome == Outcome::Error {
            return Admit::Queue(vec![event]);
        }
        let key = FoldKey::of(&event);
        let index = (self.hasher.hash_one(&key) as usize) % self.shards.len();
        let now = self.clock.now();
        let mut shard = self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked under the shard lock that `close` also takes: an event either is in the
        // table before close drains this shard, or sees `closed` and passes through.
        if self.closed.load(Ordering::SeqCst) {
            return Admit::Queue(vec![event]);
        }
        let mut out = Vec::new();
        if let Some(entry) = shard.get_mut(&key) {
            if !self.ended(entry, now) {
                let merged = match &mut entry.pending {
                    Some(p) => {
                        p.count += 1;
                        p.last_seen = event.timestamp;
                        true
                    }
                    None => {
                        entry.pending = Some(Pending {
                            last_seen: event.timestamp,
                            event,
                            count: 1,
                        });
                        false
                    }
                };
                return Admit::Folded { merged };
            }
            // The window is over: its count is written, and this event opens a new one.
            out.extend(entry.pending.take().map(Pending::into_event));
            entry.opened = now;
            out.push(event);
            return Admit::Queue(out);
        }
        if shard.len() >= self.per_shard {
            shard.retain(|_, entry| {
                if self.ended(entry, now) {
                    out.extend(entry.pending.take().map(Pending::into_event));
                    false
                } else {
                    true
                }
            });
            if shard.len() >= self.per_shard {
                let oldest = shard
                    .iter()
                    .min_by_key(|(_, e)| e.opened)
                    .map(|(k, _)| k.clone());
                if let Some(entry) = oldest.and_then(|k| shard.remove(&k)) {
                    out.extend(entry.pending.map(Pending::into_event));
                }
            }
        }
        shard.insert(
            key,
            Entry {
                opened: now,
                pending: None,
            },
        );
        out.push(event);
        Admit::Queue(out)
    }

    /// Removes the ended windows, returning the rows for what they folded.
    pub(super) fn take_ended(&self) -> Vec<AuditEvent> {
        let now = self.clock.now();
        self.take_where(|entry| self.ended(entry, now))
    }

    /// Removes every window, returning the rows for what they folded.
    pub(super) fn take_all(&self) -> Vec<AuditEvent> {
        self.take_where(|_| true)
    }

    /// From now on nothing folds; returns the rows for every pending count.
    pub(super) fn close(&self) -> Vec<AuditEvent> {
        self.closed.store(true, Ordering::SeqCst);
        self.take_all()
    }

    fn take_where(&self, remove: impl Fn(&Entry) -> bool) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        for shard in &*self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, entry| {
                if remove(entry) {
                    out.extend(entry.pending.take().map(Pending::into_event));
                    false
                } else {
                    true
                }
            });
        }
        // Oldest first, so a sink sees follow-up rows in time order.
        out.sort_by_key(|e| e.timestamp);
        out
    }

    /// Keys with an open window (for tests and the queue-depth view).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn refusal(ip: &str) -> AuditEvent {
        AuditEvent::new(AuditAction::InvalidInput)
            .with_status(405)
            .with_client_ip(ip)
            .with_request("PUT", "/api/strict", "/api/strict")
            .with_reason("method_not_allowed")
    }

    fn rows(a: Admit) -> Vec<AuditEvent> {
        match a {
            Admit::Queue(v) => v,
            Admit::Folded { .. } => Vec::new(),
        }
    }

    #[test]
    fn a_full_table_evicts_by_emitting() {
        let clock = FakeClock::new(Duration::from_secs(100));
        let table = FoldTable::new(Duration::from_secs(10), SHARDS, Arc::new(clock.clone()));
        let mut queued = 0;
        let mut total = 0;
        // Two events per key, many keys: every second event is folded.
        for i in 0..200 {
            let ip = format!("10.0.{}.{}", i / 250, i % 250);
            for _ in 0..2 {
                total += 1;
                queued += rows(table.admit(refusal(&ip)))
                    .iter()
                    .map(|e| e.count)
                    .sum::<u64>();
            }
            clock.advance(Duration::from_millis(1));
        }
        assert!(table.len() <= SHARDS, "bounded: {}", table.len());
        queued += table.close().iter().map(|e| e.count).sum::<u64>();
        assert_eq!(queued, total);
    }

    #[test]
    fn error_events_never_fold() {
        let table = FoldTable::new(
            Duration::from_secs(10),
            100,
            Arc::new(FakeClock::new(Duration::ZERO)),
        );
        let e = refusal("10.0.0.1").with_outcome(Outcome::Error);
        for _ in 0..3 {
            assert_eq!(rows(table.admit(e.clone())).len(), 1);
        }
    }
}
