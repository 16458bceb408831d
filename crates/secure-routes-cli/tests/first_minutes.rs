//! A new user's first ten minutes, over the real `secure-routes` binary: `demo &` and `token`
//! started together, which secret `token` used, a busy port, `--addr localhost:PORT`, a bad
//! configuration before the banner, logs without colour codes in a pipe, a JSON 400 that
//! names the field, and Postgres migrations without NOTICE lines.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::Demo;

/// Liveness bound on one process start or exit, so a hang fails the test instead of
/// blocking it; not a speed goal.
const BOUND: Duration = Duration::from_secs(60);

/// `secure-routes ARGS` in `dir` with a clean environment for the variables the CLI reads
/// (no secrets: the development secrets file is used), plus `env`.
fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
    c.args(args).current_dir(dir);
    for var in secure_routes_cli::config::ENVIRONMENT {
        c.env_remove(var);
    }
    c.envs(env.iter().copied());
    c
}

/// Waits (bounded) for a process to exit and returns its output.
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => out.expect("wait for secure-routes"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("secure-routes (pid {pid}) did not exit within {BOUND:?}");
        }
    }
}

/// `demo --addr ADDR` started by [`command`] in `dir`, once its banner is out.
fn demo(dir: &Path, addr: &str, env: &[(&str, &str)]) -> Demo {
    Demo::spawn(command(dir, &["demo", "--addr", addr], env), dir, "demo")
}

/// `demo &` and `token` started at the same moment in an empty directory, again and again:
/// neither fails ("File exists"), and the demo accepts the token (both use one secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_and_token_started_together_always_agree() {
    let client = reqwest::Client::new();
    for round in 0..15 {
        let dir = tempfile::tempdir().unwrap();
        let token = command(
            dir.path(),
            &["token", "--sub", "alice"],
            &[("RUST_LOG", "warn")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn token");
        let demo = demo(dir.path(), "127.0.0.1:0", &[("RUST_LOG", "warn")]);
        let token = finish(token);
        let token_err = String::from_utf8_lossy(&token.stderr).into_owned();
        assert!(token.status.success(), "round {round}: token: {token_err}");
        let jwt = String::from_utf8(token.stdout).unwrap().trim().to_owned();
        let file = dir
            .path()
            .canonicalize()
            .unwrap()
            .join("secure-routes.dev-secrets");
        assert!(
            token_err.contains(&format!(
                "secure-routes: signed with the development secret in {}",
                file.display()
            )),
            "round {round}: {token_err}"
        );
        let secrets = std::fs::read_to_string(&file).unwrap();
        for secret in secrets.lines() {
            assert!(!token_err.contains(secret), "token printed a secret");
        }
        let res = client
            .get(format!("{}/api/user/notes", demo.base))
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "round {round}: token refused");
        let stderr = demo.stop();
        assert!(!stderr.contains("error"), "round {round}: {stderr}");
    }
}

#[test]
fn token_names_an_environment_secret_without_printing_it() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "an-environment-secret-of-32-bytes-or-more";
    let out = command(
        dir.path(),
        &["token", "--sub", "alice"],
        &[
            ("SECURE_ROUTES_JWT_SECRET", secret),
            ("CSRF_SECRET", "a-csrf-secret-of-32-bytes-or-more!!"),
        ],
    )
    .output()
    .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secure-routes: signed with SECURE_ROUTES_JWT_SECRET from the environment"),
        "{err}"
    );
    assert!(!err.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret));
    assert!(
        !dir.path().join("secure-routes.dev-secrets").exists(),
        "no development secrets when both are set"
    );
}

#[test]
fn a_busy_port_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let child = command(dir.path(), &["demo", "--addr", &addr], &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(child);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("error: cannot listen on {addr}: ")),
        "{stderr}"
    );
    assert!(!stdout.contains("listening on"), "{stdout}");
}

#[tokio::test]
async fn addr_takes_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo(dir.path(), "localhost:0", &[]);
    let addr: std::net::SocketAddr = demo.base.strip_prefix("http://").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    let res = reqwest::get(format!("{}/health", demo.base)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    demo.stop();
}

/// A configuration the library refuses is reported before the banner: nothing claims to be
/// listening, and the exit code says it failed.
#[test]
fn a_bad_configuration_prints_no_banner() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(
        dir.path(),
        &["demo", "--addr", "127.0.0.1:0"],
        &[("SECURE_ROUTES_TRUSTED_PROXIES", "not-a-cidr")],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("listening on"),
        "banner printed:\n{stdout}"
    );
    assert!(stderr.contains("invalid configuration"), "{stderr}");
    assert!(stderr.contains("not-a-cidr"), "{stderr}");
}

/// stderr here is a file, not a terminal: log lines carry no ANSI escape codes.
#[tokio::test]
async fn logs_have_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the key prefetch fails at once and logs a warning.
    let mut child = command(
        dir.path(),
        &[
            "demo",
            "--addr",
            "127.0.0.1:0",
            "--jwks",
            "http://127.0.0.1:1/jwks.json",
            "--jwt-issuer",
            "https://idp.example/",
        ],
        &[("RUST_LOG", "info")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&seen).contains("signing keys not fetched yet") {
                let _ = tx.send(seen);
                return;
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(BOUND);
    let _ = child.kill();
    let _ = child.wait();
    let seen = String::from_utf8_lossy(&seen.expect("a log line")).into_owned();
    assert!(seen.contains("signing keys not fetched yet"), "{seen}");
    assert!(seen.contains("WARN"), "{seen}");
    assert!(!seen.contains('\x1b'), "colour codes in a pipe: {seen:?}");
}

/// A JSON body that does not fit answers 400 naming the field, never echoing the body.
#[tokio::test]
async fn a_json_400_names_the_missing_field() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "json", &[]);
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, body: &'static str| {
        client
            .request(method, demo.url("/api/user/notes"))
            .header("authorization", support::bearer("alice"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let detail = |res: reqwest::Response| async move {
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let v: Value = res.json().await.unwrap();
        v["detail"].as_str().unwrap().to_owned()
    };
    let d = detail(send(reqwest::Method::POST, "{}").await.unwrap()).await;
    assert!(d.contains("missing field `text`"), "{d}");
    let d = detail(send(reqwest::Method::PUT, r#"{"text":"x"}"#).await.unwrap()).await;
    assert!(d.contains("missing field `id`"), "{d}");
    let d = detail(
        send(
            reqwest::Method::PUT,
            r#"{"id":"SECRET-BODY-VALUE","text":"x"}"#,
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(d.contains("invalid type: a string, expected u64"), "{d}");
    assert!(!d.contains("SECRET-BODY-VALUE"), "body echoed: {d}");
    let d = detail(send(reqwest::Method::POST, r#"{"text":"#).await.unwrap()).await;
    assert!(
        d.starts_with("Expected a JSON object: EOF while parsing"),
        "{d}"
    );
    assert!(!d.contains("line"), "no position noise: {d}");
    demo.stop();
}

/// Starting on Postgres prints no NOTICE lines, the first time or any later time (the
/// migrations' `IF NOT EXISTS` on existing tables made the server send one per start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_print_no_notice() {
    let Some(url) = support::service("DATABASE_URL", "postgres_migrations_print_no_notice") else {
        return;
    };
    let schema = support::Schema::create(&url).await;
    let dir = tempfile::tempdir().unwrap();
    for start in 0..2 {
        let demo = Demo::start_with_env(
            dir.path(),
            &format!("pg{start}"),
            &["--audit", &schema.url, "--limits", &schema.url],
            &[("RUST_LOG", "info,secure_routes::audit=warn")],
        );
        let stderr = demo.stop();
        assert!(!stderr.contains("NOTICE"), "start {start}: {stderr}");
        if start == 0 {
            assert!(stderr.contains("migration applied"), "{stderr}");
        }
    }
    schema.drop_schema().await;
}

/// `secure-routes demo &` then `kill %1` at once: a SIGTERM sent as soon as the banner is out
/// is a graceful stop (the audit log is flushed and the exit code is 0), not a kill.
#[test]
fn a_signal_right_after_the_banner_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo(dir.path(), "127.0.0.1:0", &[]);
    let stderr = demo.stop();
    assert!(stderr.contains("stopped; audit log flushed"), "{stderr}");
}
