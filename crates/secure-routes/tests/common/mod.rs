//! Shared fixtures for the pipeline tests: a tiny authenticator, a collecting audit sink,
//! broken rate-limit stores, a harness wiring them into a [`Security`] on a fake clock, and a
//! request builder that sets the socket peer the way hyper + axum's `ConnectInfo` would.
//!
//! Nothing here depends on the JWT authenticator: the pipeline is tested on its own.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::MethodRouter;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use secure_routes::audit::{
    AuditAction, AuditConfig, AuditError, AuditEvent, AuditSink, AuditWriter, BoxFuture,
};
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::{
    Decision, MemoryStore, Quota, RateLimitKey, RateLimitStore, StoreError,
};
use secure_routes::{Policy, Security, SecurityBuilder};
use tempfile::TempDir;
use tower::ServiceExt;

/// The fake clock's starting time: 2023-11-14T22:13:20Z.
pub(crate) const START: Duration = Duration::from_secs(1_700_000_000);
/// The CSRF secret every harness uses.
pub(crate) const SECRET: [u8; 32] = [7u8; 32];
/// The socket peer of requests that do not set one.
pub(crate) const PEER: &str = "203.0.113.7";

/// `Authorization: Bearer user:<name>` is a header credential for `<name>`
/// (`Bearer role:<role>:<name>` the same with the claim `"role": <role>`); the cookie
/// `session=<name>` is a cookie (ambient) credential; any other `Authorization` value is
/// invalid (`"bad"`); nothing at all is missing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TestAuth;

impl Authenticator for TestAuth {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(std::future::ready(authenticate(&parts.headers)))
    }
}

fn authenticate(headers: &HeaderMap) -> Result<Principal, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let s = v.to_str().map_err(|_| AuthError::Invalid("bad"))?;
        if let Some((role, name)) = s
            .strip_prefix("Bearer role:")
            .and_then(|rest| rest.split_once(':'))
        {
            let mut claims = serde_json::Map::new();
            claims.insert("role".into(), role.into());
            return Ok(Principal::new(name, CredentialSource::Header).with_claims(claims));
        }
        return match s.strip_prefix("Bearer user:") {
            Some(name) if !name.is_empty() => Ok(Principal::new(name, CredentialSource::Header)),
            _ => Err(AuthError::Invalid("bad")),
        };
    }
    for line in headers.get_all(header::COOKIE) {
        let Ok(line) = line.to_str() else { continue };
        for pair in line.split(';') {
            if let Some(name) = pair.trim().strip_prefix("session=") {
                if name.is_empty() {
                    return Err(AuthError::Invalid("bad"));
                }
                return Ok(Principal::new(name, CredentialSource::Cookie));
            }
        }
    }
    Err(AuthError::Missing)
}

/// An audit sink collecting every event it is handed.
#[derive(Clone, Debug, Default)]
pub(crate) struct CollectSink(pub(crate) Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for CollectSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(batch);
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &'static str {
        "collect"
    }
}

/// An audit sink that always fails.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FailingSink;

impl AuditSink for FailingSink {
    fn write_batch<'a>(&'a self, _: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(std::future::ready(Err(AuditError("disk on fire".into()))))
    }
    fn name(&self) -> &'static str {
        "failing"
    }
}

/// A rate-limit store that is down.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FailingStore;

impl RateLimitStore for FailingStore {
    fn acquire<'a>(
        &'a self,
        _: &'a RateLimitKey,
        _: Quota,
        _: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(std::future::ready(Err(StoreError::Unavailable(
            "connection refused".into(),
        ))))
    }
    fn name(&self) -> &'static str {
        "failing"
    }
}

/// A rate-limit store that never answers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HangingStore;

impl RateLimitStore for HangingStore {
    fn acquire<'a>(
        &'a self,
        _: &'a RateLimitKey,
        _: Quota,
        _: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(std::future::pending())
    }
    fn name(&self) -> &'static str {
        "hanging"
    }
}

/// A store counting the calls it forwards to a memory store.
#[derive(Debug)]
pub(crate) struct CountingStore {
    pub(crate) inner: Arc<MemoryStore>,
    pub(crate) calls: Arc<AtomicUsize>,
}

impl RateLimitStore for CountingStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.acquire(key, quota, cost)
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

/// A [`Security`] on a fake clock, with [`TestAuth`], a memory store on that clock and an
/// audit writer collecting into memory.
pub(crate) struct Harness {
    pub(crate) security: Security,
    pub(crate) clock: FakeClock,
    pub(crate) writer: AuditWriter,
    pub(crate) collected: Arc<Mutex<Vec<AuditEvent>>>,
    pub(crate) spill_dir: TempDir,
}

/// The spill file of a harness's audit writer.
pub(crate) fn spill_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("audit-spill.jsonl")
}

/// Builds a harness; `configure` may override anything (store, audit writer, origins, ...).
pub(crate) fn harness(configure: impl FnOnce(SecurityBuilder) -> SecurityBuilder) -> Harness {
    harness_with_sink(None, configure)
}

/// Same, with another audit sink than the collecting one.
pub(crate) fn harness_with_sink(
    sink: Option<Arc<dyn AuditSink>>,
    configure: impl FnOnce(SecurityBuilder) -> SecurityBuilder,
) -> Harness {
    let clock = FakeClock::new(START);
    let collected = Arc::new(Mutex::new(Vec::new()));
    let spill_dir = tempfile::tempdir().expect("temp dir");
    let sink = sink.unwrap_or_else(|| Arc::new(CollectSink(collected.clone())));
    let writer = AuditWriter::spawn(
        sink,
        AuditConfig {
            spill_path: spill_path(&spill_dir),
            // One row per decision, so tests can count events per request; folding is
            // tested in audit_fold.rs.
            fold_window: Duration::ZERO,
            ..AuditConfig::default()
        },
    );
    let builder = Security::builder()
        .csrf_secret(SECRET)
        .authenticator(TestAuth)
        .rate_limit_store(MemoryStore::with_clock(Arc::new(clock.clone())))
        .clock(Arc::new(clock.clone()))
        .audit(writer.clone());
    let security = configure(builder)
        .build()
        .expect("valid test configuration");
    Harness {
        security,
        clock,
        writer,
        collected,
        spill_dir,
    }
}

impl Harness {
    /// A router serving `route` at `path`, behind `policy`.
    pub(crate) fn app(&self, path: &str, policy: Policy, route: MethodRouter) -> Router {
        self.add(Router::new(), path, policy, route)
    }

    /// Adds `route` at `path` behind `policy` to `router`.
    pub(crate) fn add(
        &self,
        router: Router,
        path: &str,
        policy: Policy,
        route: MethodRouter,
    ) -> Router {
        let layer = self
            .security
            .layer(policy)
            .expect("policy fits the security");
        router.route(path, route.layer(layer))
    }

    /// Flushes the audit writer and returns every event it stored. Call once, at the end.
    pub(crate) async fn events(&self) -> Vec<AuditEvent> {
        self.writer.shutdown().await;
        self.collected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The events with `action`.
pub(crate) fn with_action(events: &[AuditEvent], action: AuditAction) -> Vec<&AuditEvent> {
    events.iter().filter(|e| e.action == action).collect()
}

/// A request under construction.
pub(crate) struct Req {
    inner: Request<Body>,
}

/// A request with no body from [`PEER`].
pub(crate) fn req(method: Method, uri: &str) -> Req {
    let mut inner = Request::new(Body::empty());
    *inner.method_mut() = method;
    *inner.uri_mut() = uri.parse().expect("valid test URI");
    Req { inner }.peer(PEER)
}

impl Req {
    /// Appends a header.
    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("valid header name");
        let value = HeaderValue::from_str(value).expect("valid header value");
        self.inner.headers_mut().append(name, value);
        self
    }
    /// `Authorization: Bearer user:<name>`.
    pub(crate) fn bearer(self, name: &str) -> Self {
        self.header("authorization", &format!("Bearer user:{name}"))
    }
    /// Sets the socket peer address.
    pub(crate) fn peer(mut self, ip: &str) -> Self {
        let ip: IpAddr = ip.parse().expect("valid test IP");
        self.inner
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(ip, 40_000)));
        self
    }
    /// Sets the body.
    pub(crate) fn body(mut self, body: impl Into<Body>) -> Self {
        *self.inner.body_mut() = body.into();
        self
    }
    /// The request.
    pub(crate) fn build(self) -> Request<Body> {
        self.inner
    }
    /// Sends the request to `app` and reads the whole response.
    pub(crate) async fn send(self, app: &Router) -> Res {
        let res = app
            .clone()
            .oneshot(self.inner)
            .await
            .unwrap_or_else(|e| match e {});
        Res::read(res).await
    }
}

/// A response read to the end.
#[derive(Debug)]
pub(crate) struct Res {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Res {
    /// Reads `res` to the end.
    pub(crate) async fn read(res: http::Response<Body>) -> Res {
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .expect("readable response body");
        Res {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
    /// A header as text (`None` if absent). Panics if it is not visible ASCII.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }
    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("JSON body expected ({e}): {}", self.text()))
    }
    /// Asserts an RFC 9457 problem with `status` and the seed's `error` string; returns it.
    #[track_caller]
    pub(crate) fn assert_problem(&self, status: u16, error: &str) -> serde_json::Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status; body: {}",
            self.text()
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "problem content type"
        );
        let v = self.json();
        assert_eq!(v["status"], status, "problem status member: {v}");
        assert_eq!(v["error"], error, "problem error member: {v}");
        let ty = v["type"].as_str().unwrap_or_default();
        assert!(!ty.is_empty(), "problem type member: {v}");
        assert!(
            v["title"].as_str().is_some_and(|t| !t.is_empty()),
            "problem title: {v}"
        );
        assert!(v["detail"].is_string(), "problem detail: {v}");
        v
    }
    /// Whether a comma-separated header (over all its lines) lists `token`, case-insensitively.
    pub(crate) fn header_lists(&self, name: &str, token: &str) -> bool {
        self.headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }
}

/// `secure_routes::serve` running an app on an ephemeral loopback port, for the tests that
/// drive it over real connections.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<std::io::Result<secure_routes::serve::ServeReport>>,
}

impl Server {
    pub(crate) async fn start(app: Router, config: secure_routes::serve::ServeConfig) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(secure_routes::serve::serve(listener, app, config, async {
            let _ = stopped.await;
        }));
        Server { addr, stop, task }
    }

    /// Signals shutdown and returns the report (bounded: a server that waits on its
    /// connections past its grace fails here).
    pub(crate) async fn stop(self) -> secure_routes::serve::ServeReport {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("serve returns within 20 s of the stop signal")
            .unwrap()
            .unwrap()
    }
}
