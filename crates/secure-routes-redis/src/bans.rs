//! [`RedisStore`] as a [`BanStore`]: one Lua script per writing operation.
//!
//! Every ban key lives under one hash tag, `<prefix>:{bans}:…`: the key's state is a hash
//! `<prefix>:{bans}:k:<ban key>` (fields `log`, `level`, `last`, `until`, `reason`,
//! `expires`, times in milliseconds since the epoch) and the bans in force are a sorted set
//! `<prefix>:{bans}:active` scored by their end. One slot for all of them is what lets a
//! script update a key's state and the index together on a Redis Cluster (a script may only
//! touch keys of one slot); bans are few and a check is one `HMGET`, so that slot's node is
//! not a hot spot worth splitting for.
//!
//! * `strike` and `add` and `lift` are Lua scripts, run atomically by the server: instances
//!   never interleave on a key, so concurrent strikes issue exactly one ban. The strike script
//!   is a line-by-line port of [`BanState::strike`](secure_routes::bans::BanState::strike);
//!   the shared conformance suite checks that they decide alike.
//! * `check` is one `HMGET` (a single command is atomic).
//! * `list` reads the index (dropping ended bans from it) and then each key's hash; a ban
//!   lifted in between is left out.
//! * The state hash expires by itself (`PEXPIRE`, relative to the caller's `now`) when it no longer matters: its points
//!   have left the window, its ban has ended and the history period has passed.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use secure_routes::bans::{
    Ban, BanKey, BanPolicy, BanStore, BoxFuture, StoreError, StrikeOutcome, duration_ms,
};

use crate::{RedisStore, map_error};

/// KEYS: state hash, index. ARGV: ban key, weight, now, threshold, window, first, max, history
/// (times in ms). Returns {kind, value, level, reason}: kind 1 = counted (value = points),
/// 2 = new ban (value = until), 0 = already banned (value = until).
pub(crate) const STRIKE: &str = r"
local now = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'log', 'level', 'last', 'until', 'reason', 'expires')
local log = s[1] or ''
local level = tonumber(s[2] or '0') or 0
local last = tonumber(s[3] or '0') or 0
local untl = tonumber(s[4] or '0') or 0
local reason = s[5] or ''
local expires = tonumber(s[6] or '0') or 0
if expires <= now then
  log = ''; level = 0; last = 0; untl = 0; reason = ''; expires = 0
end
if untl > now then
  return {0, untl, level, reason}
end
local window = tonumber(ARGV[5])
local entries = {}
local points = 0
for t, w in string.gmatch(log, '(%d+):(%d+)') do
  t = tonumber(t)
  w = tonumber(w)
  if t + window > now then
    entries[#entries + 1] = string.format('%d:%d', t, w)
    points = points + w
  end
end
local weight = tonumber(ARGV[2])
if weight > 0 then
  entries[#entries + 1] = string.format('%d:%d', now, weight)
  points = points + weight
end
local function save()
  redis.call('HSET', KEYS[1], 'log', table.concat(entries, ','), 'level', string.format('%d', level),
    'last', string.format('%d', last), 'until', string.format('%d', untl), 'reason', reason,
    'expires', string.format('%d', expires))
  -- Relative to the caller's time, like every time here (a TTL, so clock skew between the
  -- caller and the server moves the expiry by the skew only).
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, expires - now)))
end
if points < tonumber(ARGV[4]) then
  expires = math.max(expires, now + window)
  save()
  return {1, points, level, ''}
end
local history = tonumber(ARGV[8])
if level > 0 and now >= last + history then
  level = 0
end
level = level + 1
local length = math.min(tonumber(ARGV[6]) * 2 ^ math.min(level - 1, 63), tonumber(ARGV[7]))
untl = now + length
last = now
reason = 'threshold'
entries = {}
expires = math.max(untl, now + history)
save()
redis.call('ZADD', KEYS[2], string.format('%d', untl), ARGV[1])
return {2, untl, level, reason}
";

/// KEYS: state hash, index. ARGV: ban key, until, reason, now (ms). Returns {until, level}.
pub(crate) const ADD: &str = r"
local untl = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 'level', 'expires')
local level = tonumber(s[1] or '0') or 0
local expires = tonumber(s[2] or '0') or 0
if expires <= now then
  redis.call('DEL', KEYS[1])
  level = 0
  expires = 0
end
expires = math.max(expires, untl)
redis.call('HSET', KEYS[1], 'until', string.format('%d', untl), 'reason', ARGV[3],
  'level', string.format('%d', level), 'expires', string.format('%d', expires))
if redis.call('HEXISTS', KEYS[1], 'log') == 0 then
  redis.call('HSET', KEYS[1], 'log', '', 'last', '0')
end
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, expires - now)))
redis.call('ZADD', KEYS[2], string.format('%d', untl), ARGV[1])
return {untl, level}
";

/// KEYS: state hash, index. ARGV: ban key. Returns 1 when something was held.
pub(crate) const LIFT: &str = r"
local held = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return held
";

/// The Redis key of `key`'s state under `prefix`.
///
/// ```
/// use secure_routes::bans::BanKey;
/// assert_eq!(
///     secure_routes_redis::ban_key_name("sr", &BanKey::subject("alice")),
///     "sr:{bans}:k:sub:alice"
/// );
/// ```
pub fn ban_key_name(prefix: &str, key: &BanKey) -> String {
    format!("{prefix}:{{bans}}:k:{}", key.as_str())
}

/// The sorted set of bans in force under `prefix` (same slot as every state hash).
///
/// ```
/// assert_eq!(secure_routes_redis::ban_index_name("sr"), "sr:{bans}:active");
/// ```
pub fn ban_index_name(prefix: &str) -> String {
    format!("{prefix}:{{bans}}:active")
}

// Hashed once per process; `invoke_async` sends `EVALSHA` and reloads on `NOSCRIPT`.
static STRIKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(STRIKE));
static ADD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ADD));
static LIFT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LIFT));

fn ms(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n).unwrap_or(0))
}

fn i64_ms(d: Duration) -> i64 {
    i64::try_from(duration_ms(d)).unwrap_or(i64::MAX)
}

impl RedisStore {
    async fn strike_script(
        &self,
        key: &BanKey,
        weight: u32,
        policy: &BanPolicy,
        now: Duration,
    ) -> Result<StrikeOutcome, StoreError> {
        if policy.exempts(key) {
            return Ok(StrikeOutcome::Exempt);
        }
        let mut conn = self.conn.clone();
        let (kind, value, level, reason): (i64, i64, i64, String) = STRIKE_SCRIPT
            .key(ban_key_name(&self.prefix, key))
            .key(ban_index_name(&self.prefix))
            .arg(key.as_str())
            .arg(weight)
            .arg(i64_ms(now))
            .arg(policy.threshold())
            .arg(i64_ms(policy.window()))
            .arg(i64_ms(policy.first_ban()))
            .arg(i64_ms(policy.max_ban()))
            .arg(i64_ms(policy.history()))
            .invoke_async(&mut conn)
            .await
            .map_err(map_error)?;
        let ban = || Ban {
            key: key.clone(),
            until: ms(value),
            strikes: u32::try_from(level).unwrap_or(0),
            reason: reason.clone(),
        };
        Ok(match kind {
            1 => StrikeOutcome::Counted {
                points: u32::try_from(value).unwrap_or(u32::MAX),
            },
            2 => StrikeOutcome::Banned {
                ban: ban(),
                new: true,
            },
            0 => StrikeOutcome::Banned {
                ban: ban(),
                new: false,
            },
            other => {
                return Err(StoreError::Protocol(format!(
                    "ban script answered kind {other}"
                )));
            }
        })
    }

    async fn check_key(&self, key: &BanKey, now: Duration) -> Result<Option<Ban>, StoreError> {
        let mut conn = self.conn.clone();
        let (until, level, reason): (Option<i64>, Option<i64>, Option<String>) =
            redis::cmd("HMGET")
                .arg(ban_key_name(&self.prefix, key))
                .arg("until")
                .arg("level")
                .arg("reason")
                .query_async(&mut conn)
                .await
                .map_err(map_error)?;
        let until = until.unwrap_or(0);
        Ok((until > i64_ms(now)).then(|| Ban {
            key: key.clone(),
            until: ms(until),
            strikes: u32::try_from(level.unwrap_or(0)).unwrap_or(0),
            reason: reason.unwrap_or_default(),
        }))
    }

    async fn list_bans(&self, now: Duration) -> Result<Vec<Ban>, StoreError> {
        let mut conn = self.conn.clone();
        let index = ban_index_name(&self.prefix);
        let now_ms = i64_ms(now);
        // Ended bans leave the index here (their state expires by itself).
        let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
            .arg(&index)
            .arg("-inf")
            .arg(now_ms)
            .query_async(&mut conn)
            .await
            .map_err(map_error)?;
        let keys: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&index)
            .arg(format!("({now_ms}"))
            .arg("+inf")
            .query_async(&mut conn)
            .await
            .map_err(map_error)?;
        let mut bans = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(ban) = self.check_key(&BanKey::from_stored(k), now).await? {
                bans.push(ban);
            }
        }
        secure_routes::bans::sort_bans(&mut bans);
        Ok(bans)
    }

    async fn lift_key(&self, key: &BanKey) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let held: i64 = LIFT_SCRIPT
            .key(ban_key_name(&self.prefix, key))
            .key(ban_index_name(&self.prefix))
            .arg(key.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(map_error)?;
        Ok(held > 0)
    }

    async fn add_key(
        &self,
        key: &BanKey,
        until: Duration,
        reason: &str,
        now: Duration,
    ) -> Result<Ban, StoreError> {
        let mut conn = self.conn.clone();
        let (until, level): (i64, i64) = ADD_SCRIPT
            .key(ban_key_name(&self.prefix, key))
            .key(ban_index_name(&self.prefix))
            .arg(key.as_str())
            .arg(i64_ms(until))
            .arg(reason)
            .arg(i64_ms(now))
            .invoke_async(&mut conn)
            .await
            .map_err(map_error)?;
        Ok(Ban {
            key: key.clone(),
            until: ms(until),
            strikes: u32::try_from(level).unwrap_or(0),
            reason: reason.to_owned(),
        })
    }
}

/// Bans on Redis: see the [`bans`](self) module notes (one slot, one script per write).
///
/// ```no_run
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanStore};
/// use secure_routes_redis::RedisStore;
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let key = BanKey::parse("203.0.113.7")?;
/// let now = Duration::from_secs(1_700_000_000);
/// store.add(&key, now + Duration::from_secs(3600), "manual", now).await?;
/// assert!(store.check(&key, now).await?.is_some());
/// # Ok(()) }
/// ```
impl BanStore for RedisStore {
    fn strike<'a>(
        &'a self,
        key: &'a BanKey,
        weight: u32,
        policy: &'a BanPolicy,
        now: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
        Box::pin(self.strike_script(key, weight, policy, now))
    }

    fn check<'a>(
        &'a self,
        key: &'a BanKey,
        now: Duration,
    ) -> BoxFuture<'a, Result<Option<Ban>, StoreError>> {
        Box::pin(self.check_key(key, now))
    }

    fn list(&self, now: Duration) -> BoxFuture<'_, Result<Vec<Ban>, StoreError>> {
        Box::pin(self.list_bans(now))
    }

    fn lift<'a>(&'a self, key: &'a BanKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.lift_key(key))
    }

    fn add<'a>(
        &'a self,
        key: &'a BanKey,
        until: Duration,
        reason: &'a str,
        now: Duration,
    ) -> BoxFuture<'a, Result<Ban, StoreError>> {
        Box::pin(self.add_key(key, until, reason, now))
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// Shared: every instance on the server shares it.
    fn is_shared(&self) -> bool {
        true
    }
}
