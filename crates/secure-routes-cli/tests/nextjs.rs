//! Issue 11 part 8: a real Next.js app (`examples/nextjs`) behind `secure-routes serve`, the
//! README's "Protect a Next.js app" steps, asserted.
//!
//! The app is copied under the cargo target directory (`target/tmp/nextjs-example`),
//! installed from the npm registry with `npm ci` (again only when `package-lock.json` changed;
//! npm's own cache, `~/.npm`, serves a reinstall), built with `next build` and started with
//! `next start` on a free port; the gateway runs the example's own
//! `secure-routes.toml` with only `listen`, `upstream` and the audit location changed. Then the
//! seed's walkthrough goes through the gateway: 401 without a token, 200 with one and the app
//! reading `X-Secure-Routes-Subject` after verifying the gateway's assertion, the app's own
//! 401 for a request around the gateway (also with a forged assertion), CSRF 403 and 201 for
//! a cookie session, 413, 429, and the audit trail of those refusals.
//!
//! Without Node.js and npm the test prints one `SKIPPED` line and passes, unless
//! `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI), where that is a failure.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Client, StatusCode};
use secure_routes_testkit::jwks::TestKey;
use secure_routes_testkit::services::{REQUIRE_SERVICES, announce_skip};
use serde_json::{Value, json};

const TEST: &str = "nextjs_app_behind_the_gateway";
const JWT_SECRET: &str = "nextjs-example-jwt-secret-0123456789abcdef";
const CSRF_SECRET: &str = "nextjs-example-csrf-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "nextjs-example-admin-token-0123456789";

/// Liveness bounds, so a hang fails the test instead of blocking it; not speed goals.
const INSTALL_BOUND: Duration = Duration::from_secs(600);
const BUILD_BOUND: Duration = Duration::from_secs(600);
const START_BOUND: Duration = Duration::from_secs(60);
const COMMAND_BOUND: Duration = Duration::from_secs(60);

/// The example app in the repository.
fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/nextjs")
}

/// `node` and `npm` answer `--version`; otherwise the test is skipped (a failure in CI).
fn node_available() -> bool {
    let works = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("node") && works("npm") {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_SERVICES).as_deref() != Ok("1"),
        "{TEST}: node and npm are not installed but {REQUIRE_SERVICES}=1: this test must run"
    );
    announce_skip(TEST, "node and npm are not installed");
    false
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What an earlier run built and installed, kept in the copy: deleting `node_modules/`
/// (360 MB of small files) took longer than installing it.
const KEPT: [&str; 2] = ["node_modules", ".next"];

/// Makes `to` a copy of the app's sources, keeping [`KEPT`] from an earlier run.
fn sync_app(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the app copy");
    for entry in std::fs::read_dir(to).expect("read the app copy") {
        let entry = entry.unwrap();
        if KEPT.iter().any(|k| entry.file_name() == *k) {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(entry.path()).expect("remove a stale directory");
        } else {
            std::fs::remove_file(entry.path()).expect("remove a stale file");
        }
    }
    copy_sources(from, to);
}

fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read examples/nextjs") {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if KEPT.iter().any(|k| name == *k) || name == "secure-routes.db" || name == "jar" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_sources(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy an app file");
        }
    }
}

/// Kills the process group `pid` leads (the process and anything it forked).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Runs `command` to completion within `bound` with its stdout and stderr in `log`, and
/// returns what it wrote there.
fn run(mut command: Command, what: &str, log: &Path, bound: Duration) -> String {
    let out = std::fs::File::create(log).expect("log file");
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(bound) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            kill_group(pid);
            panic!(
                "{what} did not finish within {bound:?}; log:\n{}",
                read(log)
            );
        }
    };
    let output = read(log);
    assert!(status.success(), "{what} failed ({status}); log:\n{output}");
    output
}

fn read(path: &Path) -> String {
    let mut s = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    s
}

/// A long-running process (`next start`, `secure-routes serve`) in its own process group,
/// killed with the group on drop so a failing test leaves nothing behind.
struct Server {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Server {
    fn spawn(mut command: Command, name: &'static str, log: PathBuf) -> Server {
        let out = std::fs::File::create(&log).expect("log file");
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Server { child, name, log }
    }

    /// Waits until `port` accepts connections: a bounded loop of connects, failing at once
    /// if the process exits.
    fn wait_for(&mut self, port: u16) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}); log:\n{}", self.name, read(&self.log));
            }
            assert!(
                Instant::now() < deadline,
                "{} is not listening on {port} after {START_BOUND:?}; log:\n{}",
                self.name,
                read(&self.log)
            );
            // The poll interval, so the loop leaves the CPU to the starting server.
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM (a graceful stop: the gateway flushes its audit log), then a bounded wait.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + START_BOUND;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop within {START_BOUND:?} of SIGTERM; log:\n{}",
                self.name,
                read(&self.log)
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        (status, read(&self.log))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

/// `secure-routes ARGS` with the README's environment: the three secrets and nothing else
/// the CLI reads.
fn secure_routes(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
    c.args(args).current_dir(dir);
    for var in secure_routes_cli::config::ENVIRONMENT {
        c.env_remove(var);
    }
    c.env("SECURE_ROUTES_JWT_SECRET", JWT_SECRET)
        .env("CSRF_SECRET", CSRF_SECRET)
        .env("SECURE_ROUTES_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_COLOR", "1");
    c
}

/// The example's `secure-routes.toml` with `listen`, `upstream` and the audit location of
/// this run: every policy is the committed file's.
fn gateway_config(gateway: u16, app: u16, audit: &Path) -> String {
    let committed = std::fs::read_to_string(example_dir().join("secure-routes.toml"))
        .expect("examples/nextjs/secure-routes.toml");
    let mut config = committed.clone();
    for (from, to) in [
        (
            "listen = \"127.0.0.1:8080\"".to_owned(),
            format!("listen = \"127.0.0.1:{gateway}\""),
        ),
        (
            "upstream = \"http://127.0.0.1:3000\"".to_owned(),
            format!("upstream = \"http://127.0.0.1:{app}\""),
        ),
        (
            "audit = \"sqlite:./secure-routes.db\"".to_owned(),
            format!("audit = \"sqlite:{}\"", audit.display()),
        ),
    ] {
        assert!(config.contains(&from), "the example config lost `{from}`");
        config = config.replacen(&from, &to, 1);
    }
    config
}

/// The `csrf-token` cookie's value from a response's `Set-Cookie` lines.
fn csrf_cookie(res: &reqwest::Response) -> String {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("csrf-token="))
        .and_then(|v| v.split(';').next())
        .expect("a csrf-token cookie")
        .to_owned()
}

async fn json_of(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextjs_app_behind_the_gateway() {
    if !node_available() {
        return;
    }
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nextjs-example");
    let app_dir = work.join("app");
    sync_app(&example_dir(), &app_dir);

    // README: `npm ci`, then `npx next build`. `npm ci` starts by deleting node_modules, so
    // it runs only when this lock file was not the last one installed here (a stamp written
    // after a successful install, inside node_modules).
    let lock = std::fs::read(app_dir.join("package-lock.json")).expect("package-lock.json");
    let stamp = app_dir.join("node_modules/.secure-routes-test-installed-lock");
    if std::fs::read(&stamp).ok().as_deref() != Some(lock.as_slice()) {
        let mut npm = Command::new("npm");
        npm.args(["ci", "--prefer-offline", "--no-audit", "--no-fund"])
            .current_dir(&app_dir);
        run(npm, "npm ci", &work.join("npm-ci.log"), INSTALL_BOUND);
        std::fs::write(&stamp, &lock).expect("write the install stamp");
    }
    let next_bin = app_dir.join("node_modules/next/dist/bin/next");
    let mut build = Command::new("node");
    build
        .arg(&next_bin)
        .arg("build")
        .current_dir(&app_dir)
        .env("NEXT_TELEMETRY_DISABLED", "1");
    run(
        build,
        "next build",
        &work.join("next-build.log"),
        BUILD_BOUND,
    );

    let tmp = tempfile::tempdir().unwrap();
    let (app_port, gateway_port) = (free_port(), free_port());
    let app_origin = format!("http://127.0.0.1:{app_port}");
    let gateway = format!("http://127.0.0.1:{gateway_port}");

    // README: `next start`, told where the gateway is and which audience to expect. `node
    // .../next` rather than `npx next`, so the process we signal is the server itself.
    let mut start = Command::new("node");
    start
        .arg(&next_bin)
        .args(["start", "-H", "127.0.0.1", "-p", &app_port.to_string()])
        .current_dir(&app_dir)
        .env("NEXT_TELEMETRY_DISABLED", "1")
        .env("SECURE_ROUTES_GATEWAY_URL", &gateway)
        .env("APP_ORIGIN", &app_origin);
    let mut next = Server::spawn(start, "next start", tmp.path().join("next.log"));
    next.wait_for(app_port);

    // README: `secure-routes check`, then `secure-routes serve`.
    let audit_db = tmp.path().join("audit.db");
    let config_path = tmp.path().join("secure-routes.toml");
    std::fs::File::create(&config_path)
        .and_then(|mut f| f.write_all(gateway_config(gateway_port, app_port, &audit_db).as_bytes()))
        .unwrap();
    let config_arg = config_path.to_str().unwrap();
    run(
        secure_routes(tmp.path(), &["check", "--config", config_arg]),
        "secure-routes check",
        &tmp.path().join("check.log"),
        COMMAND_BOUND,
    );
    let mut serve = Server::spawn(
        secure_routes(tmp.path(), &["serve", "--config", config_arg]),
        "secure-routes serve",
        tmp.path().join("serve.log"),
    );
    serve.wait_for(gateway_port);

    // README: `secure-routes token --sub alice`.
    let printed = run(
        secure_routes(tmp.path(), &["token", "--sub", "alice"]),
        "secure-routes token",
        &tmp.path().join("token.log"),
        COMMAND_BOUND,
    );
    let token = printed
        .lines()
        .find(|l| l.split('.').count() == 3 && !l.contains(' '))
        .unwrap_or_else(|| panic!("no token printed:\n{printed}"))
        .to_owned();

    let http = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let gw = |path: &str| format!("{gateway}{path}");

    // 1. No token: the gateway's 401; the request never reaches the app.
    let res = http.get(gw("/api/user/notes")).send().await.unwrap();
    assert!(
        res.headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
        "{:?}",
        res.headers()
    );
    let (status, body) = json_of(res).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "Authentication required", "{body}");

    // 2. A bearer token: the app names the subject from X-Secure-Routes-Subject, which its
    // helper checked against the verified assertion; a forged subject header is stripped.
    let (status, body) = json_of(
        http.get(gw("/api/user/notes"))
            .bearer_auth(&token)
            .header("X-Secure-Routes-Subject", "mallory")
            .header("x-secure-routes-roles", "admin")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["subject"], "alice", "{body}");
    assert_eq!(body["verifiedSubject"], "alice", "{body}");
    assert_eq!(body["notes"], json!([]), "{body}");

    // 3. Around the gateway: the app itself refuses, with or without identity headers, and
    // with an assertion signed by another key under the gateway's own key id.
    let (status, body) = json_of(
        http.get(format!("{app_origin}/api/user/notes"))
            .header("X-Secure-Routes-Subject", "alice")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "Gateway assertion required", "{body}");
    let (status, jwks) = json_of(
        http.get(gw("/_secure-routes/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{jwks}");
    let kid = jwks["keys"][0]["kid"].as_str().expect("a kid").to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = TestKey::fresh_ec(&kid).sign(&json!({
        "iss": "secure-routes", "aud": app_origin, "sub": "alice", "roles": [],
        "rid": "forged", "iat": now, "nbf": now, "exp": now + 60,
    }));
    let (status, body) = json_of(
        http.get(format!("{app_origin}/api/user/notes"))
            .header("X-Secure-Routes-Subject", "alice")
            .header("X-Secure-Routes-Assertion", forged)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "Gateway assertion required", "{body}");

    // 4. The page and the gateway's client script: the page keeps its own CSP (the gateway's
    // `default-src 'none'` would stop its scripts), csrf-fetch.js is an ES module.
    let res = http.get(gw("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("Notes behind secure-routes")
    );
    let res = http
        .get(gw("/_secure-routes/csrf-fetch.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .contains("javascript"),
        "{:?}",
        res.headers()
    );
    assert!(res.text().await.unwrap().contains("csrfFetch"));

    // 5. The same token as the session cookie (the page's sign-in) is an ambient credential:
    // a POST needs the CSRF token, 403 without it, 201 with cookie and header.
    let session = format!("sr-session={token}");
    let (status, body) = json_of(
        http.post(gw("/api/user/notes"))
            .header(COOKIE, &session)
            .json(&json!({ "text": "from the page" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "Invalid or missing CSRF token", "{body}");
    let res = http
        .get(gw("/_secure-routes/csrf"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = csrf_cookie(&res);
    let (_, body) = json_of(res).await;
    let csrf = body["csrfToken"].as_str().expect("csrfToken").to_owned();
    assert_eq!(csrf, cookie, "the cookie and the body carry one token");
    let (status, body) = json_of(
        http.post(gw("/api/user/notes"))
            .header(COOKIE, format!("{session}; csrf-token={cookie}"))
            .header("X-CSRF-Token", &csrf)
            .json(&json!({ "text": "from the page" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["subject"], "alice", "{body}");
    assert_eq!(
        body["notes"],
        json!([{ "id": 1, "text": "from the page" }]),
        "{body}"
    );

    // 6. Over the sensitive operation's 100 KiB: 413 from the gateway; under it, the app.
    let (status, body) = json_of(
        http.post(gw("/api/sensitive-operation"))
            .bearer_auth(&token)
            .body(vec![b'x'; 200 * 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "Request body too large", "{body}");
    let (status, body) = json_of(
        http.post(gw("/api/sensitive-operation"))
            .bearer_auth(&token)
            .body(vec![b'x'; 1024])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["receivedBytes"], 1024, "{body}");
    assert_eq!(body["subject"], "alice", "{body}");

    // 7. Public data, 5 per minute: five answers from the app (each verified an assertion
    // carrying the request id the gateway returns), then the gateway's 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let res = http.get(gw("/api/public-data")).send().await.unwrap();
        let request_id = res.headers().get("x-request-id").cloned();
        let (status, body) = json_of(res).await;
        if status == StatusCode::OK {
            assert_eq!(body["data"][0]["name"], "alpha", "{body}");
            assert_eq!(
                request_id.as_ref().map(|v| v.to_str().unwrap()),
                body["requestId"].as_str(),
                "{body}"
            );
        } else {
            assert_eq!(body["error"], "Rate limit exceeded", "{body}");
        }
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);

    // 8. The audit trail of those refusals, oldest first, after a graceful stop.
    let (status, log) = serve.terminate();
    assert!(status.success(), "serve exited with {status}; log:\n{log}");
    let audit = run(
        secure_routes(
            tmp.path(),
            &[
                "audit",
                "--audit",
                &format!("sqlite:{}", audit_db.display()),
                "--json",
            ],
        ),
        "secure-routes audit",
        &tmp.path().join("audit.log"),
        COMMAND_BOUND,
    );
    let rows: Vec<Value> = audit
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let trail: Vec<(String, u64, String, String)> = rows
        .iter()
        .rev()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
                r["path"].as_str().unwrap().to_owned(),
                r["subject"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("unauthorized_access", 401, "/api/user/notes", "-"),
        ("csrf_validation_failed", 403, "/api/user/notes", "alice"),
        ("invalid_input", 413, "/api/sensitive-operation", "alice"),
        ("rate_limit_exceeded", 429, "/api/public-data", "-"),
    ]
    .map(|(a, s, p, u)| (a.to_owned(), s, p.to_owned(), u.to_owned()));
    assert_eq!(trail, expected, "{rows:#?}");

    let (_, next_log) = next.terminate();
    assert!(
        !next_log.contains(&token),
        "the app logged a token:\n{next_log}"
    );
}
