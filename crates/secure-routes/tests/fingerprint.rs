//! The request fingerprint in the pipeline (issue 12 part 3): every audit event carries the
//! request's fingerprint, including refusals made inside the stack after the headers moved
//! into the handler (Fetch Metadata, a panic, a streamed 413) and dry-run's `would_deny`; and
//! a policy's rate-limit key may include it.

mod common;

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use common::{harness, req};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use secure_routes::audit::{AuditAction, Outcome};
use secure_routes::fingerprint::Fingerprint;
use secure_routes::rate_limit::KeyPart;
use secure_routes::{AuthMode, Policy, Quota};

async fn ok() -> &'static str {
    "ok"
}

async fn boom() -> &'static str {
    panic!("handler bug")
}

async fn read_body(body: Bytes) -> String {
    body.len().to_string()
}

/// A browser-like request's headers, in order.
const BROWSER: &[(&str, &str)] = &[
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
    ),
    ("accept", "*/*"),
    ("accept-language", "de-CH,de;q=0.8"),
    ("cookie", "theme=dark; sid=1"),
    ("sec-fetch-site", "cross-site"),
];

/// A script's headers: another set and order.
const SCRIPT: &[(&str, &str)] = &[
    ("user-agent", "python-requests/2.32"),
    ("accept", "*/*"),
    ("host", "api.example.com"),
];

/// `headers` with a header credential for alice (so no CSRF token is needed and the request
/// reaches the checks inside the stack).
fn signed_in(headers: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = headers.to_vec();
    h.push(("authorization", "Bearer user:alice"));
    h
}

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> common::Req {
    headers
        .iter()
        .fold(req(method, uri), |r, (n, v)| r.header(n, v))
}

fn expected(method: &Method, headers: &[(&str, &str)]) -> String {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Fingerprint::of(method, Version::HTTP_11, &map).to_string()
}

#[tokio::test]
async fn every_refusal_is_audited_with_the_requests_fingerprint() {
    let h = harness(|b| b);
    let policy = Policy::authenticated()
        .to_builder()
        .auth(AuthMode::Optional)
        .max_body_bytes(8)
        .build()
        .unwrap();
    let app = h.app("/api/op", policy.clone(), get(ok).post(ok).patch(ok));
    let app = h.add(app, "/api/boom", policy.clone(), get(boom));
    let app = h.add(app, "/api/read", policy, post(read_body));

    // Refused by a step before the handler (method), by Fetch Metadata inside the stack, by
    // a panic in the handler, and by the streamed body limit after the handler read it.
    let (browser, script) = (signed_in(BROWSER), signed_in(SCRIPT));
    let patch = request(Method::PATCH, "/api/op", SCRIPT).send(&app).await;
    assert_eq!(patch.status, 405);
    let cross = request(Method::POST, "/api/op", &browser).send(&app).await;
    assert_eq!(cross.status, 403, "{}", cross.text());
    let panic = request(Method::GET, "/api/boom", SCRIPT).send(&app).await;
    assert_eq!(panic.status, 500);
    let streamed = request(Method::POST, "/api/read", &script)
        .body(Body::from(vec![b'x'; 64]))
        .send(&app)
        .await;
    assert_eq!(streamed.status, 413, "{}", streamed.text());

    let events = h.events().await;
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.action, e.status, e.fingerprint.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                AuditAction::InvalidInput,
                405,
                Some(expected(&Method::PATCH, SCRIPT))
            ),
            (
                AuditAction::CsrfValidationFailed,
                403,
                Some(expected(&Method::POST, &browser))
            ),
            (
                AuditAction::InternalError,
                500,
                Some(expected(&Method::GET, SCRIPT))
            ),
            (
                AuditAction::InvalidInput,
                413,
                Some(expected(&Method::POST, &script))
            ),
        ],
        "{events:#?}"
    );
    // Sanity: the browser's and the script's shapes differ, and the format is the documented
    // one (cookie present, no referer, 5 lines counted without Cookie, language `dech`).
    assert_ne!(
        expected(&Method::POST, BROWSER),
        expected(&Method::POST, SCRIPT)
    );
    assert!(expected(&Method::POST, BROWSER).starts_with("po11cn05dech_"));
}

#[tokio::test]
async fn dry_run_would_deny_events_carry_the_fingerprint() {
    let h = harness(|b| b);
    let policy = Policy::public()
        .to_builder()
        .methods([Method::GET])
        .dry_run(true)
        .build()
        .unwrap();
    let app = h.app("/api/trial", policy, get(ok).post(ok));

    let res = request(Method::POST, "/api/trial", BROWSER)
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "dry-run lets it through: {}", res.text());

    let events = h.events().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].outcome, Outcome::WouldDeny);
    assert_eq!(
        events[0].fingerprint.as_deref(),
        Some(expected(&Method::POST, BROWSER).as_str())
    );
}

/// Two programs behind one address: with the default key they share a budget; keyed by
/// `[Ip, Fingerprint]` each has its own, and another address has its own too.
#[tokio::test]
async fn a_key_with_the_fingerprint_gives_each_client_shape_its_own_budget() {
    let h = harness(|b| b);
    let default = Policy::builder("shared")
        .rate_limit(Quota::per_minute(2))
        .build()
        .unwrap();
    let split = default
        .to_builder()
        .name("split")
        .rate_limit_key([KeyPart::Ip, KeyPart::Fingerprint])
        .build()
        .unwrap();
    let app = h.app("/shared", default, get(ok));
    let app = h.add(app, "/split", split, get(ok));

    let statuses = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let app = app.clone();
        async move {
            let mut s = Vec::new();
            for _ in 0..3 {
                s.push(request(Method::GET, path, headers).send(&app).await.status);
            }
            s
        }
    };
    // Default key (the address): the script's two are spent, the browser gets nothing.
    assert_eq!(statuses("/shared", SCRIPT).await, [200, 200, 429]);
    assert_eq!(statuses("/shared", BROWSER).await, [429, 429, 429]);
    // Keyed by address and fingerprint: each shape its own two.
    assert_eq!(statuses("/split", SCRIPT).await, [200, 200, 429]);
    assert_eq!(statuses("/split", BROWSER).await, [200, 200, 429]);
    // The same shape from another address is another key.
    let other = request(Method::GET, "/split", SCRIPT)
        .peer("198.51.100.9")
        .send(&app)
        .await;
    assert_eq!(other.status, 200);
    // The header values are not part of the shape: another script version, same budget.
    let renamed = request(
        Method::GET,
        "/split",
        &[
            ("user-agent", "python-requests/2.33"),
            ("accept", "*/*"),
            ("host", "api.example.com"),
        ],
    )
    .send(&app)
    .await;
    assert_eq!(renamed.status, 429);
}

/// Authentication failures count against the address alone whatever the key, so a client
/// cannot buy fresh guesses by reshuffling its headers.
#[tokio::test]
async fn auth_failures_count_against_the_address_whatever_the_key() {
    let h = harness(|b| b);
    let policy = Policy::authenticated()
        .to_builder()
        .rate_limit(Quota::per_minute(2))
        .rate_limit_key([KeyPart::Subject, KeyPart::Fingerprint])
        .build()
        .unwrap();
    let app = h.app("/api/notes", policy, get(ok));

    let bad = |headers: &'static [(&'static str, &'static str)]| {
        request(Method::GET, "/api/notes", headers).header("authorization", "Bearer nope")
    };
    assert_eq!(bad(SCRIPT).send(&app).await.status, 401);
    assert_eq!(bad(SCRIPT).send(&app).await.status, 401);
    // Another shape from the same address: its guesses are already spent.
    assert_eq!(bad(BROWSER).send(&app).await.status, 429);
    // A valid credential: keyed by the subject and the shape, a budget of its own.
    let alice = request(Method::GET, "/api/notes", SCRIPT).bearer("alice");
    assert_eq!(alice.send(&app).await.status, 200);
}
