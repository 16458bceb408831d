//! [`PostgresStore`] as a [`BanStore`]: the `bans` table (migration 4).
//!
//! `strike` and `add` are one transaction each: make sure the key's row exists (`INSERT ...
//! ON CONFLICT DO NOTHING`), lock it (`SELECT ... FOR UPDATE`), run the core's pure step
//! ([`BanState`]) on it and write it back. The row lock serialises operations on a key across
//! connections and instances, so concurrent strikes issue exactly one ban, and the decision is
//! the memory store's by construction (no SQL port of the algorithm to drift). Strikes happen
//! only on refusals, so the extra round trips are off the path of admitted requests. `check`,
//! `list` and `lift` are one statement each.

use std::time::Duration;

use secure_routes::bans::{
    Ban, BanKey, BanPolicy, BanState, BanStore, BoxFuture, StoreError, StrikeOutcome, duration_ms,
};

use crate::PostgresStore;
use crate::store::{pg_error, pool_error};

const ENSURE: &str = "INSERT INTO bans (key) VALUES ($1) ON CONFLICT (key) DO NOTHING";
const LOCK: &str =
    "SELECT log, level, last_ban, until, reason, expires_at FROM bans WHERE key = $1 FOR UPDATE";
const SAVE: &str = "UPDATE bans SET log = $2, level = $3, last_ban = $4, until = $5, reason = $6, \
                    expires_at = $7 WHERE key = $1";
const CHECK: &str = "SELECT level, until, reason FROM bans WHERE key = $1 AND until > $2";
const LIST: &str =
    "SELECT key, level, until, reason FROM bans WHERE until > $1 ORDER BY until, key";
const LIFT: &str = "DELETE FROM bans WHERE key = $1";
/// Deletes rows that decide like a fresh key (see [`PostgresStore::sweep_bans`]).
const SWEEP: &str = "DELETE FROM bans WHERE expires_at <= $1";

fn ms(n: i64) -> Duration {
    Duration::from_millis(u64::try_from(n).unwrap_or(0))
}

fn i64_ms(d: Duration) -> i64 {
    i64::try_from(duration_ms(d)).unwrap_or(i64::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn ban_row(key: BanKey, level: i32, until: i64, reason: String) -> Ban {
    Ban {
        key,
        until: ms(until),
        strikes: u32::try_from(level).unwrap_or(0),
        reason,
    }
}

impl PostgresStore {
    /// Runs `step` on `key`'s locked state in one transaction and stores the state it leaves
    /// (unless `step` says not to).
    async fn locked<T>(
        &self,
        key: &BanKey,
        now: Duration,
        step: impl FnOnce(&mut BanState) -> (T, bool),
    ) -> Result<T, StoreError> {
        let mut client = self.pool().get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let ensure = tx.prepare_cached(ENSURE).await.map_err(pg_error)?;
        tx.execute(&ensure, &[&key.as_str()])
            .await
            .map_err(pg_error)?;
        let lock = tx.prepare_cached(LOCK).await.map_err(pg_error)?;
        let row = tx
            .query_one(&lock, &[&key.as_str()])
            .await
            .map_err(pg_error)?;
        let log: String = row.try_get(0).map_err(pg_error)?;
        let level: i32 = row.try_get(1).map_err(pg_error)?;
        let numbers = [
            row.try_get::<_, i64>(2).map_err(pg_error)?,
            row.try_get::<_, i64>(3).map_err(pg_error)?,
            row.try_get::<_, i64>(5).map_err(pg_error)?,
        ];
        let [Ok(last_ban), Ok(until), Ok(expires)] = numbers.map(u64::try_from) else {
            return Err(StoreError::Protocol(format!(
                "negative time in the ban row of {key}"
            )));
        };
        let mut state = BanState {
            log: BanState::decode_log(&log)?,
            level: u32::try_from(level).unwrap_or(0),
            last_ban,
            until,
            reason: row.try_get(4).map_err(pg_error)?,
            expires,
        };
        // Expired state decides like a fresh key; starting fresh keeps the row bounded.
        if state.expires <= duration_ms(now) {
            state = BanState::default();
        }
        let (out, save) = step(&mut state);
        if save {
            let stmt = tx.prepare_cached(SAVE).await.map_err(pg_error)?;
            let level = i32::try_from(state.level).unwrap_or(i32::MAX);
            tx.execute(
                &stmt,
                &[
                    &key.as_str(),
                    &BanState::encode_log(&state.log),
                    &level,
                    &to_i64(state.last_ban),
                    &to_i64(state.until),
                    &state.reason,
                    &to_i64(state.expires),
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(out)
    }

    async fn strike_key(
        &self,
        key: &BanKey,
        weight: u32,
        policy: &BanPolicy,
        now: Duration,
    ) -> Result<StrikeOutcome, StoreError> {
        if policy.exempts(key) {
            return Ok(StrikeOutcome::Exempt);
        }
        self.locked(key, now, |state| {
            let out = state.strike(key, weight, policy, duration_ms(now));
            let save = !matches!(out, StrikeOutcome::Banned { new: false, .. });
            (out, save)
        })
        .await
    }

    async fn check_key(&self, key: &BanKey, now: Duration) -> Result<Option<Ban>, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(CHECK).await.map_err(pg_error)?;
        let row = client
            .query_opt(&stmt, &[&key.as_str(), &i64_ms(now)])
            .await
            .map_err(pg_error)?;
        row.map(|r| {
            Ok(ban_row(
                key.clone(),
                r.try_get(0).map_err(pg_error)?,
                r.try_get(1).map_err(pg_error)?,
                r.try_get(2).map_err(pg_error)?,
            ))
        })
        .transpose()
    }

    async fn list_bans(&self, now: Duration) -> Result<Vec<Ban>, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(LIST).await.map_err(pg_error)?;
        client
            .query(&stmt, &[&i64_ms(now)])
            .await
            .map_err(pg_error)?
            .into_iter()
            .map(|r| {
                Ok(ban_row(
                    BanKey::from_stored(r.try_get::<_, String>(0).map_err(pg_error)?),
                    r.try_get(1).map_err(pg_error)?,
                    r.try_get(2).map_err(pg_error)?,
                    r.try_get(3).map_err(pg_error)?,
                ))
            })
            .collect()
    }

    async fn lift_key(&self, key: &BanKey) -> Result<bool, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(LIFT).await.map_err(pg_error)?;
        let n = client
            .execute(&stmt, &[&key.as_str()])
            .await
            .map_err(pg_error)?;
        Ok(n > 0)
    }

    /// Deletes ban rows that have expired at `now` (points gone from the window, ban over,
    /// history period passed: they decide like a fresh key); returns how many.
    ///
    /// ```no_run
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    /// let deleted = store.sweep_bans(now).await?;
    /// println!("swept {deleted} ban rows");
    /// # Ok(()) }
    /// ```
    pub async fn sweep_bans(&self, now: Duration) -> Result<u64, StoreError> {
        let client = self.pool().get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(SWEEP).await.map_err(pg_error)?;
        client
            .execute(&stmt, &[&i64_ms(now)])
            .await
            .map_err(pg_error)
    }
}

/// Bans in Postgres: see the module notes (a row lock per operation, the core's step).
///
/// ```no_run
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanPolicy, BanStore};
/// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
/// let key = BanKey::subject("mallory");
/// let now = Duration::from_secs(1_700_000_000);
/// store.strike(&key, 50, &BanPolicy::default(), now).await?;
/// // `PostgresStore::check` is the rate-limit check: name the trait.
/// assert!(BanStore::check(&store, &key, now).await?.is_some());
/// # Ok(()) }
/// ```
impl BanStore for PostgresStore {
    fn strike<'a>(
        &'a self,
        key: &'a BanKey,
        weight: u32,
        policy: &'a BanPolicy,
        now: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
        Box::pin(self.strike_key(key, weight, policy, now))
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
        Box::pin(self.locked(key, now, move |state| {
            (
                state.add(key, duration_ms(until), reason, duration_ms(now)),
                true,
            )
        }))
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    /// Shared: every instance on the database shares it.
    fn is_shared(&self) -> bool {
        true
    }
}
