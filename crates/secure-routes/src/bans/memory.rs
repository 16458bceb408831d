//! [`MemoryBans`]: bans for one process.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use super::duration_ms;
use super::{Ban, BanKey, BanPolicy, BanState, BanStore, BoxFuture, StoreError, StrikeOutcome};

/// Keys held at most; at the cap, expired state is swept and, if the table is still full, a
/// strike against a new key is not recorded (reported as counted with its own weight). A
/// flood of fresh addresses must not grow memory without bound; the keys it would have held
/// are the ones that struck least.
pub const MAX_KEYS: usize = 1_000_000;

/// Inserts between two sweeps of expired state.
const SWEEP_EVERY: usize = 1_024;

/// Bans in this process's memory: exact (each step runs under a write lock), bounded
/// ([`MAX_KEYS`]) and self-cleaning (expired keys are swept every 1 024 new keys). Other
/// processes do not see them: use a shared store when several instances serve one site.
///
/// The [`MemoryStore`](crate::rate_limit::MemoryStore) holds one and is a [`BanStore`] too, so
/// the default limits store also keeps the bans.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanPolicy, BanStore, MemoryBans, StrikeOutcome};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bans = MemoryBans::new();
/// let policy = BanPolicy::builder().threshold(2).allow("10.0.0.0/8").build().unwrap();
/// let now = Duration::from_secs(1_000);
/// let inside = BanKey::ip("10.9.9.9".parse().unwrap());
/// assert_eq!(bans.strike(&inside, 5, &policy, now).await.unwrap(), StrikeOutcome::Exempt);
/// let key = BanKey::subject("mallory");
/// assert!(matches!(bans.strike(&key, 2, &policy, now).await.unwrap(), StrikeOutcome::Banned { new: true, .. }));
/// assert_eq!(bans.len(), 1);
/// # });
/// ```
#[derive(Debug, Default)]
pub struct MemoryBans {
    inner: RwLock<Table>,
}

#[derive(Debug, Default)]
struct Table {
    keys: HashMap<BanKey, BanState>,
    inserts: usize,
}

impl MemoryBans {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.read(|t| t.keys.len())
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deletes state that has expired at `now` (it decides like a fresh key); returns how
    /// many keys went.
    pub fn sweep(&self, now: Duration) -> usize {
        let now = duration_ms(now);
        self.write(|t| {
            let before = t.keys.len();
            t.keys.retain(|_, s| s.expires > now);
            before - t.keys.len()
        })
    }

    /// [`BanStore::strike`], synchronously.
    pub fn strike_now(
        &self,
        key: &BanKey,
        weight: u32,
        policy: &BanPolicy,
        now: Duration,
    ) -> StrikeOutcome {
        if policy.exempts(key) {
            return StrikeOutcome::Exempt;
        }
        let now = duration_ms(now);
        self.write(|t| {
            if !t.keys.contains_key(key) {
                t.inserts += 1;
                if t.inserts >= SWEEP_EVERY || t.keys.len() >= MAX_KEYS {
                    t.inserts = 0;
                    t.keys.retain(|_, s| s.expires > now);
                }
                if t.keys.len() >= MAX_KEYS {
                    return BanState::default().strike(key, weight, policy, now);
                }
            }
            t.keys
                .entry(key.clone())
                .or_default()
                .strike(key, weight, policy, now)
        })
    }

    /// [`BanStore::check`], synchronously: one read lock and one lookup.
    pub fn check_now(&self, key: &BanKey, now: Duration) -> Option<Ban> {
        let now = duration_ms(now);
        self.read(|t| t.keys.get(key).and_then(|s| s.active(key, now)))
    }

    fn read<T>(&self, f: impl FnOnce(&Table) -> T) -> T {
        // A panic under the lock cannot leave a half-written state (each step replaces whole
        // values), so a poisoned lock is still usable.
        f(&self.inner.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        f(&mut self.inner.write().unwrap_or_else(PoisonError::into_inner))
    }
}

impl BanStore for MemoryBans {
    fn strike<'a>(
        &'a self,
        key: &'a BanKey,
        weight: u32,
        policy: &'a BanPolicy,
        now: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
        let out = self.strike_now(key, weight, policy, now);
        Box::pin(async move { Ok(out) })
    }

    fn check<'a>(
        &'a self,
        key: &'a BanKey,
        now: Duration,
    ) -> BoxFuture<'a, Result<Option<Ban>, StoreError>> {
        let out = self.check_now(key, now);
        Box::pin(async move { Ok(out) })
    }

    fn list(&self, now: Duration) -> BoxFuture<'_, Result<Vec<Ban>, StoreError>> {
        let now = duration_ms(now);
        let mut bans: Vec<Ban> = self.read(|t| {
            t.keys
                .iter()
                .filter_map(|(k, s)| s.active(k, now))
                .collect()
        });
        sort_bans(&mut bans);
        Box::pin(async move { Ok(bans) })
    }

    fn lift<'a>(&'a self, key: &'a BanKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        let held = self.write(|t| t.keys.remove(key).is_some());
        Box::pin(async move { Ok(held) })
    }

    fn add<'a>(
        &'a self,
        key: &'a BanKey,
        until: Duration,
        reason: &'a str,
        now: Duration,
    ) -> BoxFuture<'a, Result<Ban, StoreError>> {
        let ban = self.write(|t| {
            t.keys.entry(key.clone()).or_default().add(
                key,
                duration_ms(until),
                reason,
                duration_ms(now),
            )
        });
        Box::pin(async move { Ok(ban) })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Sorts bans in the order [`BanStore::list`] promises: soonest end first, then by key.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{Ban, BanKey, sort_bans};
/// let ban = |k: &str, s| Ban { key: BanKey::subject(k), until: Duration::from_secs(s), strikes: 1, reason: String::new() };
/// let mut bans = vec![ban("b", 9), ban("c", 5), ban("a", 9)];
/// sort_bans(&mut bans);
/// assert_eq!(bans.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(), ["sub:c", "sub:a", "sub:b"]);
/// ```
pub fn sort_bans(bans: &mut [Ban]) {
    bans.sort_by(|a, b| a.until.cmp(&b.until).then_with(|| a.key.cmp(&b.key)));
}
