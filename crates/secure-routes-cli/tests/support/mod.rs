//! Harness for tests that run the real `secure-routes` binary: demo processes on ephemeral
//! ports, the services they share, and an isolated Postgres schema per test.
//!
//! Services come from `REDIS_URL` / `DATABASE_URL`. Without them a test prints a `SKIPPED`
//! line that `cargo test` shows (`secure_routes_testkit::services`) and passes, unless
//! `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI), where that is a failure.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const JWT_SECRET: &str = "shared-instances-jwt-secret-0123456789";
pub const CSRF_SECRET: &str = "shared-instances-csrf-secret-0123456789";

/// How long a demo may take to print its banner (start, connect, migrate): a liveness bound
/// so a broken start fails the test instead of hanging it, not a speed goal.
const START_BOUND: Duration = Duration::from_secs(60);

/// `var`'s URL from the environment, or `None` after printing why the test is skipped
/// (a failure under `SECURE_ROUTES_REQUIRE_SERVICES=1`).
pub fn service(var: &str, test: &str) -> Option<String> {
    secure_routes_testkit::services::service_url(var, test)
}

/// A bearer token for `sub`, signed with the demos' secret.
pub fn bearer(sub: &str) -> String {
    let token =
        secure_routes_cli::token::mint(JWT_SECRET.as_bytes(), sub, Duration::from_secs(3600))
            .expect("mint");
    format!("Bearer {token}")
}

/// A subject no earlier run used, so shared stores hold no state for it.
pub fn fresh_subject(tag: &str) -> String {
    format!("{tag}-{:016x}", rand::random::<u64>())
}

/// One `secure-routes demo` process.
pub struct Demo {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its working directory (spill files land here).
    pub dir: PathBuf,
    stderr: PathBuf,
    /// Every stdout line read so far (the banner).
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Demo {
    /// Starts `secure-routes demo --addr 127.0.0.1:0 ARGS` in `dir` with the shared secrets,
    /// and waits for its banner.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Demo {
        Self::start_with_env(dir, name, args, &[])
    }

    /// [`start`](Self::start) with more environment variables.
    pub fn start_with_env(dir: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Demo {
        let mut command = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
        command
            .arg("demo")
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir)
            .env("SECURE_ROUTES_JWT_SECRET", JWT_SECRET)
            .env("CSRF_SECRET", CSRF_SECRET)
            .env("RUST_LOG", "warn")
            .env_remove("SECURE_ROUTES_LIMITS")
            .env_remove("SECURE_ROUTES_AUDIT")
            .env_remove("SUPABASE_JWT_SECRET")
            .envs(env.iter().copied());
        Self::spawn(command, dir, name)
    }

    /// Spawns `command` (a `secure-routes demo` invocation) with its stderr in
    /// `dir/NAME.stderr`, and waits for its banner.
    pub fn spawn(mut command: Command, dir: &Path, name: &str) -> Demo {
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn secure-routes demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let kept = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut k) = kept.lock() {
                    k.push_str(&line);
                    k.push('\n');
                }
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let base = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(base);
                    sent = true;
                }
            }
        });
        let Ok(base) = rx.recv_timeout(START_BOUND) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "demo {name} printed no banner; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        Demo {
            child,
            base,
            dir: dir.to_path_buf(),
            stderr,
            stdout: lines,
        }
    }

    /// What it printed to stdout so far (the banner; its first line is in at once, the rest
    /// follows as the reader thread gets to it).
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops it with SIGTERM (a graceful stop: the audit log is flushed) and returns what it
    /// wrote to stderr, which ends with its audit counters.
    pub fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait for demo");
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        assert!(exit.success(), "demo exited with {exit}; stderr:\n{stderr}");
        stderr
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // A test that panicked leaves no process behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The audit counters a demo prints when it stops.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StopCounts {
    pub recorded: u64,
    pub written: u64,
    pub spilled: u64,
    pub replayed: u64,
    pub lost: u64,
}

/// Parses the `stopped; ... (N events recorded, ...)` line.
pub fn stop_counts(stderr: &str) -> StopCounts {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("stopped;"))
        .unwrap_or_else(|| panic!("no stop line in:\n{stderr}"));
    let num = |what: &str| -> u64 {
        let before = line
            .split(&format!(" {what}"))
            .next()
            .unwrap_or_else(|| panic!("no {what} in {line}"));
        before
            .rsplit(['(', ' '])
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count before {what} in {line}"))
    };
    StopCounts {
        recorded: num("events recorded"),
        written: num("written"),
        spilled: num("spilled"),
        replayed: num("replayed"),
        lost: num("lost"),
    }
}

/// A throw-away schema on `DATABASE_URL` and a URL whose connections use it, so a test's
/// demos share tables no other test sees.
pub struct Schema {
    pub url: String,
    pub name: String,
    admin_url: String,
}

impl Schema {
    pub async fn create(database_url: &str) -> Schema {
        let name = format!("sr_cli_{:016x}", rand::random::<u64>());
        let client = connect(database_url).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        let sep = if database_url.contains('?') { '&' } else { '?' };
        Schema {
            url: format!("{database_url}{sep}options=-c%20search_path%3D{name}"),
            name,
            admin_url: database_url.to_owned(),
        }
    }

    /// The occurrences (sum of `count`: identical refusals fold into one row) matching a
    /// `WHERE` clause over this schema's `audit_logs`.
    pub async fn count_audit(&self, filter: &str) -> i64 {
        let client = connect(&self.url).await;
        client
            .query_one(
                &format!("SELECT coalesce(sum(count), 0)::int8 FROM audit_logs WHERE {filter}"),
                &[],
            )
            .await
            .expect("count audit_logs")
            .get(0)
    }

    pub async fn drop_schema(self) {
        let client = connect(&self.admin_url).await;
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await;
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to postgres");
    tokio::spawn(conn);
    client
}
