//! Escalating bans for repeat violators (issue 12 part 1): the model and the store trait.
//!
//! A refusal the pipeline gives (401, CSRF 403, 405, 413, 429, authorization 403) is a
//! **strike** against the client: weighted points ([`BanPolicy::weight`]) recorded under a
//! [`BanKey`] (the resolved client IP, grouped like the rate-limit keys, or the authenticated
//! subject). Reaching [`BanPolicy::threshold`] points within [`BanPolicy::window`] bans the key:
//! the first ban lasts [`BanPolicy::first_ban`], each further ban within
//! [`BanPolicy::history`] of the previous one twice as long, up to [`BanPolicy::max_ban`]. The
//! points start again from zero after each ban. Defaults: 50 points in 10 minutes, 15 minutes,
//! doubling to a 24 hour cap, history forgotten 7 days after the last ban.
//!
//! Why weights: a CSRF or authorization failure is rarely an honest mistake (the browser
//! helper and the UI avoid both), a 401 or 429 often is (an expired token, a busy script), so
//! the first count twice. Why doubling: a client that comes back after each ban to try again
//! meets bans that grow fast (15 min, 30 min, 1 h, ...) without a first ban so long that one
//! false positive locks out a real user for a day.
//!
//! The state lives in a [`BanStore`]: the memory store in this crate (one process), SQLite,
//! Redis and Postgres in their crates (every instance sharing the store sees a ban). Each
//! store runs the same pure step, [`BanState::strike`] (Redis as a Lua port of it), so they
//! decide alike; the conformance suite (`bans::conformance`, feature `conformance`) checks it.
//!
//! Keys are readable strings (`ip:203.0.113.7`, `ip:2001:db8:1:2::/64`, `sub:alice`), not the
//! keyed hashes of the rate limits: an operator must see who is banned and lift a ban by name.
//! The caller passes the **resolved** client IP (after the trusted-proxy walk), never an
//! address read from a header, so a client cannot get someone else banned or escape its own
//! ban by forging `X-Forwarded-For`.
//!
//! ```
//! use std::time::Duration;
//! use secure_routes::bans::{BanKey, BanPolicy, BanStore, StrikeOutcome, Violation};
//! use secure_routes::rate_limit::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let policy = BanPolicy::default();
//! let key = BanKey::ip("203.0.113.7".parse().unwrap());
//! let now = Duration::from_secs(1_700_000_000);
//! // 24 CSRF failures (2 points each) stay below the threshold of 50...
//! for _ in 0..24 {
//!     let w = policy.weight(Violation::Csrf);
//!     assert!(matches!(store.strike(&key, w, &policy, now).await.unwrap(), StrikeOutcome::Counted { .. }));
//! }
//! // ...the 25th reaches it: banned for 15 minutes.
//! let StrikeOutcome::Banned { ban, new: true } = store.strike(&key, 2, &policy, now).await.unwrap() else {
//!     panic!("not banned")
//! };
//! assert_eq!(ban.until, now + Duration::from_secs(15 * 60));
//! assert_eq!(store.check(&key, now).await.unwrap().unwrap().strikes, 1);
//! # });
//! ```

#[cfg(feature = "conformance")]
pub mod conformance;
mod front;
mod memory;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::error::{ConfigError, StoreError};
pub use crate::rate_limit::BoxFuture;
use crate::response::problem::RejectionKind;
pub use front::{
    Bans, DEFAULT_SYNC_INTERVAL, MAX_LOCAL_BANS, MAX_SYNC_INTERVAL, MIN_SYNC_INTERVAL, STRIKE_QUEUE,
};
pub use memory::{MAX_KEYS, MemoryBans, sort_bans};

/// The reason stored with a ban issued by reaching the threshold.
pub const REASON_THRESHOLD: &str = "threshold";
/// The reason stored with a ban added by hand when none is given (`secure-routes bans add`).
pub const REASON_MANUAL: &str = "manual";
/// The largest threshold a policy may set: the strike log holds at most this many entries.
pub const MAX_THRESHOLD: u32 = 10_000;
/// The longest a key may be: a longer subject is refused by [`BanKey::parse`] and hashed by
/// [`BanKey::subject`].
pub const MAX_KEY_LEN: usize = 512;

/// A refusal that counts towards a ban, with its default weight.
///
/// ```
/// use secure_routes::bans::Violation;
/// use secure_routes::response::problem::RejectionKind;
/// assert_eq!(Violation::of(RejectionKind::CsrfFailed), Some(Violation::Csrf));
/// assert_eq!(Violation::of(RejectionKind::NotFound), None);
/// assert_eq!(Violation::Csrf.default_weight(), 2);
/// assert_eq!(Violation::parse("rate_limited"), Some(Violation::RateLimited));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// 401: a missing or invalid credential. Weight 1.
    Unauthorized,
    /// 403 from the CSRF checks. Weight 2.
    Csrf,
    /// 405. Weight 1.
    MethodNotAllowed,
    /// 413. Weight 1.
    PayloadTooLarge,
    /// 429. Weight 1.
    RateLimited,
    /// 403 from authorization (authenticated, not allowed). Weight 2.
    Forbidden,
}

impl Violation {
    /// Every violation, in the order of [`BanPolicy`]'s weight table.
    pub const ALL: [Violation; 6] = [
        Violation::Unauthorized,
        Violation::Csrf,
        Violation::MethodNotAllowed,
        Violation::PayloadTooLarge,
        Violation::RateLimited,
        Violation::Forbidden,
    ];

    /// The name used in configuration (`weights.<name>`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Violation::Unauthorized => "unauthorized",
            Violation::Csrf => "csrf",
            Violation::MethodNotAllowed => "method_not_allowed",
            Violation::PayloadTooLarge => "payload_too_large",
            Violation::RateLimited => "rate_limited",
            Violation::Forbidden => "forbidden",
        }
    }

    /// The violation named `s` ([`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The default weight: 2 for CSRF and authorization failures, 1 for the rest.
    pub const fn default_weight(self) -> u32 {
        match self {
            Violation::Csrf | Violation::Forbidden => 2,
            _ => 1,
        }
    }

    /// The violation a pipeline refusal is, if it counts: 404s, 503s, 5xx and bans themselves
    /// do not (the server's failures are not the client's, and a banned client's requests
    /// must not lengthen its own ban while it waits).
    pub const fn of(kind: RejectionKind) -> Option<Self> {
        match kind {
            RejectionKind::Unauthorized => Some(Violation::Unauthorized),
            RejectionKind::CsrfFailed => Some(Violation::Csrf),
            RejectionKind::MethodNotAllowed => Some(Violation::MethodNotAllowed),
            RejectionKind::PayloadTooLarge => Some(Violation::PayloadTooLarge),
            RejectionKind::RateLimited => Some(Violation::RateLimited),
            RejectionKind::Forbidden => Some(Violation::Forbidden),
            _ => None,
        }
    }

    const fn index(self) -> usize {
        match self {
            Violation::Unauthorized => 0,
            Violation::Csrf => 1,
            Violation::MethodNotAllowed => 2,
            Violation::PayloadTooLarge => 3,
            Violation::RateLimited => 4,
            Violation::Forbidden => 5,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a key is banned and for how long: thresholds, ban lengths, the allow-list and the
/// weight of each violation. Built with [`BanPolicy::builder`], which checks every value and
/// reports all problems at once; [`BanPolicy::default`] is the issue's defaults.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{BanPolicy, Violation};
/// let p = BanPolicy::default();
/// assert_eq!(p.threshold(), 50);
/// assert_eq!(p.window(), Duration::from_secs(600));
/// assert_eq!(p.ban_length(1), Duration::from_secs(900));
/// assert_eq!(p.ban_length(3), Duration::from_secs(3600));
/// assert_eq!(p.ban_length(30), Duration::from_secs(86_400));
///
/// let p = BanPolicy::builder().threshold(10).weight(Violation::Unauthorized, 5)
///     .allow("10.0.0.0/8").build().unwrap();
/// assert_eq!(p.weight(Violation::Unauthorized), 5);
/// assert!(p.exempts(&secure_routes::bans::BanKey::ip("10.1.2.3".parse().unwrap())));
/// assert!(BanPolicy::builder().threshold(0).allow("nope").build().unwrap_err().problems().len() == 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanPolicy {
    threshold: u32,
    window: Duration,
    first: Duration,
    max: Duration,
    history: Duration,
    allow: Vec<IpNet>,
    weights: [u32; 6],
}

impl Default for BanPolicy {
    fn default() -> Self {
        Self {
            threshold: 50,
            window: Duration::from_secs(10 * 60),
            first: Duration::from_secs(15 * 60),
            max: Duration::from_secs(24 * 3600),
            history: Duration::from_secs(7 * 86_400),
            allow: Vec::new(),
            weights: Violation::ALL.map(Violation::default_weight),
        }
    }
}

impl BanPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> BanPolicyBuilder {
        BanPolicyBuilder {
            policy: Self::default(),
            bad_cidrs: Vec::new(),
        }
    }

    /// Points within [`window`](Self::window) that ban a key (default 50).
    pub fn threshold(&self) -> u32 {
        self.threshold
    }
    /// How far back points count (default 10 minutes): a sliding window.
    pub fn window(&self) -> Duration {
        self.window
    }
    /// The first ban's length (default 15 minutes).
    pub fn first_ban(&self) -> Duration {
        self.first
    }
    /// The longest ban (default 24 hours).
    pub fn max_ban(&self) -> Duration {
        self.max
    }
    /// How long after a ban was issued the next one still counts as a repeat (default 7
    /// days); after that the key starts again at the first ban's length.
    pub fn history(&self) -> Duration {
        self.history
    }
    /// Networks never banned (a strike against them is not recorded).
    pub fn allow_list(&self) -> &[IpNet] {
        &self.allow
    }
    /// The points one `violation` costs (0: not counted).
    pub fn weight(&self, violation: Violation) -> u32 {
        self.weights[violation.index()]
    }

    /// The length of a key's `n`th ban in a row (`n >= 1`): the first ban's length doubled
    /// `n - 1` times, at most [`max_ban`](Self::max_ban).
    pub fn ban_length(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(63);
        let ms = duration_ms(self.first)
            .saturating_mul(1u64 << doublings)
            .min(duration_ms(self.max));
        Duration::from_millis(ms)
    }

    /// Whether `key` is an address inside the allow-list (never banned).
    pub fn exempts(&self, key: &BanKey) -> bool {
        match key.ip_addr() {
            Some(ip) => self.allow.iter().any(|net| net.contains(&ip)),
            None => false,
        }
    }
}

/// Builds a [`BanPolicy`]; [`build`](Self::build) validates.
#[derive(Clone, Debug)]
pub struct BanPolicyBuilder {
    policy: BanPolicy,
    bad_cidrs: Vec<String>,
}

impl BanPolicyBuilder {
    /// Points that ban a key (1 to [`MAX_THRESHOLD`]).
    pub fn threshold(mut self, points: u32) -> Self {
        self.policy.threshold = points;
        self
    }
    /// The window points count within (1 s to 1 day).
    pub fn window(mut self, window: Duration) -> Self {
        self.policy.window = window;
        self
    }
    /// The first ban's length (at least 1 s).
    pub fn first_ban(mut self, length: Duration) -> Self {
        self.policy.first = length;
        self
    }
    /// The longest ban (at least the first ban's length, at most a year).
    pub fn max_ban(mut self, length: Duration) -> Self {
        self.policy.max = length;
        self
    }
    /// How long a ban counts as history for the next one (at least the window, at most a year).
    pub fn history(mut self, history: Duration) -> Self {
        self.policy.history = history;
        self
    }
    /// Never ban addresses in `cidr` (`10.0.0.0/8`, `2001:db8::/32`, or one IPv4 address).
    /// An IPv6 client is keyed by its /64, so allow IPv6 by a /64 or a wider network: the
    /// check is on the /64's first address.
    pub fn allow(mut self, cidr: &str) -> Self {
        match parse_cidr(cidr) {
            Some(net) => self.policy.allow.push(net),
            None => self.bad_cidrs.push(cidr.to_owned()),
        }
        self
    }
    /// The points `violation` costs (0 to [`MAX_THRESHOLD`]; 0 does not count it).
    pub fn weight(mut self, violation: Violation, points: u32) -> Self {
        self.policy.weights[violation.index()] = points;
        self
    }

    /// The policy, or every problem found.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] listing each value out of range and each allow-list entry that is not
    /// a network.
    pub fn build(self) -> Result<BanPolicy, ConfigError> {
        let p = &self.policy;
        let mut problems: Vec<String> = self
            .bad_cidrs
            .iter()
            .map(|c| format!("bans: allow-list entry {c:?} is not an IP network"))
            .collect();
        if !(1..=MAX_THRESHOLD).contains(&p.threshold) {
            problems.push(format!(
                "bans: threshold must be 1 to {MAX_THRESHOLD} points"
            ));
        }
        if p.window < Duration::from_secs(1) || p.window > Duration::from_secs(86_400) {
            problems.push("bans: window must be 1 s to 1 day".into());
        }
        if p.first < Duration::from_secs(1) {
            problems.push("bans: the first ban must last at least 1 s".into());
        }
        if p.max < p.first || p.max > YEAR {
            problems
                .push("bans: the longest ban must be at least the first and at most a year".into());
        }
        if p.history < p.window || p.history > YEAR {
            problems.push("bans: history must be at least the window and at most a year".into());
        }
        for v in Violation::ALL {
            if p.weights[v.index()] > MAX_THRESHOLD {
                problems.push(format!(
                    "bans: weight of {v} must be at most {MAX_THRESHOLD}"
                ));
            }
        }
        ConfigError::check(problems, self.policy)
    }
}

const YEAR: Duration = Duration::from_secs(366 * 86_400);

fn parse_cidr(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Who a ban applies to: a client address or an authenticated subject, as a readable string
/// (`ip:203.0.113.7`, `ip:2001:db8:1:2::/64`, `sub:alice`).
///
/// Addresses are grouped as the rate-limit keys are: IPv4-mapped IPv6 folded to IPv4, other
/// IPv6 addresses to their /64 (one subscriber holds a whole /64, so banning one address of it
/// would be evaded at once).
///
/// ```
/// use secure_routes::bans::BanKey;
/// let k = BanKey::ip("2001:db8:1:2:aaaa::1".parse().unwrap());
/// assert_eq!(k.as_str(), "ip:2001:db8:1:2::/64");
/// assert_eq!(BanKey::ip("::ffff:192.0.2.7".parse().unwrap()).as_str(), "ip:192.0.2.7");
/// assert_eq!(BanKey::subject("alice").as_str(), "sub:alice");
/// assert_eq!(BanKey::parse("203.0.113.7").unwrap(), BanKey::ip("203.0.113.7".parse().unwrap()));
/// assert_eq!(BanKey::parse("ip:2001:db8:1:2::/64").unwrap(), k);
/// assert_eq!(BanKey::parse("sub:alice").unwrap().as_str(), "sub:alice");
/// assert!(BanKey::parse("ip:not-an-address").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BanKey(String);

impl BanKey {
    /// The key for a resolved client address (grouped; see the type's docs).
    pub fn ip(ip: IpAddr) -> Self {
        match crate::client_ip::group(ip) {
            IpAddr::V4(v4) => Self(format!("ip:{v4}")),
            IpAddr::V6(v6) => Self(format!("ip:{v6}/64")),
        }
    }

    /// The key for an authenticated subject. A subject with control characters or longer
    /// than fits [`MAX_KEY_LEN`] is keyed by its SHA-256 (`sub#<hex>`), so a hostile `sub`
    /// cannot break a log line or a store's key.
    pub fn subject(subject: &str) -> Self {
        if subject.len() + 4 <= MAX_KEY_LEN && !subject.chars().any(char::is_control) {
            Self(format!("sub:{subject}"))
        } else {
            use sha2::Digest;
            Self(format!(
                "sub#{}",
                hex::encode(sha2::Sha256::digest(subject))
            ))
        }
    }

    /// Reads a key as printed (`ip:...`, `sub:...`, `sub#...`) or a bare address.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the problem: an address that does not parse, an IPv6 prefix
    /// other than /64, an empty or overlong key, control characters.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        if s.is_empty() || s.len() > MAX_KEY_LEN || s.chars().any(char::is_control) {
            return Err(ConfigError::new(format!(
                "ban key must be 1 to {MAX_KEY_LEN} printable characters"
            )));
        }
        if let Some(sub) = s.strip_prefix("sub:") {
            return Ok(Self::subject(sub));
        }
        if let Some(hash) = s.strip_prefix("sub#") {
            if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(Self(format!("sub#{}", hash.to_ascii_lowercase())));
            }
            return Err(ConfigError::new(
                "a hashed subject key is sub# and 64 hex digits",
            ));
        }
        let addr = s.strip_prefix("ip:").unwrap_or(s);
        let ip = match addr.split_once('/') {
            Some((ip, "64")) => ip.parse::<IpAddr>().ok().filter(IpAddr::is_ipv6),
            Some(_) => None,
            None => addr.parse::<IpAddr>().ok(),
        };
        ip.map(Self::ip).ok_or_else(|| {
            ConfigError::new(format!(
                "{s:?} is not a ban key (ip:ADDRESS, ip:IPV6/64, sub:SUBJECT or an address)"
            ))
        })
    }

    /// Wraps a key string read back from a store, unchecked (stores only hold keys this type
    /// made).
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The key as stored and printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address (the /64's first address for IPv6) when this is an address key.
    pub fn ip_addr(&self) -> Option<IpAddr> {
        let rest = self.0.strip_prefix("ip:")?;
        rest.strip_suffix("/64").unwrap_or(rest).parse().ok()
    }
}

impl fmt::Debug for BanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BanKey({})", self.0)
    }
}

impl fmt::Display for BanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An active ban.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{Ban, BanKey};
/// let ban = Ban { key: BanKey::subject("alice"), until: Duration::from_millis(10_500),
///     strikes: 1, reason: "threshold".into() };
/// assert_eq!(ban.retry_after(Duration::from_secs(10)), Duration::from_millis(500));
/// assert_eq!(ban.retry_after_secs(Duration::from_secs(10)), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Who is banned.
    pub key: BanKey,
    /// When the ban ends, since the Unix epoch (whole milliseconds).
    pub until: Duration,
    /// The ban's number in the key's escalation: 1 for a first ban, 2 for a repeat within the
    /// history period, ... (0 for a ban added by hand to a key with no history).
    pub strikes: u32,
    /// Why: [`REASON_THRESHOLD`], or the reason given to [`BanStore::add`].
    pub reason: String,
}

impl Ban {
    /// Time left at `now`.
    pub fn retry_after(&self, now: Duration) -> Duration {
        self.until.saturating_sub(now)
    }
    /// Time left at `now` in whole seconds, rounded up (the `Retry-After` value: a client that
    /// waits that long is not refused for this ban again).
    pub fn retry_after_secs(&self, now: Duration) -> u64 {
        crate::rate_limit::ceil_secs(self.retry_after(now))
    }
}

/// What one strike did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrikeOutcome {
    /// Recorded; the key holds `points` within the window, below the threshold.
    Counted {
        /// Points within the window, this strike's included.
        points: u32,
    },
    /// The key is banned: by this strike (`new`: audit `ip_banned`), or already (`new` false:
    /// a strike while banned is not counted, so racing instances cannot lengthen a ban).
    Banned {
        /// The ban in force.
        ban: Ban,
        /// Whether this strike issued it.
        new: bool,
    },
    /// The key is in the policy's allow-list: nothing recorded.
    Exempt,
}

/// Where bans live: one atomic step per call, shared by every instance using the store.
///
/// Times are durations since the Unix epoch, passed by the caller (the pipeline's clock) and
/// used at millisecond resolution. Every store answers exactly as [`BanState`] does for the
/// same calls; the conformance suite checks it.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanStore, MemoryBans};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store: Box<dyn BanStore> = Box::new(MemoryBans::new());
/// let key = BanKey::parse("198.51.100.4").unwrap();
/// let now = Duration::from_secs(1_000);
/// store.add(&key, now + Duration::from_secs(3600), "manual", now).await.unwrap();
/// assert_eq!(store.list(now).await.unwrap().len(), 1);
/// assert!(store.lift(&key).await.unwrap());
/// assert!(store.check(&key, now).await.unwrap().is_none());
/// # });
/// ```
pub trait BanStore: Send + Sync + 'static {
    /// Adds `weight` points against `key` at `now`, atomically: at the threshold, bans it (the
    /// length doubling with each earlier ban within the history period, capped) and clears its
    /// points. An allow-listed key is [`StrikeOutcome::Exempt`] and nothing is stored.
    fn strike<'a>(
        &'a self,
        key: &'a BanKey,
        weight: u32,
        policy: &'a BanPolicy,
        now: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>>;

    /// The ban in force on `key` at `now`, if any.
    fn check<'a>(
        &'a self,
        key: &'a BanKey,
        now: Duration,
    ) -> BoxFuture<'a, Result<Option<Ban>, StoreError>>;

    /// Every ban in force at `now`, soonest end first.
    fn list(&self, now: Duration) -> BoxFuture<'_, Result<Vec<Ban>, StoreError>>;

    /// Ends `key`'s ban and forgets its points and history (an operator's pardon); returns
    /// whether anything was held for it.
    fn lift<'a>(&'a self, key: &'a BanKey) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Bans `key` until `until` with `reason` (replacing the end of a ban in force), keeping
    /// its escalation history; `now` tells whether that history has expired.
    fn add<'a>(
        &'a self,
        key: &'a BanKey,
        until: Duration,
        reason: &'a str,
        now: Duration,
    ) -> BoxFuture<'a, Result<Ban, StoreError>>;

    /// A short name for logs and metrics (`"memory"`, `"sqlite"`, ...).
    fn name(&self) -> &'static str;

    /// Whether other processes may change this store's bans (SQLite, Redis, Postgres: `true`).
    /// [`Bans`] then reads [`list`](Self::list) into its snapshot every sync interval; for a
    /// store only this process writes (memory, the default `false`), it does not need to.
    fn is_shared(&self) -> bool {
        false
    }
}

/// One key's ban state, and the pure step every store runs (Redis runs a Lua port of it).
///
/// For store implementors: load the state (or [`BanState::default`] for an unknown key), call
/// one method, store the result (delete it once [`expires`](Self::expires) has passed:
/// the state then decides like a fresh key). Times are whole milliseconds since the epoch.
///
/// ```
/// use secure_routes::bans::{BanKey, BanPolicy, BanState, StrikeOutcome};
/// let policy = BanPolicy::builder().threshold(3).build().unwrap();
/// let key = BanKey::subject("bob");
/// let mut s = BanState::default();
/// assert_eq!(s.strike(&key, 2, &policy, 1_000), StrikeOutcome::Counted { points: 2 });
/// assert!(matches!(s.strike(&key, 1, &policy, 2_000), StrikeOutcome::Banned { new: true, .. }));
/// assert_eq!(s.until, 2_000 + 15 * 60 * 1000);
/// assert!(s.log.is_empty());
/// assert_eq!(BanState::decode_log(&BanState::encode_log(&[(5, 2), (7, 1)])).unwrap(), [(5, 2), (7, 1)]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BanState {
    /// Strikes within the window, oldest first: (time, weight).
    pub log: Vec<(u64, u32)>,
    /// Bans issued in a row, each within the history period of the previous one.
    pub level: u32,
    /// When the last ban was issued (0: never).
    pub last_ban: u64,
    /// When the current ban ends (0, or a past time: not banned).
    pub until: u64,
    /// The current ban's reason.
    pub reason: String,
    /// From then on the state equals a fresh key's and may be deleted.
    pub expires: u64,
}

impl BanState {
    /// Records a strike of `weight` at `now_ms` under `policy` (see [`BanStore::strike`]; the
    /// allow-list is the caller's, checked before loading any state).
    pub fn strike(
        &mut self,
        key: &BanKey,
        weight: u32,
        policy: &BanPolicy,
        now_ms: u64,
    ) -> StrikeOutcome {
        if let Some(ban) = self.active(key, now_ms) {
            return StrikeOutcome::Banned { ban, new: false };
        }
        let window = duration_ms(policy.window);
        self.log.retain(|&(t, _)| t.saturating_add(window) > now_ms);
        if weight > 0 {
            self.log.push((now_ms, weight));
        }
        let points: u64 = self.log.iter().map(|&(_, w)| u64::from(w)).sum();
        if points < u64::from(policy.threshold) {
            self.expires = self.expires.max(now_ms.saturating_add(window));
            return StrikeOutcome::Counted {
                points: u32::try_from(points).unwrap_or(u32::MAX),
            };
        }
        // A repeat only within the history period of the last ban.
        if self.level > 0 && now_ms >= self.last_ban.saturating_add(duration_ms(policy.history)) {
            self.level = 0;
        }
        self.level = self.level.saturating_add(1);
        self.last_ban = now_ms;
        self.until = now_ms.saturating_add(duration_ms(policy.ban_length(self.level)));
        self.reason = REASON_THRESHOLD.to_owned();
        self.log.clear();
        self.expires = self
            .until
            .max(now_ms.saturating_add(duration_ms(policy.history)));
        StrikeOutcome::Banned {
            ban: self.ban(key),
            new: true,
        }
    }

    /// The ban in force at `now_ms`, if any.
    pub fn active(&self, key: &BanKey, now_ms: u64) -> Option<Ban> {
        (self.until > now_ms).then(|| self.ban(key))
    }

    /// Bans until `until_ms` with `reason` (see [`BanStore::add`]).
    pub fn add(&mut self, key: &BanKey, until_ms: u64, reason: &str, now_ms: u64) -> Ban {
        if self.expires <= now_ms {
            *self = Self::default();
        }
        self.until = until_ms;
        self.reason = reason.to_owned();
        self.expires = self.expires.max(until_ms);
        self.ban(key)
    }

    fn ban(&self, key: &BanKey) -> Ban {
        Ban {
            key: key.clone(),
            until: Duration::from_millis(self.until),
            strikes: self.level,
            reason: self.reason.clone(),
        }
    }

    /// The strike log as text: `time:weight` pairs joined by `,` (what the SQL stores keep
    /// and the Redis script reads).
    pub fn encode_log(log: &[(u64, u32)]) -> String {
        let mut out = String::with_capacity(log.len() * 18);
        for (i, (t, w)) in log.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("{t}:{w}"));
        }
        out
    }

    /// Reads [`encode_log`](Self::encode_log)'s text back.
    ///
    /// # Errors
    ///
    /// A [`StoreError::Protocol`] for text this build did not write.
    pub fn decode_log(text: &str) -> Result<Vec<(u64, u32)>, StoreError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|pair| {
                let (t, w) = pair.split_once(':')?;
                Some((t.parse().ok()?, w.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Protocol("unreadable ban strike log".into()))
    }
}

/// A duration in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn min(n: u64) -> u64 {
        n * 60_000
    }

    #[test]
    fn strikes_slide_out_of_the_window() {
        let p = BanPolicy::builder().threshold(3).build().unwrap();
        let k = BanKey::subject("x");
        let mut s = BanState::default();
        s.strike(&k, 2, &p, 0);
        // 10 minutes later the first strike has left the window: 1 + 1 = 2 points.
        assert_eq!(
            s.strike(&k, 1, &p, min(10)),
            StrikeOutcome::Counted { points: 1 }
        );
        assert_eq!(
            s.strike(&k, 1, &p, min(10) + 1),
            StrikeOutcome::Counted { points: 2 }
        );
        assert!(matches!(
            s.strike(&k, 1, &p, min(10) + 2),
            StrikeOutcome::Banned { new: true, .. }
        ));
    }

    #[test]
    fn history_resets_the_escalation() {
        let p = BanPolicy::builder().threshold(1).build().unwrap();
        let k = BanKey::subject("x");
        let mut s = BanState::default();
        s.strike(&k, 1, &p, 0);
        assert_eq!(s.level, 1);
        s.strike(&k, 1, &p, min(15));
        assert_eq!((s.level, s.until), (2, min(15) + min(30)));
        let week = 7 * 24 * min(60);
        s.strike(&k, 1, &p, min(15) + week);
        assert_eq!(s.level, 1);
    }

    #[test]
    fn subjects_that_could_break_keys_are_hashed() {
        assert!(BanKey::subject("a\nb").as_str().starts_with("sub#"));
        assert!(
            BanKey::subject(&"a".repeat(600))
                .as_str()
                .starts_with("sub#")
        );
        assert_eq!(BanKey::parse("ip:10.0.0.1/24").ok(), None);
        assert!(BanKey::parse("garbage").is_err());
        assert!(BanState::decode_log("1:2,x").is_err());
    }
}
