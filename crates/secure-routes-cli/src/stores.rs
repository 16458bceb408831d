//! Where the demo keeps rate limits and audit events: `--limits` and `--audit` locations.
//!
//! | flag | accepted | default |
//! | --- | --- | --- |
//! | `--limits` | `memory`, `sqlite:PATH`, `redis://…` (`rediss://…`), `postgres://…` (`postgresql://…`) | `memory` |
//! | `--audit` | `sqlite:PATH`, `postgres://…`, `jsonl:PATH` | `sqlite:./secure-routes.db` |
//!
//! Several instances share limits and the audit trail by pointing at the same Redis or
//! Postgres. Postgres locations are migrated at start (one pool is shared when `--limits` and
//! `--audit` name the same database). A location prints without its password, so banners and
//! logs never carry a credential.
//!
//! ```
//! use secure_routes_cli::stores::{AuditLocation, LimitsLocation};
//! let l: LimitsLocation = "redis://:hunter2@cache:6379/0".parse().unwrap();
//! assert_eq!(l.to_string(), "redis://:***@cache:6379/0");
//! let a: AuditLocation = "jsonl:/var/log/audit.jsonl".parse().unwrap();
//! assert!(matches!(a, AuditLocation::Jsonl(_)));
//! assert!("mysql://db".parse::<AuditLocation>().is_err());
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secure_routes::audit::sinks::JsonlSink;
use secure_routes::audit::{
    ActionCount, AuditError, AuditEvent, AuditQuery, AuditReader, AuditSink, BoxFuture,
    MemoryAuditReader, TopBy, TopEntry,
};
use secure_routes::bans::BanStore;
use secure_routes::rate_limit::{MemoryStore, RateLimitStore};

/// Connections per instance for a Postgres location.
pub const POSTGRES_POOL_SIZE: usize = 16;
/// How often a Postgres or SQLite rate-limit store deletes expired rows.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Where rate-limit state lives (`--limits`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitsLocation {
    /// In this process (the default): exact for one instance, forgotten on restart.
    Memory,
    /// A SQLite file: one machine, survives restarts.
    Sqlite(PathBuf),
    /// A Redis or Valkey server shared by every instance (the URL).
    Redis(String),
    /// A Postgres database shared by every instance (the URL).
    Postgres(String),
}

/// Where audit events go (`--audit`), and where `secure-routes audit` reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditLocation {
    /// A SQLite file (the default, `./secure-routes.db`).
    Sqlite(PathBuf),
    /// A Postgres database (the URL).
    Postgres(String),
    /// A JSON-lines file, one event per line.
    Jsonl(PathBuf),
}

/// A location string that names no supported store.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LocationError(String);

fn file_path(scheme: &str, rest: &str) -> Result<PathBuf, LocationError> {
    // `sqlite:///abs/path` and `sqlite://rel` are common spellings too.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(LocationError(format!(
            "{scheme}: needs a file path, as in {scheme}:./secure-routes.db"
        )));
    }
    Ok(PathBuf::from(path))
}

fn is_postgres(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl FromStr for LimitsLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(Self::Memory)
        } else if let Some(rest) = s.strip_prefix("sqlite:") {
            file_path("sqlite", rest).map(Self::Sqlite)
        } else if s.starts_with("redis://")
            || s.starts_with("rediss://")
            || s.starts_with("redis+unix://")
        {
            Ok(Self::Redis(s.to_owned()))
        } else if is_postgres(s) {
            Ok(Self::Postgres(s.to_owned()))
        } else {
            Err(LocationError(format!(
                "unsupported --limits location {:?}: use memory, sqlite:PATH, redis://HOST[:PORT][/DB] or postgres://USER@HOST/DB",
                redact(s)
            )))
        }
    }
}

impl FromStr for AuditLocation {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("sqlite:") {
            file_path("sqlite", rest).map(Self::Sqlite)
        } else if let Some(rest) = s.strip_prefix("jsonl:") {
            file_path("jsonl", rest).map(Self::Jsonl)
        } else if is_postgres(s) {
            Ok(Self::Postgres(s.to_owned()))
        } else {
            Err(LocationError(format!(
                "unsupported --audit location {:?}: use sqlite:PATH, postgres://USER@HOST/DB or jsonl:PATH",
                redact(s)
            )))
        }
    }
}

/// `url` with the password (the part between `:` and `@` of the authority) replaced by `***`.
///
/// ```
/// use secure_routes_cli::stores::redact;
/// assert_eq!(redact("postgres://app:s3cret@db/app"), "postgres://app:***@db/app");
/// assert_eq!(redact("postgres://app@db/app"), "postgres://app@db/app");
/// ```
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl fmt::Display for LimitsLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Redis(u) | Self::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

impl fmt::Display for AuditLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            Self::Jsonl(p) => write!(f, "jsonl:{}", p.display()),
            Self::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

impl AuditLocation {
    /// The spill file for events the sink could not take: beside the file for file
    /// locations, `./secure-routes-audit-spill.jsonl` for Postgres.
    ///
    /// ```
    /// use std::path::Path;
    /// use secure_routes_cli::stores::AuditLocation;
    /// let a: AuditLocation = "sqlite:data/audit.db".parse().unwrap();
    /// assert_eq!(a.spill_path(), Path::new("data/audit.spill.jsonl"));
    /// ```
    pub fn spill_path(&self) -> PathBuf {
        match self {
            Self::Sqlite(p) | Self::Jsonl(p) => p.with_extension("spill.jsonl"),
            Self::Postgres(_) => PathBuf::from("secure-routes-audit-spill.jsonl"),
        }
    }
}

/// The stores the demo runs on, opened and migrated; keep it alive while serving (it owns the
/// background sweepers).
pub struct OpenStores {
    /// The rate-limit store.
    pub limits: Arc<dyn RateLimitStore>,
    /// The ban store: the same store as [`limits`](Self::limits) (bans live in the limits
    /// location, so every instance sharing its limits shares its bans).
    pub bans: Arc<dyn BanStore>,
    /// The audit sink.
    pub audit: Arc<dyn AuditSink>,
    sweepers: Vec<secure_routes_postgres::SweeperHandle>,
    /// Background tasks that end with the stores (the Postgres ban sweeper).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for OpenStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenStores")
            .field("limits", &self.limits.name())
            .field("audit", &self.audit.name())
            .finish_non_exhaustive()
    }
}

impl Drop for OpenStores {
    fn drop(&mut self) {
        for s in self.sweepers.drain(..) {
            s.stop();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Opens both locations: connects, migrates Postgres (once per distinct URL), starts sweepers.
///
/// Fails with a message naming the location (password redacted) when a store cannot be
/// reached at start: an instance that cannot reach its shared store at boot is misconfigured,
/// while an outage after start is handled per policy by the pipeline.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes_cli::stores::{self, AuditLocation, LimitsLocation};
/// let dir = tempfile::tempdir().unwrap();
/// let audit = AuditLocation::Jsonl(dir.path().join("audit.jsonl"));
/// let s = stores::open(&LimitsLocation::Memory, &audit).await.unwrap();
/// assert_eq!((s.limits.name(), s.audit.name()), ("memory", "jsonl"));
/// # });
/// ```
pub async fn open(limits: &LimitsLocation, audit: &AuditLocation) -> anyhow::Result<OpenStores> {
    let mut pools = Pools::new(POSTGRES_POOL_SIZE);
    let (limits_store, bans, sweeper) = open_limits(limits, &mut pools, true).await?;
    let audit_sink = open_audit(audit, &mut pools).await?;
    let mut tasks = Vec::new();
    if let LimitsLocation::Postgres(url) = limits {
        tasks.push(spawn_ban_sweeper(
            secure_routes_postgres::PostgresStore::new(pools.get(url).await?),
        ));
    }
    Ok(OpenStores {
        limits: limits_store,
        bans,
        audit: audit_sink,
        sweepers: sweeper.into_iter().collect(),
        tasks,
    })
}

/// Deletes expired ban rows every [`SWEEP_INTERVAL`]: a Postgres `bans` row outlives its ban
/// by the history period and is never read again after it, so without this the table grows by
/// every address that ever struck. (SQLite and Redis expire ban state themselves.) A failed
/// sweep is logged and retried at the next tick; the rows only wait longer.
fn spawn_ban_sweeper(store: secure_routes_postgres::PostgresStore) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            if let Err(e) = store.sweep_bans(now).await {
                tracing::warn!(error = %e, "sweeping expired ban rows failed; retrying at the next interval");
            }
        }
    })
}

/// The store at a limits location, seen as both traits it implements.
type LimitsStores = (
    Arc<dyn RateLimitStore>,
    Arc<dyn BanStore>,
    Option<secure_routes_postgres::SweeperHandle>,
);

fn both<S: RateLimitStore + BanStore>(store: S) -> (Arc<dyn RateLimitStore>, Arc<dyn BanStore>) {
    let store = Arc::new(store);
    (Arc::clone(&store) as Arc<dyn RateLimitStore>, store)
}

/// Opens the store at `location`: one object that keeps both rate limits and bans, so the
/// servers (`demo`, `serve`) and `secure-routes bans` read the same rows. `serving` also
/// prepares Postgres statements and starts its sweeper (a server's needs, not a one-shot
/// command's).
async fn open_limits(
    location: &LimitsLocation,
    pools: &mut Pools,
    serving: bool,
) -> anyhow::Result<LimitsStores> {
    Ok(match location {
        LimitsLocation::Memory => {
            let (l, b) = both(MemoryStore::new());
            (l, b, None)
        }
        LimitsLocation::Sqlite(path) => {
            let (l, b) = both(
                secure_routes_sqlite::SqliteStore::open(path)
                    .with_context(|| format!("opening limits store {location}"))?,
            );
            (l, b, None)
        }
        LimitsLocation::Redis(url) => {
            let (l, b) = both(
                secure_routes_redis::RedisStore::connect(url)
                    .await
                    .with_context(|| format!("connecting to limits store {location}"))?,
            );
            (l, b, None)
        }
        LimitsLocation::Postgres(url) => {
            let pool = pools.get(url).await?;
            let store = secure_routes_postgres::PostgresStore::new(pool);
            let mut sweeper = None;
            if serving {
                // A connection and prepared statements before the first request, not inside
                // its 50 ms store timeout.
                store
                    .warm_up()
                    .await
                    .with_context(|| format!("preparing limits store {location}"))?;
                sweeper = Some(store.spawn_sweeper(SWEEP_INTERVAL)?);
            }
            let (l, b) = both(store);
            (l, b, sweeper)
        }
    })
}

/// Opens the ban store at a shared limits location for `secure-routes bans` (Postgres is
/// migrated first). The same opening as the servers' ([`open`]), with a small Postgres pool.
///
/// # Errors
///
/// For `memory` (bans there belong to one process), a SQLite file that does not exist (a
/// typo must not create an empty store and report "no bans"), and a store that cannot be
/// opened.
pub async fn open_bans(location: &LimitsLocation) -> anyhow::Result<Arc<dyn BanStore>> {
    match location {
        LimitsLocation::Memory => anyhow::bail!(
            "--limits memory keeps bans per process, so there is nothing to read or change from \
             here; pass the shared store the servers use: sqlite:PATH, redis://… or postgres://…"
        ),
        LimitsLocation::Sqlite(path) if !path.exists() => anyhow::bail!(
            "no limits store at {} (--limits {location})",
            path.display()
        ),
        _ => {}
    }
    let (_, bans, _) = open_limits(location, &mut Pools::new(2), false).await?;
    Ok(bans)
}

/// Opens the audit sink at `location` (for a one-shot command: `secure-routes bans` records
/// what an operator did).
///
/// # Errors
///
/// When the store cannot be opened or migrated.
pub async fn open_audit_sink(location: &AuditLocation) -> anyhow::Result<Arc<dyn AuditSink>> {
    open_audit(location, &mut Pools::new(2)).await
}

async fn open_audit(
    audit: &AuditLocation,
    pools: &mut Pools,
) -> anyhow::Result<Arc<dyn AuditSink>> {
    Ok(match audit {
        AuditLocation::Sqlite(path) => Arc::new(
            secure_routes_sqlite::SqliteAuditSink::open(path)
                .with_context(|| format!("opening audit store {audit}"))?,
        ),
        AuditLocation::Jsonl(path) => {
            Arc::new(JsonlSink::open(path).with_context(|| format!("opening audit store {audit}"))?)
        }
        AuditLocation::Postgres(url) => Arc::new(secure_routes_postgres::PostgresAuditSink::new(
            pools.get(url).await?,
        )),
    })
}

/// One migrated pool per Postgres URL, each of `size` connections.
struct Pools {
    size: usize,
    open: Vec<(String, secure_routes_postgres::Pool)>,
}

impl Pools {
    fn new(size: usize) -> Self {
        Self {
            size,
            open: Vec::new(),
        }
    }

    async fn get(&mut self, url: &str) -> anyhow::Result<secure_routes_postgres::Pool> {
        if let Some((_, pool)) = self.open.iter().find(|(u, _)| u == url) {
            return Ok(pool.clone());
        }
        let shown = redact(url);
        let pool = secure_routes_postgres::connect(url, self.size)
            .with_context(|| format!("postgres location {shown}"))?;
        secure_routes_postgres::migrate(&pool)
            .await
            .with_context(|| format!("migrating {shown}"))?;
        self.open.push((url.to_owned(), pool.clone()));
        Ok(pool)
    }
}

/// The read side of an audit location: what `secure-routes audit` and the dashboard read
/// through. SQLite and Postgres answer in SQL ([`SqliteAuditReader`](secure_routes_sqlite::SqliteAuditReader),
/// [`PgAuditReader`](secure_routes_postgres::PgAuditReader)); a JSON-lines file is read whole
/// on each call and answered by the core's reference reader ([`JsonlAuditReader`]).
///
/// A file location must exist (a misspelt path is an error, not an empty log). A Postgres
/// location is not migrated by a reader and is not contacted until the first read; a
/// database never migrated reads as empty. The pool holds up to 4 connections.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery, AuditSink};
/// use secure_routes_cli::stores::{self, AuditLocation};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("audit.jsonl");
/// let sink = secure_routes::audit::sinks::JsonlSink::open(&path).unwrap();
/// sink.write_batch(&[AuditEvent::new(AuditAction::UnauthorizedAccess)]).await.unwrap();
/// let reader = stores::audit_reader(&AuditLocation::Jsonl(path)).unwrap();
/// assert_eq!(reader.events(&AuditQuery::default()).await.unwrap().len(), 1);
/// assert!(stores::audit_reader(&AuditLocation::Jsonl(dir.path().join("none"))).is_err());
/// # });
/// ```
pub fn audit_reader(location: &AuditLocation) -> anyhow::Result<Arc<dyn AuditReader>> {
    Ok(match location {
        AuditLocation::Sqlite(path) => {
            must_exist(path)?;
            Arc::new(
                secure_routes_sqlite::SqliteAuditReader::open(path)
                    .with_context(|| format!("reading {location}"))?,
            )
        }
        AuditLocation::Jsonl(path) => {
            must_exist(path)?;
            Arc::new(JsonlAuditReader::new(path))
        }
        AuditLocation::Postgres(url) => {
            let pool = secure_routes_postgres::connect(url, 4)
                .with_context(|| format!("postgres location {location}"))?;
            Arc::new(secure_routes_postgres::PgAuditReader::new(pool))
        }
    })
}

/// Reads events matching `q` from `location`, newest first (through [`audit_reader`]).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes::audit::AuditQuery;
/// use secure_routes_cli::stores::{self, AuditLocation};
/// let dir = tempfile::tempdir().unwrap();
/// let missing = AuditLocation::Jsonl(dir.path().join("none.jsonl"));
/// let err = stores::read_audit(&missing, &AuditQuery::default()).await.unwrap_err();
/// assert!(err.to_string().contains("no audit log"));
/// # });
/// ```
pub async fn read_audit(
    location: &AuditLocation,
    q: &AuditQuery,
) -> anyhow::Result<Vec<AuditEvent>> {
    audit_reader(location)?
        .events(q)
        .await
        .with_context(|| format!("reading {location}"))
}

fn must_exist(path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.exists(),
        "no audit log at {} (run `secure-routes demo` first)",
        path.display()
    );
    Ok(())
}

/// An [`AuditReader`] over a JSON-lines audit file: each call reads the file (on the blocking
/// pool) and asks [`MemoryAuditReader`] over its events, so it always sees the latest lines
/// and answers exactly as the reference does. The cost is a full read per call, linear in the
/// file's size: JSON lines suit a small log or one shipped elsewhere; a dashboard over a
/// large trail belongs on SQLite or Postgres.
///
/// Lines that do not parse (a torn last line after a crash) are skipped with a warning that
/// counts them, never silently.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes::audit::{AuditQuery, AuditReader};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("audit.jsonl");
/// std::fs::write(&path, "{\"torn\": tr").unwrap();
/// let reader = secure_routes_cli::stores::JsonlAuditReader::new(&path);
/// assert!(reader.events(&AuditQuery::default()).await.unwrap().is_empty());
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct JsonlAuditReader {
    path: Arc<Path>,
}

impl JsonlAuditReader {
    /// A reader of the file at `path` (read on each call; a missing file is an error then).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: Arc::from(path.as_ref()),
        }
    }

    async fn load(&self) -> Result<MemoryAuditReader, AuditError> {
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || load_jsonl(&path))
            .await
            .map_err(|e| AuditError(format!("reading the JSON-lines audit log failed: {e}")))?
            .map(MemoryAuditReader::new)
            .map_err(|e| AuditError(format!("reading {}: {e}", self.path.display())))
    }
}

impl AuditReader for JsonlAuditReader {
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move { self.load().await?.events(q).await })
    }

    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>> {
        Box::pin(async move { self.load().await?.counts(q, bucket).await })
    }

    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>> {
        Box::pin(async move { self.load().await?.top(q, by, n).await })
    }

    fn name(&self) -> &'static str {
        "jsonl"
    }
}

/// Every event of a JSON-lines audit file. Lines that do not parse are skipped and counted
/// in a warning.
fn load_jsonl(path: &Path) -> std::io::Result<Vec<AuditEvent>> {
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut events = Vec::new();
    let mut unreadable = 0u64;
    for line in file.split(b'\n') {
        let line = line?;
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice::<AuditEvent>(&line) {
            Ok(event) => events.push(event),
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!(
            unreadable,
            path = %path.display(),
            "skipped unreadable line(s) in the JSON-lines audit log"
        );
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_location_and_refuses_others() {
        assert_eq!(
            "memory".parse::<LimitsLocation>().unwrap(),
            LimitsLocation::Memory
        );
        assert_eq!(
            "sqlite:./a.db".parse::<LimitsLocation>().unwrap(),
            LimitsLocation::Sqlite("./a.db".into())
        );
        assert_eq!(
            "sqlite:///var/a.db".parse::<AuditLocation>().unwrap(),
            AuditLocation::Sqlite("/var/a.db".into())
        );
        assert!(matches!(
            "postgresql://u@h/d".parse::<LimitsLocation>().unwrap(),
            LimitsLocation::Postgres(_)
        ));
        assert!(matches!(
            "rediss://h".parse::<LimitsLocation>().unwrap(),
            LimitsLocation::Redis(_)
        ));
        for bad in ["", "sqlite:", "jsonl:", "redis", "memory:", "file:/x"] {
            assert!(bad.parse::<AuditLocation>().is_err(), "{bad:?}");
        }
        assert!("jsonl:/x".parse::<LimitsLocation>().is_err());
        assert!("redis://h".parse::<AuditLocation>().is_err());
    }

    #[test]
    fn errors_and_display_never_show_a_password() {
        let err = "mysql://root:topsecret@db/x"
            .parse::<LimitsLocation>()
            .unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        let l: LimitsLocation = "postgres://app:topsecret@db:5432/app?sslmode=disable"
            .parse()
            .unwrap();
        assert_eq!(
            l.to_string(),
            "postgres://app:***@db:5432/app?sslmode=disable"
        );
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("not a url"), "not a url");
        // An '@' in the path is not userinfo.
        assert_eq!(redact("redis://h/a:b@c"), "redis://h/a:b@c");
    }

    #[test]
    fn jsonl_reading_filters_keeps_the_newest_and_skips_torn_lines() {
        use secure_routes::audit::AuditAction;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let t0 = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut text = String::new();
        for i in 0..10i64 {
            let mut e = AuditEvent::new(if i % 2 == 0 {
                AuditAction::RateLimitExceeded
            } else {
                AuditAction::InvalidInput
            })
            .with_request_id(&format!("r{i}"));
            e.timestamp = t0 + time::Duration::seconds(i);
            text.push_str(&serde_json::to_string(&e).unwrap());
            text.push('\n');
        }
        text.push_str("{\"torn\": tr");
        std::fs::write(&path, text).unwrap();
        let reader = JsonlAuditReader::new(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ids = |q: AuditQuery| -> Vec<String> {
            rt.block_on(reader.events(&q))
                .unwrap()
                .into_iter()
                .map(|e| e.request_id)
                .collect()
        };
        assert_eq!(
            ids(AuditQuery {
                action: Some(AuditAction::RateLimitExceeded),
                since: None,
                limit: 3,
                ..AuditQuery::default()
            }),
            ["r8", "r6", "r4"]
        );
        assert_eq!(
            ids(AuditQuery {
                action: None,
                since: Some(t0 + time::Duration::seconds(7)),
                limit: 100,
                ..AuditQuery::default()
            }),
            ["r9", "r8", "r7"]
        );
        assert!(
            ids(AuditQuery {
                limit: 0,
                ..AuditQuery::default()
            })
            .is_empty()
        );
    }
}
