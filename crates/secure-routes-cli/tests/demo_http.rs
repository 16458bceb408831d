//! The demo over real HTTP on loopback: the README's walkthrough, asserted.
//!
//! Each test starts `demo::run` on an ephemeral port with a temporary SQLite audit log, drives
//! it with reqwest, stops it through its shutdown future and reads the flushed audit log.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use secure_routes_cli::demo::DemoOptions;
use secure_routes_cli::stores::{self, AuditLocation, LimitsLocation};
use secure_routes_cli::{config::Config, demo, token};
use serde_json::Value;
use tokio::sync::oneshot;

const JWT_SECRET: &[u8] = b"test-jwt-secret-test-jwt-secret-0123";

struct Demo {
    base: String,
    audit: AuditLocation,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Demo {
    async fn start(config: Config) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let options = DemoOptions {
            limits: LimitsLocation::Memory,
            audit: AuditLocation::Sqlite(dir.path().join("audit.db")),
            ..DemoOptions::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let stores = stores::open(&options.limits, &options.audit).await.unwrap();
        let audit = options.audit.clone();
        let task = tokio::spawn(async move {
            demo::run(listener, &config, &options, stores, async {
                let _ = rx.await;
            })
            .await
            .map(|_stats| ())
        });
        Demo {
            base: format!("http://{addr}"),
            audit,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server (flushing the audit log) and returns where the log is.
    async fn stop(mut self) -> (AuditLocation, tempfile::TempDir) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
        (self.audit, self._dir)
    }
}

fn config() -> Config {
    Config {
        jwt_secret: JWT_SECRET.to_vec(),
        csrf_secret: b"test-csrf-secret-test-csrf-secret-01".to_vec(),
        trusted_proxies: vec![],
        allowed_origins: vec!["https://app.example".into()],
        client_ip_header: Default::default(),
        production: false,
    }
}

fn bearer(sub: &str) -> String {
    format!(
        "Bearer {}",
        token::mint(JWT_SECRET, sub, Duration::from_secs(3600)).unwrap()
    )
}

fn client() -> Client {
    Client::builder().build().unwrap()
}

async fn problem(res: reqwest::Response) -> Value {
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "rejections are RFC 9457 problems"
    );
    res.json().await.unwrap()
}

#[tokio::test]
async fn walkthrough_public_auth_csrf_limits_and_audit() {
    let d = Demo::start(config()).await;
    let c = client();

    // Health and public data.
    let res = c.get(d.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = c.get(d.url("/api/public-data")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-limit"], "60");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "59");
    assert_eq!(res.headers()["ratelimit-policy"], "\"public\";q=60;w=60");
    assert_eq!(res.headers()["x-xss-protection"], "0");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 3);

    // 405 with Allow (RFC 9110 §15.5.6), naming exactly what the route accepts (in any order).
    // (axum's method router also adds an Allow to a 405 that has none, from the route's
    // methods; the library's own, from the policy, is pinned in-process in tests/pipeline.rs
    // on a route that serves a method its policy refuses.)
    let res = c.delete(d.url("/api/public-data")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = res
        .headers()
        .get("allow")
        .expect("a 405 carries Allow")
        .to_str()
        .unwrap();
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["GET", "HEAD", "POST"], "Allow: {allow}");
    assert_eq!(problem(res).await["error"], "Method not allowed");

    // Notes need authentication.
    let res = c.get(d.url("/api/user/notes")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(problem(res).await["error"], "Authentication required");

    // Bearer: no CSRF token needed.
    let alice = bearer("alice");
    let res = c
        .post(d.url("/api/user/notes"))
        .header("authorization", &alice)
        .json(&serde_json::json!({"text": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["cache-control"], "no-store");

    // Cookie session: ambient, so the CSRF token is required.
    let session = format!("sr-session={}", &alice["Bearer ".len()..]);
    let res = c
        .post(d.url("/api/user/notes"))
        .header("cookie", &session)
        .json(&serde_json::json!({"text": "second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(problem(res).await["error"], "Invalid or missing CSRF token");

    let res = c
        .get(d.url("/api/csrf"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let set_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("csrf-token="));
    assert!(!set_cookie.to_ascii_lowercase().contains("httponly"));
    let csrf = res.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with(&format!("csrf-token={csrf};")));
    let res = c
        .post(d.url("/api/user/notes"))
        .header("cookie", format!("{session}; csrf-token={csrf}"))
        .header("x-csrf-token", &csrf)
        .json(&serde_json::json!({"text": "second"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);

    // Bob cannot use Alice's CSRF token with his session.
    let bob_session = format!("sr-session={}", &bearer("bob")["Bearer ".len()..]);
    let res = c
        .post(d.url("/api/user/notes"))
        .header("cookie", format!("{bob_session}; csrf-token={csrf}"))
        .header("x-csrf-token", &csrf)
        .json(&serde_json::json!({"text": "forged"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Alice's notes, per user.
    let res = c
        .get(d.url("/api/user/notes"))
        .header("authorization", &alice)
        .send()
        .await
        .unwrap();
    let notes: Value = res.json().await.unwrap();
    let texts: Vec<_> = notes["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["first", "second"]);

    // 413, declared and chunked.
    let res = c
        .post(d.url("/api/strict"))
        .header("authorization", &alice)
        .body(vec![b'x'; 600 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem(res).await["error"], "Request body too large");
    let chunks = futures_util::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'y'; 64 * 1024]))),
    );
    let res = c
        .post(d.url("/api/strict"))
        .header("authorization", &alice)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 429 on STRICT: 10 per minute; the two 413s above counted.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let res = c
            .post(d.url("/api/strict"))
            .header("authorization", &alice)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry));
            let body = problem(res).await;
            assert_eq!(body["error"], "Rate limit exceeded");
            assert_eq!(body["retryAfter"], retry);
            assert!(body["resetAt"].as_str().unwrap().ends_with('Z'));
        }
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        2,
        "{statuses:?}"
    );

    // Cross-site browser POST is refused by Fetch Metadata even with a valid bearer token.
    let res = c
        .post(d.url("/api/sensitive-operation"))
        .header("cookie", format!("{session}; csrf-token={csrf}"))
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "cross-site")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Stop: the audit log is flushed and lists what happened, newest first.
    let (db, _dir) = d.stop().await;
    let all = secure_routes_cli::audit_cmd::list(&db, None, None, 100, true)
        .await
        .unwrap();
    let events: Vec<Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "unauthorized_access",
        "csrf_validation_failed",
        "invalid_input",
        "rate_limit_exceeded",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    assert_eq!(
        actions
            .iter()
            .filter(|&&a| a == "rate_limit_exceeded")
            .count(),
        2
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["timestamp"].as_str() >= w[1]["timestamp"].as_str()),
        "newest first"
    );
    assert!(
        !all.contains(&alice["Bearer ".len()..]),
        "no token in the audit log"
    );
    assert!(!all.contains(&csrf), "no CSRF token in the audit log");
    let only =
        secure_routes_cli::audit_cmd::list(&db, Some("rate_limit_exceeded"), None, 100, true)
            .await
            .unwrap();
    assert_eq!(only.lines().count(), 2);
    let table =
        secure_routes_cli::audit_cmd::list(&db, None, Some(Duration::from_secs(600)), 3, false)
            .await
            .unwrap();
    assert_eq!(table.lines().count(), 4, "header and three rows:\n{table}");
}

#[tokio::test]
async fn spoofed_forwarding_headers_are_ignored_from_untrusted_peers() {
    let d = Demo::start(config()).await;
    let c = client();
    // 60 per minute per client address: rotating X-Forwarded-For must not mint new buckets.
    let mut last = None;
    for i in 0..61 {
        let res = c
            .get(d.url(&format!("/api/public-data?cache-buster={i}")))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .header("x-real-ip", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        last = Some(res.status());
    }
    assert_eq!(last, Some(StatusCode::TOO_MANY_REQUESTS));
    d.stop().await;
}

#[tokio::test]
async fn cors_preflight_and_vary() {
    let d = Demo::start(config()).await;
    let c = client();
    let res = c
        .request(reqwest::Method::OPTIONS, d.url("/api/user/notes"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "x-csrf-token, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    let res = c
        .get(d.url("/api/public-data"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    let vary: Vec<_> = res
        .headers()
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(vary.iter().any(|v| v.contains("origin")), "{vary:?}");
    d.stop().await;
}
