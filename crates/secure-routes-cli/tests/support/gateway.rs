//! One `secure-routes serve` process for the gateway's black-box tests: its config file in a
//! temp dir (a free port for `listen`, the audit trail in `audit.db` beside it), the secrets
//! from the environment, readiness by polling `/_secure-routes/health`, signals with `kill`,
//! and the process killed when the value is dropped (a failed test leaves nothing behind).

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub const JWT_SECRET: &str = "gateway-tests-jwt-secret-0123456789abcdef";
pub const CSRF_SECRET: &str = "gateway-tests-csrf-secret-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "gateway-tests-admin-token-0123456789";

/// How long a gateway may take to answer its health check: a liveness bound so a broken start
/// fails the test instead of hanging it, not a speed goal.
const START_BOUND: Duration = Duration::from_secs(60);
/// Attempts at a free port (another process can take the one we picked before the gateway
/// binds it).
const PORT_ATTEMPTS: usize = 5;

/// A running gateway.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    config: PathBuf,
    stderr: PathBuf,
    /// `[stores] limits`, when the test names one (memory otherwise).
    limits: Option<String>,
}

/// A port nobody listens on right now (bound and dropped).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A client that never uses a proxy from the environment and does not pool connections
/// between tests' gateways.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

impl Gateway {
    /// Starts `secure-routes serve` in `dir` with `body` (the config file without `listen`
    /// and `[stores]`, which this adds) and the test secrets plus `env`.
    pub async fn start(dir: &Path, body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_with_limits(dir, body, env, None).await
    }

    /// [`start`](Self::start) with `[stores] limits = LIMITS` (a store other processes can
    /// read, such as `sqlite:PATH` for `secure-routes bans`).
    pub async fn start_with_limits(
        dir: &Path,
        body: &str,
        env: &[(&str, &str)],
        limits: Option<&str>,
    ) -> Gateway {
        let limits = limits.map(str::to_owned);
        let stderr = dir.join("gateway.stderr");
        let config = dir.join("secure-routes.toml");
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            std::fs::write(&config, Self::file(dir, addr, body, limits.as_deref()))
                .expect("write config");
            let mut command = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
            command.arg("serve").arg("--config").arg(&config);
            for var in secure_routes_cli::config::ENVIRONMENT {
                command.env_remove(var);
            }
            command
                .current_dir(dir)
                .env_remove("SECURE_ROUTES_ADMIN_TOKEN")
                .env_remove("SECURE_ROUTES_ASSERTION_KEY")
                .env("SECURE_ROUTES_JWT_SECRET", JWT_SECRET)
                .env("CSRF_SECRET", CSRF_SECRET)
                .env("NO_COLOR", "1")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(dir.join("gateway.stdout")).expect("stdout"))
                .stderr(std::fs::File::create(&stderr).expect("stderr file"));
            let child = command.spawn().expect("spawn secure-routes serve");
            let mut gateway = Gateway {
                child,
                addr,
                dir: dir.to_path_buf(),
                config: config.clone(),
                stderr: stderr.clone(),
                limits: limits.clone(),
            };
            match gateway.wait_ready().await {
                Ok(()) => return gateway,
                Err(e) => last = e,
            }
            if !last.contains("in use") {
                break;
            }
        }
        panic!("the gateway did not start:\n{last}");
    }

    /// The whole config file for `body` listening on `addr`.
    fn file(dir: &Path, addr: SocketAddr, body: &str, limits: Option<&str>) -> String {
        let limits = limits.map_or_else(String::new, |l| format!("limits = \"{l}\"\n"));
        format!(
            "listen = \"{addr}\"\n{body}\n[stores]\naudit = \"sqlite:{}\"\n{limits}",
            dir.join("audit.db").display()
        )
    }

    /// Polls the health endpoint until it answers 200 (bounded); an error carries stderr.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = client();
        let url = self.url("/_secure-routes/health");
        let deadline = tokio::time::Instant::now() + START_BOUND;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited with {status}; stderr:\n{}", self.stderr()));
            }
            if let Ok(res) = http.get(&url).send().await
                && res.status() == 200
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "no health answer within {START_BOUND:?}; stderr:\n{}",
                    self.stderr()
                ));
            }
            // A polling interval, not a timing assumption: readiness is the answer above.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Replaces the config file with `body` (same `listen` and `[stores]`).
    pub fn rewrite(&self, body: &str) {
        std::fs::write(
            &self.config,
            Self::file(&self.dir, self.addr, body, self.limits.as_deref()),
        )
        .expect("rewrite");
    }

    /// Replaces the config file with `text` as it is.
    pub fn rewrite_raw(&self, text: &str) {
        std::fs::write(&self.config, text).expect("rewrite");
    }

    /// Sends `signal` (`HUP`, `TERM`, ...) with `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (at most `bound`) for the process to end.
    pub async fn wait_exit(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (the audit trail is flushed on the way out).
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(30)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "gateway exit {status:?}; stderr:\n{}",
            self.stderr()
        );
    }

    /// `VmRSS` and `VmHWM` (peak RSS) from /proc, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
                * 1024
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The audit rows (after [`stop`](Self::stop): the writer batches while running).
    pub fn audit_rows(&self) -> Vec<AuditRow> {
        let db = rusqlite::Connection::open(self.dir.join("audit.db")).expect("open audit.db");
        let mut stmt = db
            .prepare(
                "SELECT action, outcome, status, path, reason, user_id FROM audit_logs ORDER BY id",
            )
            .expect("select");
        stmt.query_map([], |r| {
            Ok(AuditRow {
                action: r.get(0)?,
                outcome: r.get(1)?,
                status: r.get(2)?,
                path: r.get(3)?,
                reason: r.get(4)?,
                subject: r.get(5)?,
            })
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `audit_logs` row.
#[derive(Clone, Debug)]
pub struct AuditRow {
    pub action: String,
    pub outcome: String,
    pub status: i64,
    pub path: String,
    pub reason: String,
    pub subject: Option<String>,
}
