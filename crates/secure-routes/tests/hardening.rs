//! Issue 9 ("Hardening"), in process: what an outside attacker and a new user found. Each test
//! here failed before its fix: plain `OPTIONS` skipping the pipeline, preflights without the
//! contract headers, uncounted 404s, plain-text answers to unreadable bodies, a missing socket
//! peer read as `0.0.0.0`, authenticators and stores that hang or panic, two audit events for
//! one decision, dropped non-ASCII User-Agents, spoofable forwarding headers, and a hot key
//! answered 503 instead of 429.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use bytes::Bytes;
use common::*;
use futures_util::future::join_all;
use http::request::Parts;
use http::{Method, Request, StatusCode};
use secure_routes::audit::{AuditAction, Outcome};
use secure_routes::auth::{AuthError, Authenticator, BoxFuture, Principal};
use secure_routes::client_ip::ForwardedHeader;
use secure_routes::rate_limit::{
    Decision, MemoryStore, Quota, RateLimitKey, RateLimitStore, StoreError,
};
use secure_routes::{AuthMode, ClientIp, FailureMode, Policy};
use tower::ServiceExt;

async fn ok() -> &'static str {
    "ok"
}

fn limited(name: &str, quota: Quota) -> Policy {
    Policy::builder(name).rate_limit(quota).build().unwrap()
}

// ---------------------------------------------------------------------------------------
// Part 3: every request goes through the pipeline, every response carries the contract.

#[tokio::test]
async fn plain_options_is_an_ordinary_request_and_meets_the_method_check() {
    let h = harness(|b| b.allowed_origins(["https://app.example.com"]));
    let app = h.app("/api/x", Policy::public(), get(ok).post(ok).options(ok));
    // No Access-Control-Request-Method: not a preflight, so not answered by CORS.
    let res = req(Method::OPTIONS, "/api/x")
        .header("origin", "https://app.example.com")
        .send(&app)
        .await;
    assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.header("allow"), Some("GET, POST, HEAD"));
    assert!(res.header("x-request-id").is_some());
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "method_not_allowed");
}

#[tokio::test]
async fn plain_options_reaches_the_handler_when_the_policy_allows_it() {
    let h = harness(|b| b);
    let policy = Policy::builder("opts")
        .methods([Method::OPTIONS, Method::GET])
        .build()
        .unwrap();
    let app = h.app(
        "/api/x",
        policy,
        get(ok).options(|| async { "options handler" }),
    );
    let res = req(Method::OPTIONS, "/api/x").send(&app).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "options handler");
    assert!(res.header("x-request-id").is_some());
}

#[tokio::test]
async fn preflight_is_204_with_security_headers_and_a_request_id() {
    let h = harness(|b| b.allowed_origins(["https://app.example.com"]));
    let app = h.app("/api/x", Policy::public(), get(ok).post(ok));
    let res = req(Method::OPTIONS, "/api/x")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send(&app)
        .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    assert_eq!(
        res.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(res.header("x-request-id").is_some());
    assert_eq!(res.header("x-frame-options"), Some("DENY"));
    // Not counted, not audited: a preflight carries no credentials and does nothing.
    assert!(res.header("ratelimit").is_none());
    assert!(h.events().await.is_empty());
}

fn site(h: &Harness) -> Router {
    let router = Router::new().route("/health", get(ok));
    h.add(router, "/api/x", Policy::public(), get(ok))
        .fallback_service(h.security.not_found().unwrap())
        .layer(h.security.headers_layer())
}

#[tokio::test]
async fn health_and_unknown_paths_carry_the_security_headers_and_a_request_id() {
    let h = harness(|b| b);
    let app = site(&h);
    for (path, status) in [("/health", 200), ("/nope", 404), ("/api/x/../../etc", 404)] {
        let res = req(Method::GET, path).send(&app).await;
        assert_eq!(res.status.as_u16(), status, "{path}");
        assert_eq!(
            res.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(
            res.header("content-security-policy"),
            Some("default-src 'none'; frame-ancestors 'none'")
        );
        let id = res.header("x-request-id").expect("request id");
        assert_eq!(id.len(), 36, "{path}: a UUID");
    }
    // A route's own answer keeps its id (the router-wide layer does not replace it).
    let res = req(Method::GET, "/api/x").send(&app).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.header("ratelimit").is_some());
}

#[tokio::test]
async fn unknown_paths_are_problem_json_counted_per_client_and_meet_429() {
    let h = harness(|b| b);
    let app = site(&h);
    for i in 0..60 {
        let res = req(Method::GET, &format!("/scan/{i}")).send(&app).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "request {i}");
        assert_eq!(res.header("content-type"), Some("application/problem+json"));
        assert_eq!(res.json()["type"], "urn:secure-routes:problem:not-found");
    }
    // Every unknown path shares one bucket: the 61st scan is refused.
    let res = req(Method::POST, "/another/path").send(&app).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    // Another client is not affected.
    let res = req(Method::GET, "/scan/x")
        .peer("198.51.100.1")
        .send(&app)
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    let events = h.events().await;
    let not_found = events.iter().filter(|e| e.reason == "not_found").count();
    let limited = with_action(&events, AuditAction::RateLimitExceeded).len();
    assert_eq!((not_found, limited), (61, 1));
}

#[tokio::test]
async fn an_unreadable_body_is_a_problem_json_400_and_audited() {
    let h = harness(|b| b);
    let app = h.app(
        "/api/x",
        Policy::public(),
        post(|_b: Bytes| async { "read" }),
    );
    let frames: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"a\":")),
        Err(std::io::Error::other("invalid chunk size")),
    ];
    let body = Body::from_stream(futures_util::stream::iter(frames));
    let res = req(Method::POST, "/api/x").body(body).send(&app).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    assert_eq!(res.json()["error"], "Invalid input");
    assert!(res.header("x-request-id").is_some());
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, AuditAction::InvalidInput);
    assert_eq!(events[0].reason, "body_unreadable");
    assert_eq!(events[0].status, 400);
}

// ---------------------------------------------------------------------------------------
// Part 1: one forwarding header, and no guessed peer.

#[tokio::test]
async fn a_missing_socket_peer_is_a_500_never_0_0_0_0() {
    let h = harness(|b| b);
    let app = h.app("/api/x", Policy::public(), get(ok));
    let request = Request::get("/api/x").body(Body::empty()).unwrap();
    let res = app.oneshot(request).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    // Nothing was counted or audited against a made-up address.
    assert!(h.events().await.is_empty());
}

async fn who(ClientIp(ip): ClientIp) -> String {
    ip.to_string()
}

#[tokio::test]
async fn behind_an_xff_proxy_a_client_cannot_choose_its_address_with_forwarded() {
    let h = harness(|b| b.trusted_proxies(["10.0.0.0/8"]));
    let app = h.app(
        "/ip",
        limited("ip", Quota::per_minute(3)),
        get(|axum::Extension(c): axum::Extension<ClientIp>| who(c)),
    );
    let mut statuses = Vec::new();
    for i in 0..5 {
        // The proxy appends the real client to X-Forwarded-For; the client adds its own,
        // fresh `Forwarded` and `X-Real-IP` each time.
        let res = req(Method::GET, "/ip")
            .peer("10.0.0.1")
            .header("forwarded", &format!("for=6.6.6.{i}"))
            .header("x-real-ip", &format!("7.7.7.{i}"))
            .header("x-forwarded-for", "203.0.113.50")
            .send(&app)
            .await;
        if res.status == StatusCode::OK {
            assert_eq!(res.text(), "203.0.113.50");
        }
        statuses.push(res.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn the_operator_names_the_header_its_proxy_writes() {
    let h = harness(|b| {
        b.trusted_proxies(["10.0.0.0/8"])
            .client_ip_header(ForwardedHeader::XRealIp)
    });
    let app = h.app(
        "/ip",
        Policy::public(),
        get(|axum::Extension(c): axum::Extension<ClientIp>| who(c)),
    );
    let res = req(Method::GET, "/ip")
        .peer("10.0.0.1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-real-ip", "203.0.113.9")
        .send(&app)
        .await;
    assert_eq!(res.text(), "203.0.113.9");
}

// ---------------------------------------------------------------------------------------
// Part 8: authenticators and stores that hang or panic.

/// Never answers.
struct HangingAuth;
impl Authenticator for HangingAuth {
    fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(std::future::pending())
    }
}

/// Panics.
struct PanickingAuth;
impl Authenticator for PanickingAuth {
    fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async { panic!("authenticator bug") })
    }
}

/// Panics while building its future, before any `async` block runs.
struct EagerlyPanickingAuth;
impl Authenticator for EagerlyPanickingAuth {
    fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        panic!("authenticator bug before the future")
    }
}

/// Panics while building its future.
#[derive(Debug)]
struct EagerlyPanickingStore;
impl RateLimitStore for EagerlyPanickingStore {
    fn acquire<'a>(
        &'a self,
        _: &'a RateLimitKey,
        _: Quota,
        _: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        panic!("store bug before the future")
    }
    fn name(&self) -> &'static str {
        "eager-panic"
    }
}

/// Panics when asked to decide at once (the synchronous path the memory store takes).
#[derive(Debug)]
struct PanickingNowStore;
impl RateLimitStore for PanickingNowStore {
    fn acquire<'a>(
        &'a self,
        _: &'a RateLimitKey,
        _: Quota,
        _: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        unreachable!("a store that answers at once is not asked for a future")
    }
    fn try_acquire_now(
        &self,
        _: &RateLimitKey,
        _: Quota,
        _: u32,
    ) -> Option<Result<Decision, StoreError>> {
        panic!("store bug in the synchronous path")
    }
    fn name(&self) -> &'static str {
        "now-panic"
    }
}

/// Answers every check at once, and counts how it was asked.
#[derive(Debug, Default, Clone)]
struct NowStore {
    now: std::sync::Arc<std::sync::atomic::AtomicU32>,
}
impl RateLimitStore for NowStore {
    fn acquire<'a>(
        &'a self,
        _: &'a RateLimitKey,
        _: Quota,
        _: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        panic!("asked for a future although it answers at once")
    }
    fn try_acquire_now(
        &self,
        _: &RateLimitKey,
        _: Quota,
        _: u32,
    ) -> Option<Result<Decision, StoreError>> {
        let n = self.now.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Err(StoreError::Unavailable(format!("answer {n}"))))
    }
    fn name(&self) -> &'static str {
        "now"
    }
    fn is_local(&self) -> bool {
        true
    }
}

/// Its key set is unreachable.
struct DownAuth;
impl Authenticator for DownAuth {
    fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async { Err(AuthError::Unavailable("jwks unreachable".into())) })
    }
}

/// Panics on every check.
#[derive(Debug)]
struct PanickingStore;
impl RateLimitStore for PanickingStore {
    fn acquire<'a>(
        &'a self,
        _: &'a RateLimitKey,
        _: Quota,
        _: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async { panic!("store bug") })
    }
    fn name(&self) -> &'static str {
        "panicking"
    }
}

fn authed() -> Policy {
    Policy::builder("authed")
        .auth(AuthMode::Required)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_authenticator_that_hangs_is_cut_off_with_503() {
    let h = harness(|b| {
        b.authenticator(HangingAuth)
            .authenticate_timeout(Duration::from_millis(200))
    });
    let app = h.app("/me", authed(), get(ok));
    let res = tokio::time::timeout(Duration::from_secs(5), req(Method::GET, "/me").send(&app))
        .await
        .expect("answered after the authenticate timeout");
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.header("retry-after").is_some());
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, AuditAction::AuthenticatorFailure);
    assert_eq!(events[0].reason, "authenticator_timeout");
}

#[tokio::test]
async fn an_authenticator_outage_is_its_own_action_not_store_failure() {
    let h = harness(|b| b.authenticator(DownAuth));
    let app = h.app("/me", authed(), get(ok));
    let res = req(Method::GET, "/me").send(&app).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, AuditAction::AuthenticatorFailure);
    assert_eq!(events[0].reason, "authenticator_unavailable");
}

#[tokio::test]
async fn a_panicking_authenticator_is_a_500_not_a_dropped_connection() {
    let h = harness(|b| b.authenticator(PanickingAuth));
    let app = h.app("/me", authed(), get(ok));
    let res = req(Method::GET, "/me").send(&app).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    assert!(
        !res.text().contains("authenticator bug"),
        "no panic text to the client"
    );
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "authenticator_panicked");
}

#[tokio::test]
async fn a_panic_before_the_future_exists_is_contained_too() {
    let h = harness(|b| b.authenticator(EagerlyPanickingAuth));
    let app = h.app("/me", authed(), get(ok));
    let res = req(Method::GET, "/me").send(&app).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    let h2 = harness(|b| b.rate_limit_store(EagerlyPanickingStore));
    let app = h2.app("/api/x", Policy::public(), get(ok));
    let res = req(Method::GET, "/api/x").send(&app).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(h.events().await[0].reason, "authenticator_panicked");
    assert_eq!(h2.events().await[0].reason, "store_panicked");
}

/// A store that decides at once (`try_acquire_now`) is never asked for a future; its error
/// and its panic meet the policy as the future's would.
#[tokio::test]
async fn a_store_answering_at_once_is_contained_like_its_future() {
    let h = harness(|b| b.rate_limit_store(PanickingNowStore));
    let app = h.app("/api/x", Policy::public(), get(ok));
    let res = req(Method::GET, "/api/x").send(&app).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(h.events().await[0].reason, "store_panicked");

    let store = NowStore::default();
    let h = harness(|b| b.rate_limit_store(store.clone()));
    let app = h.app("/api/x", Policy::public(), get(ok));
    // PUBLIC fails open: the error lets the request through, audited as `store_error`.
    let res = req(Method::GET, "/api/x").send(&app).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(h.events().await[0].reason, "store_error");
    assert_eq!(store.now.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Answers from `authenticate_now` per its mode; counts the calls to `authenticate`.
#[derive(Clone, Default)]
struct NowAuth {
    /// 0: `None` (ask `authenticate`), 1: a principal, 2: a bad credential, 3: a panic.
    mode: usize,
    asked_async: Arc<AtomicUsize>,
}
impl Authenticator for NowAuth {
    fn authenticate<'a>(&'a self, _: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        self.asked_async.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            Ok(Principal::new(
                "async",
                secure_routes::auth::CredentialSource::Header,
            ))
        })
    }
    fn authenticate_now(&self, _: &Parts) -> Option<Result<Principal, AuthError>> {
        match self.mode {
            0 => None,
            1 => Some(Ok(Principal::new(
                "now",
                secure_routes::auth::CredentialSource::Header,
            ))),
            2 => Some(Err(AuthError::Invalid("bad_signature"))),
            _ => panic!("authenticator bug, answering at once"),
        }
    }
}

/// The pipeline asks `authenticate_now` first: its answer decides (a principal, a 401 that
/// still counts against the address, a panic contained as a 500) and `authenticate` is not
/// asked; `None` hands the request to `authenticate` as before.
#[tokio::test]
async fn an_authenticator_answering_at_once_is_used_and_contained() {
    async fn who(axum::Extension(p): axum::Extension<Principal>) -> String {
        p.subject().to_owned()
    }
    for (mode, status, subject, asked_async) in [
        (0, StatusCode::OK, Some("async"), 1),
        (1, StatusCode::OK, Some("now"), 0),
        (2, StatusCode::UNAUTHORIZED, None, 0),
        (3, StatusCode::INTERNAL_SERVER_ERROR, None, 0),
    ] {
        let auth = NowAuth {
            mode,
            ..NowAuth::default()
        };
        let h = harness(|b| b.authenticator(auth.clone()));
        let policy = Policy::builder("me")
            .auth(AuthMode::Required)
            .rate_limit(Quota::per_minute(1))
            .build()
            .unwrap();
        let app = h.app("/me", policy, get(who));
        let res = req(Method::GET, "/me").send(&app).await;
        assert_eq!(res.status, status, "mode {mode}");
        if let Some(subject) = subject {
            assert_eq!(res.text(), subject, "mode {mode}");
        }
        assert_eq!(
            auth.asked_async.load(Ordering::SeqCst),
            asked_async,
            "mode {mode}"
        );
        if mode == 2 {
            // The bad credential counted against the address: the next one meets the limit
            // of one a minute (429, still audited as the unauthorized attempt it is).
            let res = req(Method::GET, "/me").send(&app).await;
            assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
        }
        let events = h.events().await;
        match mode {
            2 => {
                assert_eq!(events.len(), 2, "{events:?}");
                assert!(
                    events.iter().all(|e| e.reason == "bad_signature"),
                    "{events:?}"
                );
            }
            3 => assert_eq!(events[0].reason, "authenticator_panicked"),
            _ => assert!(events.is_empty(), "{events:?}"),
        }
    }
}

/// An inner service that panics in `call` itself, before any future: the pipeline calls a
/// ready inner service directly, and the panic is answered and audited like one in the
/// handler's future.
#[derive(Clone)]
struct PanicInCall;
impl<B> tower::Service<Request<B>> for PanicInCall {
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        panic!("inner service bug in call")
    }
}

#[tokio::test]
async fn a_panic_in_the_inner_services_call_is_a_500_and_audited() {
    let h = harness(|b| b);
    let layer = h.security.layer(Policy::public()).unwrap();
    let app = Router::new().route_service("/x", tower::Layer::layer(&layer, PanicInCall));
    let res = req(Method::GET, "/x").send(&app).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    assert!(!res.text().contains("inner service bug"), "no panic text");
    assert!(
        res.header("x-request-id").is_some(),
        "decorated like any answer"
    );
    let events = h.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].reason, "handler_panicked");
}

#[tokio::test]
async fn a_fail_open_store_failure_is_audited_also_when_a_later_check_refuses() {
    let h = harness(|b| b.rate_limit_store(FailingStore));
    let policy = Policy::builder("upload")
        .rate_limit(Quota::per_minute(10))
        .max_body_bytes(4)
        .failure_mode(FailureMode::Open)
        .build()
        .unwrap();
    let app = h.app("/api/x", policy, post(ok));
    let res = req(Method::POST, "/api/x")
        .header("content-length", "10")
        .body("0123456789")
        .send(&app)
        .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    let events = h.events().await;
    let mut seen: Vec<_> = events.iter().map(|e| (e.action, e.status)).collect();
    seen.sort_by_key(|(a, _)| a.as_str());
    assert_eq!(
        seen,
        [
            (AuditAction::InvalidInput, 413),
            (AuditAction::StoreFailure, 413)
        ],
        "{events:#?}"
    );
}

#[tokio::test]
async fn a_panicking_store_is_a_500_not_a_dropped_connection() {
    let h = harness(|b| b.rate_limit_store(PanickingStore));
    let app = h.app("/api/x", Policy::public(), get(ok));
    let res = req(Method::GET, "/api/x").send(&app).await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!res.text().contains("store bug"));
    let events = h.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, AuditAction::InternalError);
    assert_eq!(events[0].reason, "store_panicked");
}

// ---------------------------------------------------------------------------------------
// Part 4 (pipeline side) and part 6 (User-Agent).

#[tokio::test]
async fn a_bad_token_after_the_quota_is_spent_is_one_event() {
    let h = harness(|b| b);
    let policy = Policy::builder("login")
        .auth(AuthMode::Required)
        .rate_limit(Quota::per_minute(2))
        .build()
        .unwrap();
    let app = h.app("/me", policy, get(ok));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let res = req(Method::GET, "/me")
            .header("authorization", "Bearer nonsense")
            .send(&app)
            .await;
        statuses.push(res.status.as_u16());
    }
    assert_eq!(statuses, [401, 401, 429, 429]);
    let events = h.events().await;
    assert_eq!(events.len(), 4, "one event per request: {events:#?}");
    for (e, status) in events.iter().zip([401, 401, 429, 429]) {
        assert_eq!(e.action, AuditAction::UnauthorizedAccess);
        assert_eq!(e.reason, "bad");
        assert_eq!(e.status, status);
        assert_eq!(e.outcome, Outcome::Denied);
    }
}

#[tokio::test]
async fn a_non_ascii_user_agent_is_kept_escaped_not_dropped() {
    let h = harness(|b| b);
    let app = h.app("/api/x", Policy::public(), get(ok));
    let mut request = req(Method::DELETE, "/api/x").build();
    request.headers_mut().insert(
        "user-agent",
        http::HeaderValue::from_bytes("curl/8 \u{e9}t\u{e9}".as_bytes()).unwrap(),
    );
    let res = app.oneshot(request).await.unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let events = h.events().await;
    let ua = events[0].user_agent.as_deref().expect("kept");
    assert!(ua.starts_with("curl/8 "), "{ua}");
}

// ---------------------------------------------------------------------------------------
// Part 5: the deny cache.

/// A shared store in miniature: every check of a key waits for the previous one (a row lock)
/// and takes `latency` of (paused) tokio time; calls are counted.
struct RowLockStore {
    inner: MemoryStore,
    lock: tokio::sync::Mutex<()>,
    latency: Duration,
    calls: Arc<AtomicUsize>,
}

impl RateLimitStore for RowLockStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _row = self.lock.lock().await;
            tokio::time::sleep(self.latency).await;
            self.inner.acquire(key, quota, cost).await
        })
    }
    fn name(&self) -> &'static str {
        "row-lock"
    }
}

fn row_lock_harness(deny_cache: bool) -> (Harness, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let h = harness(move |b| {
        let store = RowLockStore {
            inner: MemoryStore::new(),
            lock: tokio::sync::Mutex::new(()),
            latency: Duration::from_millis(5),
            calls: c,
        };
        b.rate_limit_store(store).deny_cache(deny_cache)
    });
    (h, calls)
}

fn strict_like() -> Policy {
    Policy::builder("strict")
        .auth(AuthMode::Required)
        .rate_limit(Quota::per_minute(10))
        .failure_mode(FailureMode::Closed)
        .store_timeout(Duration::from_millis(50))
        .build()
        .unwrap()
}

async fn flood(h: &Harness, n: usize) -> (usize, usize, usize) {
    let app = h.app("/api/strict", strict_like(), post(ok));
    let sends = (0..n).map(|_| req(Method::POST, "/api/strict").bearer("alice").send(&app));
    let statuses: Vec<u16> = join_all(sends)
        .await
        .into_iter()
        .map(|r| r.status.as_u16())
        .collect();
    let count = |s| statuses.iter().filter(|&&x| x == s).count();
    (count(200), count(429), count(503))
}

#[tokio::test(start_paused = true)]
async fn a_hot_key_gets_429_not_503_with_the_deny_cache() {
    let (h, calls) = row_lock_harness(true);
    assert_eq!(flood(&h, 60).await, (10, 50, 0));
    // Ten admissions and one refusal reached the store; the other 49 were refused locally.
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    let events = h.events().await;
    assert_eq!(
        with_action(&events, AuditAction::RateLimitExceeded).len(),
        50
    );
    assert!(with_action(&events, AuditAction::StoreFailure).is_empty());
}

/// The control: without the cache the same flood queues on the row lock and the 50 ms store
/// timeout turns refusals into 503s (what three demo instances on Postgres showed).
#[tokio::test(start_paused = true)]
async fn without_the_deny_cache_the_same_flood_times_out() {
    let (h, calls) = row_lock_harness(false);
    let (admitted, refused, unavailable) = flood(&h, 60).await;
    assert!(unavailable > 0, "{admitted} {refused} {unavailable}");
    assert_eq!(calls.load(Ordering::SeqCst), 60);
}

#[tokio::test(start_paused = true)]
async fn refused_keys_cost_no_store_call_until_their_retry_time() {
    let (h, calls) = row_lock_harness(true);
    let app = h.app("/api/strict", strict_like(), post(ok));
    for _ in 0..10 {
        let res = req(Method::POST, "/api/strict")
            .bearer("bob")
            .send(&app)
            .await;
        assert_eq!(res.status, StatusCode::OK);
    }
    for _ in 0..1_000 {
        let res = req(Method::POST, "/api/strict")
            .bearer("bob")
            .send(&app)
            .await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(res.header("retry-after").is_some());
        assert_eq!(res.header("x-ratelimit-remaining"), Some("0"));
    }
    // 10 admissions + the first refusal; the next 999 refusals never reached the store.
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    // Another user is untouched.
    let res = req(Method::POST, "/api/strict")
        .bearer("carol")
        .send(&app)
        .await;
    assert_eq!(res.status, StatusCode::OK);
    // Past the retry time (on the harness clock the deny cache reads) the store is asked
    // again. The memory store behind runs on real time and still refuses: only the call is
    // counted here.
    h.clock.advance(Duration::from_secs(61));
    let before = calls.load(Ordering::SeqCst);
    let _ = req(Method::POST, "/api/strict")
        .bearer("bob")
        .send(&app)
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}
