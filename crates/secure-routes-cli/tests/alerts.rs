//! Alerts from outside (issue 12 parts 2 and 6): the real binary over loopback, with the
//! recording upstream of tests/support/upstream.rs as the webhook receiver.
//!
//! * `demo --alert-webhook`: a loop of bad tokens from one client sends exactly one signed
//!   POST (verified as a receiver would, with its own HMAC and a constant-time compare), with
//!   a Slack `text`, and an `alert_triggered` row that `secure-routes audit --json` shows;
//!   a receiver answering 500 first gets the same alert again (retried), once accepted.
//! * `demo` refuses alert flags without the signing secret, and reads `--alerts FILE` with
//!   the gateway's parser.
//! * `serve`: the Prometheus text at `/_secure-routes/metrics` counts the alert fired, the
//!   delivery and the alerts held back by the cooldown, labelled by rule; SIGHUP swaps the
//!   `[[alerts]]` rules; `routes` lists the rules without the webhook's path.
//!
//! Waiting is bounded (a liveness bound, not a speed goal); nothing sleeps for timing.

#[path = "support/gateway.rs"]
mod gateway;
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use gateway::{ADMIN_TOKEN, Gateway, client};
use support::Demo;
use upstream::{Behaviour, Recorded, Upstream};

/// A liveness bound for something that must happen (a delivery, a reload).
const BOUND: Duration = Duration::from_secs(30);
const SECRET: &str = "alerts-tests-webhook-secret-0123456789abcdef";
/// A receiver's tolerance for the signature's timestamp (replays older than this fail).
const TOLERANCE_SECS: u64 = 300;

/// Verifies `X-Secure-Routes-Signature` as a receiver in any language would, without this
/// project's code: `t=<unix>,v1=<hex>`, the timestamp within the tolerance, and
/// HMAC-SHA256(secret, t + "." + raw body) compared in constant time (aws-lc's
/// `hmac::verify`), so a forged or altered alert is refused.
fn receiver_accepts(secret: &[u8], header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => tags.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > TOLERANCE_SECS {
        return false;
    }
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(body);
    tags.iter().any(|hex_tag| {
        decode_hex(hex_tag).is_some_and(|tag| aws_lc_rs::hmac::verify(&key, &message, &tag).is_ok())
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks one webhook POST: signed with `SECRET` (and not with another), a JSON body with a
/// Slack `text` naming the rule. Returns the body.
fn check_signed(hook: &Recorded, rule: &str) -> Value {
    assert_eq!(hook.method, http::Method::POST);
    assert_eq!(hook.header("content-type"), Some("application/json"));
    let signature = hook.header("x-secure-routes-signature").expect("signed");
    assert!(
        receiver_accepts(SECRET.as_bytes(), signature, &hook.body),
        "the signature verifies: {signature}"
    );
    assert!(
        !receiver_accepts(
            b"another-secret-0123456789abcdef-xyz",
            signature,
            &hook.body
        ),
        "and only with the secret"
    );
    let mut altered = hook.body.clone();
    altered.push(b' ');
    assert!(
        !receiver_accepts(SECRET.as_bytes(), signature, &altered),
        "an altered body is refused"
    );
    let body: Value = serde_json::from_slice(&hook.body).expect("a JSON body");
    let text = body["text"].as_str().expect("a Slack-compatible text");
    assert!(
        text.starts_with(&format!(
            "secure-routes: rule {rule} fired for ip 127.0.0.1"
        )),
        "{text}"
    );
    assert_eq!(body["rule"], rule);
    body
}

/// `count` requests with a token that is not one: each a 401 `unauthorized_access`.
async fn bad_tokens(url: &str, count: usize) {
    let http = client();
    for _ in 0..count {
        let res = http
            .get(url)
            .header("authorization", "Bearer not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
}

/// `secure-routes audit --json` on the SQLite file `db` in `dir`: one object per row.
fn audit_json(dir: &Path, db: &str) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args(["audit", "--audit", db, "--json", "--limit", "1000"])
        .current_dir(dir)
        .env_remove("SECURE_ROUTES_AUDIT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs the demo with the default rules against `receiver`, sends six bad tokens (the rule
/// counts five), stops it (queued webhooks drain on the way out) and returns the POSTs the
/// receiver got, with the audit rows.
async fn demo_flood(receiver: &Upstream) -> (Vec<Recorded>, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let hook = format!("{}/hook/T0/SECRET-PATH", receiver.origin());
    let demo = Demo::start_with_env(
        dir.path(),
        "alerts",
        &["--audit", "sqlite:audit.db", "--alert-webhook", &hook],
        &[("SECURE_ROUTES_WEBHOOK_SECRET", SECRET)],
    );
    bad_tokens(&demo.url("/api/user/notes"), 6).await;
    let accepted = |r: &Recorded| r.path().starts_with("/hook/");
    receiver
        .wait_for(BOUND, accepted)
        .await
        .expect("the webhook was called");
    let stderr = demo.stop();
    assert!(
        !stderr.contains("SECRET-PATH") && !stderr.contains(SECRET),
        "neither the webhook's path nor the secret is logged:\n{stderr}"
    );
    let hooks = receiver
        .records()
        .into_iter()
        .filter(|r| accepted(r))
        .collect();
    (hooks, audit_json(dir.path(), "sqlite:audit.db"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_alert_webhook_sends_one_signed_alert_for_a_loop_of_bad_tokens() {
    let receiver = Upstream::start().await;
    let (hooks, rows) = demo_flood(&receiver).await;
    // Stopped: the queue is drained, nothing more is coming.
    assert_eq!(hooks.len(), 1, "one attack, one alert: {hooks:?}");
    let body = check_signed(&hooks[0], "unauthorized-access");
    assert_eq!(body["action"], "unauthorized_access");
    assert_eq!(body["count"], 5);
    let alerts: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "alert_triggered")
        .collect();
    assert_eq!(alerts.len(), 1, "{rows:?}");
    assert_eq!(alerts[0]["reason"], "unauthorized-access");
    assert_eq!(alerts[0]["client_ip"], "127.0.0.1");
    assert_eq!(
        alerts[0]["id"], body["id"],
        "the webhook names its audit row"
    );
    let refused: u64 = rows
        .iter()
        .filter(|r| r["action"] == "unauthorized_access")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(refused, 6, "every refusal is in the trail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_alert_webhook_answering_500_first_is_retried_and_delivered_once() {
    let receiver = Upstream::start().await;
    receiver.on("/hook/", Behaviour::FailFirst { status: 500 });
    let (hooks, rows) = demo_flood(&receiver).await;
    assert_eq!(hooks.len(), 2, "the 500, then the retry: {hooks:?}");
    let first = check_signed(&hooks[0], "unauthorized-access");
    let retry = check_signed(&hooks[1], "unauthorized-access");
    assert_eq!(first, retry, "the same alert (same id) again, re-signed");
    assert_eq!(
        rows.iter()
            .filter(|r| r["action"] == "alert_triggered")
            .count(),
        1,
        "one alert, however many attempts"
    );
}

#[test]
fn demo_alert_flags_need_the_secret_and_share_the_gateways_parser() {
    let dir = tempfile::tempdir().unwrap();
    let demo = |args: &[&str], secret: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
        c.arg("demo")
            .args(["--addr", "127.0.0.1:0", "--audit", "sqlite:audit.db"])
            .args(args)
            .current_dir(dir.path())
            .env("SECURE_ROUTES_JWT_SECRET", support::JWT_SECRET)
            .env("CSRF_SECRET", support::CSRF_SECRET)
            .env_remove("SECURE_ROUTES_WEBHOOK_SECRET")
            .env_remove("SECURE_ROUTES_LIMITS")
            .env_remove("SECURE_ROUTES_AUDIT");
        if let Some(s) = secret {
            c.env("SECURE_ROUTES_WEBHOOK_SECRET", s);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = demo(&["--alert-webhook", "http://127.0.0.1:9/hook"], None);
    assert!(!ok);
    assert!(
        err.contains("--alert-webhook needs SECURE_ROUTES_WEBHOOK_SECRET"),
        "{err}"
    );
    let (ok, err) = demo(
        &["--alert-webhook", "http://127.0.0.1:9/hook"],
        Some("short"),
    );
    assert!(!ok);
    assert!(err.contains("at least 32 bytes"), "{err}");
    let file = dir.path().join("alerts.toml");
    std::fs::write(
        &file,
        "[[alerts]]\nname = \"a\"\naction = \"unauthorized_access\"\ncount = 5\nwithin = \"1y\"\nper = \"ip\"\nwebhook = \"http://127.0.0.1:9/hook\"\n",
    )
    .unwrap();
    let (ok, err) = demo(&["--alerts", file.to_str().unwrap()], Some(SECRET));
    assert!(!ok);
    assert!(err.contains("alerts[0].within (line 5)"), "{err}");
    let (ok, err) = demo(
        &[
            "--alerts",
            file.to_str().unwrap(),
            "--alert-webhook",
            "http://127.0.0.1:9/hook",
        ],
        Some(SECRET),
    );
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_alerts_file_rules_are_listed_in_the_banner_and_fire() {
    let receiver = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.toml");
    std::fs::write(
        &file,
        format!(
            "[[alerts]]\nname = \"guessing\"\naction = \"unauthorized_access\"\ncount = 2\nwithin = \"1m\"\nper = \"ip\"\nwebhook = \"{}/hook/x?token=QUERY-SECRET\"\ncooldown = \"5m\"\n",
            receiver.origin()
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
    command
        .arg("demo")
        .args([
            "--addr",
            "127.0.0.1:0",
            "--audit",
            "sqlite:audit.db",
            "--alerts",
        ])
        .arg(&file)
        .current_dir(dir.path())
        .env("SECURE_ROUTES_JWT_SECRET", support::JWT_SECRET)
        .env("CSRF_SECRET", support::CSRF_SECRET)
        .env("SECURE_ROUTES_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .env_remove("SECURE_ROUTES_LIMITS")
        .env_remove("SECURE_ROUTES_AUDIT");
    let demo = Demo::spawn(command, dir.path(), "file");
    bad_tokens(&demo.url("/api/user/notes"), 2).await;
    let hook = receiver
        .wait_for(BOUND, |r| r.path() == "/hook/x")
        .await
        .expect("the rule from the file fired");
    check_signed(&hook, "guessing");
    // The banner (printed whole before the first request was served) lists the rule, its
    // webhook by scheme, host and port only.
    let banner = demo.stdout();
    let listed = format!(
        "  guessing action=unauthorized_access outcome=any count=2 within=60s per=ip cooldown=300s webhook=http://{}\n",
        receiver.addr
    );
    assert!(banner.contains(&listed), "{banner}");
    assert!(!banner.contains("QUERY-SECRET"), "{banner}");
    demo.stop();
}

/// The gateway config with one alert rule (`count` bad tokens per IP within a minute).
fn gateway_config(receiver: &Upstream, count: u32) -> String {
    format!(
        r#"upstream = "{origin}"
[identity]
jwt = true

[[routes]]
path = "/api/user/{{*rest}}"
preset = "authenticated"

[[alerts]]
name = "auth-failures"
action = "unauthorized_access"
count = {count}
within = "1m"
per = "ip"
webhook = "{origin}/hook/SECRET-PATH"
cooldown = "10m"
"#,
        origin = receiver.origin()
    )
}

/// The Prometheus text from the admin endpoint.
async fn metrics(gw: &Gateway) -> String {
    let res = client()
        .get(gw.url("/_secure-routes/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_metrics_count_alerts_fired_delivered_and_suppressed_by_rule() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Upstream::start().await;
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_config(&receiver, 3),
        &[
            ("SECURE_ROUTES_WEBHOOK_SECRET", SECRET),
            ("SECURE_ROUTES_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    // Three fire the rule; three more, in the cooldown, are an alert held back.
    bad_tokens(&gw.url("/api/user/me"), 6).await;
    receiver
        .wait_for(BOUND, |r| r.path().starts_with("/hook/"))
        .await
        .expect("the webhook was called");
    // The delivery is counted once the receiver's answer is read: poll for it (bounded).
    let deadline = tokio::time::Instant::now() + BOUND;
    let text = loop {
        let text = metrics(&gw).await;
        if text.contains("secure_routes_webhook_deliveries_total{rule=\"auth-failures\"} 1") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery counted:\n{text}"
        );
        // A polling interval, not a timing assumption: the condition is the metric above.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in [
        "secure_routes_alerts_fired_total{rule=\"auth-failures\"} 1",
        "secure_routes_alerts_suppressed_total{rule=\"auth-failures\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(
        !text.contains("secure_routes_webhook_failures_total{rule=")
            && !text.contains("secure_routes_alerts_dropped_total{rule="),
        "nothing failed or dropped:\n{text}"
    );
    assert!(!text.contains("SECRET-PATH") && !text.contains("127.0.0.1\""));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_alert_rules_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Upstream::start().await;
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_config(&receiver, 100),
        &[("SECURE_ROUTES_WEBHOOK_SECRET", SECRET)],
    )
    .await;
    bad_tokens(&gw.url("/api/user/me"), 2).await;
    // Lowered to 3 (a changed count starts the rule's counts afresh): 3 more fire it.
    gw.rewrite(&gateway_config(&receiver, 3));
    gw.signal("HUP");
    let deadline = tokio::time::Instant::now() + BOUND;
    while !gw.stderr().contains("configuration reloaded") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload:\n{}",
            gw.stderr()
        );
        // A polling interval; the condition is the log line.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bad_tokens(&gw.url("/api/user/me"), 2).await;
    assert!(
        receiver.records_for("/hook/SECRET-PATH").is_empty(),
        "two since the reload: below the new count"
    );
    bad_tokens(&gw.url("/api/user/me"), 1).await;
    let hook = receiver
        .wait_for(BOUND, |r| r.path() == "/hook/SECRET-PATH")
        .await
        .expect("the reloaded rule fired");
    check_signed(&hook, "auth-failures");
    gw.stop().await;
    assert_eq!(receiver.records_for("/hook/SECRET-PATH").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_reload_adding_alerts_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Upstream::start().await;
    let plain = format!(
        "upstream = \"{}\"\n[identity]\njwt = true\n[[routes]]\npath = \"/api/user/{{*rest}}\"\npreset = \"authenticated\"\n",
        receiver.origin()
    );
    let mut gw = Gateway::start(dir.path(), &plain, &[]).await;
    gw.rewrite(&gateway_config(&receiver, 1));
    gw.signal("HUP");
    let deadline = tokio::time::Instant::now() + BOUND;
    while !gw.stderr().contains("reload refused") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gw.stderr().contains("SECURE_ROUTES_WEBHOOK_SECRET"),
        "{}",
        gw.stderr()
    );
    gw.stop().await;
}

#[test]
fn routes_lists_alert_rules_with_the_webhook_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secure-routes.toml");
    std::fs::write(
        &path,
        "upstream = \"http://127.0.0.1:3000\"\n[[routes]]\npath = \"/a\"\n\
         [[alerts]]\nname = \"csrf\"\naction = \"csrf_validation_failed\"\noutcome = \"denied\"\ncount = 20\nwithin = \"5m\"\nper = \"route\"\n\
         webhook = \"https://hooks.slack.com/services/T0/B0/SLACK-SECRET\"\ncooldown = \"1h\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args(["routes", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "alerts:\n  csrf action=csrf_validation_failed outcome=denied count=20 within=300s per=route cooldown=3600s webhook=https://hooks.slack.com\n"
        ),
        "{text}"
    );
    assert!(!text.contains("SLACK-SECRET"), "{text}");
}
