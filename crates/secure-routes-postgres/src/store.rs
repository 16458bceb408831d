//! [`PostgresStore`]: the rate-limit store, one statement per check.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};
use secure_routes::clock::Clock;
use secure_routes::rate_limit::{
    Algorithm, BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore, StoreError,
};

use crate::Error;

const SLIDING_WINDOW: &str = "SELECT allowed, remaining, reset_ns, retry_ns \
                              FROM secure_routes_sliding_window($1, $2, $3, $4, $5)";
const GCRA: &str = "SELECT allowed, remaining, reset_ns, retry_ns \
                    FROM secure_routes_gcra($1, $2, $3, $4, $5)";
/// Deletes up to 10 000 expired rows. Bounded batches keep each statement short; rows a check
/// holds locked are skipped (`SKIP LOCKED`), and `FOR UPDATE` re-checks `expires_at` on the
/// newest row version, so a row a check just refreshed is never deleted.
const SWEEP: &str = "DELETE FROM rate_limits WHERE (key, algorithm) IN (
                         SELECT key, algorithm FROM rate_limits
                          WHERE expires_at <= coalesce($1,
                                (extract(epoch FROM clock_timestamp()) * 1000000)::bigint * 1000)
                          LIMIT 10000 FOR UPDATE SKIP LOCKED)";
const SWEEP_BATCH: u64 = 10_000;

/// A rate-limit store in Postgres, shared by every instance using the same database.
///
/// * **One round trip per check**: `SELECT ... FROM secure_routes_sliding_window(...)` (or
///   `secure_routes_gcra`), a PL/pgSQL function created by [`migrate`](crate::migrate) that
///   locks the key's row, runs the algorithm and writes the new state in the same statement.
///   Statements are prepared once per connection and cached.
/// * **Atomic**: the row lock (`SELECT ... FOR UPDATE`) serialises concurrent checks on a key,
///   across connections and instances; a new key is inserted with `ON CONFLICT DO NOTHING`
///   and, if another check won that race, decided again on the winner's row.
/// * **Same decisions as the core**: the SQL is a line-by-line port of
///   [`sliding_window::acquire`](secure_routes::rate_limit::sliding_window::acquire) and
///   [`gcra::acquire`](secure_routes::rate_limit::gcra::acquire), in the same unit
///   (nanoseconds since the epoch), so for the same sequence of (time, cost) the decisions are
///   those of the memory store. A key used with both algorithms has one state for each.
/// * **Time** from the database (`clock_timestamp()`, read once the row lock is held, in
///   microseconds) by default, so instances with skewed clocks share one time line; or from an
///   injected [`Clock`] ([`PostgresStore::with_clock`]) for deterministic tests.
/// * **Bounded state**: one row per active key (at most `limit` timestamps for the sliding
///   window, one `bigint` for GCRA); a refusal or zero-cost check of an unknown key stores
///   nothing, and rows that have expired (equivalent to a fresh key) are deleted by
///   [`sweep`](PostgresStore::sweep) / [`spawn_sweeper`](PostgresStore::spawn_sweeper).
/// * **Errors** are [`StoreError`]s, never panics and never a refusal: a pool timeout is
///   [`StoreError::Timeout`], an unreachable or closed connection [`StoreError::Unavailable`],
///   an SQL error (schema not migrated, say) [`StoreError::Protocol`].
///
/// Cloning is cheap and shares the pool.
///
/// ```no_run
/// use std::time::Duration;
/// use secure_routes::rate_limit::{KeyHasher, Quota, RateLimitStore, Subject};
/// use secure_routes_postgres::PostgresStore;
/// # async fn run(pool: deadpool_postgres::Pool) -> Result<(), secure_routes::StoreError> {
/// let store = PostgresStore::new(pool);
/// let key = KeyHasher::new(b"secret").key("route:/x", &Subject::Custom("alice".into()));
/// let d = store.acquire(&key, Quota::per_minute(1), 1).await?;
/// assert!(d.allowed);
/// assert!(!store.acquire(&key, Quota::per_minute(1), 1).await?.allowed);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("pool", &self.pool.status())
            .field("clock", &self.clock)
            .finish()
    }
}

impl PostgresStore {
    /// A store on `pool`, timed by the database's clock. The schema must be migrated
    /// ([`migrate`](crate::migrate)).
    ///
    /// ```
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 4).unwrap();
    /// let store = secure_routes_postgres::PostgresStore::new(pool);
    /// assert!(!store.uses_injected_clock());
    /// ```
    pub fn new(pool: Pool) -> Self {
        Self { pool, clock: None }
    }

    /// A store on `pool` timed by `clock` instead of the database. For tests and
    /// simulations: instances with their own clocks would disagree on time.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::clock::FakeClock;
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 4).unwrap();
    /// let clock = FakeClock::new(Duration::from_secs(1_000));
    /// let store = secure_routes_postgres::PostgresStore::with_clock(pool, Arc::new(clock));
    /// assert!(store.uses_injected_clock());
    /// ```
    pub fn with_clock(pool: Pool, clock: Arc<dyn Clock>) -> Self {
        Self {
            pool,
            clock: Some(clock),
        }
    }

    /// Whether time comes from an injected clock rather than the database.
    ///
    /// ```
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 4).unwrap();
    /// assert!(!secure_routes_postgres::PostgresStore::new(pool).uses_injected_clock());
    /// ```
    pub fn uses_injected_clock(&self) -> bool {
        self.clock.is_some()
    }

    /// The connection pool.
    ///
    /// ```
    /// let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1/app", 4).unwrap();
    /// let store = secure_routes_postgres::PostgresStore::new(pool);
    /// assert_eq!(store.pool().status().max_size, 4);
    /// ```
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The injected clock's reading in nanoseconds, or `None` for the database's clock.
    fn now(&self) -> Option<i64> {
        self.clock.as_ref().map(|c| nanos(c.now()))
    }

    /// Checks and counts `cost` units for `key` under `quota`: one statement.
    ///
    /// ```no_run
    /// use secure_routes::rate_limit::{Algorithm, Quota, RateLimitKey};
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
    /// let key = RateLimitKey::from_bytes([7; 16]);
    /// let q = Quota::per_second(3).with_algorithm(Algorithm::Gcra);
    /// assert!(store.check(&key, q, 3).await?.allowed);
    /// assert!(!store.check(&key, q, 1).await?.allowed);
    /// # Ok(()) }
    /// ```
    pub async fn check(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> Result<Decision, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let sql = match quota.algorithm() {
            Algorithm::SlidingWindow => SLIDING_WINDOW,
            Algorithm::Gcra => GCRA,
        };
        let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
        let key_bytes: &[u8] = key.as_bytes();
        let now = self.now();
        let window = nanos(quota.window());
        let limit = i64::from(quota.limit());
        let cost_n = i64::from(cost);
        let row = client
            .query_one(&stmt, &[&key_bytes, &now, &window, &limit, &cost_n])
            .await
            .map_err(pg_error)?;
        let allowed: bool = row.try_get(0).map_err(pg_error)?;
        let remaining: i64 = row.try_get(1).map_err(pg_error)?;
        let reset_ns: i64 = row.try_get(2).map_err(pg_error)?;
        let retry_ns: Option<i64> = row.try_get(3).map_err(pg_error)?;
        Ok(Decision::from_store(
            quota,
            cost,
            allowed,
            remaining,
            from_nanos(reset_ns),
            retry_ns.map(from_nanos),
        ))
    }

    /// Opens a pooled connection and prepares the check statements on it, so the first checks
    /// after a start do not pay for a connection and a parse inside the policy's store
    /// timeout (50 ms by default: a cold connect on a loaded machine can take longer, and a
    /// fail-closed policy would answer that first burst 503).
    ///
    /// ```no_run
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
    /// store.warm_up().await?;
    /// # Ok(()) }
    /// ```
    pub async fn warm_up(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        for sql in [SLIDING_WINDOW, GCRA] {
            client.prepare_cached(sql).await.map_err(pg_error)?;
        }
        Ok(())
    }

    /// Deletes every expired row (one that behaves exactly like a fresh key), in batches of
    /// 10 000, and returns how many were deleted. Time is the store's time (the injected
    /// clock, or the database's).
    ///
    /// ```no_run
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
    /// let deleted = store.sweep().await?;
    /// println!("swept {deleted} expired rate-limit rows");
    /// # Ok(()) }
    /// ```
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let stmt = client.prepare_cached(SWEEP).await.map_err(pg_error)?;
        let now = self.now();
        let mut total = 0;
        loop {
            let n = client.execute(&stmt, &[&now]).await.map_err(pg_error)?;
            total += n;
            if n < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// The number of rows held (expired ones not yet swept included; a key used with both
    /// algorithms counts twice).
    ///
    /// ```no_run
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
    /// assert_eq!(store.len().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn len(&self) -> Result<u64, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one("SELECT count(*) FROM rate_limits", &[])
            .await
            .map_err(pg_error)?;
        let n: i64 = row.try_get(0).map_err(pg_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Whether no row is held.
    ///
    /// ```no_run
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes::StoreError> {
    /// assert!(store.is_empty().await?);
    /// # Ok(()) }
    /// ```
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    /// Runs [`sweep`](Self::sweep) every `interval` on the current Tokio runtime until the
    /// returned handle is stopped or dropped. A failed sweep is logged and retried at the
    /// next tick (a missed sweep only delays cleanup; decisions never depend on it).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes_postgres::Error> {
    /// let sweeper = store.spawn_sweeper(Duration::from_secs(60))?;
    /// // ... serve ...
    /// sweeper.stop();
    /// # Ok(()) }
    /// ```
    pub fn spawn_sweeper(&self, interval: Duration) -> Result<SweeperHandle, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let store = self.clone();
        let period = interval.max(Duration::from_millis(1));
        let task = runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match store.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "postgres rate-limit sweep"),
                    Err(e) => tracing::warn!(error = %e, "postgres rate-limit sweep failed"),
                }
            }
        });
        Ok(SweeperHandle { task })
    }
}

impl RateLimitStore for PostgresStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.check(key, quota, cost))
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// The background sweeper started by [`PostgresStore::spawn_sweeper`]; stops it when dropped.
///
/// ```no_run
/// # async fn run(store: secure_routes_postgres::PostgresStore) -> Result<(), secure_routes_postgres::Error> {
/// let handle = store.spawn_sweeper(std::time::Duration::from_secs(30))?;
/// assert!(handle.is_running());
/// handle.stop();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SweeperHandle {
    task: tokio::task::JoinHandle<()>,
}

impl SweeperHandle {
    /// Whether the sweeper task is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops the sweeper (an in-flight sweep is cancelled; its transaction rolls back).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whole nanoseconds as a Postgres `bigint`, saturating (good until 2262).
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn from_nanos(n: i64) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(0))
}

pub(crate) fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => StoreError::Timeout,
        PoolError::Backend(e) => pg_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// SQL errors (the server answered) are protocol errors; the rest (I/O, closed connection)
/// mean the store is unavailable.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.as_db_error().is_some() {
        StoreError::Protocol(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}
