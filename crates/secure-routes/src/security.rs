//! The shared state: [`Security`] holds what every policy shares (authenticator, rate-limit
//! store, audit writer, secrets, trusted proxies, CORS origins), and [`SecurityBuilder`]
//! validates it once, returning every problem at once.
//!
//! Why a module of its own: the pipeline's steps read this state, but this module knows
//! nothing of the steps, the layer or the service, so the module graph stays acyclic (the
//! layer, [`crate::layer`], adds [`Security::layer`] and the 404 fallback on top).
//!
//! ```
//! use secure_routes::Security;
//! // A CSRF secret is required outside development mode, and every problem is reported.
//! let err = Security::builder().allowed_origins(["not an origin"]).build().unwrap_err();
//! assert_eq!(err.problems().len(), 2);
//! assert!(Security::builder().csrf_secret([7u8; 32]).build().is_ok());
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tower_http::csrf::CsrfLayer;

use crate::audit::AuditWriter;
use crate::auth::{Authenticator, Principal};
use crate::bans::Bans;
use crate::client_ip::{ForwardedHeader, TrustedProxies};
use crate::clock::{Clock, SystemClock};
use crate::cookies::{CookieLookup, single_cookie};
use crate::error::ConfigError;
use crate::fallback::{HeadersLayer, HeadersState};
use crate::guard::csrf::{self as csrf_token, CsrfTokens};
use crate::rate_limit::deny_cache::DenyCache;
use crate::rate_limit::{KeyHasher, MemoryStore, RateLimitStore, Subject};
use crate::response::cors::{DEV_ORIGINS, parse_origin};
use crate::response::headers::SecurityHeaders;

/// Shared security state, configured once and reused by every policy. Cheap to clone (one
/// reference count).
#[derive(Clone)]
pub struct Security {
    pub(crate) shared: Arc<Shared>,
}

/// What a [`Security`] holds; read by the pipeline's steps.
pub(crate) struct Shared {
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    pub(crate) store: Arc<dyn RateLimitStore>,
    pub(crate) audit: Option<AuditWriter>,
    pub(crate) hasher: KeyHasher,
    pub(crate) csrf: CsrfTokens,
    pub(crate) proxies: TrustedProxies,
    pub(crate) origins: Vec<HeaderValue>,
    /// tower-http's Fetch Metadata / `Origin` check with the trusted origins; the layer gives
    /// it the problem-body answer.
    pub(crate) csrf_layer: CsrfLayer,
    pub(crate) https: bool,
    pub(crate) truncate_ips: bool,
    pub(crate) clock: Arc<dyn Clock>,
    /// Refusals remembered in front of a shared store (`None` for an in-process store).
    pub(crate) deny: Option<DenyCache>,
    /// Longest wait for one `authenticate` call.
    pub(crate) auth_timeout: Duration,
    /// Whether the missing-`ConnectInfo` configuration error was logged (once per process).
    pub(crate) missing_peer_logged: AtomicBool,
    /// Escalating bans (step 2 and the strikes on refusals); `None`: no bans.
    pub(crate) bans: Option<Bans>,
}

impl Shared {
    /// The CSRF cookie name: `__Host-csrf-token` when serving HTTPS, else `csrf-token`.
    pub(crate) fn csrf_cookie_name(&self) -> &'static str {
        if self.https {
            csrf_token::SECURE_COOKIE_NAME
        } else {
            csrf_token::COOKIE_NAME
        }
    }
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

    /// The CSRF token issuer (to mint tokens in a token endpoint).
    pub fn csrf_tokens(&self) -> &CsrfTokens {
        &self.shared.csrf
    }

    /// The CSRF cookie name: `__Host-csrf-token` when serving HTTPS, else `csrf-token`.
    pub fn csrf_cookie_name(&self) -> &'static str {
        self.shared.csrf_cookie_name()
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
        let existing = match single_cookie(request_headers, name) {
            CookieLookup::One(t) if self.shared.csrf.reusable(&t, binding) => Some(t),
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

    /// A token endpoint's whole answer: `200` with the JSON body `{"csrfToken": TOKEN}`, the
    /// [`issue_csrf`](Self::issue_csrf) cookie in `Set-Cookie`, and `Cache-Control: no-store`
    /// (a token and its cookie served from a shared cache would hand one caller's token to
    /// another). The demo's `/api/csrf` and the gateway's `/_secure-routes/csrf` answer this.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use secure_routes::Security;
    /// let s = Security::builder().csrf_secret([1u8; 32]).build().unwrap();
    /// let res = s.csrf_token_response(&HeaderMap::new(), None);
    /// assert_eq!(res.headers()["cache-control"], "no-store");
    /// assert_eq!(res.headers()["content-type"], "application/json");
    /// assert!(res.headers()["set-cookie"].to_str().unwrap().starts_with("csrf-token="));
    /// ```
    pub fn csrf_token_response(
        &self,
        request_headers: &HeaderMap,
        principal: Option<&Principal>,
    ) -> axum::response::Response {
        let (token, cookie) = self.issue_csrf(request_headers, principal);
        let body = serde_json::json!({ "csrfToken": token }).to_string();
        let mut res = axum::response::Response::new(axum::body::Body::from(body));
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.append(http::header::SET_COOKIE, cookie);
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        res
    }

    /// Whether an authenticator is configured (policies that authenticate need one).
    ///
    /// ```
    /// use secure_routes::Security;
    /// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
    /// assert!(!security.has_authenticator());
    /// ```
    pub fn has_authenticator(&self) -> bool {
        self.shared.authenticator.is_some()
    }

    /// The bans, if configured ([`SecurityBuilder::bans`]).
    pub fn bans(&self) -> Option<&Bans> {
        self.shared.bans.as_ref()
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
    bans: Option<Bans>,
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
    /// Escalating bans for repeat violators (default: none). See [`crate::bans`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::Security;
    /// use secure_routes::bans::{BanPolicy, Bans, MemoryBans};
    /// let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default());
    /// let security = Security::builder().csrf_secret([7u8; 32]).bans(bans).build().unwrap();
    /// assert!(security.bans().is_some());
    /// ```
    pub fn bans(mut self, bans: Bans) -> Self {
        self.bans = Some(bans);
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
    /// The clock for the time-dependent decisions made here: rate-limit headers and 429
    /// bodies, CSRF token expiry, the deny cache (tests inject a `FakeClock`). Not covered:
    /// authenticators, the memory store and the audit writer take their own clock, and audit event timestamps
    /// are the system's UTC time (see [`crate::clock`]).
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
        let mut csrf_layer = CsrfLayer::new();
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
        if let Some(bans) = &self.bans {
            // Ban expiry on this Security's clock; `ip_banned` events to its audit writer.
            bans.attach(Arc::clone(&clock), self.audit.clone());
        }
        let shared = Shared {
            authenticator: self.authenticator,
            deny: (!self.no_deny_cache && !store.is_local()).then(DenyCache::default),
            store,
            auth_timeout,
            missing_peer_logged: AtomicBool::new(false),
            bans: self.bans,
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
