//! The tower layer that runs the pipeline: [`Security`] holds what every policy shares
//! (authenticator, rate-limit store, audit writer, secrets, trusted proxies, CORS origins);
//! [`Security::layer`] turns a [`Policy`] into a [`SecurityLayer`] for one route or a router.
//!
//! The service is a stack, outermost first: the core checks (client, CORS preflight, method,
//! auth, rate limit, body, CSRF token, response headers, audit), tower-http CORS (answers the
//! preflights the core hands it, adds `Vary: Origin` and the CORS headers), tower-http's Fetch
//! Metadata / `Origin` CSRF check, tower-http catch-panic, then the handler. Every rejection
//! is a response, never a service error, and carries a [`RejectionInfo`] in its extensions.
//!
//! The client address is the socket peer from axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`). A request without it is refused
//! with a 500 and the configuration error is logged once: guessing an address would put every
//! client in one rate-limit bucket.
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
//! let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1], 4000)));
//! let res = app
//!     .clone()
//!     .oneshot(Request::delete("/api/public-data").extension(peer).body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! // The policy answers (GET and POST only), with the `Allow` header, before axum's router.
//! assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
//! assert_eq!(res.headers()["allow"], "GET, POST, HEAD");
//! // No socket peer (not served with connect info): refused, never guessed.
//! let res = app
//!     .oneshot(Request::get("/api/public-data").body(Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! # });
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use http_body_util::BodyExt;
use tower::{BoxError, ServiceExt as _};
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
use crate::client_ip::{ForwardedHeader, TrustedProxies};
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use crate::fallback::{HeadersLayer, HeadersState, NotFound};
use crate::guard::body::{BodyState, LimitedBody, check_declared, too_large};
use crate::guard::csrf::{self as csrf_token, CsrfTokens};
use crate::guard::{method, rate_limit as rl};
use crate::policy::{AuthMode, CsrfMode, FailureMode, Policy};
use crate::rate_limit::deny_cache::{DenyCache, FlightFailure, FlightGuard, MAX_WAIT_FACTOR};
use crate::rate_limit::{
    BoxFuture, Decision, KeyHasher, MemoryStore, Quota, RateLimitKey, RateLimitStore, StoreError,
    Subject,
};
use crate::response::cors::{self, DEV_ORIGINS, parse_origin};
use crate::response::headers::SecurityHeaders;
use crate::response::problem::{Rejection, RejectionInfo, RejectionKind};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
    /// Refusals remembered in front of a shared store (`None` for an in-process store).
    deny: Option<DenyCache>,
    /// Longest wait for one `authenticate` call.
    auth_timeout: Duration,
    /// Whether the missing-`ConnectInfo` configuration error was logged (once per process).
    missing_peer_logged: AtomicBool,
}

/// Default for [`SecurityBuilder::authenticate_timeout`]: above the JWKS fetch timeout (5 s by
/// default), because a request that needs a key-set refetch runs that fetch inside its own
/// authenticate call, and a shorter timeout would cancel every slow refetch.
pub const DEFAULT_AUTHENTICATE_TIMEOUT: Duration = Duration::from_secs(10);

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
            csrf,
            core: Arc::new(CoreState {
                cors,
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
    /// to the principal's session (`session_id`/`sid` claim, else its subject; anonymous
    /// callers: the empty binding) and expires after the max age (12 h by default). If the
    /// request already holds a valid token for that binding in the first half of its life, it
    /// is returned unchanged, so parallel tabs and requests keep working (the original rotated
    /// it on every response).
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
            csrf_token::CookieLookup::One(t) if self.shared.csrf.reusable(&t, binding) => Some(t),
            _ => None,
        };
        let token = existing.unwrap_or_else(|| self.shared.csrf.issue(binding));
        let cookie = self
            .shared
            .csrf
            .cookie_header_value(&token, self.shared.https);
        let value = HeaderValue::from_str(&cookie)
            .unwrap_or_else(|_| HeaderValue::from_static("csrf-token=; Max-Age=0"));
        (token, value)
    }

    /// The audit writer, if one is configured.
    pub fn audit(&self) -> Option<&AuditWriter> {
        self.shared.audit.as_ref()
    }

    /// A layer for the whole router: responses no policy answered (an unprotected `/health`,
    /// axum's own 404 or 405) get the default security headers and an `x-request-id`. See
    /// [`crate::fallback`].
    ///
    /// ```
    /// use axum::{Router, routing::get};
    /// use secure_routes::Security;
    /// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
    /// let _app: Router = Router::new()
    ///     .route("/health", get(|| async { "ok" }))
    ///     .layer(security.headers_layer());
    /// ```
    pub fn headers_layer(&self) -> HeadersLayer {
        HeadersLayer::new(HeadersState {
            headers: SecurityHeaders::default(),
            https: self.shared.https,
            proxies: self.shared.proxies.clone(),
        })
    }

    /// The router's fallback: a problem+json 404 for unknown paths, through the pipeline
    /// under the policy `not_found` (any method, 60 per minute per client in one bucket for
    /// every unknown path, no authentication, fail-open), so path scanning meets 429 and is
    /// audited (`invalid_input`, reason `not_found`). [`Security::not_found_with`] takes
    /// another policy. See [`crate::fallback`].
    ///
    /// ```
    /// use axum::Router;
    /// use secure_routes::Security;
    /// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
    /// let _app: Router = Router::new().fallback_service(security.not_found().unwrap());
    /// ```
    pub fn not_found(&self) -> Result<SecurityService<NotFound>, ConfigError> {
        let policy = Policy::builder("not_found")
            .rate_limit(Quota::per_minute(60))
            .bucket("not_found")
            .failure_mode(FailureMode::Open)
            .build()?;
        self.not_found_with(policy)
    }

    /// [`Security::not_found`] under `policy`.
    ///
    /// ```
    /// use secure_routes::{Policy, Quota, Security};
    /// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
    /// let p = Policy::builder("scan").rate_limit(Quota::per_minute(10)).build().unwrap();
    /// assert!(security.not_found_with(p).is_ok());
    /// ```
    pub fn not_found_with(&self, policy: Policy) -> Result<SecurityService<NotFound>, ConfigError> {
        Ok(self.layer(policy)?.layer(NotFound))
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
    client_ip_header: Option<ForwardedHeader>,
    auth_timeout: Option<Duration>,
    no_deny_cache: bool,
    csrf_max_age: Option<Duration>,
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
    /// The one forwarding header the trusted proxies write (default `X-Forwarded-For`); the
    /// others are ignored, so a client cannot add its own `Forwarded` or `X-Real-IP` behind an
    /// `X-Forwarded-For` proxy to pick its address. See [`crate::client_ip`].
    ///
    /// ```
    /// use secure_routes::{Security, client_ip::ForwardedHeader};
    /// let s = Security::builder()
    ///     .csrf_secret([7u8; 32])
    ///     .trusted_proxies(["10.0.0.0/8"])
    ///     .client_ip_header(ForwardedHeader::Forwarded)
    ///     .build();
    /// assert!(s.is_ok());
    /// ```
    pub fn client_ip_header(mut self, header: ForwardedHeader) -> Self {
        self.client_ip_header = Some(header);
        self
    }
    /// Longest wait for one authenticator call (default [`DEFAULT_AUTHENTICATE_TIMEOUT`]).
    /// Past it the request is answered 503 with `Retry-After`, audited as
    /// `authenticator_failure` (reason `authenticator_timeout`): never admitted. Keep it above
    /// a JWKS authenticator's fetch timeout: a key-set refetch runs inside the request that
    /// needs it, and is cancelled with it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::Security;
    /// let b = Security::builder().csrf_secret([7u8; 32]);
    /// assert!(b.authenticate_timeout(Duration::ZERO).build().is_err());
    /// ```
    pub fn authenticate_timeout(mut self, timeout: Duration) -> Self {
        self.auth_timeout = Some(timeout);
        self
    }
    /// Turns the deny cache in front of a shared rate-limit store off (default: on). With it,
    /// a key the store refused is refused locally until its retry time without a store call,
    /// and concurrent checks of one key wait for the one in flight; see DESIGN.md. Off, every
    /// check goes to the store.
    pub fn deny_cache(mut self, on: bool) -> Self {
        self.no_deny_cache = !on;
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
    /// CSRF tokens expire this long after issue (default 12 h; 1 s to 400 days).
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::Security;
    /// let b = || Security::builder().csrf_secret([7u8; 32]);
    /// assert!(b().csrf_max_age(Duration::from_secs(3600)).build().is_ok());
    /// assert!(b().csrf_max_age(Duration::ZERO).build().is_err());
    /// ```
    pub fn csrf_max_age(mut self, max_age: Duration) -> Self {
        self.csrf_max_age = Some(max_age);
        self
    }
    /// The clock for every time-dependent decision here: response headers, CSRF token
    /// expiry, the deny cache (tests inject a `FakeClock`).
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
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let mut csrf = CsrfTokens::new(&csrf_secret)
            .unwrap_or_else(|e| {
                problems.extend(e.problems().iter().cloned());
                CsrfTokens::new(&random_secret())
                    .unwrap_or_else(|_| unreachable!("a 32-byte secret is valid"))
            })
            .with_clock(Arc::clone(&clock));
        if let Some(age) = self.csrf_max_age {
            match csrf.clone().with_max_age(age) {
                Ok(c) => csrf = c,
                Err(e) => problems.extend(e.problems().iter().cloned()),
            }
        }
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
        let proxies = TrustedProxies::parse(&self.proxies)
            .unwrap_or_else(|e| {
                problems.extend(e.problems().iter().cloned());
                TrustedProxies::none()
            })
            .with_header(self.client_ip_header.unwrap_or_default());
        let auth_timeout = self.auth_timeout.unwrap_or(DEFAULT_AUTHENTICATE_TIMEOUT);
        if auth_timeout.is_zero() || auth_timeout > Duration::from_secs(60) {
            problems.push(format!(
                "the authenticate timeout must be between 1 ms and 60 s (got {auth_timeout:?})"
            ));
        }
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
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let shared = Shared {
            authenticator: self.authenticator,
            deny: (!self.no_deny_cache && !store.is_local()).then(DenyCache::default),
            store,
            auth_timeout,
            missing_peer_logged: AtomicBool::new(false),
            audit: self.audit,
            hasher,
            csrf,
            proxies,
            origins,
            csrf_layer,
            https: self.https,
            truncate_ips: self.truncate_ips,
            clock,
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
    use rand::Rng as _;
    let mut s = vec![0u8; 32];
    rand::rng().fill_bytes(&mut s);
    s
}

/// Applies one [`Policy`] with the shared [`Security`] state. Build with [`Security::layer`].
#[derive(Clone)]
pub struct SecurityLayer {
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

/// What the core calls once its checks pass: tower-http's Fetch Metadata check, catch-panic,
/// the handler.
type Inner<S> = Csrf<CatchPanic<S, PanicProblem>, CsrfProblem>;

impl<S: Clone> Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;

    fn layer(&self, inner: S) -> SecurityService<S> {
        let handler = CatchPanicLayer::custom(PanicProblem).layer(inner);
        let fetch_metadata = self.csrf.layer(handler);
        SecurityService {
            inner: Core {
                state: self.core.clone(),
                cors: self.core.cors.layer(fetch_metadata.clone()),
                plain: fetch_metadata,
            },
        }
    }
}

/// The service a [`SecurityLayer`] produces.
#[derive(Clone)]
pub struct SecurityService<S> {
    inner: Core<Inner<S>>,
}

impl<S> fmt::Debug for SecurityService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecurityService")
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for SecurityService<S>
where
    Core<Inner<S>>: Service<Request<ReqBody>>,
{
    type Response = <Core<Inner<S>> as Service<Request<ReqBody>>>::Response;
    type Error = <Core<Inner<S>> as Service<Request<ReqBody>>>::Error;
    type Future = <Core<Inner<S>> as Service<Request<ReqBody>>>::Future;

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
        let msg = panic_message(&*err);
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
    /// The policy's CORS rules, for the answers that do not pass through tower-http's layer
    /// (preflights, rejections, a plain `OPTIONS`): see [`CoreState::cors_headers`].
    cors: CorsLayer,
    shared: Arc<Shared>,
    policy: Policy,
    fixed_bucket: Option<Arc<str>>,
    fallback_bucket: Arc<str>,
    /// The policy's rate-limit headers, formatted once.
    limit_headers: Option<rl::LimitHeaders>,
}

/// The core checks; see the module docs for where it sits in the stack.
///
/// It holds the inner service twice: behind tower-http's CORS layer (for preflights and
/// ordinary requests, which get the CORS response headers) and bare, for a plain `OPTIONS`
/// the policy allows. tower-http treats every `OPTIONS` as a preflight, so a plain one sent
/// through it would never reach the method check or the handler.
#[derive(Clone)]
pub struct Core<S> {
    state: Arc<CoreState>,
    cors: Cors<S>,
    plain: S,
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
    ResBody: http_body::Body<Data = Bytes> + Default + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.cors.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the one poll_ready prepared is taken (tower's usual swap).
        let clone = self.cors.clone();
        let cors = std::mem::replace(&mut self.cors, clone);
        let inner = Inner2 {
            cors,
            plain: self.plain.clone(),
        };
        let state = self.state.clone();
        Box::pin(run(state, inner, req))
    }
}

impl CoreState {
    /// The CORS response headers tower-http would add, for an answer that does not pass
    /// through its layer: a preflight (`preflight`), or a rejection the core answers itself
    /// (so a browser app can read the problem body). tower-http decides whether a request is a
    /// preflight by its method alone, so it is asked with a stand-in request: `OPTIONS` for a
    /// preflight, `GET` otherwise, carrying the headers CORS reads.
    fn cors_headers(&self, headers: &HeaderMap, preflight: bool) -> HeaderMap {
        let mut probe = Request::new(());
        *probe.method_mut() = if preflight {
            Method::OPTIONS
        } else {
            Method::GET
        };
        for name in [
            header::ORIGIN,
            header::ACCESS_CONTROL_REQUEST_METHOD,
            header::ACCESS_CONTROL_REQUEST_HEADERS,
        ] {
            for v in headers.get_all(&name) {
                probe.headers_mut().append(name.clone(), v.clone());
            }
        }
        // tower-http's rules here are all synchronous (a fixed origin list), so the answer
        // is ready at once.
        match self.cors.layer(CorsProbe).oneshot(probe).now_or_never() {
            Some(Ok(res)) => res.into_parts().0.headers,
            _ => HeaderMap::new(),
        }
    }
}

/// Merges CORS headers into a response the way tower-http does (`Vary` appended).
fn merge_cors(target: &mut HeaderMap, cors: HeaderMap) {
    let mut last = None;
    for (name, value) in cors {
        if let Some(n) = name {
            last = Some(n);
        }
        let Some(n) = &last else { continue };
        if *n == header::VARY {
            target.append(n.clone(), value);
        } else {
            target.insert(n.clone(), value);
        }
    }
}

/// The stand-in inner service of [`CoreState::cors_headers`].
#[derive(Clone, Copy)]
struct CorsProbe;

impl Service<Request<()>> for CorsProbe {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

/// The two ways into the inner service (see [`Core`]).
struct Inner2<S> {
    /// Ready (polled by `Core::poll_ready`).
    cors: Cors<S>,
    /// Not polled yet.
    plain: S,
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
    /// The request's `Origin`, for the CORS headers of a rejection.
    origin: Option<HeaderValue>,
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
        if let Some(ua) = &self.user_agent {
            // Not `to_str`: a non-ASCII User-Agent is kept (the sanitizer escapes it), not
            // dropped, so a client cannot erase itself from the trail with one stray byte.
            e = e.with_user_agent(&String::from_utf8_lossy(ua.as_bytes()));
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
        self.reject_as(rejection, info).await
    }

    /// Answers with `rejection`, audited as `info` (one event per decision: a bad credential
    /// refused by the rate limit is one `unauthorized_access` event with status 429).
    async fn reject_as(&self, rejection: Rejection, info: RejectionInfo) -> Response {
        let status = rejection.info().kind.status().as_u16();
        if let Some(store) = self.failed_open {
            // The store failed and the policy let the request on; a later step refused it.
            // Both happened: the store failure is its own event.
            self.audit(store, status, Outcome::Allowed).await;
        }
        self.audit(info, status, Outcome::Denied).await;
        let mut res = rejection.into_response();
        // The CORS grant too (and `Vary`), so a browser app can read why it was refused.
        let mut request_headers = HeaderMap::new();
        if let Some(o) = &self.origin {
            request_headers.insert(header::ORIGIN, o.clone());
        }
        merge_cors(
            res.headers_mut(),
            self.state.cors_headers(&request_headers, false),
        );
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
        && plain_request_id(v)
    {
        return v.clone();
    }
    fresh_request_id()
}

/// Whether an incoming request id is short and plain enough to keep.
pub(crate) fn plain_request_id(v: &HeaderValue) -> bool {
    (1..=64).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new UUIDv7 request id.
pub(crate) fn fresh_request_id() -> HeaderValue {
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

/// Why a rate-limit check has no decision.
enum StoreFailure {
    Timeout,
    Error(StoreError),
    Panicked(String),
}

/// One rate-limit check: the deny cache first, then (one check per key in flight) the store,
/// bounded by `timeout`; a panicking store is caught (see the `DenyCache` docs).
async fn check_limit(
    shared: &Shared,
    key: &RateLimitKey,
    quota: Quota,
    timeout: Duration,
) -> Result<Decision, StoreFailure> {
    let Some(deny) = &shared.deny else {
        return call_store(shared, key, quota, timeout).await;
    };
    if let Some(d) = deny.check(key, quota, shared.clock.now()) {
        return Ok(d);
    }
    let flight = deny
        .single_flight(key, timeout.saturating_mul(MAX_WAIT_FACTOR), timeout)
        .await;
    match flight.as_ref().and_then(FlightGuard::failed_ahead) {
        // The checks ahead failed in a row: the store is failing now, and asking it again
        // would only chain another timeout behind them.
        Some(FlightFailure::Timeout) => return Err(StoreFailure::Timeout),
        Some(FlightFailure::Error) => {
            return Err(StoreFailure::Error(StoreError::Unavailable(
                "the check ahead of this one failed".into(),
            )));
        }
        None => {}
    }
    // The check we waited for may have been refused: then so is this one, without a call.
    let before = shared.clock.now();
    if let Some(d) = deny.check(key, quota, before) {
        return Ok(d);
    }
    let result = call_store(shared, key, quota, timeout).await;
    match (&result, &flight) {
        // The time before the call: the store decided no earlier, so the cached refusal
        // never outlasts the store's own.
        (Ok(d), f) => {
            deny.remember(key, quota, d, before);
            if let Some(f) = f {
                f.succeed();
            }
        }
        (Err(StoreFailure::Timeout), Some(f)) => f.fail(FlightFailure::Timeout),
        (Err(StoreFailure::Error(_)), Some(f)) => f.fail(FlightFailure::Error),
        // A panic is a bug in the store, answered 500 on its own: it says nothing about
        // whether the store is reachable, so it starts no streak.
        (Err(StoreFailure::Panicked(_)), _) | (Err(_), None) => {}
    }
    result
}

async fn call_store(
    shared: &Shared,
    key: &RateLimitKey,
    quota: Quota,
    timeout: Duration,
) -> Result<Decision, StoreFailure> {
    // Inside the async block, so a store that panics before returning its future is caught
    // too.
    let call = AssertUnwindSafe(async { shared.store.acquire(key, quota, 1).await }).catch_unwind();
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(StoreFailure::Timeout),
        Ok(Err(panic)) => Err(StoreFailure::Panicked(panic_message(&*panic))),
        Ok(Ok(Err(e))) => Err(StoreFailure::Error(e)),
        Ok(Ok(Ok(d))) => Ok(d),
    }
}

/// The text of a panic payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The answer when the server gives no socket peer (`ConnectInfo`): a configuration error.
/// Guessing an address (the old `0.0.0.0`) would put every client in one rate-limit bucket
/// and write a meaningless address into the audit trail, so the request is refused.
fn missing_peer(state: &CoreState) -> Response {
    let shared = &state.shared;
    metrics::counter!("secure_routes_missing_peer_total").increment(1);
    if !shared.missing_peer_logged.swap(true, Ordering::Relaxed) {
        tracing::error!(
            "secure-routes: the request has no ConnectInfo<SocketAddr>: serve the app with \
             `into_make_service_with_connect_info::<SocketAddr>()` (or secure_routes::serve); \
             every request is refused with 500 until then"
        );
    }
    let mut res = Rejection::new(RejectionKind::Internal, "missing_connect_info").into_response();
    let h = res.headers_mut();
    state.policy.security_headers().apply(h, shared.https);
    h.insert(X_REQUEST_ID, fresh_request_id());
    res
}

async fn run<S, ReqBody, ResBody>(
    state: Arc<CoreState>,
    inner: Inner2<S>,
    req: Request<ReqBody>,
) -> Result<Response, S::Error>
where
    S: Service<Request<LimitedBody<ReqBody>>, Response = http::Response<ResBody>>,
    ReqBody: http_body::Body,
    ResBody: http_body::Body<Data = Bytes> + Default + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Inner2 { mut cors, plain } = inner;
    let (mut parts, body) = req.into_parts();
    let shared = state.shared.clone();
    let policy = &state.policy;

    // 1. The client: socket peer, forwarding headers only from trusted proxies.
    let Some(peer) = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return Ok(missing_peer(&state));
    };
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
        origin: parts.headers.get(header::ORIGIN).cloned(),
        subject: None,
        limit: None,
        failed_open: None,
    };

    // 3. CORS preflight (Fetch standard: `OPTIONS` with `Access-Control-Request-Method`),
    // answered by tower-http without calling the handler. A plain `OPTIONS` is an ordinary
    // request and meets the method check like any other.
    let preflight = parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        drop(body);
        // 204 (tower-http answers 200): no content, and what the docs promise.
        let mut res = Response::new(Body::empty());
        *res.status_mut() = http::StatusCode::NO_CONTENT;
        merge_cors(res.headers_mut(), state.cors_headers(&parts.headers, true));
        ctx.decorate(&mut res);
        return Ok(res);
    }

    // 4. Method allow-list.
    if let Err(r) = method::check(policy.methods(), &parts.method) {
        return Ok(ctx.reject(r).await);
    }

    // 5. Authentication, bounded in time; a panicking authenticator is a 500, not a dropped
    // connection.
    if policy.auth() != AuthMode::Off
        && let Some(auth) = &shared.authenticator
    {
        // Inside the async block, so an authenticator that panics before returning its
        // future is caught too.
        let call = AssertUnwindSafe(async { auth.authenticate(&parts).await }).catch_unwind();
        let result = match tokio::time::timeout(shared.auth_timeout, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(panic)) => {
                tracing::error!(
                    panic = %crate::audit::sanitize(&panic_message(&*panic), 512),
                    "authenticator panicked"
                );
                return Ok(ctx
                    .reject(Rejection::new(
                        RejectionKind::Internal,
                        "authenticator_panicked",
                    ))
                    .await);
            }
            Err(_) => {
                tracing::warn!(timeout = ?shared.auth_timeout, "authenticator timed out");
                let r = Rejection::new(RejectionKind::AuthUnavailable, "authenticator_timeout")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return Ok(ctx.reject(r).await);
            }
        };
        match result {
            Ok(p) => ctx.subject = Some(p),
            Err(AuthError::Missing) if policy.auth() == AuthMode::Optional => {}
            Err(AuthError::Unavailable(why)) => {
                tracing::warn!(error = %crate::audit::sanitize(&why, 256), "authenticator unavailable");
                let r = Rejection::new(RejectionKind::AuthUnavailable, "authenticator_unavailable")
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return Ok(ctx.reject(r).await);
            }
            Err(e) => {
                let reason = match e {
                    AuthError::Invalid(why) => why,
                    _ => "missing_credential",
                };
                metrics::counter!("secure_routes_auth_failures_total").increment(1);
                let unauthorized = RejectionInfo {
                    kind: RejectionKind::Unauthorized,
                    reason,
                };
                // Failures count against the client address too, so guessing credentials
                // runs into the route's limit like any other traffic.
                if let Some(quota) = policy.rate_limit() {
                    let key = shared.hasher.key(&route, &Subject::from_ip(ip));
                    if let Ok(d) = check_limit(&shared, &key, quota, policy.store_timeout()).await
                        && !d.allowed
                    {
                        let r = rl::too_many_requests(policy.name(), quota, &d, shared.clock.now());
                        // One decision, one event: the cause (a bad credential), with the
                        // status the client saw.
                        return Ok(ctx.reject_as(r, unauthorized).await);
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
        match check_limit(&shared, &key, quota, policy.store_timeout()).await {
            Ok(d) if d.allowed => ctx.limit = Some(d),
            Ok(d) => {
                ctx.limit = Some(d);
                let r = rl::too_many_requests(policy.name(), quota, &d, shared.clock.now());
                return Ok(ctx.reject(r).await);
            }
            Err(StoreFailure::Panicked(msg)) => {
                tracing::error!(
                    store = shared.store.name(),
                    panic = %crate::audit::sanitize(&msg, 512),
                    "rate-limit store panicked"
                );
                return Ok(ctx
                    .reject(Rejection::new(RejectionKind::Internal, "store_panicked"))
                    .await);
            }
            Err(failure) => {
                let reason = match &failure {
                    StoreFailure::Timeout => "store_timeout",
                    _ => "store_error",
                };
                if let StoreFailure::Error(e) = &failure {
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
    let plain_options = parts.method == Method::OPTIONS;
    let (body, body_state) = LimitedBody::new(body, policy.max_body_bytes());
    let req = Request::from_parts(parts, body);
    let mut res = if plain_options {
        let cors_headers = state.cors_headers(req.headers(), false);
        let mut res = plain.oneshot(req).await?.map(Body::new);
        merge_cors(res.headers_mut(), cors_headers);
        res
    } else {
        cors.call(req).await?.map(Body::new)
    };
    match body_state.get() {
        // Whatever the handler made of the body error, the answer is ours.
        BodyState::Exceeded => return Ok(ctx.reject(too_large("streamed_length")).await),
        BodyState::Unreadable => {
            let r = Rejection::new(RejectionKind::InvalidInput, "body_unreadable").with_detail(
                "The request body could not be read (malformed chunked encoding, or cut short).",
            );
            return Ok(ctx.reject(r).await);
        }
        BodyState::Fine => {}
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
