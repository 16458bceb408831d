//! The keys of the last clients each thread saw, so a client's next request skips the HMAC.
//!
//! Why: a rate-limit key is HMAC-SHA-256 over the bucket and the subject (`KeyHasher`),
//! about 190 ns per request on this project's machine (`cargo bench --bench rate_limit --
//! key_hmac`), seven times the memory store's own check; and clients send requests in runs
//! (keep-alive, a page's burst of API calls). A key is a pure function of (secret, bucket,
//! subject), so a cached one is exact as long as all three are compared in full: the hasher
//! by its never-reused number, the bucket and the subject by value. Nothing is ever stale.
//!
//! Per thread, so there is no lock and no contention; direct-mapped (64 slots, one place per
//! entry), so a lookup is one hash and one comparison and memory is fixed (about 5 KiB per
//! thread, plus the subjects' strings, which come from verified tokens). An attacker who
//! makes entries collide (many addresses) only gets misses, which cost what every request
//! cost before.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use super::{KeyHasher, RateLimitKey};

const SLOTS: usize = 64;

/// A subject as the cache compares it.
pub(crate) enum Subject<'a> {
    /// An address, already grouped (`Subject::from_ip`).
    Ip(IpAddr),
    /// An authenticated principal's subject.
    User(&'a str),
}

enum Owned {
    Ip(IpAddr),
    User(Box<str>),
}

struct Slot {
    hasher: u64,
    bucket: Arc<str>,
    subject: Owned,
    key: RateLimitKey,
}

thread_local! {
    static CACHE: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// The key for `subject` in `bucket` under `hasher`: from this thread's cache when the same
/// three were keyed last in its slot, else computed (and kept).
pub(crate) fn key(hasher: &KeyHasher, bucket: &Arc<str>, subject: Subject<'_>) -> RateLimitKey {
    let index = slot(hasher.id(), bucket, &subject);
    // `try_with`: while the thread's locals are torn down there is no cache, only the HMAC.
    let hit = CACHE.try_with(|cache| {
        let cache = cache.borrow();
        let slot = cache[index].as_ref()?;
        let same = slot.hasher == hasher.id()
            && (Arc::ptr_eq(&slot.bucket, bucket) || slot.bucket == *bucket)
            && match (&slot.subject, &subject) {
                (Owned::Ip(a), Subject::Ip(b)) => a == b,
                (Owned::User(a), Subject::User(b)) => **a == **b,
                _ => false,
            };
        same.then_some(slot.key)
    });
    if let Ok(Some(key)) = hit {
        return key;
    }
    let (key, owned) = match subject {
        Subject::Ip(ip) => (hasher.key(bucket, &super::Subject::Ip(ip)), Owned::Ip(ip)),
        Subject::User(s) => (
            hasher.tagged(bucket, b'u', s.as_bytes()),
            Owned::User(s.into()),
        ),
    };
    let _ = CACHE.try_with(|cache| {
        cache.borrow_mut()[index] = Some(Slot {
            hasher: hasher.id(),
            bucket: bucket.clone(),
            subject: owned,
            key,
        });
    });
    key
}

/// Where an entry lives: a cheap mix of everything it is compared by. The bucket by its
/// bytes, not its address: a layer over several routes formats the name of every route after
/// the first per request (`guard::client`), so its address is new each time.
fn slot(hasher: u64, bucket: &Arc<str>, subject: &Subject<'_>) -> usize {
    let subject = match subject {
        Subject::Ip(IpAddr::V4(a)) => u64::from(a.to_bits()),
        Subject::Ip(IpAddr::V6(a)) => {
            let b = a.to_bits();
            (b >> 64) as u64 ^ b as u64
        }
        Subject::User(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
    };
    let bucket = xxhash_rust::xxh3::xxh3_64(bucket.as_bytes());
    let mixed = (subject ^ bucket ^ hasher.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 58) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Subject as S;

    /// Every cached answer equals the HMAC's, across two secrets, several buckets (one of
    /// them equal by value but another allocation) and more subjects than there are slots.
    #[test]
    fn cached_keys_are_the_hmac_keys() {
        let hashers = [KeyHasher::new(b"secret one"), KeyHasher::new(b"secret two")];
        let buckets: [Arc<str>; 3] = [
            Arc::from("route:/a"),
            Arc::from("route:/b"),
            Arc::from("route:/a"),
        ];
        let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
        for round in 0..3 {
            for h in &hashers {
                for b in &buckets {
                    for i in 0..200u32 {
                        let ip = IpAddr::from((i * 7919 + round).to_be_bytes());
                        assert_eq!(key(h, b, Subject::Ip(ip)), h.key(b, &S::Ip(ip)));
                        let v6 = IpAddr::from([0x2001, 0xdb8, 0, i as u16, 0, 0, 0, 0]);
                        assert_eq!(key(h, b, Subject::Ip(v6)), h.key(b, &S::Ip(v6)));
                        let u = &users[i as usize];
                        assert_eq!(key(h, b, Subject::User(u)), h.key(b, &S::User(u.clone())));
                    }
                }
            }
        }
    }

    /// The same subject under two secrets, or in two buckets, never gets the other's key,
    /// even when both were just cached.
    #[test]
    fn a_hit_needs_the_same_secret_bucket_and_subject() {
        let (one, two) = (KeyHasher::new(b"one"), KeyHasher::new(b"two"));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("route:/a"), Arc::from("route:/b"));
        let ip = IpAddr::from([192, 0, 2, 1]);
        let k1 = key(&one, &a, Subject::Ip(ip));
        assert_ne!(key(&two, &a, Subject::Ip(ip)), k1);
        assert_ne!(key(&one, &b, Subject::Ip(ip)), k1);
        assert_ne!(key(&one, &a, Subject::User("192.0.2.1")), k1);
        assert_eq!(key(&one, &a, Subject::Ip(ip)), k1);
        // A clone of a hasher is the same secret: it may share the entry.
        assert_eq!(key(&one.clone(), &a, Subject::Ip(ip)), k1);
    }
}
