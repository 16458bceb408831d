//! The security pipeline end to end, in process: axum routers behind [`SecurityLayer`]s,
//! driven with `tower::ServiceExt::oneshot`. Every step of DESIGN.md's pipeline and every
//! contract users rely on (status codes, headers, problem bodies, audit events) is asserted
//! here; time is a [`FakeClock`] and the store timeout runs on tokio's paused clock, so no
//! test sleeps.
//!
//! [`SecurityLayer`]: secure_routes::SecurityLayer
//! [`FakeClock`]: secure_routes::clock::FakeClock

mod common;

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::{Extension, Router};
use common::{FailingStore, HangingStore, Harness, PEER, START, harness, req, with_action};
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use secure_routes::audit::{AuditAction, AuditEvent, Outcome};
use secure_routes::auth::CredentialSource;
use secure_routes::{
    AuthMode, ClientIp, CsrfMode, FailureMode, Policy, Principal, Quota, Security,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

async fn ok() -> &'static str {
    "ok"
}

async fn whoami(p: Principal) -> String {
    format!("hello {}", p.subject())
}

/// A policy with only a rate limit of `quota` (any method, no auth, no CSRF).
fn limited(name: &str, quota: Quota) -> Policy {
    Policy::builder(name).rate_limit(quota).build().unwrap()
}

/// AUTHENTICATED, as the seed's preset, on `POST /api/notes` (and GET).
fn notes_app(h: &Harness, policy: Policy) -> Router {
    h.app("/api/notes", policy, get(whoami).post(whoami).put(whoami))
}

fn unix(secs: u64) -> String {
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap())
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

/// The whole audit trail as `(action, status, reason)`, in order. Tests compare it entire:
/// counting one action at a time misses an event of another action, or a second event for
/// the same request.
fn trail(events: &[AuditEvent]) -> Vec<(AuditAction, u16, &str)> {
    events
        .iter()
        .map(|e| (e.action, e.status, e.reason.as_str()))
        .collect()
}

/// Parses a `"name";r=<remaining>;t=<reset>` `RateLimit` header.
fn ratelimit_fields(v: &str) -> (String, u64, u64) {
    let mut parts = v.split(';');
    let name = parts.next().unwrap().trim_matches('"').to_owned();
    let (mut r, mut t) = (None, None);
    for p in parts {
        match p.split_once('=') {
            Some(("r", n)) => r = n.parse().ok(),
            Some(("t", n)) => t = n.parse().ok(),
            _ => {}
        }
    }
    (name, r.expect("r= member"), t.expect("t= member"))
}

// ---------------------------------------------------------------------------------------------
// 4. Method allow-list
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn method_the_policy_forbids_is_405_with_allow_even_if_the_route_serves_it() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/public-data",
        Policy::public(),
        get(ok).post(ok).put(ok),
    );

    // (method, expected status)
    let cases = [
        (Method::GET, 200),
        (Method::HEAD, 200),
        (Method::POST, 200),
        (Method::PUT, 405), // the route serves PUT; the policy does not allow it
        (Method::DELETE, 405), // neither serves it
        (Method::PATCH, 405),
    ];
    for (method, status) in cases {
        let res = req(method.clone(), "/api/public-data").send(&app).await;
        assert_eq!(res.status, status, "{method}: {}", res.text());
        if status == 405 {
            res.assert_problem(405, "Method not allowed");
            assert_eq!(res.header("allow"), Some("GET, POST, HEAD"), "{method}");
            // Rejections are still decorated: security headers and the request id.
            assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
            assert!(res.header("x-request-id").is_some());
        }
    }

    let events = h.events().await;
    let refused = (AuditAction::InvalidInput, 405, "method_not_allowed");
    assert_eq!(trail(&events), [refused; 3], "{events:#?}");
    let methods: Vec<_> = events.iter().map(|e| e.method.as_str()).collect();
    assert_eq!(methods, ["PUT", "DELETE", "PATCH"]);
    let rejected = with_action(&events, AuditAction::InvalidInput);
    let put = rejected
        .iter()
        .find(|e| e.method == "PUT")
        .expect("PUT audited");
    assert_eq!(put.status, 405);
    assert_eq!(put.reason, "method_not_allowed");
    assert_eq!(put.outcome, Outcome::Denied);
    assert_eq!(put.path, "/api/public-data");
    assert_eq!(put.client_ip.as_deref(), Some(PEER));
}

// ---------------------------------------------------------------------------------------------
// 5. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missing_or_invalid_credentials_are_401_with_www_authenticate_and_audited() {
    let h = harness(|b| b);
    let app = notes_app(&h, Policy::authenticated());

    // (authorization header, cookie header, audited reason)
    let cases: [(Option<&str>, Option<&str>, &str); 4] = [
        (None, None, "missing_credential"),
        (Some("Bearer not-a-user-token"), None, "bad"),
        (Some("Basic YWxpY2U6cGFzcw=="), None, "bad"),
        (None, Some("session="), "bad"),
    ];
    for (i, (authz, cookie, _)) in cases.iter().enumerate() {
        let mut r = req(Method::GET, &format!("/api/notes?case={i}"));
        if let Some(a) = authz {
            r = r.header("authorization", a);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        let res = r.send(&app).await;
        res.assert_problem(401, "Authentication required");
        let www = res.header("www-authenticate").unwrap_or_default();
        assert!(
            www.starts_with("Bearer"),
            "case {i}: WWW-Authenticate {www:?}"
        );
        // Nothing authenticated: no per-user no-store is promised, but the body never echoes
        // the credential.
        if let Some(a) = authz {
            assert!(!res.text().contains(a), "credential echoed in body");
        }
    }

    let events = h.events().await;
    let want: Vec<_> = cases
        .iter()
        .map(|(_, _, reason)| (AuditAction::UnauthorizedAccess, 401, *reason))
        .collect();
    assert_eq!(trail(&events), want, "{events:#?}");
    let denied = with_action(&events, AuditAction::UnauthorizedAccess);
    for (e, (authz, _, reason)) in denied.iter().zip(cases.iter()) {
        assert_eq!(e.reason, *reason);
        assert_eq!(e.status, 401);
        assert_eq!(e.outcome, Outcome::Denied);
        assert_eq!(e.route, "route:/api/notes", "route template, not the URL");
        assert_eq!(e.path, "/api/notes", "path without the query");
        assert_eq!(e.subject, None);
        // Never the credential itself.
        let json = serde_json::to_string(e).unwrap();
        if let Some(a) = authz {
            assert!(!json.contains(a), "credential in the audit event: {json}");
        }
    }
}

#[tokio::test]
async fn principal_reaches_the_handler_and_authenticated_answers_are_no_store() {
    let h = harness(|b| b);
    let app = notes_app(&h, Policy::authenticated());
    let public = h.app("/api/public-data", Policy::public(), get(ok));

    let res = req(Method::GET, "/api/notes")
        .bearer("alice")
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "hello alice");
    assert_eq!(res.header("cache-control"), Some("no-store"));

    let res = req(Method::GET, "/api/notes")
        .header("cookie", "session=carol")
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "hello carol");
    assert_eq!(res.header("cache-control"), Some("no-store"));

    // Anonymous answers are not marked per-user.
    let res = req(Method::GET, "/api/public-data").send(&public).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("cache-control"), None);
}

// ---------------------------------------------------------------------------------------------
// 6. Rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_headers_count_down_then_429_until_the_window_passes() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/quota",
        limited("quota3", Quota::per_minute(3)),
        get(ok),
    );
    let now = START.as_secs();

    for remaining in [2u32, 1, 0] {
        let res = req(Method::GET, "/api/quota").send(&app).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("ratelimit-policy"), Some("\"quota3\";q=3;w=60"));
        let (name, r, t) = ratelimit_fields(res.header("ratelimit").expect("RateLimit"));
        assert_eq!((name.as_str(), r), ("quota3", u64::from(remaining)));
        assert_eq!(t, 60, "all three admitted at once: full quota back in 60 s");
        assert_eq!(res.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(
            res.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert_eq!(
            res.header("x-ratelimit-reset"),
            Some((now + 60).to_string().as_str())
        );
        assert_eq!(
            res.header("retry-after"),
            None,
            "Retry-After only on refusals"
        );
    }

    let res = req(Method::GET, "/api/quota").send(&app).await;
    let body = res.assert_problem(429, "Rate limit exceeded");
    assert_eq!(res.header("retry-after"), Some("60"));
    assert_eq!(body["retryAfter"], 60);
    assert_eq!(body["resetAt"], unix(now + 60));
    assert_eq!(res.header("ratelimit-policy"), Some("\"quota3\";q=3;w=60"));
    let (_, r, _) = ratelimit_fields(res.header("ratelimit").expect("RateLimit on 429"));
    assert_eq!(r, 0);
    assert_eq!(res.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(res.header("x-ratelimit-remaining"), Some("0"));
    assert!(res.header("x-ratelimit-reset").is_some());

    // Retry-After is never shorter than the true wait: one second early is still refused.
    h.clock.advance(Duration::from_secs(59));
    let res = req(Method::GET, "/api/quota").send(&app).await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("retry-after"), Some("1"));

    h.clock.advance(Duration::from_secs(1));
    let res = req(Method::GET, "/api/quota").send(&app).await;
    assert_eq!(res.status, 200, "the window has passed");

    let events = h.events().await;
    let refused = (AuditAction::RateLimitExceeded, 429, "quota_exhausted");
    assert_eq!(trail(&events), [refused; 2], "{events:#?}");
    let limited = with_action(&events, AuditAction::RateLimitExceeded);
    assert_eq!(limited[0].status, 429);
    assert_eq!(limited[0].reason, "quota_exhausted");
    assert_eq!(limited[0].route, "route:/api/quota");
}

#[tokio::test]
async fn query_strings_case_and_encoding_do_not_create_fresh_buckets() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/items/{id}",
        limited("items", Quota::per_minute(3)),
        get(ok),
    );

    for uri in [
        "/api/items/abc?x=1",
        "/api/items/ABC?x=2",
        "/api/items/%61bc",
    ] {
        let res = req(Method::GET, uri).send(&app).await;
        assert_eq!(res.status, 200, "{uri}");
    }
    for uri in [
        "/api/items/abc?cachebust=3",
        "/api/items/Other",
        "/api/items/abc?",
    ] {
        let res = req(Method::GET, uri).send(&app).await;
        assert_eq!(
            res.status, 429,
            "{uri} must share the route template's bucket"
        );
    }
}

#[tokio::test]
async fn routes_have_their_own_buckets_unless_the_policy_names_a_shared_one() {
    let h = harness(|b| b);
    let own = limited("own", Quota::per_minute(1));
    let shared = Policy::builder("shared")
        .rate_limit(Quota::per_minute(1))
        .bucket("shared")
        .build()
        .unwrap();
    let mut app = Router::new();
    app = h.add(app, "/a", own.clone(), get(ok));
    app = h.add(app, "/b", own, get(ok));
    app = h.add(app, "/c", shared.clone(), get(ok));
    app = h.add(app, "/d", shared, get(ok));

    // (path, expected status), in order.
    let steps = [
        ("/a", 200),
        ("/a", 429),
        ("/b", 200),
        ("/c", 200),
        ("/d", 429),
    ];
    for (path, status) in steps {
        let res = req(Method::GET, path).send(&app).await;
        assert_eq!(res.status, status, "{path}");
    }
}

#[tokio::test]
async fn authenticated_callers_are_keyed_by_user_not_by_address() {
    let h = harness(|b| b);
    let policy = Policy::builder("per-user")
        .auth(AuthMode::Required)
        .rate_limit(Quota::per_minute(2))
        .build()
        .unwrap();
    let app = h.app("/api/me", policy, get(whoami));

    // (user, peer, expected status), in order.
    let steps = [
        ("alice", "198.51.100.1", 200),
        ("alice", "198.51.100.1", 200),
        ("alice", "198.51.100.1", 429),
        // Same address, another user: a budget of her own.
        ("bob", "198.51.100.1", 200),
        ("bob", "198.51.100.1", 200),
        // Same user from another address: still alice's exhausted budget.
        ("alice", "192.0.2.99", 429),
    ];
    for (i, (user, peer, status)) in steps.into_iter().enumerate() {
        let res = req(Method::GET, "/api/me")
            .bearer(user)
            .peer(peer)
            .send(&app)
            .await;
        assert_eq!(res.status, status, "step {i}: {user} from {peer}");
    }
}

#[tokio::test]
async fn repeated_auth_failures_from_one_address_run_into_429() {
    let h = harness(|b| b);
    let policy = Policy::builder("login")
        .methods([Method::POST])
        .auth(AuthMode::Required)
        .rate_limit(Quota::per_minute(3))
        .build()
        .unwrap();
    let app = h.app("/api/login", policy, post(whoami));

    for _ in 0..3 {
        let res = req(Method::POST, "/api/login")
            .header("authorization", "Bearer guess")
            .send(&app)
            .await;
        res.assert_problem(401, "Authentication required");
    }
    let res = req(Method::POST, "/api/login")
        .header("authorization", "Bearer guess")
        .send(&app)
        .await;
    res.assert_problem(429, "Rate limit exceeded");
    assert!(res.header("retry-after").is_some());

    // Another address is not affected.
    let res = req(Method::POST, "/api/login")
        .header("authorization", "Bearer guess")
        .peer("192.0.2.50")
        .send(&app)
        .await;
    assert_eq!(res.status, 401);

    // One decision, one event: the refused guess is an `unauthorized_access` with the 429
    // the client saw, not a second `rate_limit_exceeded` beside it.
    let events = h.events().await;
    let bad = (AuditAction::UnauthorizedAccess, 401, "bad");
    assert_eq!(
        trail(&events),
        [
            bad,
            bad,
            bad,
            (AuditAction::UnauthorizedAccess, 429, "bad"),
            bad
        ],
        "{events:#?}"
    );
    let clients: Vec<_> = events.iter().map(|e| e.client_ip.as_deref()).collect();
    assert_eq!(
        clients,
        [
            Some(PEER),
            Some(PEER),
            Some(PEER),
            Some(PEER),
            Some("192.0.2.50")
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Body size
// ---------------------------------------------------------------------------------------------

fn upload_policy() -> Policy {
    Policy::builder("upload")
        .methods([Method::POST])
        .max_body_bytes(1024)
        .build()
        .unwrap()
}

async fn body_len(body: Bytes) -> String {
    body.len().to_string()
}

/// A chunked body of `chunks` × `size` bytes with no length known up front.
fn streamed(chunks: usize, size: usize) -> Body {
    let frames = (0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size])));
    Body::from_stream(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn declared_content_length_over_the_limit_is_413() {
    let h = harness(|b| b);
    let app = h.app("/api/upload", upload_policy(), post(body_len));

    let res = req(Method::POST, "/api/upload")
        .header("content-length", "1024")
        .body(vec![b'x'; 1024])
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "at the limit: {}", res.text());
    assert_eq!(res.text(), "1024");

    let res = req(Method::POST, "/api/upload")
        .header("content-length", "2048")
        .body(vec![b'x'; 2048])
        .send(&app)
        .await;
    res.assert_problem(413, "Request body too large");

    let events = h.events().await;
    assert_eq!(
        trail(&events),
        [(AuditAction::InvalidInput, 413, "declared_length")],
        "{events:#?}"
    );
}

/// Reads the body, ignores whether that worked, and answers 200 with headers of its own (a
/// `Content-Length` among them): what a handler that swallows a body error may do.
async fn shrug(body: Body) -> axum::response::Response {
    let _ = axum::body::to_bytes(body, usize::MAX).await;
    let text = "the handler's own answer, which a 413 must not carry";
    axum::response::IntoResponse::into_response((
        [
            (header::CONTENT_LENGTH, text.len().to_string()),
            (HeaderName::from_static("x-handler"), "shrugged".to_owned()),
        ],
        text,
    ))
}

#[tokio::test]
async fn streamed_body_without_content_length_over_the_limit_is_413() {
    let h = harness(|b| b);
    let mut app = Router::new();
    // One handler fails to extract the body (axum answers), one ignores the failure.
    app = h.add(app, "/api/upload", upload_policy(), post(body_len));
    app = h.add(app, "/api/shrug", upload_policy(), post(shrug));

    let res = req(Method::POST, "/api/upload")
        .body(streamed(2, 100))
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "200");

    for path in ["/api/upload", "/api/shrug"] {
        let res = req(Method::POST, path)
            .body(streamed(5, 512))
            .send(&app)
            .await;
        res.assert_problem(413, "Request body too large");
        // The answer is ours alone: nothing of the handler's response survives, and a
        // length, if set, is the problem body's (a stale one would make a client cut the
        // body short or wait for bytes that never come).
        assert_eq!(res.header("x-handler"), None, "{path}");
        let len = res.body.len().to_string();
        assert!(
            res.header("content-length").is_none_or(|v| v == len),
            "{path}: content-length {:?} for a body of {len} bytes",
            res.header("content-length")
        );
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    }

    let events = h.events().await;
    let refused = (AuditAction::InvalidInput, 413, "streamed_length");
    assert_eq!(trail(&events), [refused; 2], "{events:#?}");
    let paths: Vec<_> = events.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/api/upload", "/api/shrug"]);
}

// ---------------------------------------------------------------------------------------------
// 8. CSRF
// ---------------------------------------------------------------------------------------------

fn cookie_user(name: &str) -> Principal {
    Principal::new(name, CredentialSource::Cookie)
}

#[tokio::test]
async fn cookie_session_needs_a_matching_token_bound_to_the_user() {
    let h = harness(|b| b);
    let app = notes_app(&h, Policy::authenticated());
    let tokens = h.security.csrf_tokens();
    let alice = tokens.issue("alice");
    let alice2 = tokens.issue("alice");
    let bob = tokens.issue("bob");
    let (alice_via_issue, cookie) = h
        .security
        .issue_csrf(&HeaderMap::new(), Some(&cookie_user("alice")));
    assert!(cookie.to_str().unwrap().starts_with("csrf-token="));
    assert!(tokens.verify(&alice, "alice"));
    assert!(
        !tokens.verify(&alice, "bob"),
        "a token is bound to its subject"
    );
    assert_ne!(alice, alice2, "each issued token carries a fresh nonce");

    // (user, csrf cookie, x-csrf-token header, expected status)
    let cases: Vec<(&str, Option<&str>, Option<&str>, u16)> = vec![
        ("alice", None, None, 403),
        ("alice", Some(&alice), None, 403),
        ("alice", None, Some(&alice), 403),
        ("alice", Some(&alice), Some(&alice), 200),
        ("alice", Some(&alice_via_issue), Some(&alice_via_issue), 200),
        ("alice", Some(&alice), Some(&alice2), 403), // both valid, but not the same
        ("bob", Some(&alice), Some(&alice), 403),    // minted for alice, used by bob
        ("bob", Some(&bob), Some(&bob), 200),
        ("alice", Some("forged"), Some("forged"), 403),
    ];
    for (i, (user, cookie, token, status)) in cases.iter().enumerate() {
        let mut cookies = format!("session={user}");
        if let Some(c) = cookie {
            cookies.push_str(&format!("; csrf-token={c}"));
        }
        let mut r = req(Method::POST, "/api/notes").header("cookie", &cookies);
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        let res = r.send(&app).await;
        if *status == 403 {
            res.assert_problem(403, "Invalid or missing CSRF token");
        } else {
            assert_eq!(res.status, *status, "case {i}: {}", res.text());
            assert_eq!(res.text(), format!("hello {user}"));
        }
    }

    // Safe methods need no token.
    let res = req(Method::GET, "/api/notes")
        .header("cookie", "session=alice")
        .send(&app)
        .await;
    assert_eq!(res.status, 200);

    let events = h.events().await;
    // The six 403 cases, in order: which check refused, and for whom.
    let got: Vec<_> = events
        .iter()
        .map(|e| {
            assert_eq!(e.action, AuditAction::CsrfValidationFailed, "{e:#?}");
            assert_eq!((e.status, e.outcome), (403, Outcome::Denied), "{e:#?}");
            (e.reason.as_str(), e.subject.as_deref())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("missing_cookie", Some("alice")),
            ("missing_header", Some("alice")),
            ("missing_cookie", Some("alice")),
            ("mismatch", Some("alice")),
            ("bad_signature", Some("bob")),
            ("bad_signature", Some("alice")),
        ],
        "{events:#?}"
    );
    // Tokens never reach the audit log.
    let json = serde_json::to_string(&events).unwrap();
    assert!(!json.contains(&alice), "CSRF token in the audit log");
}

#[tokio::test]
async fn bearer_credential_needs_no_token_in_auto_mode_but_does_in_always_mode() {
    let h = harness(|b| b);
    let auto = notes_app(&h, Policy::authenticated());
    let always = h.app(
        "/api/always",
        Policy::authenticated()
            .to_builder()
            .name("always")
            .csrf(CsrfMode::Always)
            .build()
            .unwrap(),
        post(whoami),
    );
    let token = h.security.csrf_tokens().issue("alice");

    let res = req(Method::POST, "/api/notes")
        .bearer("alice")
        .send(&auto)
        .await;
    assert_eq!(res.status, 200, "Auto, header credential: {}", res.text());

    let res = req(Method::POST, "/api/always")
        .bearer("alice")
        .send(&always)
        .await;
    res.assert_problem(403, "Invalid or missing CSRF token");

    let res = req(Method::POST, "/api/always")
        .bearer("alice")
        .header("cookie", &format!("csrf-token={token}"))
        .header("x-csrf-token", &token)
        .send(&always)
        .await;
    assert_eq!(res.status, 200, "Always, with a token: {}", res.text());
}

#[tokio::test]
async fn fetch_metadata_rejects_cross_site_unsafe_requests() {
    let h = harness(|b| b);
    let app = notes_app(&h, Policy::authenticated());

    // (sec-fetch-site, expected status)
    let cases = [
        ("cross-site", 403),
        ("same-site", 403),
        ("same-origin", 200),
        ("none", 200),
    ];
    for (site, status) in cases {
        let res = req(Method::POST, "/api/notes")
            .bearer("alice")
            .header("host", "api.example.com")
            .header("sec-fetch-site", site)
            .send(&app)
            .await;
        if status == 403 {
            res.assert_problem(403, "Invalid or missing CSRF token");
            // Still decorated by the pipeline.
            assert!(res.header("x-request-id").is_some());
            assert_eq!(res.header("x-frame-options"), Some("DENY"));
        } else {
            assert_eq!(res.status, status, "{site}: {}", res.text());
        }
    }
    // Safe methods pass whatever the site.
    let res = req(Method::GET, "/api/notes")
        .bearer("alice")
        .header("sec-fetch-site", "cross-site")
        .send(&app)
        .await;
    assert_eq!(res.status, 200);

    let events = h.events().await;
    let refused = (AuditAction::CsrfValidationFailed, 403, "cross_site_fetch");
    assert_eq!(trail(&events), [refused; 2], "{events:#?}");
}

#[tokio::test]
async fn origin_differing_from_host_is_rejected_without_fetch_metadata() {
    let h = harness(|b| b);
    let app = notes_app(&h, Policy::authenticated());

    // (origin, expected status); Host is api.example.com and there is no Sec-Fetch-Site.
    let cases = [
        (Some("https://evil.example"), 403),
        (Some("https://api.example.com.evil.example"), 403),
        (Some("https://api.example.com"), 200),
        (None, 200), // neither header: not a browser
    ];
    for (origin, status) in cases {
        let mut r = req(Method::POST, "/api/notes")
            .bearer("alice")
            .header("host", "api.example.com");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        let res = r.send(&app).await;
        if status == 403 {
            res.assert_problem(403, "Invalid or missing CSRF token");
        } else {
            assert_eq!(res.status, status, "{origin:?}: {}", res.text());
        }
    }
    let events = h.events().await;
    let refused = (AuditAction::CsrfValidationFailed, 403, "cross_origin");
    assert_eq!(trail(&events), [refused; 2], "{events:#?}");
}

#[tokio::test]
async fn an_allowed_origin_passes_the_fetch_metadata_check() {
    let h = harness(|b| b.allowed_origins(["https://app.example.com"]));
    let app = notes_app(&h, Policy::authenticated());

    // (origin, sec-fetch-site, expected status)
    let cases = [
        ("https://app.example.com", Some("cross-site"), 200),
        ("https://app.example.com", None, 200),
        ("https://evil.example", Some("cross-site"), 403),
        ("https://evil.example", None, 403),
    ];
    for (origin, site, status) in cases {
        let mut r = req(Method::POST, "/api/notes")
            .bearer("alice")
            .header("host", "api.example.com")
            .header("origin", origin);
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        let res = r.send(&app).await;
        assert_eq!(res.status, status, "{origin} {site:?}: {}", res.text());
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Handler panics
// ---------------------------------------------------------------------------------------------

async fn boom() -> &'static str {
    panic!("secret detail: db password hunter2")
}

#[tokio::test]
async fn handler_panic_is_a_generic_500_and_audited() {
    let h = harness(|b| b);
    let app = h.app("/api/boom", Policy::public(), get(boom));

    let res = req(Method::GET, "/api/boom").send(&app).await;
    res.assert_problem(500, "Internal server error");
    let text = res.text();
    assert!(
        !text.contains("hunter2") && !text.contains("secret detail"),
        "{text}"
    );
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert!(res.header("x-request-id").is_some());

    let events = h.events().await;
    assert_eq!(
        trail(&events),
        [(AuditAction::InternalError, 500, "handler_panicked")],
        "{events:#?}"
    );
    assert!(
        !serde_json::to_string(&events[0])
            .unwrap()
            .contains("hunter2")
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Response headers
// ---------------------------------------------------------------------------------------------

/// DESIGN.md "Contracts users rely on": the default security headers, exactly.
const DEFAULT_HEADERS: [(&str, &str); 8] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-xss-protection", "0"),
];

#[tokio::test]
async fn default_security_headers_have_the_documented_values() {
    let h = harness(|b| b);
    let app = h.app("/api/public-data", Policy::public(), get(ok));

    for method in [Method::GET, Method::DELETE] {
        let res = req(method.clone(), "/api/public-data").send(&app).await;
        for (name, value) in DEFAULT_HEADERS {
            assert_eq!(res.header(name), Some(value), "{method} {name}");
        }
        assert_eq!(
            res.header("strict-transport-security"),
            None,
            "HSTS only over HTTPS"
        );
    }
}

#[tokio::test]
async fn hsts_is_sent_only_when_the_deployment_is_https() {
    let h = harness(|b| b.https(true));
    let app = h.app("/api/public-data", Policy::public(), get(ok));
    let res = req(Method::GET, "/api/public-data").send(&app).await;
    let hsts = res
        .header("strict-transport-security")
        .expect("HSTS over HTTPS");
    let max_age: u64 = hsts
        .split(';')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|s| s.parse().ok())
        .expect("max-age directive");
    assert!(max_age >= 31_536_000, "{hsts}");
    assert_eq!(res.header("x-xss-protection"), Some("0"));
}

#[tokio::test]
async fn a_policy_can_override_and_remove_security_headers() {
    let h = harness(|b| b);
    let policy = Policy::public()
        .to_builder()
        .name("framed")
        .header(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        )
        .header(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'"),
        )
        .remove_header(&HeaderName::from_static("cross-origin-resource-policy"))
        .build()
        .unwrap();
    let app = h.app("/widget", policy, get(ok));
    let res = req(Method::GET, "/widget").send(&app).await;
    assert_eq!(res.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        res.header("content-security-policy"),
        Some("default-src 'self'")
    );
    assert_eq!(res.header("cross-origin-resource-policy"), None);
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(res.header("x-xss-protection"), Some("0"));
}

/// A handler that sets headers of its own: a security header, one header twice, the
/// pipeline's `X-RateLimit-Limit` (and, with `own_ratelimit`, a `RateLimit` of its own).
async fn own_headers(own_ratelimit: bool) -> axum::response::Response {
    let mut res = axum::response::Response::new(Body::from("ok"));
    let h = res.headers_mut();
    h.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    h.append("x-twice", HeaderValue::from_static("one"));
    h.append("x-twice", HeaderValue::from_static("two"));
    h.insert("x-ratelimit-limit", HeaderValue::from_static("999"));
    if own_ratelimit {
        h.insert("ratelimit", HeaderValue::from_static("\"own\";r=1;t=1"));
    }
    res
}

#[tokio::test]
async fn the_handlers_headers_survive_decoration_but_the_rate_limit_headers_are_ours() {
    let h = harness(|b| b);
    let app = h.app(
        "/own",
        limited("own3", Quota::per_minute(3)),
        get(|| own_headers(false)),
    );
    let res = req(Method::GET, "/own").send(&app).await;
    assert_eq!(res.status, 200);
    // The handler's security header wins; the defaults it did not set are added.
    assert_eq!(res.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    let twice: Vec<_> = res.headers.get_all("x-twice").iter().collect();
    assert_eq!(twice, ["one", "two"]);
    // The rate-limit headers replace the handler's.
    assert_eq!(res.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(res.header("ratelimit-policy"), Some("\"own3\";q=3;w=60"));
    assert_eq!(res.header("x-ratelimit-remaining"), Some("2"));
    assert!(res.header("x-request-id").is_some());

    // A handler that answers with a `RateLimit` of its own keeps all of its own: the
    // pipeline adds none.
    let app = h.app(
        "/own-limit",
        limited("own4", Quota::per_minute(3)),
        get(|| own_headers(true)),
    );
    let res = req(Method::GET, "/own-limit").send(&app).await;
    assert_eq!(res.header("ratelimit"), Some("\"own\";r=1;t=1"));
    assert_eq!(res.header("x-ratelimit-limit"), Some("999"));
    assert_eq!(res.header("ratelimit-policy"), None);
    assert_eq!(res.header("x-ratelimit-remaining"), None);
    assert_eq!(res.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(res.header("x-xss-protection"), Some("0"));
}

// ---------------------------------------------------------------------------------------------
// CORS (3 and 10)
// ---------------------------------------------------------------------------------------------

const APP_ORIGIN: &str = "https://app.example.com";

fn cors_app(h: &Harness) -> Router {
    h.app("/api/public-data", Policy::public(), get(ok).post(ok))
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_is_answered_with_the_origin_echoed() {
    let h = harness(|b| b.allowed_origins([APP_ORIGIN]));
    let app = cors_app(&h);

    let res = req(Method::OPTIONS, "/api/public-data")
        .header("origin", APP_ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, x-csrf-token",
        )
        .send(&app)
        .await;
    assert!(
        res.status.is_success(),
        "preflight: {} {}",
        res.status,
        res.text()
    );
    assert_eq!(res.header("access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(res.header("access-control-allow-credentials"), Some("true"));
    assert!(res.header_lists("access-control-allow-methods", "POST"));
    assert!(res.header_lists("access-control-allow-headers", "x-csrf-token"));
    assert!(res.header_lists("vary", "origin"), "{:?}", res.headers);

    // Preflight is not counted as a request: the rate limit is untouched.
    let res = req(Method::GET, "/api/public-data").send(&app).await;
    assert_eq!(res.header("x-ratelimit-remaining"), Some("59"));
}

/// The CORS headers tower-http's rules give every answer, also without `Origin` (the
/// pipeline adds them itself, with the constant set for requests without one): `Vary` is
/// appended to the handler's own, the others replace the handler's. Where the rules grant no
/// origin (no `Origin`, or one not allowed) only `Vary` is added: the other grants are inert
/// without `Access-Control-Allow-Origin`, so the handler's own stay as they were.
#[tokio::test]
async fn cors_headers_without_and_with_origin_match_tower_https_rules() {
    let h = harness(|b| b.allowed_origins([APP_ORIGIN]));
    let handler = || async {
        (
            [
                (header::VARY, "accept-encoding"),
                (header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "false"),
            ],
            "ok",
        )
    };
    let app = h.app("/api/x", Policy::public(), get(handler));
    for origin in [None, Some(APP_ORIGIN), Some("https://evil.example")] {
        let mut r = req(Method::GET, "/api/x");
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        let res = r.send(&app).await;
        assert_eq!(res.status, 200);
        assert!(
            res.header_lists("vary", "accept-encoding"),
            "{origin:?} {:?}",
            res.headers
        );
        assert!(res.header_lists("vary", "origin"), "{origin:?}");
        let credentials: Vec<_> = res
            .headers
            .get_all("access-control-allow-credentials")
            .iter()
            .collect();
        let granted = origin == Some(APP_ORIGIN);
        assert_eq!(
            credentials,
            [if granted { "true" } else { "false" }],
            "{origin:?}"
        );
        assert_eq!(
            res.header_lists("access-control-expose-headers", "x-request-id"),
            granted,
            "{origin:?}"
        );
        assert_eq!(
            res.header("access-control-allow-origin"),
            (origin == Some(APP_ORIGIN)).then_some(APP_ORIGIN),
            "{origin:?}"
        );
    }
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_grant() {
    let h = harness(|b| b.allowed_origins([APP_ORIGIN]));
    let app = cors_app(&h);

    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.example",
        "null",
    ] {
        let res = req(Method::OPTIONS, "/api/public-data")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send(&app)
            .await;
        assert_eq!(
            res.header("access-control-allow-origin"),
            None,
            "preflight {origin}"
        );

        let res = req(Method::GET, "/api/public-data")
            .header("origin", origin)
            .send(&app)
            .await;
        assert_eq!(res.status, 200);
        assert_eq!(
            res.header("access-control-allow-origin"),
            None,
            "simple {origin}"
        );
        assert!(res.header_lists("vary", "origin"));
    }
}

#[tokio::test]
async fn simple_responses_to_an_allowed_origin_carry_acao_and_credentials() {
    let h = harness(|b| b.allowed_origins([APP_ORIGIN]));
    let app = cors_app(&h);
    let res = req(Method::GET, "/api/public-data")
        .header("origin", APP_ORIGIN)
        .send(&app)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(res.header("access-control-allow-credentials"), Some("true"));
    assert!(res.header_lists("vary", "origin"));
    // Browsers may read the rate-limit headers cross-origin.
    assert!(res.header_lists("access-control-expose-headers", "x-ratelimit-remaining"));

    // Rejections get the grant too, so the browser app can read the problem body.
    let res = req(Method::DELETE, "/api/public-data")
        .header("origin", APP_ORIGIN)
        .send(&app)
        .await;
    assert_eq!(res.status, 405);
    assert_eq!(res.header("access-control-allow-origin"), Some(APP_ORIGIN));
}

#[tokio::test]
async fn localhost_origins_are_allowed_only_in_development_mode() {
    // (development, expected ACAO)
    for (dev, expected) in [(false, None), (true, Some("http://localhost:3000"))] {
        let h = harness(|b| b.development(dev));
        let app = cors_app(&h);
        let res = req(Method::GET, "/api/public-data")
            .header("origin", "http://localhost:3000")
            .send(&app)
            .await;
        assert_eq!(
            res.header("access-control-allow-origin"),
            expected,
            "development={dev}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Store failures: declared, audited, never a 429
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failing_store_with_a_fail_open_policy_lets_the_request_through_audited() {
    let h = harness(|b| b.rate_limit_store(FailingStore));
    let app = h.app("/api/public-data", Policy::public(), get(ok));
    assert_eq!(Policy::public().failure_mode(), FailureMode::Open);

    for _ in 0..3 {
        let res = req(Method::GET, "/api/public-data").send(&app).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.text(), "ok");
    }

    let events = h.events().await;
    let let_through = (AuditAction::StoreFailure, 200, "store_error");
    assert_eq!(trail(&events), [let_through; 3], "{events:#?}");
    assert!(events.iter().all(|e| e.outcome == Outcome::Allowed));
}

#[tokio::test]
async fn failing_store_with_a_fail_closed_policy_is_503_never_429() {
    let h = harness(|b| b.rate_limit_store(FailingStore));
    let app = h.app("/api/strict", Policy::strict(), post(whoami));
    assert_eq!(Policy::strict().failure_mode(), FailureMode::Closed);

    for _ in 0..12 {
        let res = req(Method::POST, "/api/strict")
            .bearer("alice")
            .send(&app)
            .await;
        let body = res.assert_problem(503, "Service temporarily unavailable");
        let retry: u64 = res
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(retry >= 1);
        assert!(
            body.get("retryAfter")
                .is_none_or(|v| v.as_u64() == Some(retry))
        );
    }

    let events = h.events().await;
    let refused = (AuditAction::StoreFailure, 503, "store_error");
    assert_eq!(trail(&events), [refused; 12], "{events:#?}");
    assert!(events.iter().all(|e| e.outcome == Outcome::Denied));
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_hits_the_policy_timeout() {
    let h = harness(|b| b.rate_limit_store(HangingStore));
    let timeout = Duration::from_millis(10);
    let open = Policy::public()
        .to_builder()
        .store_timeout(timeout)
        .build()
        .unwrap();
    let closed = Policy::strict()
        .to_builder()
        .store_timeout(timeout)
        .build()
        .unwrap();
    let mut app = Router::new();
    app = h.add(app, "/api/open", open, get(ok));
    app = h.add(app, "/api/closed", closed, post(whoami));

    let started = tokio::time::Instant::now();
    let res = req(Method::GET, "/api/open").send(&app).await;
    assert_eq!(res.status, 200, "fail-open: {}", res.text());
    let res = req(Method::POST, "/api/closed")
        .bearer("alice")
        .send(&app)
        .await;
    res.assert_problem(503, "Service temporarily unavailable");
    assert!(res.header("retry-after").is_some());
    // Two timeouts of 10 ms on tokio's (paused, auto-advanced) clock: bounded by the policy.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let events = h.events().await;
    assert_eq!(
        trail(&events),
        [
            (AuditAction::StoreFailure, 200, "store_timeout"),
            (AuditAction::StoreFailure, 503, "store_timeout"),
        ],
        "{events:#?}"
    );
    assert_eq!(events[0].outcome, Outcome::Allowed);
    assert_eq!(events[1].outcome, Outcome::Denied);
}

// ---------------------------------------------------------------------------------------------
// 1. Request id
// ---------------------------------------------------------------------------------------------

async fn echo_request_id(headers: HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn request_id_is_set_and_only_trusted_proxies_may_choose_it() {
    let h = harness(|b| b.trusted_proxies(["10.0.0.0/8"]));
    let app = h.app("/api/id", Policy::public(), get(echo_request_id));

    // Fresh id, the same for the handler and the client.
    let res = req(Method::GET, "/api/id").send(&app).await;
    let id = res.header("x-request-id").expect("x-request-id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(res.text(), id, "the handler sees the id the client gets");
    let other = req(Method::GET, "/api/id").send(&app).await;
    assert_ne!(
        other.header("x-request-id"),
        Some(id.as_str()),
        "ids are unique"
    );

    // (peer, incoming id, kept?)
    let cases = [
        ("203.0.113.7", "attacker-chosen-id", false),
        ("10.1.2.3", "edge-req-123", true),
        ("10.1.2.3", "bad id\twith control", false),
    ];
    for (peer, incoming, kept) in cases {
        let res = req(Method::GET, "/api/id")
            .peer(peer)
            .header("x-request-id", incoming)
            .send(&app)
            .await;
        let got = res.header("x-request-id").expect("x-request-id");
        assert_eq!(got == incoming, kept, "{peer} {incoming:?} -> {got}");
        assert_eq!(res.text(), got);
    }

    // The audit event carries the same id as the response.
    let res = req(Method::DELETE, "/api/id").send(&app).await;
    let id = res.header("x-request-id").unwrap().to_owned();
    let events = h.events().await;
    // Only the refused DELETE is audited, under the id its response carried.
    assert_eq!(
        trail(&events),
        [(AuditAction::InvalidInput, 405, "method_not_allowed")],
        "{events:#?}"
    );
    assert_eq!(events[0].request_id, id);
}

// ---------------------------------------------------------------------------------------------
// Client address
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_handler_sees_the_socket_peer_as_client_ip() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/ip",
        Policy::public(),
        get(|Extension(ClientIp(ip)): Extension<ClientIp>| async move { ip.to_string() }),
    );
    let res = req(Method::GET, "/api/ip")
        .peer("192.0.2.44")
        .header("x-forwarded-for", "1.2.3.4")
        .send(&app)
        .await;
    assert_eq!(res.text(), "192.0.2.44");
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn building_without_a_csrf_secret_fails_listing_every_problem() {
    let err = Security::builder()
        .allowed_origins(["*"])
        .trusted_proxies(["not-a-cidr"])
        .build()
        .expect_err("no CSRF secret in production mode");
    let problems = err.problems();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems.iter().any(|p| p.contains("CSRF secret")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("\"*\"")),
        "{problems:#?}"
    );

    let err = Security::builder().build().expect_err("no CSRF secret");
    assert_eq!(err.problems().len(), 1, "{err}");

    // A short secret is refused too (32+ bytes).
    let err = Security::builder()
        .csrf_secret([1u8; 8])
        .build()
        .expect_err("8-byte secret");
    assert!(!err.problems().is_empty());
}

#[test]
fn development_mode_generates_a_missing_csrf_secret() {
    let s = Security::builder()
        .development(true)
        .build()
        .expect("development builds");
    let (token, cookie) = s.issue_csrf(&HeaderMap::new(), None);
    assert!(s.csrf_tokens().verify(&token, ""));
    assert!(cookie.to_str().unwrap().starts_with("csrf-token="));

    // Two processes get two secrets: a token of one does not verify in the other.
    let other = Security::builder().development(true).build().unwrap();
    assert!(!other.csrf_tokens().verify(&token, ""));
}

#[test]
fn a_policy_that_authenticates_needs_an_authenticator() {
    let s = Security::builder().csrf_secret([3u8; 32]).build().unwrap();
    assert!(s.layer(Policy::authenticated()).is_err());
    assert!(s.layer(Policy::strict()).is_err());
    let optional = Policy::builder("optional")
        .auth(AuthMode::Optional)
        .build()
        .unwrap();
    assert!(s.layer(optional).is_err());
    assert!(s.layer(Policy::public()).is_ok());

    let with_auth = Security::builder()
        .csrf_secret([3u8; 32])
        .authenticator(common::TestAuth)
        .build()
        .unwrap();
    assert!(with_auth.layer(Policy::authenticated()).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Optional authentication
// ---------------------------------------------------------------------------------------------

async fn maybe_user(p: Option<Principal>) -> String {
    p.map_or_else(|| "anonymous".to_owned(), |p| p.subject().to_owned())
}

#[tokio::test]
async fn optional_auth_passes_anonymous_callers_but_refuses_bad_credentials() {
    let h = harness(|b| b);
    let policy = Policy::builder("optional")
        .auth(AuthMode::Optional)
        .build()
        .unwrap();
    let app = h.app("/api/maybe", policy, get(maybe_user));

    let res = req(Method::GET, "/api/maybe").send(&app).await;
    assert_eq!(
        (res.status.as_u16(), res.text().as_str()),
        (200, "anonymous")
    );
    let res = req(Method::GET, "/api/maybe")
        .bearer("dora")
        .send(&app)
        .await;
    assert_eq!((res.status.as_u16(), res.text().as_str()), (200, "dora"));
    let res = req(Method::GET, "/api/maybe")
        .header("authorization", "Bearer junk")
        .send(&app)
        .await;
    res.assert_problem(401, "Authentication required");
}

// ---------------------------------------------------------------------------------------------
// Dry-run and the request id the handler sees
// ---------------------------------------------------------------------------------------------

async fn whoami_or_anon(p: Option<Extension<Principal>>) -> String {
    p.map_or_else(
        || "anonymous".to_owned(),
        |Extension(p)| p.subject().to_owned(),
    )
}

#[tokio::test]
async fn dry_run_records_every_refusal_as_would_deny_and_calls_the_handler() {
    let h = harness(|b| b);
    let policy = Policy::strict()
        .to_builder()
        .name("trial")
        .methods([Method::POST])
        .rate_limit(Quota::per_minute(1))
        .max_body_bytes(10)
        .dry_run(true)
        .build()
        .unwrap();
    let app = h.app("/api/op", policy, get(whoami_or_anon).post(whoami_or_anon));

    // A GET (method), no credential (auth, whose failure also spends the client's quota of
    // 1, so the rate limit refuses too), a declared body over the limit: each check would
    // refuse, none does.
    let res = req(Method::GET, "/api/op")
        .header("content-length", "11")
        .header("sec-fetch-site", "cross-site")
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "anonymous");
    // Alice has her own quota; Fetch Metadata would refuse the cross-site POST.
    let res = req(Method::POST, "/api/op")
        .bearer("alice")
        .header("sec-fetch-site", "cross-site")
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.text(), "alice");

    let events = h.events().await;
    assert!(
        events.iter().all(|e| e.outcome == Outcome::WouldDeny),
        "{events:#?}"
    );
    // The GET is a safe method (no CSRF checks) and the bearer is not an ambient credential
    // (no CSRF token needed). The trail's order follows the audit writer's batches, so it is
    // compared as a set.
    let mut got: Vec<_> = trail(&events)
        .into_iter()
        .map(|(a, s, r)| (a.as_str(), s, r))
        .collect();
    got.sort();
    let mut want = vec![
        ("invalid_input", 405, "method_not_allowed"),
        ("unauthorized_access", 401, "missing_credential"),
        ("invalid_input", 413, "declared_length"),
        ("rate_limit_exceeded", 429, "quota_exhausted"),
        ("csrf_validation_failed", 403, "cross_site_fetch"),
    ];
    want.sort();
    assert_eq!(got, want, "{events:#?}");
}

#[tokio::test]
async fn the_handler_sees_the_request_id_its_answer_carries() {
    async fn id(
        Extension(secure_routes::RequestId(id)): Extension<secure_routes::RequestId>,
    ) -> String {
        id.to_str().unwrap().to_owned()
    }
    let h = harness(|b| b);
    let app = h.app("/api/id", Policy::public(), get(id));
    let res = req(Method::GET, "/api/id").send(&app).await;
    assert_eq!(res.status, 200);
    assert_eq!(Some(res.text().as_str()), res.header("x-request-id"));
}
