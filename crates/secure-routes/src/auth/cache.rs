//! The verified-token cache behind the JWT builders' `cache(capacity)` option.
//!
//! An asymmetric signature check costs tens of microseconds; a client sends the same token
//! on every request until it expires. The cache remembers *successful* verifications only, so
//! it never changes an answer, it only skips work:
//!
//! * **Key: the SHA-256 of the token**, not the token. The map then holds no bearer credential
//!   verbatim (a heap dump or a debug print of it hands out no session), and the key is
//!   collision resistant: a non-cryptographic hash would let an attacker look for a token that
//!   collides with a cached one and be served its principal.
//! * **Valid until the token's `exp`**, checked against the injected clock on every hit (a
//!   strict `now < exp`: within the leeway after `exp` the token is verified again, by the same
//!   rules as without a cache). Each entry also carries the *generation* of the key set it was
//!   verified with; a JWKS authenticator changes generation when its key set changes and only
//!   reads the cache while its set is fresh, so a key removed from the JWKS stops vouching for
//!   cached tokens when the set is refetched.
//! * **Bounded**: up to 16 maps (one per 256 entries of capacity) with a FIFO eviction order
//!   each. FIFO (not LRU) keeps a hit to one short lock and no bookkeeping; a hot token evicted
//!   by newer ones costs one more signature check. Only verified tokens get in, so a flood of
//!   forged tokens cannot evict anything. Each insertion gets a sequence number that its entry
//!   and its place in the order share: a place whose number no longer matches the map (the
//!   entry was dropped on a read, or inserted again since) is stale and evicts nothing, so a
//!   live entry is only ever evicted as the oldest live one. Stale places are compacted away
//!   when they make up half the order, which keeps every operation O(1) amortized.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::claims::{Claims, PINNED};

/// Shards, for large caches: concurrent hits on different tokens rarely wait for one another.
const SHARDS: usize = 16;
/// Least capacity of a shard. Eviction is per shard, so a shard must be large enough that
/// tokens landing in the same one do not push each other out while the cache is far from full.
const MIN_SHARD: usize = 256;

/// The SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheKey([u8; 32]);

impl CacheKey {
    pub(crate) fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn shard(&self, shards: usize) -> usize {
        usize::from(self.0[8]) % shards
    }
}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a uniform digest: eight of its bytes are as good a hash as any. An attacker
        // cannot choose keys (only verified tokens are inserted), so no flooding concern.
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Passes the digest bytes [`CacheKey::hash`] writes straight through.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `CacheKey`; a plain FNV-1a keeps the type a correct `Hasher`.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry {
    subject: Arc<str>,
    claims: Arc<Claims>,
    /// The token's `exp`, in seconds since the epoch.
    exp: u64,
    generation: u64,
    /// The insertion that wrote this entry: its place in [`Shard::order`] carries the same.
    seq: u64,
}

struct Shard {
    map: HashMap<CacheKey, Entry, BuildHasherDefault<DigestHasher>>,
    /// Insertion order, for eviction: (key, insertion sequence). Every entry of `map` has
    /// exactly one place here with its `seq`; other places are stale (the key was dropped or
    /// written again since) and are skipped. At most twice the capacity long.
    order: VecDeque<(CacheKey, u64)>,
    /// The next insertion's sequence number.
    next_seq: u64,
    capacity: usize,
}

impl Shard {
    /// Whether the place (`key`, `seq`) in the order is the current entry's.
    fn is_live(&self, key: &CacheKey, seq: u64) -> bool {
        self.map.get(key).is_some_and(|e| e.seq == seq)
    }
}

/// A bounded map from token digests to verified principals' parts.
pub(crate) struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sizes only: entries hold claims.
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` (at least 1) entries.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let n = (capacity / MIN_SHARD).clamp(1, SHARDS);
        let shards = (0..n)
            .map(|i| {
                // Spread the remainder so the shard capacities add up to `capacity` exactly.
                let cap = capacity / n + usize::from(i < capacity % n);
                Mutex::new(Shard {
                    map: HashMap::default(),
                    order: VecDeque::new(),
                    next_seq: 0,
                    capacity: cap,
                })
            })
            .collect();
        Self { shards, capacity }
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, Shard> {
        let i = key.shard(self.shards.len());
        // A panic while holding the lock cannot leave an entry half-written (inserts and
        // removals are single map operations), so a poisoned shard is still consistent.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached subject and claims of `key`, if `now` is before its `exp` and it was verified
    /// with a [`PINNED`] key or under `generation` (`None`: no key set is usable now). An
    /// expired entry, or one of another key set generation, is dropped.
    pub(crate) fn get(
        &self,
        key: &CacheKey,
        now: Duration,
        generation: Option<u64>,
    ) -> Option<(Arc<str>, Arc<Claims>)> {
        let mut shard = self.shard(key);
        let entry = shard.map.get(key)?;
        let current = entry.generation == PINNED || Some(entry.generation) == generation;
        let live = now.as_secs() < entry.exp;
        if current && live {
            return Some((Arc::clone(&entry.subject), Arc::clone(&entry.claims)));
        }
        // Without a usable key set the entry may become current again (the same keys
        // refetched): keep it unless it expired.
        if !live || generation.is_some() {
            shard.map.remove(key);
        }
        None
    }

    /// Remembers a successful verification, evicting the oldest entries of the shard when full.
    pub(crate) fn insert(
        &self,
        key: CacheKey,
        subject: Arc<str>,
        claims: Arc<Claims>,
        exp: u64,
        generation: u64,
    ) {
        let mut shard = self.shard(&key);
        let seq = shard.next_seq;
        shard.next_seq = seq.wrapping_add(1);
        let entry = Entry {
            subject,
            claims,
            exp,
            generation,
            seq,
        };
        // A rewritten key becomes the newest; its old place goes stale.
        shard.map.insert(key, entry);
        shard.order.push_back((key, seq));
        // Evict the oldest *live* entries: a stale place evicts nothing (it used to evict
        // whatever now lived under its key, a re-inserted entry with a place further back).
        while shard.map.len() > shard.capacity {
            let Some((old, old_seq)) = shard.order.pop_front() else {
                break;
            };
            if shard.is_live(&old, old_seq) {
                shard.map.remove(&old);
            }
        }
        // Stale places pile up as entries are dropped on reads; once they are half the order,
        // drop them all (O(capacity), at most once per `capacity` insertions).
        if shard.order.len() > 2 * shard.capacity {
            let Shard { map, order, .. } = &mut *shard;
            order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &TokenCache, token: &str, exp: u64, generation: u64) {
        c.insert(
            CacheKey::of(token),
            Arc::from("alice"),
            Arc::new(Claims::new()),
            exp,
            generation,
        );
    }

    fn hit(c: &TokenCache, token: &str, now_secs: u64, generation: u64) -> bool {
        c.get(
            &CacheKey::of(token),
            Duration::from_secs(now_secs),
            Some(generation),
        )
        .is_some()
    }

    #[test]
    fn pinned_entries_do_not_depend_on_a_key_set() {
        let c = TokenCache::new(8);
        put(&c, "secret", 100, PINNED);
        put(&c, "jwks", 100, 3);
        let get = |t: &str, g: Option<u64>| c.get(&CacheKey::of(t), Duration::from_secs(50), g);
        assert!(get("secret", None).is_some());
        assert!(get("secret", Some(7)).is_some());
        // A key set entry needs its set to be current, and survives while none is.
        assert!(get("jwks", None).is_none());
        assert!(get("jwks", Some(3)).is_some());
        assert!(get("jwks", Some(4)).is_none());
        assert!(get("jwks", Some(3)).is_none(), "dropped by the newer set");
    }

    #[test]
    fn hits_only_before_exp_and_in_the_same_generation() {
        let c = TokenCache::new(8);
        put(&c, "t", 100, 3);
        assert!(hit(&c, "t", 99, 3));
        assert!(!hit(&c, "other", 99, 3));
        assert!(!hit(&c, "t", 99, 4), "another key set");
        // The stale entry was dropped: even the right generation misses now.
        assert!(!hit(&c, "t", 99, 3));
        put(&c, "t", 100, 3);
        assert!(!hit(&c, "t", 100, 3), "at exp");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn capacity_is_exact_and_oldest_go_first() {
        for cap in [1, 5, 16, 17, 100, 5_000] {
            let c = TokenCache::new(cap);
            for i in 0..cap * 3 {
                put(&c, &format!("token-{i}"), 1_000, 0);
                assert!(c.len() <= cap, "cap {cap}");
            }
            assert_eq!(c.capacity, cap);
            // The newest entry is always there.
            assert!(hit(&c, &format!("token-{}", cap * 3 - 1), 1, 0));
            // FIFO per shard: the very first entries are long gone.
            assert!(!hit(&c, "token-0", 1, 0));
        }
    }

    #[test]
    fn order_stays_bounded_when_entries_expire_before_eviction() {
        let c = TokenCache::new(4);
        for i in 0..1_000 {
            let t = format!("t{i}");
            put(&c, &t, 10, 0);
            // Expire it through a read: the map drops it, the order keeps its key.
            assert!(!hit(&c, &t, 10, 0));
        }
        for s in c.shards.iter() {
            let s = s.lock().unwrap();
            assert!(s.order.len() <= 2 * s.capacity);
        }
    }

    /// An entry dropped by `get` (expired, or of another key set generation) and inserted
    /// again is live: it must not be evicted through the old entry's place in the order.
    #[test]
    fn a_reinserted_entry_is_not_evicted_through_its_old_place() {
        for drop_by in ["generation", "expiry"] {
            let c = TokenCache::new(2);
            put(&c, "a", 100, 3);
            match drop_by {
                "generation" => assert!(!hit(&c, "a", 50, 4)),
                _ => assert!(!hit(&c, "a", 100, 3)),
            }
            assert_eq!(c.len(), 0, "{drop_by}");
            put(&c, "a", 1_000, 4);
            put(&c, "b", 1_000, 4);
            // Two live entries in a cache of two: both stay.
            assert!(hit(&c, "a", 50, 4), "{drop_by}: live entry evicted");
            assert!(hit(&c, "b", 50, 4), "{drop_by}");
            // And the next insert evicts the oldest live one, a.
            put(&c, "c", 1_000, 4);
            assert!(!hit(&c, "a", 50, 4), "{drop_by}");
            assert!(hit(&c, "b", 50, 4) && hit(&c, "c", 50, 4), "{drop_by}");
        }
    }

    /// Entries dropped on reads leave stale places behind; they never cost a live entry its
    /// place, whatever their number.
    #[test]
    fn stale_places_never_evict_live_entries() {
        let c = TokenCache::new(3);
        put(&c, "live", 1_000, 0);
        for i in 0..100 {
            let t = format!("gone-{i}");
            put(&c, &t, 10, 0);
            assert!(!hit(&c, &t, 10, 0));
        }
        put(&c, "x", 1_000, 0);
        put(&c, "y", 1_000, 0);
        assert!(hit(&c, "live", 1, 0));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn overwriting_an_entry_keeps_one_copy() {
        let c = TokenCache::new(2);
        for _ in 0..10 {
            put(&c, "a", 1_000, 0);
        }
        put(&c, "b", 1_000, 0);
        assert!(hit(&c, "a", 1, 0) && hit(&c, "b", 1, 0));
        assert_eq!(c.len(), 2);
    }

    proptest::proptest! {
        /// Against a model (a FIFO of the live keys, a rewritten key moving to the back): the
        /// cache holds exactly the model's entries after any sequence of inserts and reads,
        /// and its order never grows past twice the capacity.
        #[test]
        fn behaves_like_a_fifo_of_live_entries(
            capacity in 1usize..6,
            ops in proptest::collection::vec((0u8..3, 0u8..8, 0u64..3), 1..200),
        ) {
            let c = TokenCache::new(capacity);
            // (key, exp, generation), oldest first.
            let mut model: VecDeque<(u8, u64, u64)> = VecDeque::new();
            let mut now = 0u64;
            for (op, k, g) in ops {
                let token = format!("t{k}");
                match op {
                    0 => {
                        let exp = now + 1 + g;
                        put(&c, &token, exp, g);
                        model.retain(|(mk, _, _)| *mk != k);
                        model.push_back((k, exp, g));
                        if model.len() > capacity {
                            model.pop_front();
                        }
                    }
                    1 => {
                        let want = model
                            .iter()
                            .any(|(mk, exp, mg)| *mk == k && now < *exp && *mg == g);
                        proptest::prop_assert_eq!(hit(&c, &token, now, g), want);
                        // A miss drops the entry (another generation, or expired).
                        if !want {
                            model.retain(|(mk, _, _)| *mk != k);
                        }
                    }
                    _ => now += 1,
                }
                proptest::prop_assert_eq!(c.len(), model.len());
                let s = c.shards[0].lock().unwrap();
                proptest::prop_assert!(s.order.len() <= 2 * capacity);
            }
        }
    }

    #[test]
    fn keys_are_digests() {
        let k = CacheKey::of("abc");
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(k.0[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert!(CacheKey::of("abd") != k);
    }
}
