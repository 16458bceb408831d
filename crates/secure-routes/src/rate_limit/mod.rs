//! Rate limiting: quotas, decisions, keys and the store trait.
//!
//! A [`RateLimitStore`] performs one atomic step per check ([`RateLimitStore::acquire`]); the
//! algorithms themselves ([`sliding_window`], [`gcra`]) are pure functions over a small state
//! so the memory store and the shared stores make the same decisions.
//!
//! Two algorithms, with different promises:
//!
//! * [`Algorithm::SlidingWindow`] (the presets' default): "N per W" means never more than N
//!   admitted in **any** window of length W, exactly. State is the last N admission times.
//! * [`Algorithm::Gcra`] (token bucket): a burst of up to N, then one admission every W/N.
//!   Constant state, but N admitted at t=0 and one more at t=W/N is N+1 within W.
//!
//! ```
//! use std::time::Duration;
//! use secure_routes::rate_limit::{Algorithm, Quota};
//!
//! let q = Quota::per_minute(60);
//! assert_eq!(q.limit(), 60);
//! assert_eq!(q.window(), Duration::from_secs(60));
//! assert_eq!(q.algorithm(), Algorithm::SlidingWindow);
//! assert_eq!(q.with_algorithm(Algorithm::Gcra).algorithm(), Algorithm::Gcra);
//! ```

#[cfg(feature = "conformance")]
pub mod conformance;
pub(crate) mod deny_cache;
pub mod gcra;
pub mod headers;
pub(crate) mod key_cache;
pub mod memory;
pub mod sliding_window;

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use aws_lc_rs::hmac;

pub use crate::error::StoreError;
pub use memory::MemoryStore;

/// A boxed, `Send` future: what the object-safe store and sink traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which algorithm a [`Quota`] is enforced with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Exact sliding window (sliding log): never more than `limit` admitted in any `window`.
    #[default]
    SlidingWindow,
    /// Generic cell rate algorithm (token bucket): burst of `limit`, refilling one per
    /// `window / limit`.
    Gcra,
}

/// How many requests are admitted per window, and by which algorithm.
///
/// Constructors carry their unit in the name: `Quota::per_minute(60)` is sixty per minute.
/// A zero limit or window is rejected when the [`Policy`](crate::Policy) is built.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::Quota;
/// assert_eq!(Quota::per_hour(20), Quota::new(20, Duration::from_secs(3600)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    window: Duration,
    algorithm: Algorithm,
}

impl Quota {
    /// `limit` requests per `window`, sliding window.
    pub const fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            algorithm: Algorithm::SlidingWindow,
        }
    }
    /// `limit` requests per second.
    pub const fn per_second(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(1))
    }
    /// `limit` requests per minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }
    /// `limit` requests per hour.
    pub const fn per_hour(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(3600))
    }
    /// `limit` requests per day.
    pub const fn per_day(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(86_400))
    }
    /// The same quota enforced with another algorithm.
    pub const fn with_algorithm(self, algorithm: Algorithm) -> Self {
        Self { algorithm, ..self }
    }
    /// Requests admitted per window.
    pub const fn limit(&self) -> u32 {
        self.limit
    }
    /// The window length.
    pub const fn window(&self) -> Duration {
        self.window
    }
    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Problems with this quota, for configuration validation.
    pub(crate) fn problems(&self, context: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.limit == 0 {
            p.push(format!(
                "{context}: rate limit must admit at least 1 request"
            ));
        }
        if self.window < Duration::from_millis(1) {
            p.push(format!(
                "{context}: rate limit window must be at least 1 ms"
            ));
        }
        if self.window > Duration::from_secs(366 * 86_400) {
            p.push(format!(
                "{context}: rate limit window must be at most a year"
            ));
        }
        if self.algorithm == Algorithm::SlidingWindow && self.limit > 100_000 {
            p.push(format!(
                "{context}: sliding window keeps one timestamp per admission; use Algorithm::Gcra above 100000 per window"
            ));
        }
        p
    }
}

/// The named quotas of the original pattern.
///
/// ```
/// use secure_routes::rate_limit::{Quota, quotas};
/// assert_eq!(quotas::API_GENERAL, Quota::per_minute(60));
/// ```
pub mod quotas {
    use super::Quota;
    /// General API traffic: 60 per minute.
    pub const API_GENERAL: Quota = Quota::per_minute(60);
    /// Authenticated generation endpoints: 20 per hour.
    pub const AUTH_GENERATION: Quota = Quota::per_hour(20);
    /// Anonymous generation endpoints: 3 per day.
    pub const ANON_GENERATION: Quota = Quota::per_day(3);
}

/// The answer to one rate-limit check: what the headers need.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::rate_limit::Decision;
/// let d = Decision { allowed: false, limit: 10, remaining: 0,
///     reset_after: Duration::from_secs(30), retry_after: Some(Duration::from_millis(2500)) };
/// assert_eq!(d.retry_after_secs(), Some(3));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether this request was admitted (and counted).
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// Admissions left right now, after this one.
    pub remaining: u32,
    /// Time until the quota is fully available again.
    pub reset_after: Duration,
    /// On refusal, the time until a request of the same cost could be admitted.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// `retry_after` rounded **up** to whole seconds, so a client that waits that long is
    /// never refused again for the same reason (never less than the true wait).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(ceil_secs)
    }
    /// `reset_after` rounded up to whole seconds.
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// The decision a store reports for one check of `cost` units under `quota`, from the
    /// raw numbers its script or statement returned. Every store that computes outside the
    /// pure algorithms (Redis, Postgres) finishes through this one function, so two stores
    /// cannot disagree on a header:
    ///
    /// * `limit` is the quota's;
    /// * `remaining` is clamped into `0..=limit`: a script computes in signed or floating
    ///   arithmetic, and one key checked under a narrower quota than it was filled under
    ///   holds more than that quota's limit. A header must never say less than zero or more
    ///   than the limit;
    /// * an admitted check has no `retry_after`. A refused one always has one: a full window
    ///   when `cost` is above the limit (no wait helps, as in the pure algorithms), else the
    ///   store's wait, or a full window if the store reported none (a refusal must never
    ///   invite an immediate retry).
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::rate_limit::{Decision, Quota};
    /// let q = Quota::per_minute(10);
    /// let s = Duration::from_secs;
    /// // Admitted; the script's count went below zero: nothing remains.
    /// let d = Decision::from_store(q, 1, true, -3, s(60), Some(s(1)));
    /// assert_eq!((d.limit, d.remaining, d.retry_after), (10, 0, None));
    /// // A key filled under a wider quota: never more than this quota's limit.
    /// assert_eq!(Decision::from_store(q, 0, true, 25, s(0), None).remaining, 10);
    /// // A cost above the limit waits a full window, whatever the store said.
    /// let d = Decision::from_store(q, 11, false, 4, s(5), None);
    /// assert_eq!(d.retry_after, Some(s(60)));
    /// ```
    pub fn from_store(
        quota: Quota,
        cost: u32,
        allowed: bool,
        remaining: i64,
        reset_after: Duration,
        retry_after: Option<Duration>,
    ) -> Self {
        let limit = quota.limit();
        let remaining = u32::try_from(remaining.clamp(0, i64::from(limit))).unwrap_or(limit);
        let retry_after = if allowed {
            None
        } else if cost > limit {
            Some(quota.window())
        } else {
            Some(retry_after.unwrap_or_else(|| quota.window()))
        };
        Self {
            allowed,
            limit,
            remaining,
            reset_after,
            retry_after,
        }
    }
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A rate-limit key: a 128-bit keyed hash of the bucket and the subject.
///
/// Stores see only this value, never a raw IP address or user id.
///
/// ```
/// use secure_routes::rate_limit::{KeyHasher, Subject};
/// let h = KeyHasher::new(b"an instance-shared secret of 32+ bytes....");
/// let a = h.key("route:/api/x", &Subject::User("alice".into()));
/// let b = h.key("route:/api/x", &Subject::User("bob".into()));
/// assert_ne!(a, b);
/// assert_eq!(a.to_hex().len(), 32);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RateLimitKey([u8; 16]);

impl RateLimitKey {
    /// Wraps raw key bytes (for stores and tests).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
    /// Lower-case hex, 32 characters: the form shared stores use in their key names.
    ///
    /// ```
    /// use secure_routes::rate_limit::RateLimitKey;
    /// let k = RateLimitKey::from_bytes([0x0f, 0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
    /// assert_eq!(k.to_hex(), "0fa000000000000000000000000000ff");
    /// ```
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RateLimitKey({})", self.to_hex())
    }
}

/// Who a rate limit counts against.
///
/// ```
/// use std::net::IpAddr;
/// use secure_routes::rate_limit::Subject;
/// let a: IpAddr = "2001:db8::1".parse().unwrap();
/// let b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
/// assert_eq!(Subject::from_ip(a), Subject::from_ip(b)); // same /64
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An authenticated principal (`user:<sub>`).
    User(String),
    /// An anonymous client, by address: IPv4 as is, IPv6 grouped by /64 (one subscriber
    /// usually holds a whole /64, so per-address keys would be trivially evaded).
    Ip(IpAddr),
    /// A caller-chosen identity (API key id, tenant, ...).
    Custom(String),
}

impl Subject {
    /// The subject for an anonymous client address: IPv4-mapped IPv6 folded to IPv4, other
    /// IPv6 addresses truncated to their /64.
    pub fn from_ip(ip: IpAddr) -> Self {
        Subject::Ip(crate::client_ip::group(ip))
    }
}

/// One part of a policy's rate-limit key: whose budget a request spends (see
/// [`PolicyBuilder::rate_limit_key`](crate::PolicyBuilder::rate_limit_key)).
///
/// ```
/// use secure_routes::rate_limit::KeyPart;
/// assert_eq!(KeyPart::parse("fingerprint"), Some(KeyPart::Fingerprint));
/// assert_eq!(KeyPart::Ip.as_str(), "ip");
/// assert_eq!(KeyPart::parse("IP"), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    /// The client address (IPv6 grouped by /64), whether the request is authenticated or not.
    Ip,
    /// The authenticated subject (`user:<sub>`); an anonymous request counts by its address
    /// instead. The default key is this part alone.
    Subject,
    /// The request's [fingerprint](crate::fingerprint): the shape of its headers. The client
    /// chooses it, so it only ever splits a budget further and is refused as the only part.
    Fingerprint,
}

impl KeyPart {
    /// Every part, in the order a key is built from them.
    pub const ALL: [KeyPart; 3] = [KeyPart::Ip, KeyPart::Subject, KeyPart::Fingerprint];

    /// The part's name in configuration (`ip`, `subject`, `fingerprint`).
    pub fn as_str(&self) -> &'static str {
        match self {
            KeyPart::Ip => "ip",
            KeyPart::Subject => "subject",
            KeyPart::Fingerprint => "fingerprint",
        }
    }

    /// The part named `name` (exactly as [`as_str`](Self::as_str) writes it).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// Derives [`RateLimitKey`]s with HMAC-SHA256 (truncated to 128 bits) under a secret.
///
/// Instances that share a store must share the secret, or they will count the same client
/// under different keys. The hash keeps raw IPs and user ids out of the store; the secret
/// stops anyone with store access from confirming a guessed IP.
///
/// The HMAC is aws-lc's, keyed once (each key starts from a copy of the keyed state, so the
/// secret is hashed once per hasher, not per request); its SHA-256 is assembly on every x86
/// CPU, where the `sha2` crate falls back to portable code without the SHA extensions.
#[derive(Clone)]
pub struct KeyHasher {
    key: hmac::Key,
    /// Names this secret in the per-thread key cache (`key_cache`): a number never reused in
    /// the process, so two hashers (two secrets) never share a cached key.
    id: u64,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

impl KeyHasher {
    /// A hasher keyed with `secret` (any length; HMAC accepts every key size).
    pub fn new(secret: &[u8]) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// The key for `subject` in `bucket`.
    pub fn key(&self, bucket: &str, subject: &Subject) -> RateLimitKey {
        match subject {
            Subject::User(s) => self.tagged(bucket, b'u', s.as_bytes()),
            Subject::Ip(IpAddr::V4(v4)) => self.tagged(bucket, b'4', &v4.octets()),
            Subject::Ip(IpAddr::V6(v6)) => self.tagged(bucket, b'6', &v6.octets()),
            Subject::Custom(s) => self.tagged(bucket, b'c', s.as_bytes()),
        }
    }

    /// [`KeyHasher::key`] for a subject given as its tag byte and its bytes (no `Subject` to
    /// build, so no `String` for a user).
    pub(crate) fn tagged(&self, bucket: &str, tag: u8, subject: &[u8]) -> RateLimitKey {
        let mut mac = hmac::Context::with_key(&self.key);
        // Length-prefix the bucket so ("a", "bc") and ("ab", "c") cannot collide.
        mac.update(&(bucket.len() as u64).to_be_bytes());
        mac.update(bucket.as_bytes());
        mac.update(&[tag]);
        mac.update(subject);
        let out = mac.sign();
        let mut key = [0u8; 16];
        key.copy_from_slice(&out.as_ref()[..16]);
        RateLimitKey(key)
    }

    /// This hasher's number in the per-thread key cache.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The key for a key of several parts in `bucket` (a policy's
    /// [`rate_limit_key`](crate::Policy::rate_limit_key) other than one address or subject).
    /// After the bucket comes the tag `k`, which no single-subject key uses there (`u`, `4`,
    /// `6`, `c`), so a composite key never equals a single one; then each part as its tag
    /// byte and its length-prefixed bytes.
    pub(crate) fn composite_key(&self, bucket: &str, parts: &[(u8, &[u8])]) -> RateLimitKey {
        let mut mac = hmac::Context::with_key(&self.key);
        mac.update(&(bucket.len() as u64).to_be_bytes());
        mac.update(bucket.as_bytes());
        mac.update(b"k");
        for (tag, bytes) in parts {
            mac.update(&[*tag]);
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        }
        let out = mac.sign();
        let mut key = [0u8; 16];
        key.copy_from_slice(&out.as_ref()[..16]);
        RateLimitKey(key)
    }
}

/// A rate-limit store: one atomic check-and-count per call.
///
/// `acquire` admits `cost` units under `quota` for `key` if they fit, counting them, or
/// refuses without counting. It must be atomic: concurrent calls on one key never admit more
/// than the quota allows. Shared stores take the time from the store itself.
///
/// ```
/// use secure_routes::rate_limit::{KeyHasher, MemoryStore, Quota, RateLimitStore, Subject};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let key = KeyHasher::new(b"secret").key("b", &Subject::Custom("x".into()));
/// let d = store.acquire(&key, Quota::per_minute(1), 1).await.unwrap();
/// assert!(d.allowed);
/// let d = store.acquire(&key, Quota::per_minute(1), 1).await.unwrap();
/// assert!(!d.allowed);
/// # });
/// ```
pub trait RateLimitStore: Send + Sync + 'static {
    /// Checks and counts `cost` units for `key` under `quota`.
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;

    /// Decides at once, without a future, when the store can do so without waiting (the
    /// memory store always can); `None` (the default) sends the pipeline to
    /// [`acquire`](Self::acquire). The pipeline asks this before `acquire` (for a store that
    /// is not [`is_local`](Self::is_local), after the deny cache and the single flight): a
    /// boxed future per check is an allocation an in-process store has no use for. A store
    /// that answers here must count exactly as `acquire` would; `None` must neither count nor
    /// block.
    ///
    /// ```
    /// use secure_routes::rate_limit::{MemoryStore, Quota, RateLimitKey, RateLimitStore};
    /// let store = MemoryStore::new();
    /// let key = RateLimitKey::from_bytes([7; 16]);
    /// let d = store.try_acquire_now(&key, Quota::per_minute(2), 1).unwrap().unwrap();
    /// assert!(d.allowed);
    /// assert_eq!(d.remaining, 1);
    /// ```
    fn try_acquire_now(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (key, quota, cost);
        None
    }

    /// A short name for logs and metrics (`"memory"`, `"redis"`, ...).
    fn name(&self) -> &'static str;

    /// Whether a check is answered in this process without I/O (the memory store). The
    /// pipeline puts a deny cache and a per-key single flight in front of every other store,
    /// so a hot key refused by the store is refused locally until its retry time (see
    /// DESIGN.md); an in-process store gains nothing from either. Default: `false`.
    ///
    /// ```
    /// use secure_routes::rate_limit::{MemoryStore, RateLimitStore};
    /// assert!(MemoryStore::new().is_local());
    /// ```
    fn is_local(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys are those of the RustCrypto HMAC this hasher used before aws-lc's: a shared
    /// store keeps counting the same clients under the same keys across an upgrade.
    #[test]
    fn keys_are_hmac_sha256_of_the_length_prefixed_bucket_and_subject() {
        use ::hmac::{Hmac, KeyInit, Mac};
        let secret = b"a shared secret of some length..";
        let reference = |bucket: &str, tag: &[u8], subject: &[u8]| {
            let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
            mac.update(&(bucket.len() as u64).to_be_bytes());
            mac.update(bucket.as_bytes());
            mac.update(tag);
            mac.update(subject);
            let mut key = [0u8; 16];
            key.copy_from_slice(&mac.finalize().into_bytes()[..16]);
            RateLimitKey(key)
        };
        let h = KeyHasher::new(secret);
        let v6: std::net::Ipv6Addr = "2001:db8::".parse().unwrap();
        for (bucket, subject, tag, bytes) in [
            (
                "route:/a",
                Subject::User("alice".into()),
                &b"u"[..],
                b"alice".to_vec(),
            ),
            ("", Subject::Custom("".into()), b"c", Vec::new()),
            (
                "bucket:x",
                Subject::Ip("192.0.2.7".parse().unwrap()),
                b"4",
                vec![192, 0, 2, 7],
            ),
            (
                "policy:p",
                Subject::Ip(IpAddr::V6(v6)),
                b"6",
                v6.octets().to_vec(),
            ),
        ] {
            assert_eq!(
                h.key(bucket, &subject),
                reference(bucket, tag, &bytes),
                "{subject:?}"
            );
        }
    }

    #[test]
    fn ipv6_groups_by_64_and_ipv4_mapped_folds() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            crate::client_ip::group(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        assert_eq!(
            crate::client_ip::group(a),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(crate::client_ip::group(a), crate::client_ip::group(other));
    }

    #[test]
    fn bucket_boundary_is_unambiguous() {
        let h = KeyHasher::new(b"k");
        assert_ne!(
            h.key("a", &Subject::Custom("bc".into())),
            h.key("ab", &Subject::Custom("c".into()))
        );
    }

    #[test]
    fn composite_keys_never_equal_single_ones_and_keep_part_boundaries() {
        let h = KeyHasher::new(b"k");
        let ip = [192, 0, 2, 7];
        let composite = h.composite_key("b", &[(b'i', &ip[..])]);
        assert_ne!(
            composite,
            h.key("b", &Subject::Ip("192.0.2.7".parse().unwrap()))
        );
        assert_ne!(composite, h.key("b", &Subject::Custom("i".into())));
        // Length prefixes: moving a byte from one part to the next is another key.
        assert_ne!(
            h.composite_key("b", &[(b'u', b"ab"), (b'f', b"c")]),
            h.composite_key("b", &[(b'u', b"a"), (b'f', b"bc")])
        );
        assert_eq!(composite, h.composite_key("b", &[(b'i', &ip[..])]));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 0);
    }
}
