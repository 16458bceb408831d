//! [`SqliteStore`]: the rate-limit store, one writer thread, one transaction per batch.
//!
//! Each check reads the key's state, runs the core's pure algorithm on it
//! ([`sliding_window::acquire`] or [`gcra::acquire`]) and writes the new state back, so the
//! decisions are exactly the memory store's. The thread serialises the checks, which is what
//! makes read-modify-write exact without row locks; checks that queue up while the thread is
//! busy are run back to back in one transaction, so their commit is shared.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use secure_routes::bans::{Ban, BanKey, BanPolicy, BanStore, StrikeOutcome};
use secure_routes::clock::{Clock, SystemClock};
use secure_routes::rate_limit::gcra::{self, GcraState};
use secure_routes::rate_limit::sliding_window::{self, SlidingLog};
use secure_routes::rate_limit::{
    Algorithm, BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore, StoreError,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use crate::bans::{BanAnswer, BanOp};
use crate::{Error, bans, schema};

/// How long the writer waits for another connection's write lock (an audit sink sharing the
/// file, a checkpoint) before the batch fails with a [`StoreError`]. A few times the core's
/// default store timeout (50 ms): long enough to ride out an audit commit on a shared file,
/// short enough that a lock held by a stuck process turns into errors instead of a stalled
/// queue.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Requests that may wait for the thread. Beyond this, a check fails at once
/// ([`StoreError::Unavailable`]) rather than queueing without bound behind a slow disk.
const QUEUE: usize = 16_384;

/// Requests the thread takes into one transaction at most.
const MAX_BATCH: usize = 1_024;

/// Checks between two automatic sweeps, and the most rows one automatic sweep deletes. Each
/// check creates at most one row, so deleting up to as many expired rows as there were checks
/// keeps expired rows from piling up, while no sweep holds the thread for long.
const SWEEP_EVERY: u64 = 1_024;

const SELECT_SQL: &str =
    "SELECT stamps, seen, tat FROM rate_limits WHERE key = ?1 AND algorithm = ?2";

const UPSERT_SQL: &str = "INSERT INTO rate_limits (key, algorithm, stamps, seen, tat, expires_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (key, algorithm) DO UPDATE SET stamps = excluded.stamps, seen = excluded.seen, \
     tat = excluded.tat, expires_at = excluded.expires_at";

/// Bounded: the oldest expired rows first, through the `expires_at` index.
const SWEEP_SOME_SQL: &str = "DELETE FROM rate_limits WHERE rowid IN \
     (SELECT rowid FROM rate_limits WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

const SWEEP_ALL_SQL: &str = "DELETE FROM rate_limits WHERE expires_at <= ?1";

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Check {
        key: RateLimitKey,
        quota: Quota,
        cost: u32,
        reply: Reply<Decision>,
    },
    Sweep {
        reply: Reply<u64>,
    },
    Len {
        reply: Reply<u64>,
    },
    Ban {
        op: BanOp,
        reply: Reply<BanAnswer>,
    },
}

/// What one request of a batch produced, sent once the batch has committed.
enum Answer {
    Decision(Result<Decision, StoreError>),
    Count(u64),
    Ban(Result<BanAnswer, StoreError>),
    /// The caller stopped waiting before the thread got to its check: not run, not counted.
    Abandoned,
}

/// A rate-limit store in a SQLite file: exact limits for one machine that survive restarts.
///
/// * **Same decisions as the core**: each check loads the key's state, runs
///   [`sliding_window::acquire`] or [`gcra::acquire`] on it and stores the result; nothing is
///   re-implemented in SQL.
/// * **Exact**: one dedicated thread owns the write connection and runs the checks one after
///   another, each read-compute-write inside a transaction, so concurrent checks on a key
///   never both see the old state. Checks waiting when the thread wakes are run in **one**
///   transaction (correct because they still run one at a time; each sees the previous one's
///   write) and answered only **after** it commits.
/// * **Async-safe**: callers send the check over a channel and await the answer; the runtime
///   never blocks on disk.
/// * **Bounded state**: one row per (key, algorithm), never one per request (at most `limit`
///   timestamps, or one TAT). A refusal or zero-cost check of an unknown key stores nothing;
///   every 1 024 checks the thread deletes up to 1 024 expired rows (rows that decide exactly
///   like a fresh key), and [`sweep`](Self::sweep) deletes them all.
/// * **Durable**: WAL with `synchronous=NORMAL`; an answered check has committed, so a
///   process crash or restart loses nothing (a power cut may lose the last commits: then a
///   few clients get part of their quota back).
/// * **Time** from an injected [`Clock`] ([`SystemClock`] by default), read by the thread
///   when it runs the check.
/// * **Errors** are [`StoreError`]s, never panics: a locked or failing database, a full
///   queue or a stopped thread is [`StoreError::Unavailable`], a row this build cannot read
///   [`StoreError::Protocol`].
///
/// The file may be the audit log's ([`SqliteAuditSink`](crate::SqliteAuditSink)): the state
/// lives in its own table, `rate_limits`. Each then waits for the other's commits, so a
/// separate file gives steadier check latency. Clones share the thread, which stops (after
/// finishing what was sent) when the last clone is dropped.
///
/// ```
/// use secure_routes::rate_limit::{KeyHasher, Quota, RateLimitStore, Subject};
/// use secure_routes_sqlite::SqliteStore;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("limits.db")).unwrap();
/// let key = KeyHasher::new(b"secret").key("route:/x", &Subject::Custom("alice".into()));
/// assert!(store.acquire(&key, Quota::per_minute(1), 1).await.unwrap().allowed);
/// assert!(!store.acquire(&key, Quota::per_minute(1), 1).await.unwrap().allowed);
/// drop(store);
///
/// // The limit survives a restart.
/// let store = SqliteStore::open(dir.path().join("limits.db")).unwrap();
/// assert!(!store.acquire(&key, Quota::per_minute(1), 1).await.unwrap().allowed);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct SqliteStore {
    path: PathBuf,
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Check { .. } => "Check",
            Request::Sweep { .. } => "Sweep",
            Request::Len { .. } => "Len",
            Request::Ban { .. } => "Ban",
        })
    }
}

impl SqliteStore {
    /// Opens or creates the database at `path` (WAL mode, schema migrated) and starts the
    /// writer thread; time comes from the system clock. Blocking (file I/O): call it at
    /// startup or from `spawn_blocking`.
    ///
    /// A path that cannot be opened or written, or a file that is not a SQLite database, is
    /// an error here, not at the first check.
    ///
    /// ```
    /// use secure_routes_sqlite::{Error, SqliteStore};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = SqliteStore::open(dir.path().join("limits.db")).unwrap();
    /// assert_eq!(store.path(), dir.path().join("limits.db"));
    /// let err = SqliteStore::open(dir.path().join("no/such/dir/limits.db")).unwrap_err();
    /// assert!(matches!(err, Error::Open { .. }));
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// [`open`](Self::open) with time read from `clock`, for tests and simulations.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::clock::FakeClock;
    /// use secure_routes::rate_limit::{Quota, RateLimitKey};
    /// use secure_routes_sqlite::SqliteStore;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let clock = FakeClock::new(Duration::from_secs(1_000));
    /// let store = SqliteStore::open_with_clock(dir.path().join("l.db"), Arc::new(clock.clone())).unwrap();
    /// let key = RateLimitKey::from_bytes([1; 16]);
    /// assert!(store.check(&key, Quota::per_minute(1), 1).await.unwrap().allowed);
    /// assert!(!store.check(&key, Quota::per_minute(1), 1).await.unwrap().allowed);
    /// clock.advance(Duration::from_secs(60));
    /// assert!(store.check(&key, Quota::per_minute(1), 1).await.unwrap().allowed);
    /// # });
    /// ```
    pub fn open_with_clock(path: impl AsRef<Path>, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let conn = schema::open_writer(&path, BUSY_TIMEOUT)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("secure-routes-sqlite-limits".into())
            .spawn(move || writer_thread(conn, &*clock, rx))
            .map_err(Error::Spawn)?;
        Ok(Self { path, tx })
    }

    /// The database file.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = secure_routes_sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
    /// assert!(store.path().ends_with("l.db"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks and counts `cost` units for `key` under `quota` (what
    /// [`RateLimitStore::acquire`] does).
    ///
    /// ```
    /// use secure_routes::rate_limit::{Algorithm, Quota, RateLimitKey};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = secure_routes_sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
    /// let key = RateLimitKey::from_bytes([7; 16]);
    /// let q = Quota::per_second(3).with_algorithm(Algorithm::Gcra);
    /// assert!(store.check(&key, q, 3).await.unwrap().allowed);
    /// assert!(!store.check(&key, q, 1).await.unwrap().allowed);
    /// # });
    /// ```
    pub async fn check(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> Result<Decision, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Check {
            key: *key,
            quota,
            cost,
            reply,
        })?;
        receive(answer).await
    }

    /// Deletes every expired row (one that decides exactly like a fresh key) and returns how
    /// many. Not needed for correctness or boundedness (the thread sweeps by itself every
    /// 1 024 checks); useful after a long idle period, or in tests.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::clock::FakeClock;
    /// use secure_routes::rate_limit::{Quota, RateLimitKey};
    /// use secure_routes_sqlite::SqliteStore;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let clock = FakeClock::new(Duration::from_secs(1_000));
    /// let store = SqliteStore::open_with_clock(dir.path().join("l.db"), Arc::new(clock.clone())).unwrap();
    /// store.check(&RateLimitKey::from_bytes([1; 16]), Quota::per_minute(5), 1).await.unwrap();
    /// assert_eq!(store.sweep().await.unwrap(), 0); // still inside its window
    /// clock.advance(Duration::from_secs(60));
    /// assert_eq!(store.sweep().await.unwrap(), 1);
    /// assert!(store.is_empty().await.unwrap());
    /// # });
    /// ```
    pub async fn sweep(&self) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Sweep { reply })?;
        receive(answer).await
    }

    /// The number of rows held (expired ones not yet swept included; a key used with both
    /// algorithms counts twice).
    ///
    /// ```
    /// use secure_routes::rate_limit::{Algorithm, Quota, RateLimitKey};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = secure_routes_sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
    /// let key = RateLimitKey::from_bytes([1; 16]);
    /// store.check(&key, Quota::per_minute(5), 1).await.unwrap();
    /// store.check(&key, Quota::per_minute(5).with_algorithm(Algorithm::Gcra), 1).await.unwrap();
    /// assert_eq!(store.len().await.unwrap(), 2);
    /// # });
    /// ```
    pub async fn len(&self) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Len { reply })?;
        receive(answer).await
    }

    /// Whether no row is held.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = secure_routes_sqlite::SqliteStore::open(dir.path().join("l.db")).unwrap();
    /// assert!(store.is_empty().await.unwrap());
    /// # });
    /// ```
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len().await? == 0)
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        self.tx.try_send(request).map_err(|e| match e {
            TrySendError::Full(_) => {
                StoreError::Unavailable("the SQLite rate-limit queue is full".into())
            }
            TrySendError::Closed(_) => {
                StoreError::Unavailable("the SQLite rate-limit thread has stopped".into())
            }
        })
    }
}

async fn receive<T>(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    answer.await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "the SQLite rate-limit thread stopped before answering".into(),
        ))
    })
}

impl RateLimitStore for SqliteStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.check(key, quota, cost))
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

impl SqliteStore {
    async fn ban(&self, op: BanOp) -> Result<BanAnswer, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Ban { op, reply })?;
        receive(answer).await
    }
}

fn unexpected() -> StoreError {
    StoreError::Protocol("unexpected answer from the SQLite thread".into())
}

/// Bans live in the same file as the rate limits (table `bans`), run on the same writer
/// thread: each operation is one read-decide-write of the key's row inside the thread's
/// `IMMEDIATE` transaction, so it is exact within a process and across processes sharing the
/// file (SQLite's write lock serialises their transactions). Expired rows are deleted by
/// [`SqliteStore::sweep`].
///
/// ```
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanPolicy, BanStore, StrikeOutcome};
/// use secure_routes_sqlite::SqliteStore;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let store = SqliteStore::open(dir.path().join("limits.db")).unwrap();
/// let key = BanKey::subject("mallory");
/// let now = Duration::from_secs(1_700_000_000);
/// let out = store.strike(&key, 50, &BanPolicy::default(), now).await.unwrap();
/// assert!(matches!(out, StrikeOutcome::Banned { new: true, .. }));
/// drop(store);
/// // Another process opening the file sees the ban.
/// let store = SqliteStore::open(dir.path().join("limits.db")).unwrap();
/// assert_eq!(store.list(now).await.unwrap().len(), 1);
/// # });
/// ```
impl BanStore for SqliteStore {
    fn strike<'a>(
        &'a self,
        key: &'a BanKey,
        weight: u32,
        policy: &'a BanPolicy,
        now: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
        Box::pin(async move {
            if policy.exempts(key) {
                return Ok(StrikeOutcome::Exempt);
            }
            let op = BanOp::Strike {
                key: key.clone(),
                weight,
                policy: Box::new(policy.clone()),
                now,
            };
            match self.ban(op).await? {
                BanAnswer::Strike(out) => Ok(out),
                _ => Err(unexpected()),
            }
        })
    }

    fn check<'a>(
        &'a self,
        key: &'a BanKey,
        now: Duration,
    ) -> BoxFuture<'a, Result<Option<Ban>, StoreError>> {
        Box::pin(async move {
            match self
                .ban(BanOp::Check {
                    key: key.clone(),
                    now,
                })
                .await?
            {
                BanAnswer::Check(ban) => Ok(ban),
                _ => Err(unexpected()),
            }
        })
    }

    fn list(&self, now: Duration) -> BoxFuture<'_, Result<Vec<Ban>, StoreError>> {
        Box::pin(async move {
            match self.ban(BanOp::List { now }).await? {
                BanAnswer::List(bans) => Ok(bans),
                _ => Err(unexpected()),
            }
        })
    }

    fn lift<'a>(&'a self, key: &'a BanKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            match self.ban(BanOp::Lift { key: key.clone() }).await? {
                BanAnswer::Lift(held) => Ok(held),
                _ => Err(unexpected()),
            }
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a BanKey,
        until: Duration,
        reason: &'a str,
        now: Duration,
    ) -> BoxFuture<'a, Result<Ban, StoreError>> {
        Box::pin(async move {
            let op = BanOp::Add {
                key: key.clone(),
                until,
                reason: reason.to_owned(),
                now,
            };
            match self.ban(op).await? {
                BanAnswer::Add(ban) => Ok(ban),
                _ => Err(unexpected()),
            }
        })
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }

    /// Shared: other processes may open the same file.
    fn is_shared(&self) -> bool {
        true
    }
}

/// The writer thread: takes every request already waiting (up to [`MAX_BATCH`]), runs them
/// in one transaction, answers them once it has committed, sweeps now and then. Ends when
/// every sender is gone and the queue is empty.
fn writer_thread(mut conn: Connection, clock: &dyn Clock, mut rx: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut since_sweep = 0u64;
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        since_sweep += batch
            .iter()
            .filter(|r| matches!(r, Request::Check { .. }))
            .count() as u64;
        match run_batch(&mut conn, clock, &batch) {
            Ok(answers) => {
                for (request, answer) in batch.drain(..).zip(answers) {
                    reply(request, Ok(answer));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for request in batch.drain(..) {
                    reply(request, Err(sqlite_error(&message)));
                }
            }
        }
        if since_sweep >= SWEEP_EVERY {
            since_sweep = 0;
            let now = nanos(clock.now());
            match sweep_some(&mut conn, now, SWEEP_EVERY) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "sqlite rate-limit sweep"),
                // A missed sweep only delays cleanup; decisions never depend on it.
                Err(e) => tracing::warn!(error = %e, "sqlite rate-limit sweep failed"),
            }
        }
    }
}

/// Runs `batch` in one `IMMEDIATE` transaction (the write lock is taken up front, so it
/// cannot fail half-way on a lock upgrade). An SQL error fails the whole batch: it rolls
/// back, so none of its checks counted.
fn run_batch(
    conn: &mut Connection,
    clock: &dyn Clock,
    batch: &[Request],
) -> rusqlite::Result<Vec<Answer>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut answers = Vec::with_capacity(batch.len());
    for request in batch {
        answers.push(match request {
            Request::Check {
                key,
                quota,
                cost,
                reply,
            } => {
                // The caller gave up (the core's store timeout, a dropped request): it acts
                // on no decision, so its check must not use up the client's quota.
                if reply.is_closed() {
                    Answer::Abandoned
                } else {
                    Answer::Decision(check(&tx, clock, key, *quota, *cost)?)
                }
            }
            Request::Sweep { .. } => {
                let now = nanos(clock.now());
                let limits = tx.prepare_cached(SWEEP_ALL_SQL)?.execute([now])? as u64;
                Answer::Count(limits + bans::sweep(&tx, clock.now())?)
            }
            Request::Ban { op, reply } => {
                // As for checks: a caller that gave up acts on no answer, so its strike must
                // not count.
                if reply.is_closed() {
                    Answer::Abandoned
                } else {
                    Answer::Ban(bans::run(&tx, op)?)
                }
            }
            Request::Len { .. } => {
                Answer::Count(tx.query_row("SELECT count(*) FROM rate_limits", [], |r| {
                    r.get::<_, i64>(0)
                })? as u64)
            }
        });
    }
    tx.commit()?;
    Ok(answers)
}

fn reply(request: Request, answer: Result<Answer, StoreError>) {
    // A send fails only when the caller stopped waiting: nothing to do.
    match request {
        Request::Check { reply, .. } => {
            let _ = reply.send(match answer {
                Ok(Answer::Decision(d)) => d,
                Ok(_) => return,
                Err(e) => Err(e),
            });
        }
        Request::Ban { reply, .. } => {
            let _ = reply.send(match answer {
                Ok(Answer::Ban(b)) => b,
                Ok(_) => return,
                Err(e) => Err(e),
            });
        }
        Request::Sweep { reply } | Request::Len { reply } => {
            let _ = reply.send(match answer {
                Ok(Answer::Count(n)) => Ok(n),
                Ok(_) => Err(StoreError::Protocol("unexpected answer".into())),
                Err(e) => Err(e),
            });
        }
    }
}

/// One check: load, decide with the core's algorithm, store if the state changed. The outer
/// error is SQL (fails the batch); the inner one is this key's row being unreadable.
fn check(
    tx: &Transaction<'_>,
    clock: &dyn Clock,
    key: &RateLimitKey,
    quota: Quota,
    cost: u32,
) -> rusqlite::Result<Result<Decision, StoreError>> {
    let key_bytes: &[u8] = key.as_bytes();
    let algorithm = match quota.algorithm() {
        Algorithm::SlidingWindow => 0,
        Algorithm::Gcra => 1,
    };
    let stored: Option<(Option<Vec<u8>>, i64, Option<i64>)> = match tx
        .prepare_cached(SELECT_SQL)?
        .query_row(params![key_bytes, algorithm], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
    {
        Ok(row) => row,
        // A value of the wrong type is this row's problem, not the batch's.
        Err(
            e @ (rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)),
        ) => return Ok(Err(corrupt(key, &e.to_string()))),
        Err(e) => return Err(e),
    };
    let now = clock.now();
    // What to write, if anything: (stamps, seen, tat, expires_at).
    let (decision, write) = match quota.algorithm() {
        Algorithm::SlidingWindow => {
            let (blob, seen) = match &stored {
                Some((stamps, seen, _)) => (stamps.as_deref().unwrap_or_default(), *seen),
                None => (&[][..], 0),
            };
            let mut log = match decode_log(blob, seen) {
                Ok(log) => log,
                Err(what) => return Ok(Err(corrupt(key, what))),
            };
            let decision = sliding_window::acquire(&mut log, now, quota, cost);
            let new_blob = encode_stamps(&log);
            let new_seen = to_i64(log.seen());
            // Unchanged state (including a refusal of an unknown key) is not written.
            let write = (new_blob != blob || new_seen != seen).then(|| {
                let expires = nanos(sliding_window::expires_at(&log, quota));
                (Some(new_blob), new_seen, None, expires)
            });
            (decision, write)
        }
        Algorithm::Gcra => {
            let tat = match stored.as_ref().and_then(|s| s.2) {
                None => 0,
                Some(t) => match u64::try_from(t) {
                    Ok(t) => t,
                    Err(_) => return Ok(Err(corrupt(key, "negative TAT"))),
                },
            };
            let mut state = GcraState::from_tat(tat);
            let decision = gcra::acquire(&mut state, now, quota, cost);
            let write = (state.tat() != tat).then(|| {
                let tat = to_i64(state.tat());
                (None, 0, Some(tat), nanos(gcra::expires_at(&state)))
            });
            (decision, write)
        }
    };
    if let Some((stamps, seen, tat, expires_at)) = write {
        tx.prepare_cached(UPSERT_SQL)?
            .execute(params![key_bytes, algorithm, stamps, seen, tat, expires_at])?;
    }
    Ok(Ok(decision))
}

/// Deletes at most `limit` expired rows, oldest first, in one transaction; returns how many.
fn sweep_some(conn: &mut Connection, now: i64, limit: u64) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let n = tx
        .prepare_cached(SWEEP_SOME_SQL)?
        .execute(params![now, to_i64(limit)])?;
    tx.commit()?;
    Ok(n as u64)
}

/// The sliding log stored as `stamps` (8 bytes each, little-endian) and `seen`.
fn decode_log(blob: &[u8], seen: i64) -> Result<SlidingLog, &'static str> {
    let (chunks, rest) = blob.as_chunks::<8>();
    if !rest.is_empty() {
        return Err("the stamps are not a whole number of 8-byte times");
    }
    let seen = u64::try_from(seen).map_err(|_| "negative time")?;
    Ok(SlidingLog::from_parts(
        chunks.iter().map(|c| u64::from_le_bytes(*c)),
        seen,
    ))
}

fn encode_stamps(log: &SlidingLog) -> Vec<u8> {
    let mut blob = Vec::with_capacity(log.len() * 8);
    for stamp in log.stamps() {
        blob.extend_from_slice(&stamp.to_le_bytes());
    }
    blob
}

fn corrupt(key: &RateLimitKey, what: &str) -> StoreError {
    StoreError::Protocol(format!("corrupt rate_limits row for {key:?}: {what}"))
}

/// SQLite failed (locked, I/O, disk full, read-only): the store is unavailable.
fn sqlite_error(message: &str) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {message}"))
}

/// Nanoseconds as SQLite's INTEGER, saturating (good until 2262).
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_round_trips_through_its_columns() {
        let log = SlidingLog::from_parts([3, 1, 2], 10);
        let blob = encode_stamps(&log);
        assert_eq!(blob.len(), 24);
        assert_eq!(decode_log(&blob, 10).unwrap(), log);
    }

    #[test]
    fn a_torn_blob_or_negative_time_is_refused() {
        assert!(decode_log(&[0; 9], 0).is_err());
        assert!(decode_log(&[], -1).is_err());
        assert!(decode_log(&[0; 16], 0).is_ok());
    }
}
