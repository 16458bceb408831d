//! The tower layer that runs the pipeline: [`Security`] holds what every policy shares
//! (authenticator, rate-limit store, audit writer, secrets, trusted proxies, CORS origins);
//! [`Security::layer`] turns a [`Policy`] into a [`SecurityLayer`] for one route or a router.
//!
//! The service is a stack, outermost first: tower-http CORS (answers preflights, adds
//! `Vary: Origin`), the core checks (client, method, auth, rate limit, body, CSRF token,
//! response headers, audit), tower-http's Fetch Metadata / `Origin` CSRF check, tower-http
//! catch-panic, then the handler. Every rejection is a response, never a service error, and
//! carries a [`RejectionInfo`] in its extensions.
//!
//! ```
//! use axum::{Router, routing::get, body::Body};
//! use http::{Request, StatusCode};
//! use secure_routes::{Policy, Security};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
//! let app: Router = Router::new()
//!     .route("/api/public-data", get(|| async { "data" }).layer(security.layer(Policy::public()).unwrap()));
//! let res = app
//!     .oneshot(Request::delete("/api/public-data").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! // axum answers methods the route has no handler for; the policy's answer comes first
//! // for every method the route serves. Here DELETE has no handler: axum's 405.
//! assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
//! # });
//! ```

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::BodyExt;
use tower::BoxError;
use tower_http::body::UnsyncBoxBody;
use tower_http::catch_panic::{CatchPanic, CatchPanicLayer, ResponseForPanic};
use tower_http::cors::{Cors, CorsLayer};
use tower_http::csrf::{
    Csrf, CsrfLayer, ProtectionError, ProtectionErrorKind, ResponseForProtectionError,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::audit::{AuditEvent, AuditWriter, Outcome};
use crate::auth::{AuthError, Authenticator, Principal};
use crate::authz::Requirement;
use crate::client_ip::TrustedProxies;
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use crate::guard::body::{LimitedBody, check_declared, too_large};
use crate::guard::csrf::{self as csrf_token, CsrfTokens};
use crate::guard::{method, rate_limit as rl};
use crate::policy::{AuthMode, CsrfMode, FailureMode, Policy};
use crate::rate_limit::{BoxFuture, Decision, KeyHasher, MemoryStore, RateLimitStore, Subject};
use crate::response::cors::{self, DEV_ORIGINS, parse_origin};
use crate::response::problem::{Rejection, RejectionInfo, RejectionKind};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The client address the pipeline resolved (trusted proxies applied), in request extensions.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use secure_routes::ClientIp;
/// async fn who(Extension(ClientIp(ip)): Extension<ClientIp>) -> String { ip.to_string() }
/// let _app: Router = Router::new().route("/ip", get(who));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Shared security state, configured once and reused by every policy. Cheap to clone.
#[derive(Clone)]
pub struct Security {
    shared: Arc<Shared>,
}

struct Shared {
    authenticator: Option<Arc<dyn Authenticator>>,
    store: Arc<dyn RateLimitStore>,
    audit: Option<AuditWriter>,
    hasher: KeyHasher,
    csrf: CsrfTokens,
    proxies: TrustedProxies,
    origins: Vec<HeaderValue>,
    csrf_layer: CsrfLayer<CsrfProblem>,
    https: bool,
    truncate_ips: bool,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("store", &self.shared.store.name())
            .field("authenticator", &self.shared.authenticator.is_some())
            .field("audit", &self.shared.audit.is_some())
            .field("origins", &self.shared.origins)
            .field("https", &self.shared.https)
            .finish_non_exhaustive()
    }
}

impl Security {
    /// Starts the configuration. Production-safe defaults: no trusted proxies, no CORS
    /// origins, memory rate-limit store, audit to `tracing` only, and a CSRF secret required.
    pub fn builder() -> SecurityBuilder {
        SecurityBuilder::default()
    }

    /// A layer enforcing `policy`. Fails if the policy needs something this `Security` lacks
    /// (an authenticator for [`AuthMode::Required`] or [`AuthMode::Optional`]).
    pub fn layer(&self, policy: Policy) -> Result<SecurityLayer, ConfigError> {
        if policy.auth() != AuthMode::Off && self.shared.authenticator.is_none() {
            return Err(ConfigError::new(format!(
                "policy {:?} authenticates callers but no authenticator is configured",
                policy.name()
            )));
        }
        let cors = cors::layer(&self.shared.origins, policy.methods());
        let mut csrf = self.shared.csrf_layer.clone();
        if policy.csrf() == CsrfMode::Off {
            csrf = csrf.with_insecure_bypass(|_: &Method, _: &http::Uri| true);
        }
        let fixed_bucket = policy
            .bucket()
            .map(|b| Arc::<str>::from(format!("bucket:{b}")));
        let fallback_bucket = Arc::<str>::from(format!("policy:{}", policy.name()));
        let limit_headers = policy
            .rate_limit()
            .map(|q| rl::LimitHeaders::new(policy.name(), q));
        Ok(SecurityLayer {
            cors,
            csrf,
            core: Arc::new(CoreState {
                shared: self.shared.clone(),
                policy,
                fixed_bucket,
                fallback_bucket,
                limit_headers,
            }),
        })
    }

    /// The CSRF token issuer (to mint tokens in a token endpoint).
    pub fn csrf_tokens(&self) -> &CsrfTokens {
        &self.shared.csrf
    }

    /// The CSRF cookie name: `__Host-csrf-token` when serving HTTPS, else `csrf-token`.
    pub fn csrf_cookie_name(&self) -> &'static str {
        if self.shared.https {
            csrf_token::SECURE_COOKIE_NAME
        } else {
            csrf_token::COOKIE_NAME
        }
    }

    /// A CSRF token for the caller and the `Set-Cookie` value carrying it. The token is bound
    /// to the principal's subject (anonymous callers: the empty binding). If the request
    /// already holds a valid token for that binding it is returned unchanged, so parallel
    /// tabs and requests keep working (the original rotated it on every response).
    ///
    /// ```
    /// use http::HeaderMap;
    /// use secure_routes::Security;
    /// let s = Security::builder().csrf_secret([1u8; 32]).build().unwrap();
    /// let (token, cookie) = s.issue_csrf(&HeaderMap::new(), None);
    /// assert!(s.csrf_tokens().verify(&token, ""));
    /// assert!(cookie.to_str().unwrap().starts_with("csrf-token="));
    /// ```
    pub fn issue_csrf(
        &self,
        request_headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> (String, HeaderValue) {
        let binding = principal.map_or("", Principal::csrf_binding);
        let name = self.csrf_cookie_name();
        let existing = match csrf_token::single_cookie(request_headers, name) {
            csrf_token::CookieLookup::One(t) if self.shared.csrf.verify(&t, binding) => Some(t),
            _ => None,
        };
        let token = existing.unwrap_or_else(|| self.shared.csrf.issue(binding));
        let cookie = csrf_token::cookie_header_value(&token, self.shared.https);
        let value = HeaderValue::from_str(&cookie)
            .unwrap_or_else(|_| HeaderValue::from_static("csrf-token=; Max-Age=0"));
        (token, value)
    }

    /// The audit writer, if one is configured.
    pub fn audit(&self) -> Option<&AuditWriter> {
        self.shared.audit.as_ref()
    }
}

/// Builds a [`Security`]; see [`Security::builder`].
#[derive(Default)]
#[must_use]
pub struct SecurityBuilder {
    authenticator: Option<Arc<dyn Authenticator>>,
    store: Option<Arc<dyn RateLimitStore>>,
    audit: Option<AuditWriter>,
    csrf_secret: Option<Vec<u8>>,
    key_secret: Option<Vec<u8>>,
    proxies: Vec<String>,
    origins: Vec<String>,
    development: bool,
    https: bool,
    truncate_ips: bool,
    clock: Option<Arc<dyn Clock>>,
}

impl fmt::Debug for SecurityBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityBuilder")
            .field("origins", &self.origins)
            .field("proxies", &self.proxies)
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

impl SecurityBuilder {
    /// The authenticator for policies that authenticate.
    pub fn authenticator(self, a: impl Authenticator) -> Self {
        self.shared_authenticator(Arc::new(a))
    }
    /// Same, from a shared handle.
    pub fn shared_authenticator(mut self, a: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(a);
        self
    }
    /// The rate-limit store (default: a [`MemoryStore`]).
    pub fn rate_limit_store(self, s: impl RateLimitStore) -> Self {
        self.shared_rate_limit_store(Arc::new(s))
    }
    /// Same, from a shared handle.
    pub fn shared_rate_limit_store(mut self, s: Arc<dyn RateLimitStore>) -> Self {
        self.store = Some(s);
        self
    }
    /// The audit writer (default: none; events are logged through `tracing`).
    pub fn audit(mut self, writer: AuditWriter) -> Self {
        self.audit = Some(writer);
        self
    }
    /// The CSRF signing secret (at least 32 bytes; the original's `CSRF_SALT`).
    pub fn csrf_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.csrf_secret = Some(secret.as_ref().to_vec());
        self
    }
    /// The secret keying rate-limit key hashes. Instances sharing a store must share it.
    /// Default: derived from the CSRF secret.
    pub fn key_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.key_secret = Some(secret.as_ref().to_vec());
        self
    }
    /// Proxies (CIDRs or addresses) whose `Forwarded` / `X-Forwarded-For` / `X-Real-IP` and
    /// `X-Request-Id` headers are believed. Default: none.
    pub fn trusted_proxies<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.proxies
            .extend(cidrs.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }
    /// Origins allowed to call cross-origin with credentials (CORS), also trusted by the
    /// Fetch Metadata CSRF check.
    pub fn allowed_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.origins
            .extend(origins.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }
    /// Development mode: allows `http://localhost:3000` and `:3001` as origins, and generates
    /// missing secrets (with a loud warning) instead of refusing to build.
    pub fn development(mut self, on: bool) -> Self {
        self.development = on;
        self
    }
    /// The deployment serves HTTPS: adds `Strict-Transport-Security` and uses the
    /// `__Host-csrf-token` cookie with `Secure`.
    pub fn https(mut self, on: bool) -> Self {
        self.https = on;
        self
    }
    /// Truncates client addresses in audit events (IPv4 to /24, IPv6 to /48).
    pub fn truncate_audit_ips(mut self, on: bool) -> Self {
        self.truncate_ips = on;
        self
    }
    /// The clock for response headers (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates everything and returns every problem found.
    pub fn build(self) -> Result<Security, ConfigError> {
        let mut problems = Vec::new();
        let csrf_secret = match self.csrf_secret {
            Some(s) => s,
            None if self.development => {
                tracing::warn!(
                    "!!! no CSRF secret configured: generated a random one for this process. \
                     Tokens will not survive a restart or work across instances. \
                     Set CSRF_SECRET (32+ bytes) in production !!!"
                );
                random_secret()
            }
            None => {
                problems.push(
                    "a CSRF secret is required (32+ bytes); development mode generates one"
                        .to_owned(),
                );
                random_secret()
            }
        };
        let csrf = CsrfTokens::new(&csrf_secret).unwrap_or_else(|e| {
            problems.extend(e.problems().iter().cloned());
            CsrfTokens::new(&random_secret())
                .unwrap_or_else(|_| unreachable!("a 32-byte secret is valid"))
        });
        let hasher = match &self.key_secret {
            Some(k) => KeyHasher::new(k),
            // Domain separation: the rate-limit key is a different function of the secret.
            None => {
                let derived = KeyHasher::new(&csrf_secret).key(
                    "secure-routes/rate-limit-key/v1",
                    &Subject::Custom(String::new()),
                );
                KeyHasher::new(derived.as_bytes())
            }
        };
        let proxies = TrustedProxies::parse(&self.proxies).unwrap_or_else(|e| {
            problems.extend(e.problems().iter().cloned());
            TrustedProxies::none()
        });
        let mut origin_strs = self.origins;
        if self.development {
            origin_strs.extend(DEV_ORIGINS.iter().map(|s| (*s).to_owned()));
        }
        let mut origins = Vec::new();
        let mut csrf_layer = CsrfLayer::new().with_rejection_response(CsrfProblem);
        for o in &origin_strs {
            match parse_origin(o) {
                Ok(v) => {
                    if let Ok(s) = v.to_str() {
                        match csrf_layer.clone().add_trusted_origin(s) {
                            Ok(l) => csrf_layer = l,
                            Err(e) => problems.push(e.to_string()),
                        }
                    }
                    if !origins.contains(&v) {
                        origins.push(v);
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        let shared = Shared {
            authenticator: self.authenticator,
            store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
            audit: self.audit,
            hasher,
            csrf,
            proxies,
            origins,
            csrf_layer,
            https: self.https,
            truncate_ips: self.truncate_ips,
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
        };
        ConfigError::check(
            problems,
            Security {
                shared: Arc::new(shared),
            },
        )
    }
}

fn random_secret() -> Vec<u8> {
    use rand::RngCore;
    let mut s = vec![0u8; 32];
    rand::rng().fill_bytes(&mut s);
    s
}

/// Applies one [`Policy`] with the shared [`Security`] state. Build with [`Security::layer`].
#[derive(Clone)]
pub struct SecurityLayer {
    cors: CorsLayer,
    csrf: CsrfLayer<CsrfProblem>,
    core: Arc<CoreState>,
}

impl fmt::Debug for SecurityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityLayer")
            .field("policy", &self.core.policy.name())
            .finish_non_exhaustive()
    }
}

type Stack<S> = Cors<Core<Csrf<CatchPanic<S, PanicProblem>, CsrfProblem>>>;

impl<S> Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;

    fn layer(&self, inner: S) -> SecurityService<S> {
        let handler = CatchPanicLayer::custom(PanicProblem).layer(inner);
        let fetch_metadata = self.csrf.layer(handler);
        let core = Core {
            state: self.core.clone(),
            inner: fetch_metadata,
        };
        SecurityService {
            inner: self.cors.layer(core),
        }
    }
}

/// The service a [`SecurityLayer`] produces.
#[derive(Clone)]
pub struct SecurityService<S> {
    inner: Stack<S>,
}

impl<S> fmt::Debug for SecurityService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecurityService")
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for SecurityService<S>
where
    Stack<S>: Service<Request<ReqBody>>,
{
    type Response = <Stack<S> as Service<Request<ReqBody>>>::Response;
    type Error = <Stack<S> as Service<Request<ReqBody>>>::Error;
    type Future = <Stack<S> as Service<Request<ReqBody>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.inner.call(req)
    }
}

/// Answers a handler panic with a generic 500 problem; the panic message goes to the log only.
#[derive(Clone, Copy, Debug)]
pub struct PanicProblem;

impl ResponseForPanic for PanicProblem {
    type ResponseBody = Body;

    fn response_for_panic(
        &mut self,
        err: Box<dyn std::any::Any + Send + 'static>,
    ) -> http::Response<Body> {
        let msg = err
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| err.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        tracing::error!(panic = %crate::audit::sanitize(&msg, 512), "handler panicked");
        Rejection::new(RejectionKind::Internal, "handler_panicked").into_response()
    }
}

/// Answers a failed Fetch Metadata / `Origin` check with the CSRF problem body.
#[derive(Clone, Copy, Debug)]
pub struct CsrfProblem;

impl ResponseForProtectionError<UnsyncBoxBody<Bytes, BoxError>> for CsrfProblem {
    fn response_for_protection_error(
        &mut self,
        error: ProtectionError,
    ) -> http::Response<UnsyncBoxBody<Bytes, BoxError>> {
        let reason = match error.kind() {
            ProtectionErrorKind::CrossOriginRequest => "cross_site_fetch",
            _ => "cross_origin",
        };
        Rejection::new(RejectionKind::CsrfFailed, reason)
            .with_detail("Cross-origin state-changing requests are not allowed.")
            .into_response()
            .map(|b| UnsyncBoxBody::new(b.map_err(BoxError::from)))
    }
}

struct CoreState {
    shared: Arc<Shared>,
    policy: Policy,
    fixed_bucket: Option<Arc<str>>,
    fallback_bucket: Arc<str>,
    /// The policy's rate-limit headers, formatted once.
    limit_headers: Option<rl::LimitHeaders>,
}

/// The core checks; see the module docs for where it sits in the stack.
#[derive(Clone)]
pub struct Core<S> {
    state: Arc<CoreState>,
    inner: S,
}

impl<S> fmt::Debug for Core<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Core")
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Core<S>
where
    S: Service<Request<LimitedBody<ReqBody>>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the one poll_ready prepared is taken (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(run(state, inner, req))
    }
}

/// What the audit step needs to know about the request.
struct Ctx {
    state: Arc<CoreState>,
    method: Method,
    path: http::Uri,
    route: Arc<str>,
    request_id: HeaderValue,
    ip: IpAddr,
    user_agent: Option<HeaderValue>,
    subject: Option<Principal>,
    limit: Option<Decision>,
    /// A store failure let through (fail-open): audited with the final status.
    failed_open: Option<RejectionInfo>,
}

impl Ctx {
    fn event(&self, info: RejectionInfo, status: u16, outcome: Outcome) -> AuditEvent {
        let shared = &self.state.shared;
        let ip = if shared.truncate_ips {
            truncate_ip(self.ip)
        } else {
            self.ip
        };
        let mut e = AuditEvent::new(info.kind.audit_action())
            .with_outcome(outcome)
            .with_status(status)
            .with_client_ip(ip)
            .with_request(self.method.as_str(), &self.route, self.path.path())
            .with_reason(info.reason)
            .with_request_id(self.request_id.to_str().unwrap_or(""))
            .with_metadata(serde_json::json!({ "policy": self.state.policy.name() }));
        if let Some(p) = &self.subject {
            e = e.with_subject(p.subject());
        }
        if let Some(ua) = self.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            e = e.with_user_agent(ua);
        }
        e
    }

    async fn audit(&self, info: RejectionInfo, status: u16, outcome: Outcome) {
        metrics::counter!(
            "secure_routes_decisions_total",
            "policy" => self.state.policy.name().to_owned(),
            "reason" => info.reason,
        )
        .increment(1);
        let event = self.event(info, status, outcome);
        match &self.state.shared.audit {
            Some(w) => w.record(event).await,
            None => tracing::info!(
                target: "secure_routes::audit",
                action = event.action.as_str(),
                reason = %event.reason,
                status = event.status,
                route = %event.route,
                request_id = %event.request_id,
                "security event"
            ),
        }
    }

    /// Audits a rejection and turns it into the final response.
    async fn reject(&self, rejection: Rejection) -> Response {
        let info = rejection.info();
        self.audit(info, info.kind.status().as_u16(), Outcome::Denied)
            .await;
        let mut res = rejection.into_response();
        self.decorate(&mut res);
        res
    }

    /// Step 10: security headers, rate-limit headers, no-store when authenticated, request id.
    fn decorate(&self, res: &mut Response) {
        let shared = &self.state.shared;
        let h = res.headers_mut();
        // Room for everything below at once: growing the map step by step rehashes it twice.
        h.reserve(16);
        self.state.policy.security_headers().apply(h, shared.https);
        // Both come from the policy's quota: a decision exists only on a rate-limited route.
        if let (Some(decision), Some(limit_headers)) = (&self.limit, &self.state.limit_headers)
            && !h.contains_key("ratelimit")
        {
            limit_headers.apply(h, decision, shared.clock.now());
        }
        if self.subject.is_some() {
            // Authenticated answers are per-user: no shared cache may keep them.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        h.insert(X_REQUEST_ID, self.request_id.clone());
    }
}

fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
    }
}

/// A request id from a trusted proxy is kept if it is short and plain; anything else is
/// replaced by a fresh UUIDv7 (an untrusted client could otherwise forge ids in the audit log).
fn request_id(state: &CoreState, peer: IpAddr, headers: &HeaderMap) -> HeaderValue {
    if state.shared.proxies.contains(peer)
        && let Some(v) = headers.get(X_REQUEST_ID)
        && (1..=64).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return v.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let s = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn route_identity(state: &CoreState, parts: &Parts) -> Arc<str> {
    if let Some(b) = &state.fixed_bucket {
        return b.clone();
    }
    match parts.extensions.get::<MatchedPath>() {
        // The matched template, never the raw URL: `?x=1`, case or encoding tricks cannot
        // create a fresh bucket.
        Some(m) => Arc::from(format!("route:{}", m.as_str())),
        // Applied outside routing (a whole-router `.layer`): one bucket for the policy.
        None => state.fallback_bucket.clone(),
    }
}

fn is_unsafe(m: &Method) -> bool {
    !csrf_token::is_safe_method(m)
}

async fn run<S, ReqBody, ResBody>(
    state: Arc<CoreState>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response, S::Error>
where
    S: Service<Request<LimitedBody<ReqBody>>, Response = http::Response<ResBody>>,
    ReqBody: http_body::Body,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let shared = state.shared.clone();
    let policy = &state.policy;

    // 1. The client: socket peer, forwarding headers only from trusted proxies.
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let ip = shared.proxies.client_ip(peer, &parts.headers);
    let rid = request_id(&state, peer, &parts.headers);
    parts.headers.insert(X_REQUEST_ID, rid.clone());
    parts.extensions.insert(ClientIp(ip));
    let route = route_identity(&state, &parts);
    let mut ctx = Ctx {
        state: state.clone(),
        method: parts.method.clone(),
        path: parts.uri.clone(),
        route: route.clone(),
        request_id: rid,
        ip,
        user_agent: parts.headers.get(header::USER_AGENT).cloned(),
        subject: None,
        limit: None,
        failed_open: None,
    };

    // 4. Method allow-list (CORS preflights were answered by the outer CORS layer).
    if let Err(r) = method::check(policy.methods(), &parts.method) {
        return Ok(ctx.reject(r).await);
    }

    // 5. Authentication.
    if policy.auth() != AuthMode::Off
        && let Some(auth) = &shared.authenticator
    {
        match auth.authenticate(&parts).await {
            Ok(p) => ctx.subject = Some(p),
            Err(AuthError::Missing) if policy.auth() == AuthMode::Optional => {}
            Err(AuthError::Unavailable(why)) => {
                tracing::warn!(error = %crate::audit::sanitize(&why, 256), "authenticator unavailable");
                let r = Rejection::new(RejectionKind::Unavailable, "authenticator_unavailable")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return Ok(ctx.reject(r).await);
            }
            Err(e) => {
                let reason = match e {
                    AuthError::Invalid(why) => why,
                    _ => "missing_credential",
                };
                metrics::counter!("secure_routes_auth_failures_total").increment(1);
                // Failures count against the client address too, so guessing credentials
                // runs into the route's limit like any other traffic.
                if let Some(quota) = policy.rate_limit() {
                    let key = shared.hasher.key(&route, &Subject::from_ip(ip));
                    if let Ok(Ok(d)) = tokio::time::timeout(
                        policy.store_timeout(),
                        shared.store.acquire(&key, quota, 1),
                    )
                    .await
                        && !d.allowed
                    {
                        let r = rl::too_many_requests(policy.name(), quota, &d, shared.clock.now());
                        ctx.audit(
                            RejectionInfo {
                                kind: RejectionKind::Unauthorized,
                                reason,
                            },
                            429,
                            Outcome::Denied,
                        )
                        .await;
                        return Ok(ctx.reject(r).await);
                    }
                }
                return Ok(ctx.reject(Rejection::unauthorized(reason)).await);
            }
        }
    }

    // 6. Rate limit: per route (or shared bucket) and subject, via one atomic store call.
    if let Some(quota) = policy.rate_limit() {
        let subject = match &ctx.subject {
            Some(p) => Subject::User(p.subject().to_owned()),
            None => Subject::from_ip(ip),
        };
        let key = shared.hasher.key(&route, &subject);
        let result =
            tokio::time::timeout(policy.store_timeout(), shared.store.acquire(&key, quota, 1))
                .await;
        match result {
            Ok(Ok(d)) if d.allowed => ctx.limit = Some(d),
            Ok(Ok(d)) => {
                ctx.limit = Some(d);
                let r = rl::too_many_requests(policy.name(), quota, &d, shared.clock.now());
                return Ok(ctx.reject(r).await);
            }
            Ok(Err(_)) | Err(_) => {
                let reason = if result.is_err() {
                    "store_timeout"
                } else {
                    "store_error"
                };
                if let Ok(Err(e)) = &result {
                    tracing::warn!(store = shared.store.name(), error = %e, "rate-limit store failed");
                }
                metrics::counter!(
                    "secure_routes_store_failures_total",
                    "store" => shared.store.name(),
                )
                .increment(1);
                let info = RejectionInfo {
                    kind: RejectionKind::Unavailable,
                    reason,
                };
                match policy.failure_mode() {
                    FailureMode::Open => ctx.failed_open = Some(info),
                    FailureMode::Closed => {
                        // 503, never 429: the client did nothing wrong.
                        let r = Rejection::new(RejectionKind::Unavailable, reason)
                            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
                        return Ok(ctx.reject(r).await);
                    }
                }
            }
        }
    }

    // 6b. Authorization: after the rate limit, so probing a forbidden route costs quota.
    // Requirements imply required authentication (checked when the policy is built); no
    // principal here still fails closed.
    if !policy.requirements().is_empty() {
        let unmet = match &ctx.subject {
            None => Some("missing_credential"),
            Some(p) => policy
                .requirements()
                .iter()
                .find(|r| !r.is_met(p))
                .map(Requirement::reason),
        };
        if let Some(reason) = unmet {
            metrics::counter!("secure_routes_authz_failures_total").increment(1);
            return Ok(ctx
                .reject(Rejection::new(RejectionKind::Forbidden, reason))
                .await);
        }
    }

    // 7. Body size, declared.
    if let Some(limit) = policy.max_body_bytes()
        && let Err(r) = check_declared(&parts.headers, limit)
    {
        return Ok(ctx.reject(r).await);
    }

    // 8b. Signed double-submit CSRF token, unless the credential was an explicit header
    // (not ambient, so nothing for a cross-site page to ride on).
    let needs_token = match policy.csrf() {
        CsrfMode::Off => false,
        CsrfMode::Always => true,
        CsrfMode::Auto => ctx.subject.as_ref().is_none_or(Principal::is_ambient),
    };
    if needs_token && is_unsafe(&parts.method) {
        let binding = ctx.subject.as_ref().map_or("", Principal::csrf_binding);
        let name = if shared.https {
            csrf_token::SECURE_COOKIE_NAME
        } else {
            csrf_token::COOKIE_NAME
        };
        if let Err(reason) = shared.csrf.check_request(&parts.headers, name, binding) {
            return Ok(ctx
                .reject(Rejection::new(RejectionKind::CsrfFailed, reason))
                .await);
        }
    }

    // 8a + 9: Fetch Metadata check (tower-http), catch-panic, handler; streamed body limit.
    if let Some(p) = &ctx.subject {
        parts.extensions.insert(p.clone());
    }
    let (body, exceeded) = LimitedBody::new(body, policy.max_body_bytes());
    let res = inner.call(Request::from_parts(parts, body)).await?;
    let mut res = res.map(Body::new);
    if exceeded.load(Ordering::SeqCst) {
        // Whatever the handler made of the body error, the answer is ours: 413.
        return Ok(ctx.reject(too_large("streamed_length")).await);
    }
    if let Some(info) = ctx.failed_open {
        ctx.audit(info, res.status().as_u16(), Outcome::Allowed)
            .await;
    }
    if let Some(info) = res.extensions().get::<RejectionInfo>().copied() {
        ctx.audit(info, res.status().as_u16(), Outcome::Denied)
            .await;
    }
    ctx.decorate(&mut res);
    Ok(res)
}

// Keep `Infallible` in scope for the docs of `SecurityService` users (axum needs it).
#[allow(dead_code)]
fn _assert_infallible(_: Infallible) {}
