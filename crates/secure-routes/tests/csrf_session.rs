//! CSRF tokens through the pipeline (issue 9, part 7): they expire (12 h by default), they are
//! bound to the caller's session (`session_id` / `sid` claim) rather than only to the user, and
//! every method but GET, HEAD, OPTIONS and TRACE needs one, extension methods included.
//!
//! Time is a [`FakeClock`]: tokens are minted "in the past" by a [`CsrfTokens`] with the same
//! secret on a fake clock set relative to the issue time of a token the pipeline itself just
//! issued, so these tests hold whichever clock the pipeline's tokens read. No test sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Harness, SECRET, START, harness, req, with_action};
use http::{HeaderMap, Method, header};
use jsonwebtoken::{EncodingKey, Header, encode};
use secure_routes::audit::{AuditAction, AuditEvent};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::clock::FakeClock;
use secure_routes::guard::csrf::{COOKIE_NAME, CsrfTokens, HEADER_NAME};
use secure_routes::{AuthMode, CsrfMode, Policy, Principal};
use serde_json::json;

const HOUR: u64 = 3600;
const JWT_SECRET: &[u8] = b"csrf-session-jwt-secret-csrf-session!";

async fn whoami(p: Principal) -> String {
    format!("hello {}", p.subject())
}

/// The reasons of the CSRF refusals among `events`, in order.
fn csrf_reasons(events: &[AuditEvent]) -> Vec<&str> {
    with_action(events, AuditAction::CsrfValidationFailed)
        .iter()
        .map(|e| e.reason.as_str())
        .collect()
}

/// The issue time (seconds) of a token, read from its documented layout:
/// nonce (16 bytes) ‖ issued-at (8 bytes, big-endian) ‖ tag.
fn issued_at(token: &str) -> u64 {
    let raw = URL_SAFE_NO_PAD.decode(token).expect("base64url token");
    let mut iat = [0u8; 8];
    iat.copy_from_slice(&raw[16..24]);
    u64::from_be_bytes(iat)
}

/// A token for `binding` issued `ago` before the pipeline's "now" (the issue time of a token
/// the pipeline's own `CsrfTokens` mints at once).
fn minted_ago(h: &Harness, binding: &str, ago: Duration) -> String {
    let now = issued_at(&h.security.csrf_tokens().issue(binding));
    let clock = FakeClock::new(Duration::from_secs(now) - ago);
    CsrfTokens::new(&SECRET)
        .expect("test secret")
        .with_clock(Arc::new(clock))
        .issue(binding)
}

#[tokio::test]
async fn a_token_expires_after_twelve_hours() {
    let h = harness(|b| b);
    let app = h.app("/api/notes", Policy::authenticated(), any(whoami));
    let send = |token: String| {
        req(Method::POST, "/api/notes")
            .header("cookie", &format!("session=alice; {COOKIE_NAME}={token}"))
            .header(HEADER_NAME, &token)
            .send(&app)
    };

    let fresh = minted_ago(&h, "alice", Duration::ZERO);
    let res = send(fresh).await;
    assert_eq!(res.status, 200, "fresh: {}", res.text());

    let almost = minted_ago(&h, "alice", Duration::from_secs(11 * HOUR + 59 * 60));
    let res = send(almost).await;
    assert_eq!(res.status, 200, "11 h 59 old: {}", res.text());

    let expired = minted_ago(&h, "alice", Duration::from_secs(12 * HOUR));
    send(expired)
        .await
        .assert_problem(403, "Invalid or missing CSRF token");

    let ancient = minted_ago(&h, "alice", Duration::from_secs(400 * 24 * HOUR));
    send(ancient)
        .await
        .assert_problem(403, "Invalid or missing CSRF token");

    // Issued well after "now": another instance's clock far ahead, or a forged issue time
    // (it cannot be forged without the secret, the MAC covers it).
    let future = {
        let now = issued_at(&h.security.csrf_tokens().issue("alice"));
        CsrfTokens::new(&SECRET)
            .unwrap()
            .with_clock(Arc::new(FakeClock::new(Duration::from_secs(now + HOUR))))
            .issue("alice")
    };
    send(future)
        .await
        .assert_problem(403, "Invalid or missing CSRF token");

    let events = h.events().await;
    assert_eq!(
        csrf_reasons(&events),
        ["expired", "expired", "issued_in_future"],
        "{events:#?}"
    );
}

#[tokio::test]
async fn the_cookie_of_an_issued_token_lives_twelve_hours() {
    let h = harness(|b| b);
    let (token, cookie) = h.security.issue_csrf(&HeaderMap::new(), None);
    let cookie = cookie.to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("{COOKIE_NAME}={token};")),
        "{cookie}"
    );
    assert!(cookie.ends_with("; Max-Age=43200"), "{cookie}");
}

// ---------------------------------------------------------------------------------------------
// Session binding
// ---------------------------------------------------------------------------------------------

/// A harness authenticating HS256 JWTs from the `sr-session` cookie (ambient, so CSRF applies),
/// with `GET /api/csrf` (the token endpoint, as the demo's) and `POST /api/notes`.
fn jwt_app() -> (Harness, Router) {
    let clock = FakeClock::new(START);
    let jwt = JwtAuthenticator::builder()
        .hs256(JWT_SECRET)
        .cookie("sr-session")
        .clock(Arc::new(clock))
        .build()
        .expect("valid JWT configuration");
    let h = harness(|b| b.authenticator(jwt));
    let security = h.security.clone();
    let csrf = Policy::builder("csrf")
        .auth(AuthMode::Required)
        .build()
        .unwrap();
    let app = h.add(
        Router::new(),
        "/api/csrf",
        csrf,
        get(move |headers: HeaderMap, p: Principal| {
            let security = security.clone();
            async move {
                let (token, cookie) = security.issue_csrf(&headers, Some(&p));
                ([(header::SET_COOKIE, cookie)], token).into_response()
            }
        }),
    );
    let app = h.add(app, "/api/notes", Policy::authenticated(), any(whoami));
    (h, app)
}

/// A session JWT for `sub` with extra `claims`, valid for a day from [`START`].
fn session(sub: &str, claims: serde_json::Value) -> String {
    let mut c = json!({"sub": sub, "exp": START.as_secs() + 24 * HOUR});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    encode(
        &Header::default(),
        &c,
        &EncodingKey::from_secret(JWT_SECRET),
    )
    .expect("HS256 encodes")
}

/// `GET /api/csrf` with the session cookie `jwt`: the token.
async fn fetch_token(app: &Router, jwt: &str) -> String {
    let res = req(Method::GET, "/api/csrf")
        .header("cookie", &format!("sr-session={jwt}"))
        .send(app)
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.text()
}

/// `POST /api/notes` with the session cookie `jwt` and `token` in cookie and header.
async fn post_with(app: &Router, jwt: &str, token: &str) -> u16 {
    req(Method::POST, "/api/notes")
        .header(
            "cookie",
            &format!("sr-session={jwt}; {COOKIE_NAME}={token}"),
        )
        .header(HEADER_NAME, token)
        .send(app)
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn a_token_of_another_session_of_the_same_user_fails() {
    let (h, app) = jwt_app();
    // OIDC's `sid` and Supabase's `session_id`: two sessions of alice each.
    for claim in ["sid", "session_id"] {
        let a = session("alice", json!({ claim: "session-a" }));
        let b = session("alice", json!({ claim: "session-b" }));
        let token_a = fetch_token(&app, &a).await;
        let token_b = fetch_token(&app, &b).await;
        assert_eq!(post_with(&app, &a, &token_a).await, 200, "{claim}");
        assert_eq!(post_with(&app, &b, &token_b).await, 200, "{claim}");
        // After logging out of A and into B, A's token is worthless (and the other way).
        assert_eq!(post_with(&app, &b, &token_a).await, 403, "{claim}");
        assert_eq!(post_with(&app, &a, &token_b).await, 403, "{claim}");
    }
    // A session named like a user, and that user: tokens do not cross either.
    let sid_bob = session("mallory", json!({"sid": "bob"}));
    let bob = session("bob", json!({}));
    let token_sid_bob = fetch_token(&app, &sid_bob).await;
    let token_bob = fetch_token(&app, &bob).await;
    assert_eq!(post_with(&app, &bob, &token_sid_bob).await, 403);
    assert_eq!(post_with(&app, &sid_bob, &token_bob).await, 403);

    let events = h.events().await;
    assert_eq!(csrf_reasons(&events), ["bad_signature"; 6], "{events:#?}");
}

#[tokio::test]
async fn without_a_session_claim_the_token_follows_the_subject() {
    let (_h, app) = jwt_app();
    // Two tokens of alice without a session claim (say, refreshed): one session to us.
    let first = session("alice", json!({"iat": START.as_secs()}));
    let refreshed = session("alice", json!({"iat": START.as_secs() + 60}));
    assert_ne!(first, refreshed);
    let token = fetch_token(&app, &first).await;
    assert_eq!(post_with(&app, &refreshed, &token).await, 200);
    // The token endpoint hands the same token back while it is young.
    let again = req(Method::GET, "/api/csrf")
        .header(
            "cookie",
            &format!("sr-session={refreshed}; {COOKIE_NAME}={token}"),
        )
        .send(&app)
        .await;
    assert_eq!(again.text(), token);
    // Another user cannot use it.
    let bob = session("bob", json!({}));
    assert_eq!(post_with(&app, &bob, &token).await, 403);
}

// ---------------------------------------------------------------------------------------------
// Safe-list of methods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_method_but_the_safe_ones_needs_the_token() {
    let h = harness(|b| b);
    let propfind = Method::from_bytes(b"PROPFIND").unwrap();
    let mkcol = Method::from_bytes(b"MKCOL").unwrap();
    let policy = Policy::builder("dav")
        .methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::OPTIONS,
            Method::TRACE,
            propfind.clone(),
            mkcol.clone(),
        ])
        .auth(AuthMode::Required)
        .csrf(CsrfMode::Auto)
        .build()
        .unwrap();
    let app = h.app("/dav", policy, any(whoami));
    let token = h.security.csrf_tokens().issue("alice");

    // (method, needs the token)
    let cases = [
        (Method::GET, false),
        (Method::HEAD, false),
        (Method::TRACE, false),
        (Method::POST, true),
        (Method::PATCH, true),
        (propfind.clone(), true),
        (mkcol, true),
    ];
    for (method, needs) in cases {
        let res = req(method.clone(), "/dav")
            .header("cookie", "session=alice")
            .send(&app)
            .await;
        if needs {
            res.assert_problem(403, "Invalid or missing CSRF token");
        } else {
            assert_eq!(res.status, 200, "{method} without a token: {}", res.text());
        }
        let res = req(method.clone(), "/dav")
            .header("cookie", &format!("session=alice; {COOKIE_NAME}={token}"))
            .header(HEADER_NAME, &token)
            .send(&app)
            .await;
        assert_eq!(res.status, 200, "{method} with the token: {}", res.text());
    }

    // OPTIONS without a preflight's Access-Control-Request-Method: never a CSRF refusal.
    let res = req(Method::OPTIONS, "/dav")
        .header("cookie", "session=alice")
        .send(&app)
        .await;
    assert_ne!(res.status, 403, "OPTIONS: {}", res.text());
    assert!(res.status.is_success(), "OPTIONS: {}", res.text());

    // The Fetch Metadata check (tower-http) exempts only GET, HEAD and OPTIONS: a cross-site
    // TRACE or PROPFIND is refused there, even with a valid token.
    for method in [Method::TRACE, propfind] {
        let res = req(method.clone(), "/dav")
            .header("cookie", &format!("session=alice; {COOKIE_NAME}={token}"))
            .header(HEADER_NAME, &token)
            .header("sec-fetch-site", "cross-site")
            .send(&app)
            .await;
        res.assert_problem(403, "Invalid or missing CSRF token");
    }

    let events = h.events().await;
    assert_eq!(
        csrf_reasons(&events),
        [
            "missing_cookie",
            "missing_cookie",
            "missing_cookie",
            "missing_cookie",
            "cross_site_fetch",
            "cross_site_fetch",
        ],
        "{events:#?}"
    );
}
