//! Redis / Valkey rate-limit store for [secure-routes](secure_routes).
//!
//! [`RedisStore`] implements [`RateLimitStore`] so that several instances of a service share one
//! budget per key, **exactly**: each check is one Lua script, run atomically by the server, in
//! **one round trip** (`EVALSHA`; [`redis::Script`] reloads the script and retries once when the
//! server answers `NOSCRIPT`, e.g. after a restart or `SCRIPT FLUSH`).
//!
//! # Layout
//!
//! * [`RedisStore`]: the store, on a [`RedisConnection`]: a [`ConnectionManager`] for one
//!   server ([`RedisStore::connect`]) or a [`ClusterConnection`] for a Redis Cluster
//!   ([`RedisStore::connect_cluster`]); both reconnect by themselves.
//! * `SLIDING_WINDOW` / `GCRA` (private): the two Lua scripts, one per algorithm.
//! * [`key_name`]: how a [`RateLimitKey`] becomes a Redis key.
//! * `bans` (private): [`RedisStore`] as a [`BanStore`](secure_routes::bans::BanStore), one
//!   script per write, every ban key under the hash tag `{bans}` ([`ban_key_name`],
//!   [`ban_index_name`]).
//!
//! # Decisions
//!
//! The scripts implement [`sliding_window::acquire`](secure_routes::rate_limit::sliding_window::acquire)
//! and [`gcra::acquire`](secure_routes::rate_limit::gcra::acquire) in **microseconds** (Lua
//! numbers are doubles: microseconds since the epoch are exact, nanoseconds are not). Windows
//! and GCRA emission intervals are rounded **up** to the microsecond, which never admits more
//! than the core algorithms; for whole-millisecond quotas (all the presets) the decisions are
//! identical, which the shared conformance suite checks.
//!
//! * **Sliding window**: a sorted set per key, one member per admitted unit (scored by its
//!   admission time, member `"<µs>:<n>"`, unique), trimmed with `ZREMRANGEBYSCORE` on every
//!   check: exact for any cost. The log's time never runs behind its newest admission, so a
//!   clock stepping back cannot expire anything early (the core algorithm also remembers the
//!   latest *refused* check's time; the promise "never more than N in any window" is the same).
//! * **GCRA**: one string per key holding the theoretical arrival time.
//!
//! # Time
//!
//! By default the scripts read the server's `TIME`, so instances whose clocks disagree still
//! share one time line. [`RedisStore::with_clock`] passes the time from a [`Clock`] instead:
//! for tests (a [`FakeClock`](secure_routes::clock::FakeClock)) and simulations only.
//!
//! # Keys (Redis Cluster)
//!
//! Each check touches exactly one key, passed through `KEYS[]` and named
//! `<prefix>:{<32 hex digits>}:sw` or `…:gcra`: the braces are a hash tag, so all of one rate
//! limit key's state lives in one slot. Every key is written with an expiry (`PEXPIRE` / `SET
//! … PX`) at the moment its state stops mattering: the newest admission leaving the window, or
//! the TAT; refusals and zero-cost checks write nothing. So Redis holds no state that is not in
//! use and needs no sweeper.
//!
//! # Errors
//!
//! Redis errors become [`StoreError`]s (`Timeout`, `Unavailable` for connection failures,
//! `Protocol` otherwise), never a panic and never a refusal: the policy's failure mode decides.
//!
//! ```no_run
//! use secure_routes::rate_limit::{KeyHasher, Quota, RateLimitStore, Subject};
//! use secure_routes_redis::RedisStore;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let key = KeyHasher::new(b"shared secret").key("route:/api", &Subject::User("alice".into()));
//! let decision = store.acquire(&key, Quota::per_minute(60), 1).await?;
//! assert!(decision.allowed);
//! # Ok(()) }
//! ```

mod bans;

use std::sync::Arc;
use std::time::Duration;

pub use bans::{ban_index_name, ban_key_name};

pub use redis::aio::{ConnectionManager, ConnectionManagerConfig};
pub use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use secure_routes::clock::Clock;
use secure_routes::rate_limit::{
    Algorithm, BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore,
};
use secure_routes::{ConfigError, StoreError};

/// The key prefix used unless [`RedisStore::with_prefix`] sets another.
pub const DEFAULT_PREFIX: &str = "sr";

/// The largest sliding-window limit the store accepts (the core's validation limit): the log
/// keeps one sorted-set member per admitted unit.
pub const MAX_SLIDING_WINDOW_LIMIT: u32 = 100_000;

/// Connect and response timeout of the connection [`RedisStore::connect`] opens. The policy's
/// own store timeout (much shorter) still applies to every check.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Retries per (re)connection of the connection [`RedisStore::connect`] opens.
pub const CONNECT_RETRIES: usize = 3;

/// The exact sliding window (a sliding log) as one atomic script.
///
/// KEYS[1]: the log, a sorted set: one member per admitted unit, scored by its admission time
/// in microseconds since the epoch.
/// ARGV: limit, window (µs), cost, now (µs; negative: read the server's TIME).
/// Returns {allowed (0/1), remaining, reset_after (µs), retry_after (µs, -1 when allowed)}.
///
/// Numbers are written with string.format('%d'): Lua's default number formatting keeps only
/// 14 significant digits, which would merge distinct microsecond stamps (and members).
const SLIDING_WINDOW: &str = r"
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local reading = tonumber(ARGV[4])
if reading < 0 then
  local t = redis.call('TIME')
  reading = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- The log's time never runs behind its newest stamp (a clock stepping back cannot expire
-- admissions early, and the log stays sorted).
local now = reading
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
local newest = tonumber(last[2])
if newest and newest > now then
  now = newest
end
-- A stamp t has left the window at now when t + window <= now.
redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now - window))
local held = redis.call('ZCARD', key)
local allowed = cost <= limit and held + cost <= limit
if allowed and cost > 0 then
  local stamp = string.format('%d', now)
  -- Members stamped now are numbered 1..n (none can have left the window yet): continue.
  local base = redis.call('ZCOUNT', key, stamp, stamp)
  local args = {}
  for i = 1, cost do
    args[#args + 1] = stamp
    args[#args + 1] = stamp .. ':' .. string.format('%d', base + i)
    if #args >= 1000 or i == cost then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  held = held + cost
  newest = now
  -- The log matters until its newest stamp (now) leaves the window.
  redis.call('PEXPIRE', key, string.format('%d', math.ceil((now + window - reading) / 1000)))
end
-- Pruning removes the oldest stamps first, so while any is held the newest is the one read
-- above (or now, after an admission).
local reset = 0
if held > 0 and newest then
  reset = newest + window - reading
end
local retry = -1
if not allowed and cost <= limit then
  -- cost fits once the oldest held + cost - limit stamps have left: wait for the last of them.
  local idx = held + cost - limit - 1
  local s = redis.call('ZRANGE', key, idx, idx, 'WITHSCORES')
  if s[2] then
    retry = math.max(0, tonumber(s[2]) + window - reading)
  else
    retry = window
  end
end
return {allowed and 1 or 0, math.max(0, limit - held), math.max(0, reset), retry}
";

/// GCRA as one atomic script.
///
/// KEYS[1]: the theoretical arrival time (TAT), µs since the epoch, as a decimal string.
/// ARGV: limit, emission interval (µs), cost, now (µs; negative: read the server's TIME).
/// Returns {allowed (0/1), remaining, reset_after (µs), retry_after (µs, -1 when allowed)}.
const GCRA: &str = r"
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tat = tonumber(redis.call('GET', key) or '0') or 0
local capacity = interval * limit
local increment = interval * cost
local new_tat = math.max(tat, now) + increment
local allowed = cost <= limit and new_tat <= now + capacity
if allowed and cost > 0 then
  tat = new_tat
  -- The state matters until the bucket is full again: the TAT.
  redis.call('SET', key, string.format('%d', tat), 'PX',
    string.format('%d', math.ceil((tat - now) / 1000)))
end
local debt = math.max(0, tat - now)
local remaining = math.min(limit, math.floor(math.max(0, capacity - debt) / interval))
local retry = -1
if not allowed and cost <= limit then
  retry = math.max(0, tat + increment - capacity - now)
end
return {allowed and 1 or 0, remaining, debt, retry}
";

/// The Redis key holding `key`'s state for `algorithm`, under `prefix`:
/// `<prefix>:{<hex>}:sw` or `<prefix>:{<hex>}:gcra` (the braces are a Redis Cluster hash tag).
///
/// ```
/// use secure_routes::rate_limit::{Algorithm, RateLimitKey};
/// use secure_routes_redis::key_name;
/// let key = RateLimitKey::from_bytes([0xab; 16]);
/// assert_eq!(
///     key_name("sr", &key, Algorithm::SlidingWindow),
///     format!("sr:{{{}}}:sw", "ab".repeat(16))
/// );
/// assert!(key_name("app", &key, Algorithm::Gcra).ends_with("}:gcra"));
/// ```
pub fn key_name(prefix: &str, key: &RateLimitKey, algorithm: Algorithm) -> String {
    let suffix = match algorithm {
        Algorithm::SlidingWindow => "sw",
        Algorithm::Gcra => "gcra",
    };
    format!("{prefix}:{{{}}}:{suffix}", key.to_hex())
}

/// A [`RateLimitStore`] on Redis or Valkey (5 or later): both algorithms, one script and one
/// round trip per check, time from the server.
///
/// Cloning is cheap and shares the connection.
///
/// ```no_run
/// use std::sync::Arc;
/// use secure_routes::rate_limit::RateLimitStore;
/// use secure_routes_redis::RedisStore;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.with_prefix("myapp")?;
/// let shared: Arc<dyn RateLimitStore> = Arc::new(store);
/// assert_eq!(shared.name(), "redis");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    prefix: Arc<str>,
    clock: Option<Arc<dyn Clock>>,
    sliding: Arc<Script>,
    gcra: Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// The connection a [`RedisStore`] runs on: one server (or a primary behind a proxy), or a
/// Redis Cluster. Both reconnect by themselves; cloning shares the connection.
///
/// It is a [`redis::aio::ConnectionLike`], so tests and tools can send their own commands on
/// it.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// A single server, through a [`ConnectionManager`].
    Manager(ConnectionManager),
    /// A Redis Cluster: each script goes to the node owning its key's slot (the hash tag).
    Cluster(ClusterConnection),
}

impl From<ConnectionManager> for RedisConnection {
    fn from(c: ConnectionManager) -> Self {
        Self::Manager(c)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(c: ClusterConnection) -> Self {
        Self::Cluster(c)
    }
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Manager(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Manager(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`; `rediss://` needs a TLS feature of the
    /// `redis` crate) with a [`ConnectionManager`] that reconnects by itself: [`CONNECT_TIMEOUT`]
    /// for connecting and for each response, and at most [`CONNECT_RETRIES`] quick retries
    /// per (re)connection, so an outage turns into errors fast (the next check tries again).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL is invalid or the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_max_delay(Duration::from_millis(500));
        Self::connect_with_config(url, config).await
    }

    /// Connects to `url` with a connection manager configured by `config` (timeouts, retry
    /// policy, ...).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if the URL is invalid or the server cannot be reached.
    pub async fn connect_with_config(
        url: &str,
        config: ConnectionManagerConfig,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(map_error)?;
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map_error)?;
        Ok(Self::new(conn))
    }

    /// Connects to a Redis Cluster through `nodes` (any of its nodes; the rest are
    /// discovered), with [`CONNECT_TIMEOUT`] for connecting and for each response.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if a URL is invalid or no node can be reached.
    pub async fn connect_cluster<I, T>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = T>,
        T: redis::IntoConnectionInfo,
    {
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(map_error)?;
        let conn = client.get_async_connection().await.map_err(map_error)?;
        Ok(Self::new(conn))
    }

    /// A store on an existing connection (a [`ConnectionManager`] or a
    /// [`ClusterConnection`]), with the [`DEFAULT_PREFIX`] and the server's time.
    pub fn new(conn: impl Into<RedisConnection>) -> Self {
        Self {
            conn: conn.into(),
            prefix: Arc::from(DEFAULT_PREFIX),
            clock: None,
            sliding: Arc::new(Script::new(SLIDING_WINDOW)),
            gcra: Arc::new(Script::new(GCRA)),
        }
    }

    /// The same store with key names starting `<prefix>:` (to share a server between
    /// applications, or to isolate test runs).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the prefix is empty or contains `{` or `}` (it would change the
    /// hash tag, and so the cluster slot, of every key).
    pub fn with_prefix(self, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        Ok(Self {
            prefix: Arc::from(prefix),
            ..self
        })
    }

    /// The same store taking "now" from `clock` instead of the server's `TIME`.
    ///
    /// For tests (the conformance suite runs on a fake clock) and simulations: in production
    /// instance clocks disagree, and the server's clock is the one they share.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock: Some(clock),
            ..self
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key holding `key`'s state for `algorithm` (see [`key_name`]).
    pub fn key_name(&self, key: &RateLimitKey, algorithm: Algorithm) -> String {
        key_name(&self.prefix, key, algorithm)
    }

    /// A clone of the connection (for tests and tooling sharing it).
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    async fn run(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> Result<Decision, StoreError> {
        let limit = quota.limit();
        let algorithm = quota.algorithm();
        if limit == 0 {
            // Nothing fits; the core's validation rejects such quotas before they get here.
            return Ok(Decision::from_store(
                quota,
                cost,
                cost == 0,
                0,
                Duration::ZERO,
                None,
            ));
        }
        if algorithm == Algorithm::SlidingWindow && limit > MAX_SLIDING_WINDOW_LIMIT {
            return Err(StoreError::Protocol(format!(
                "sliding-window limit {limit} is above {MAX_SLIDING_WINDOW_LIMIT}; use Algorithm::Gcra"
            )));
        }
        let window_us = ceil_micros(quota.window()).max(1);
        let (script, span) = match algorithm {
            Algorithm::SlidingWindow => (&self.sliding, window_us),
            // The emission interval W / N, rounded up (never a faster refill than N per W).
            Algorithm::Gcra => (&self.gcra, window_us.div_ceil(u64::from(limit)).max(1)),
        };
        let now_us: i64 = match &self.clock {
            Some(clock) => i64::try_from(clock.now().as_micros()).unwrap_or(i64::MAX),
            None => -1,
        };
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = script
            .key(self.key_name(key, algorithm))
            .arg(limit)
            .arg(span)
            .arg(cost)
            .arg(now_us)
            .invoke_async(&mut conn)
            .await
            .map_err(map_error)?;
        let &[allowed, remaining, reset_us, retry_us] = reply.as_slice() else {
            return Err(StoreError::Protocol(format!(
                "rate-limit script returned {} values, expected 4",
                reply.len()
            )));
        };
        // The script reports -1 for "no wait" (admitted, or a cost above the limit, where
        // `from_store` backs off a full window as the core does).
        let retry_after = (retry_us >= 0).then(|| micros(retry_us));
        Ok(Decision::from_store(
            quota,
            cost,
            allowed == 1,
            remaining,
            micros(reset_us),
            retry_after,
        ))
    }
}

impl RateLimitStore for RedisStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.run(key, quota, cost))
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::new("redis key prefix must not be empty"));
    }
    if prefix.contains(['{', '}']) {
        return Err(ConfigError::new(
            "redis key prefix must not contain '{' or '}' (it would change the keys' hash tag)",
        ));
    }
    Ok(())
}

/// Whole microseconds, rounded up.
fn ceil_micros(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000)).unwrap_or(u64::MAX)
}

/// A (non-negative) microsecond count from a script as a duration.
fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Classifies a Redis error for the policy's failure handling.
fn map_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_break_the_hash_tag_are_refused() {
        assert!(check_prefix("sr").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a{b").is_err());
        assert!(check_prefix("a}b").is_err());
    }

    #[test]
    fn key_names_carry_one_hash_tag() {
        let k = RateLimitKey::from_bytes([1; 16]);
        let name = key_name("p", &k, Algorithm::SlidingWindow);
        assert_eq!(name, "p:{01010101010101010101010101010101}:sw");
        assert_eq!(name.matches('{').count(), 1);
    }

    #[test]
    fn durations_round_up_to_microseconds() {
        assert_eq!(ceil_micros(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_micros(Duration::from_millis(2)), 2_000);
        assert_eq!(micros(-5), Duration::ZERO);
        assert_eq!(micros(1_500), Duration::from_micros(1_500));
    }
}
