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
//!   forged tokens cannot evict anything.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::verify::Claims;

/// The generation of entries verified with a key that never changes (a configured secret or
/// PEM): valid whatever a key set is doing. Key set generations never take this value.
pub(crate) const PINNED: u64 = u64::MAX;

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
}

struct Shard {
    map: HashMap<CacheKey, Entry, BuildHasherDefault<DigestHasher>>,
    /// Insertion order, for eviction. May name keys already dropped from `map`; its length
    /// bounds the shard.
    order: VecDeque<CacheKey>,
    capacity: usize,
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
        let entry = Entry {
            subject,
            claims,
            exp,
            generation,
        };
        if shard.map.insert(key, entry).is_none() {
            shard.order.push_back(key);
        }
        while shard.order.len() > shard.capacity {
            if let Some(old) = shard.order.pop_front() {
                shard.map.remove(&old);
            }
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
            assert!(s.order.len() <= s.capacity);
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
