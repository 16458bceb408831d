//! One test per row of DESIGN.md's "What the seed got wrong" table that concerns the core
//! crate: each test is named after the seed's flaw and proves, through the whole pipeline
//! (axum router + `SecurityLayer`, in process), that this crate does not repeat it.
//!
//! Time is a `FakeClock` (and tokio's paused clock for the audit writer's retries); nothing
//! sleeps.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Extension;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{
    CountingStore, FailingSink, FailingStore, Harness, harness, harness_with_sink, req, spill_path,
    with_action,
};
use futures_util::future::join_all;
use http::{HeaderMap, Method, header};
use secure_routes::audit::{AuditAction, AuditEvent, Outcome};
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::MemoryStore;
use secure_routes::{AuthMode, ClientIp, FailureMode, Policy, Principal, Quota, Security};

async fn ok() -> &'static str {
    "ok"
}

async fn client_ip(Extension(ClientIp(ip)): Extension<ClientIp>) -> String {
    ip.to_string()
}

fn limited(name: &str, quota: Quota) -> Policy {
    Policy::builder(name).rate_limit(quota).build().unwrap()
}

/// The demo's token endpoint: `{"csrfToken": ...}` plus the cookie, bound to the caller.
fn token_endpoint(h: &Harness) -> Router {
    let security = h.security.clone();
    let policy = Policy::builder("csrf")
        .auth(AuthMode::Optional)
        .build()
        .unwrap();
    h.app(
        "/api/csrf",
        policy,
        get(move |headers: HeaderMap, p: Option<Principal>| {
            let security = security.clone();
            async move {
                let (token, cookie) = security.issue_csrf(&headers, p.as_ref());
                (
                    [(header::SET_COOKIE, cookie)],
                    Json(serde_json::json!({ "csrfToken": token })),
                )
                    .into_response()
            }
        }),
    )
}

/// The cookie's name and value from a `Set-Cookie` header, and its attributes lower-cased.
fn parse_set_cookie(v: &str) -> (String, String, Vec<String>) {
    let mut parts = v.split(';');
    let (name, value) = parts.next().unwrap().trim().split_once('=').unwrap();
    let attrs = parts.map(|a| a.trim().to_ascii_lowercase()).collect();
    (name.to_owned(), value.to_owned(), attrs)
}

async fn saved(p: Principal) -> String {
    format!("saved for {}", p.subject())
}

/// Row "rate-limit key is `req.url`": `?x=1` made a fresh bucket. Here: route identity +
/// subject.
#[tokio::test]
async fn seed_rate_limit_key_is_req_url() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/public-data",
        limited("public", Quota::per_minute(2)),
        get(ok),
    );

    let uris = [
        "/api/public-data",
        "/api/public-data?x=1",
        "/api/public-data?x=2",
        "/api/public-data?",
    ];
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for uri in uris {
            v.push(req(Method::GET, uri).send(&app).await.status.as_u16());
        }
        v
    };
    assert_eq!(
        statuses,
        [200, 200, 429, 429],
        "query strings must not reset the budget"
    );

    let events = h.events().await;
    let limited = with_action(&events, AuditAction::RateLimitExceeded);
    assert_eq!(limited.len(), 2);
    // The audit log records the template and the path, never the query.
    assert!(
        limited
            .iter()
            .all(|e| e.route == "route:/api/public-data" && e.path == "/api/public-data")
    );
}

/// Row "trusts `X-Forwarded-For`": anyone spoofed their IP. Here: forwarding headers count
/// only from trusted proxies.
#[tokio::test]
async fn seed_trusts_x_forwarded_for() {
    let h = harness(|b| b.trusted_proxies(["10.0.0.0/8"]));
    let app = h.app(
        "/api/ip",
        limited("ip", Quota::per_minute(2)),
        get(client_ip),
    );

    // An untrusted peer rotating spoofed headers stays one client with one budget.
    let spoofs = [
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-for", "198.51.100.2"),
        ("x-real-ip", "198.51.100.3"),
        ("forwarded", "for=198.51.100.4"),
    ];
    let mut statuses = Vec::new();
    for (name, value) in spoofs {
        let res = req(Method::GET, "/api/ip")
            .peer("203.0.113.9")
            .header(name, value)
            .send(&app)
            .await;
        if res.status == 200 {
            assert_eq!(res.text(), "203.0.113.9", "spoofed {name} believed");
        }
        statuses.push(res.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);

    // Behind a trusted proxy, the forwarded client is the subject: its own bucket.
    for expected in [200u16, 200, 429] {
        let res = req(Method::GET, "/api/ip")
            .peer("10.0.0.1")
            .header("x-forwarded-for", "192.0.2.10")
            .send(&app)
            .await;
        assert_eq!(res.status, expected);
        if expected == 200 {
            assert_eq!(res.text(), "192.0.2.10");
        }
    }
    let res = req(Method::GET, "/api/ip")
        .peer("10.0.0.1")
        .header("x-forwarded-for", "192.0.2.11")
        .send(&app)
        .await;
    assert_eq!(
        (res.status.as_u16(), res.text().as_str()),
        (200, "192.0.2.11")
    );

    // Right to left: a client-written left entry does not pick the subject.
    let res = req(Method::GET, "/api/ip")
        .peer("10.0.0.1")
        .header("x-forwarded-for", "1.2.3.4, 192.0.2.12, 10.0.0.7")
        .send(&app)
        .await;
    assert_eq!(
        (res.status.as_u16(), res.text().as_str()),
        (200, "192.0.2.12")
    );
}

/// Row "count, then insert": concurrent requests all passed. Here: one atomic operation per
/// check, so 50 concurrent requests on a 10/min route admit exactly 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_count_then_insert_race() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/strict",
        limited("ten", Quota::per_minute(10)),
        post(ok),
    );

    let tasks = (0..50).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            req(Method::POST, "/api/strict")
                .send(&app)
                .await
                .status
                .as_u16()
        })
    });
    let statuses: Vec<u16> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        40,
        "{statuses:?}"
    );
}

/// Row "3-4 database round trips per request, table grows per request": slow, needed a cron.
/// Here: one store call per request, bounded state that cleans itself.
#[tokio::test]
async fn seed_database_round_trips_and_growing_table() {
    let clock = FakeClock::new(common::START);
    // One shard, so that every new key meets every old one (with the default 64 shards each
    // shard cleans itself the same way, on the inserts that land in it).
    let memory = Arc::new(
        MemoryStore::builder()
            .clock(Arc::new(clock.clone()))
            .max_keys(64)
            .shards(1)
            .build(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let store = CountingStore {
        inner: memory.clone(),
        calls: calls.clone(),
    };
    // Without the deny cache, so every check reaches the store (with it, refusals after the
    // first are answered locally: tests/hardening.rs).
    let h = harness(|b| b.rate_limit_store(store).deny_cache(false));
    let app = h.app(
        "/api/public-data",
        limited("public", Quota::per_minute(2)),
        get(ok),
    );

    for _ in 0..5 {
        req(Method::GET, "/api/public-data").send(&app).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "exactly one store call per request"
    );

    // A flood of distinct clients cannot grow the state past the cap.
    for i in 0..500u32 {
        let ip = format!("198.51.{}.{}", i / 250, i % 250);
        req(Method::GET, "/api/public-data")
            .peer(&ip)
            .send(&app)
            .await;
    }
    assert_eq!(memory.len(), 64, "{} keys held", memory.len());

    // And it cleans itself, with no cron and no call to `sweep()`: once the window has
    // passed, the next new client's request finds the expired keys gone, not evicted.
    clock.advance(Duration::from_secs(61));
    let evicted = memory.evictions();
    let res = req(Method::GET, "/api/public-data")
        .peer("192.0.2.200")
        .send(&app)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(memory.len(), 1, "only the new client's key is left");
    assert_eq!(
        memory.evictions(),
        evicted,
        "expired keys were swept, not evicted"
    );
}

/// Row "limiter errors silently allow": an outage meant no limit. Here: each policy declares
/// fail-open or fail-closed, and every failure is audited.
#[tokio::test]
async fn seed_limiter_errors_silently_allow() {
    let h = harness(|b| b.rate_limit_store(FailingStore));
    let closed_custom = Policy::builder("payments")
        .rate_limit(Quota::per_hour(100))
        .failure_mode(FailureMode::Closed)
        .build()
        .unwrap();
    let mut app = Router::new();
    app = h.add(app, "/api/open", Policy::public(), get(ok));
    app = h.add(app, "/api/strict", Policy::strict(), post(saved));
    app = h.add(app, "/api/payments", closed_custom, post(ok));

    let res = req(Method::GET, "/api/open").send(&app).await;
    assert_eq!(res.status, 200, "PUBLIC declares fail-open");
    let res = req(Method::POST, "/api/strict")
        .bearer("alice")
        .send(&app)
        .await;
    res.assert_problem(503, "Service temporarily unavailable");
    assert!(res.header("retry-after").is_some());
    let res = req(Method::POST, "/api/payments").send(&app).await;
    assert_eq!(res.status, 503, "declared fail-closed: {}", res.text());

    let events = h.events().await;
    let failures = with_action(&events, AuditAction::StoreFailure);
    assert_eq!(
        failures.len(),
        3,
        "every store failure is audited: {events:#?}"
    );
    let outcomes: Vec<(&str, Outcome)> = failures
        .iter()
        .map(|e| (e.path.as_str(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("/api/open", Outcome::Allowed),
            ("/api/strict", Outcome::Denied),
            ("/api/payments", Outcome::Denied),
        ]
    );
    assert!(
        with_action(&events, AuditAction::RateLimitExceeded).is_empty(),
        "never a 429"
    );
}

/// Row "`Content-Length` only": chunked bodies passed. Here: the limit is enforced on the
/// streamed body too.
#[tokio::test]
async fn seed_content_length_only() {
    let h = harness(|b| b);
    let policy = Policy::builder("upload")
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let app = h.app(
        "/api/upload",
        policy,
        post(|b: Bytes| async move { b.len().to_string() }),
    );

    // No Content-Length at all, 4 KiB in 1 KiB chunks.
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024])));
    let res = req(Method::POST, "/api/upload")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .send(&app)
        .await;
    res.assert_problem(413, "Request body too large");

    // A lying Content-Length (small) over a large body is caught the same way.
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024])));
    let res = req(Method::POST, "/api/upload")
        .header("content-length", "10")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .send(&app)
        .await;
    res.assert_problem(413, "Request body too large");

    let events = h.events().await;
    let e = with_action(&events, AuditAction::InvalidInput);
    assert_eq!(e.len(), 2);
    assert!(
        e.iter()
            .all(|e| e.status == 413 && e.reason == "streamed_length")
    );
}

/// Row "`!==` token compare, unsigned token": timing leak, cookie tossing. Here: HMAC-signed
/// tokens bound to the subject, compared in constant time; a token we did not sign is refused
/// even when cookie and header agree.
#[tokio::test]
async fn seed_unsigned_token_compared_with_not_equal() {
    let h = harness(|b| b);
    let app = h.app("/api/notes", Policy::authenticated(), post(saved));
    let good = h.security.csrf_tokens().issue("alice");
    let foreign = Security::builder()
        .csrf_secret([9u8; 32])
        .build()
        .unwrap()
        .csrf_tokens()
        .issue("alice");
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let truncated = good[..good.len() - 1].to_owned();

    // (token in both cookie and header, expected status)
    let cases = [
        (good.as_str(), 200),
        ("forged-but-equal", 403),
        (foreign.as_str(), 403), // signed with another secret
        (flipped.as_str(), 403),
        (truncated.as_str(), 403),
    ];
    for (token, status) in cases {
        let res = req(Method::POST, "/api/notes")
            .header("cookie", &format!("session=alice; csrf-token={token}"))
            .header("x-csrf-token", token)
            .send(&app)
            .await;
        assert_eq!(res.status, status, "{token}: {}", res.text());
    }

    // Cookie tossing: a second, planted csrf-token cookie is refused rather than guessed.
    let planted = h.security.csrf_tokens().issue("alice");
    let res = req(Method::POST, "/api/notes")
        .header(
            "cookie",
            &format!("session=alice; csrf-token={planted}; csrf-token={good}"),
        )
        .header("x-csrf-token", &good)
        .send(&app)
        .await;
    res.assert_problem(403, "Invalid or missing CSRF token");
}

/// Row "CSRF cookie `httpOnly` yet read by `document.cookie`": the client helper could never
/// work. Here: a readable (not HttpOnly) signed cookie, and the same token in the JSON body of
/// the token endpoint.
#[tokio::test]
async fn seed_csrf_cookie_http_only() {
    for https in [false, true] {
        let h = harness(|b| b.https(https));
        let app = token_endpoint(&h);
        let res = req(Method::GET, "/api/csrf").send(&app).await;
        assert_eq!(res.status, 200);
        let token = res.json()["csrfToken"]
            .as_str()
            .expect("csrfToken")
            .to_owned();
        let (name, value, attrs) = parse_set_cookie(res.header("set-cookie").expect("Set-Cookie"));
        assert_eq!(value, token, "the cookie carries the JSON token");
        assert!(
            !attrs.iter().any(|a| a == "httponly"),
            "script must be able to read it: {attrs:?}"
        );
        assert!(attrs.iter().any(|a| a == "samesite=strict"), "{attrs:?}");
        assert!(attrs.iter().any(|a| a == "path=/"), "{attrs:?}");
        if https {
            assert_eq!(name, "__Host-csrf-token");
            assert!(attrs.iter().any(|a| a == "secure"), "{attrs:?}");
            assert!(!attrs.iter().any(|a| a.starts_with("domain=")), "{attrs:?}");
        } else {
            assert_eq!(name, "csrf-token");
        }
        assert!(
            h.security.csrf_tokens().verify(&token, ""),
            "anonymous binding"
        );
    }
}

/// Row "new CSRF token on every response": broke parallel requests and tabs. Here: stable per
/// session, rotated on login (the binding changes).
#[tokio::test]
async fn seed_new_csrf_token_every_response() {
    let h = harness(|b| b);
    let app = token_endpoint(&h).merge(h.app("/api/notes", Policy::authenticated(), post(saved)));

    let fetch = |cookie: String| {
        let app = app.clone();
        async move {
            let mut r = req(Method::GET, "/api/csrf");
            if !cookie.is_empty() {
                r = r.header("cookie", &cookie);
            }
            let res = r.send(&app).await;
            assert_eq!(res.status, 200);
            res.json()["csrfToken"].as_str().unwrap().to_owned()
        }
    };

    // Anonymous: the same token comes back while the cookie is presented.
    let anon = fetch(String::new()).await;
    assert_eq!(fetch(format!("csrf-token={anon}")).await, anon);
    assert_eq!(fetch(format!("csrf-token={anon}")).await, anon);

    // Logging in rotates it: the anonymous token is not alice's.
    let alice = fetch(format!("session=alice; csrf-token={anon}")).await;
    assert_ne!(alice, anon);
    assert_eq!(
        fetch(format!("session=alice; csrf-token={alice}")).await,
        alice
    );

    // Parallel requests in two tabs with the one token both pass.
    let post_with = |token: String| {
        let app = app.clone();
        async move {
            req(Method::POST, "/api/notes")
                .header("cookie", &format!("session=alice; csrf-token={token}"))
                .header("x-csrf-token", &token)
                .send(&app)
                .await
                .status
                .as_u16()
        }
    };
    let statuses = join_all([post_with(alice.clone()), post_with(alice.clone())]).await;
    assert_eq!(statuses, [200, 200]);
}

/// Row "`X-XSS-Protection: 1; mode=block`": deprecated, harmful. Here: `0`, plus CSP.
#[tokio::test]
async fn seed_x_xss_protection_mode_block() {
    let h = harness(|b| b);
    let app = h.app("/api/public-data", Policy::public(), get(ok));
    for method in [Method::GET, Method::PUT] {
        let res = req(method, "/api/public-data").send(&app).await;
        assert_eq!(res.header("x-xss-protection"), Some("0"));
        assert_eq!(
            res.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
    }
}

/// Row "no `Vary: Origin`, no preflight": cache poisoning, CORS broken. Here: both.
#[tokio::test]
async fn seed_no_vary_origin_no_preflight() {
    let origin = "https://app.example.com";
    let h = harness(|b| b.allowed_origins([origin]));
    let app = h.app(
        "/api/notes",
        Policy::authenticated(),
        get(saved).post(saved),
    );

    let res = req(Method::OPTIONS, "/api/notes")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, x-csrf-token",
        )
        .send(&app)
        .await;
    // An exact status, not any 2xx: 204, as documented (tower-http alone answers 200).
    assert_eq!(res.status, 204, "preflight answered: {}", res.text());
    assert!(res.text().is_empty(), "a preflight answer has no body");
    assert_eq!(res.header("access-control-allow-origin"), Some(origin));
    assert!(res.header_lists("access-control-allow-methods", "POST"));
    assert!(res.header_lists("access-control-allow-headers", "authorization"));
    assert!(res.header_lists("vary", "origin"));

    // Every response varies on Origin, with or without one, so a shared cache never serves
    // one origin's answer (with or without a grant) to another.
    for o in [Some(origin), Some("https://evil.example"), None] {
        let mut r = req(Method::GET, "/api/notes").bearer("alice");
        if let Some(o) = o {
            r = r.header("origin", o);
        }
        let res = r.send(&app).await;
        assert_eq!(res.status, 200);
        assert!(
            res.header_lists("vary", "origin"),
            "{o:?}: {:?}",
            res.headers
        );
    }
}

/// Row "localhost origins allowed in production": open CORS. Here: development mode only.
#[tokio::test]
async fn seed_localhost_origins_in_production() {
    for origin in ["http://localhost:3000", "http://localhost:3001"] {
        for dev in [false, true] {
            let h = harness(|b| b.development(dev));
            let app = h.app("/api/public-data", Policy::public(), get(ok));
            let res = req(Method::GET, "/api/public-data")
                .header("origin", origin)
                .send(&app)
                .await;
            let expected = dev.then_some(origin);
            assert_eq!(
                res.header("access-control-allow-origin"),
                expected,
                "{origin} dev={dev}"
            );
        }
    }
}

/// Row "audit failures swallowed": lost events. Here: retried, then spilled to a local file,
/// and counted.
#[tokio::test(start_paused = true)]
async fn seed_audit_failures_swallowed() {
    let h = harness_with_sink(Some(Arc::new(FailingSink)), |b| b);
    let app = h.app("/api/public-data", Policy::public(), get(ok));

    let mut ids = HashSet::new();
    for _ in 0..3 {
        let res = req(Method::DELETE, "/api/public-data").send(&app).await;
        assert_eq!(res.status, 405);
        ids.insert(res.header("x-request-id").unwrap().to_owned());
    }
    h.writer.shutdown().await;

    let stats = h.writer.stats();
    assert_eq!(stats.recorded, 3, "{stats:?}");
    assert_eq!(stats.written, 0, "{stats:?}");
    assert_eq!(stats.spilled, 3, "{stats:?}");
    assert!(stats.sink_errors >= 1, "{stats:?}");
    assert!(stats.retries >= 1, "failures are retried first: {stats:?}");
    assert_eq!(stats.lost, 0, "{stats:?}");

    let spilled = std::fs::read_to_string(spill_path(&h.spill_dir)).expect("spill file");
    let events: Vec<AuditEvent> = spilled
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| e.action == AuditAction::InvalidInput && e.status == 405)
    );
    let spilled_ids: HashSet<String> = events.into_iter().map(|e| e.request_id).collect();
    assert_eq!(
        spilled_ids, ids,
        "the spilled events are the requests' events"
    );
}
