//! Declared failure under a real outage: a demo process on its own Redis or Postgres server,
//! which the test stops mid-load and starts again.
//!
//! What must hold, per DESIGN.md's failure modes:
//! * while the store is down, `POST /api/strict` (STRICT, fail-closed) answers 503 with
//!   `Retry-After`, `GET /api/public-data` (PUBLIC, fail-open) answers 200, never a 429 or a
//!   500, and every answer comes back promptly (the 50 ms store timeout, not a hang);
//! * when the server is back the demo recovers by itself (no restart);
//! * no audit event is lost: each 503 and each fail-open pass is a `store_failure` event, and
//!   after the demo stops the audit store holds exactly as many events as it recorded, the
//!   ones spilled during a Postgres outage included (replayed by the writer).
//!
//! The servers are private: a `redis-server` child and a Postgres cluster made with `initdb` in
//! a temporary directory, on free ports, so stopping them never disturbs the machine's shared
//! services or other tests. They need the `redis-server` and Postgres server binaries, present
//! wherever `REDIS_URL` / `DATABASE_URL` point at a local server (CI); the tests skip, or fail
//! under `SECURE_ROUTES_REQUIRE_SERVICES=1`, like the other service tests.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use support::{Demo, bearer, fresh_subject, service, stop_counts};

/// A liveness bound for one answer while the store is down: the policy's store timeout is
/// 50 ms, so anything near this bound means a request waited on the dead server.
const ANSWER_BOUND: Duration = Duration::from_secs(1);
/// How long a restarted server and the demo's reconnect may take before the test gives up.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Polls `ready` every 50 ms until it holds or `bound` passes (waiting for a server to come
/// up; nothing is measured).
fn wait_until(what: &str, bound: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < bound,
            "{what} did not happen within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Private servers

struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Self {
        let mut r = Self {
            port: free_port(),
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_until("redis-server start", RECOVERY_BOUND, || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
        });
    }

    /// Kills the server (SIGKILL: an abrupt outage, connections reset).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres cluster of the test's own, run as the `postgres` user when the test runs as root
/// (Postgres refuses to run as root).
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("initdb").exists())
            .expect("Postgres server binaries under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let data = dir.path().join("data");
        if as_postgres {
            // The cluster's files must belong to the user that runs it.
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let pg = Self {
            bin,
            data,
            port: free_port(),
            as_postgres,
            _dir: dir,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        pg.restart();
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self._dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn restart(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self._dir.path().display()
        );
        let data = self.data.display().to_string();
        let log = self._dir.path().join("pg.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "start"],
        );
    }

    /// Stops the server at once (`immediate`: connections are cut, as in a crash).
    fn stop(&self) {
        let data = self.data.display().to_string();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    async fn scalar(&self, sql: &str) -> i64 {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the private postgres");
        tokio::spawn(conn);
        client.query_one(sql, &[]).await.expect(sql).get(0)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = cmd
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Load

/// What the client saw.
#[derive(Debug, Default)]
struct Seen {
    strict_503: usize,
    /// PUBLIC answers let through without a store decision (no rate-limit headers).
    public_failed_open: usize,
}

struct Load {
    client: Client,
}

impl Load {
    fn new() -> Self {
        Self {
            client: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    /// `POST /api/strict` as a user of its own (so the quota never refuses it).
    async fn strict(&self, demo: &Demo) -> reqwest::Response {
        self.client
            .post(demo.url("/api/strict"))
            .header("authorization", bearer(&fresh_subject("outage")))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("strict request")
    }

    /// `GET /api/public-data`: its status, and whether it failed open (admitted without a
    /// store decision, so without rate-limit headers).
    async fn public(&self, demo: &Demo) -> (StatusCode, bool) {
        let res = self
            .client
            .get(demo.url("/api/public-data"))
            .send()
            .await
            .expect("public request");
        (
            res.status(),
            !res.headers().contains_key("x-ratelimit-limit"),
        )
    }

    /// While the store is up: everything is admitted. Right after a restart a pooled
    /// connection may still be a dead one, so a PUBLIC pass may fail open once: counted.
    async fn healthy(&self, demo: &Demo, n: usize, seen: &mut Seen) {
        for _ in 0..n {
            assert_eq!(self.strict(demo).await.status(), StatusCode::OK);
            let (status, failed_open) = self.public(demo).await;
            assert_eq!(status, StatusCode::OK);
            seen.public_failed_open += usize::from(failed_open);
        }
    }

    /// While the store is down: STRICT fails closed, PUBLIC fails open, both promptly.
    async fn down(&self, demo: &Demo, n: usize, seen: &mut Seen) {
        for _ in 0..n {
            let start = Instant::now();
            let res = self.strict(demo).await;
            assert!(
                start.elapsed() < ANSWER_BOUND,
                "STRICT hung: {:?}",
                start.elapsed()
            );
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "fail-closed");
            assert!(
                res.headers().contains_key("retry-after"),
                "503 carries Retry-After"
            );
            seen.strict_503 += 1;

            let start = Instant::now();
            let (status, failed_open) = self.public(demo).await;
            assert!(
                start.elapsed() < ANSWER_BOUND,
                "PUBLIC hung: {:?}",
                start.elapsed()
            );
            assert_eq!(status, StatusCode::OK, "fail-open");
            assert!(failed_open, "admitted without a store decision");
            seen.public_failed_open += 1;
        }
    }

    /// After the restart: the demo recovers by itself.
    async fn recovers(&self, demo: &Demo, seen: &mut Seen) {
        let start = Instant::now();
        loop {
            let status = self.strict(demo).await.status();
            if status == StatusCode::OK {
                return;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            seen.strict_503 += 1;
            assert!(
                start.elapsed() < RECOVERY_BOUND,
                "no recovery within {RECOVERY_BOUND:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Background traffic for the whole test, so the server goes down with requests in flight:
/// `tasks` loops of STRICT requests. Returns how many 503s they saw once stopped (anything
/// but 200 or 503 fails the test).
struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
}

impl Background {
    fn start(demo: &Demo, tasks: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|_| {
                let stop = stop.clone();
                let url = demo.url("/api/strict");
                tokio::spawn(async move {
                    let client = Client::new();
                    let mut unavailable = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let status = client
                            .post(&url)
                            .header("authorization", bearer(&fresh_subject("background")))
                            .header("content-type", "application/json")
                            .body("{}")
                            .send()
                            .await
                            .expect("background request")
                            .status();
                        match status {
                            StatusCode::OK => {}
                            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
                            other => panic!("background request got {other}"),
                        }
                    }
                    unavailable
                })
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for t in self.tasks {
            total += t.await.expect("background task");
        }
        total
    }
}

/// A server the test can take down and bring back.
trait Server {
    fn down(&mut self);
    fn up(&mut self);
}

impl Server for PrivateRedis {
    fn down(&mut self) {
        self.kill();
    }
    fn up(&mut self) {
        self.restart();
    }
}

impl Server for PrivatePostgres {
    fn down(&mut self) {
        self.stop();
    }
    fn up(&mut self) {
        self.restart();
    }
}

/// The common script: healthy traffic, the server goes down with background requests in
/// flight, answers per policy while down, `before_restart`, the server comes back, recovery,
/// healthy traffic again.
async fn through_an_outage(
    demo: &Demo,
    server: &mut impl Server,
    before_restart: impl FnOnce(),
) -> Seen {
    let load = Load::new();
    let mut seen = Seen::default();
    let background = Background::start(demo, 2);
    load.healthy(demo, 5, &mut seen).await;
    assert_eq!(
        seen.public_failed_open, 0,
        "nothing fails open while the store is up"
    );
    server.down();
    load.down(demo, 10, &mut seen).await;
    before_restart();
    server.up();
    load.recovers(demo, &mut seen).await;
    load.healthy(demo, 5, &mut seen).await;
    seen.strict_503 += background.stop().await;
    seen
}

fn sqlite_count(db: &Path, filter: &str) -> i64 {
    let conn = rusqlite_open(db);
    conn.query_row(
        // Occurrences, not rows: identical refusals fold into one row with a count.
        &format!("SELECT coalesce(sum(count), 0) FROM audit_logs WHERE {filter}"),
        [],
        |r| r.get(0),
    )
    .expect("count")
}

fn rusqlite_open(db: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open audit db")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_answered_per_policy_and_recovered_from() {
    if service("REDIS_URL", "redis outage").is_none() {
        return;
    }
    let mut redis = PrivateRedis::start();
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(
        dir.path(),
        "redis-outage",
        // A store call slower than the 50 ms default on a loaded CI machine would be a
        // fail-closed 503 while the store is up. While it is down the timeout is what answers,
        // so it stays well inside ANSWER_BOUND.
        &[
            "--limits",
            &redis.url(),
            "--audit",
            "sqlite:audit.db",
            "--store-timeout",
            "250ms",
        ],
    );
    let seen = through_an_outage(&demo, &mut redis, || {}).await;

    let counts = stop_counts(&demo.stop());
    let db = dir.path().join("audit.db");
    assert_eq!(counts.lost, 0);
    let denied = sqlite_count(&db, "action = 'store_failure' AND outcome = 'denied'");
    // Requests let through (they carry a method), apart from the ban snapshot's own
    // store_failure: one per outage, with no request (bans are on by default).
    let allowed = sqlite_count(
        &db,
        "action = 'store_failure' AND outcome = 'allowed' AND method <> ''",
    );
    let ban_sync = sqlite_count(
        &db,
        "action = 'store_failure' AND outcome = 'allowed' AND method = ''",
    );
    assert_eq!(denied as usize, seen.strict_503, "{seen:?}");
    assert_eq!(allowed as usize, seen.public_failed_open, "{seen:?}");
    // At most one: a sync whose store call hangs until the server is back sees no failure.
    assert!(
        ban_sync <= 1,
        "at most one ban-snapshot store_failure per outage: {ban_sync}"
    );
    assert_eq!(
        sqlite_count(&db, "1 = 1") as u64,
        counts.recorded,
        "{counts:?}"
    );
    assert_eq!(
        sqlite_count(&db, "status = 429"),
        0,
        "a store error is never a 429"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_loses_no_audit_event_and_is_recovered_from() {
    if service("DATABASE_URL", "postgres outage").is_none() {
        return;
    }
    let mut pg = PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url();
    let demo = Demo::start(
        dir.path(),
        "postgres-outage",
        // As for Redis: the healthy phases must not time out on a loaded machine.
        &[
            "--limits",
            &url,
            "--audit",
            &url,
            "--store-timeout",
            "250ms",
        ],
    );
    let spill = dir.path().join("secure-routes-audit-spill.jsonl");
    // Keep the server down until the writer has given up on a batch and spilled it, so the
    // replay path is always exercised (retries take a few hundred milliseconds).
    let seen = through_an_outage(&demo, &mut pg, || {
        wait_until("an audit spill", RECOVERY_BOUND, || spill.exists());
    })
    .await;

    let counts = stop_counts(&demo.stop());
    assert_eq!(counts.lost, 0, "{counts:?}");
    assert!(
        counts.spilled > 0,
        "the outage made the writer spill: {counts:?}"
    );
    assert_eq!(
        counts.replayed, counts.spilled,
        "every spilled event was replayed by the writer: {counts:?}"
    );
    assert!(!spill.exists(), "nothing left in the spill file");
    let stored = pg
        .scalar("SELECT coalesce(sum(count), 0)::int8 FROM audit_logs")
        .await;
    assert_eq!(stored as u64, counts.recorded, "sent == stored: {counts:?}");
    let denied = pg
        .scalar(
            "SELECT coalesce(sum(count), 0)::int8 FROM audit_logs WHERE action = 'store_failure' AND outcome = 'denied'",
        )
        .await;
    // As for Redis: the ban snapshot's own store_failure (no request, one per outage) apart.
    let allowed = pg
        .scalar("SELECT coalesce(sum(count), 0)::int8 FROM audit_logs WHERE action = 'store_failure' AND outcome = 'allowed' AND method <> ''")
        .await;
    let ban_sync = pg
        .scalar("SELECT coalesce(sum(count), 0)::int8 FROM audit_logs WHERE action = 'store_failure' AND outcome = 'allowed' AND method = ''")
        .await;
    assert_eq!(denied as usize, seen.strict_503, "{seen:?}");
    assert_eq!(allowed as usize, seen.public_failed_open, "{seen:?}");
    // At most one: a sync whose store call hangs until the server is back sees no failure.
    assert!(
        ban_sync <= 1,
        "at most one ban-snapshot store_failure per outage: {ban_sync}"
    );
    assert_eq!(
        pg.scalar("SELECT coalesce(sum(count), 0)::int8 FROM audit_logs WHERE status = 429")
            .await,
        0
    );
}
