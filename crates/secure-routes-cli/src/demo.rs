//! `secure-routes demo`: the original pattern's examples as a running API, on embedded
//! defaults (memory rate limits, SQLite audit log) or on shared stores ([`DemoOptions`]).
//!
//! | route | policy |
//! | --- | --- |
//! | `GET /health` | none |
//! | `GET, POST /api/public-data` | PUBLIC |
//! | `GET /api/csrf` | PUBLIC limits, optional auth: a token bound to the caller's session |
//! | `GET, POST, PUT, DELETE /api/user/notes` | AUTHENTICATED; per-user notes in memory |
//! | `POST /api/strict` | STRICT |
//! | `POST /api/sensitive-operation` | auth, CSRF, 5 per hour, 100 KiB, POST only |
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use secure_routes_cli::{config::Config, demo};
//! let config = Config { jwt_secret: vec![1; 32], csrf_secret: vec![2; 32],
//!     trusted_proxies: vec![], allowed_origins: vec![], client_ip_header: Default::default(), production: false };
//! let app = demo::router(&config, &demo::Wiring::default()).unwrap();
//! # let _ = app;
//! # });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, Method, header};
use secure_routes::audit::{AuditConfig, AuditStats, AuditWriter};
use secure_routes::auth::Authenticator;
use secure_routes::auth::jwks::{JwksAuthenticator, JwksError};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::supabase::SupabaseAuthenticator;
use secure_routes::clock::{Clock, SystemClock};
use secure_routes::rate_limit::RateLimitStore;
use secure_routes::response::problem::{Rejection, RejectionKind};
use secure_routes::serve::{ServeConfig, ServeReport};
use secure_routes::{AuthMode, CsrfMode, Policy, Principal, Quota, Security};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::stores::{AuditLocation, LimitsLocation, OpenStores, redact};

/// Name of the session cookie the demo accepts (an ambient credential: CSRF required).
pub const SESSION_COOKIE: &str = "sr-session";
/// Longest note text accepted, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// Most notes kept per user; the oldest is dropped beyond it.
pub const MAX_NOTES_PER_USER: usize = 100;

#[derive(Clone)]
struct AppState {
    security: Security,
    notes: Arc<Mutex<HashMap<String, Vec<Note>>>>,
}

#[derive(Clone, serde::Serialize)]
struct Note {
    id: u64,
    text: String,
}

/// The policy of the original's Example 3.
pub fn sensitive_policy() -> Policy {
    Policy::builder("sensitive-operation")
        .methods([Method::POST])
        .auth(AuthMode::Required)
        .csrf(CsrfMode::Auto)
        .rate_limit(Quota::per_hour(5))
        .max_body_bytes(100 * 1024)
        .build()
        .unwrap_or_else(|e| unreachable!("constant policy is valid: {e}"))
}

/// Verified tokens the demo's JWKS and Supabase authenticators remember.
///
/// ```
/// assert_eq!(secure_routes_cli::demo::TOKEN_CACHE, 10_000);
/// ```
pub const TOKEN_CACHE: usize = 10_000;

/// Whose tokens the demo accepts (`secure-routes demo` flags). One identity provider per run:
/// each authenticator pins its own keys, and one answer per credential keeps the audit
/// reason exact.
///
/// ```
/// use secure_routes_cli::demo::Identity;
/// let s = Identity::Supabase {
///     url: "https://abcd.supabase.co".into(),
///     jwt_secret: Some(b"super-secret-jwt-token".to_vec()),
/// };
/// let debug = format!("{s:?}");
/// assert!(debug.contains("<redacted>"));
/// assert!(!debug.contains("super-secret") && !debug.contains("115, 117"));
/// assert_eq!(Identity::default().to_string(), "demo HS256 secret");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Identity {
    /// HS256 tokens signed with `SECURE_ROUTES_JWT_SECRET` (`secure-routes token`), from the
    /// `Authorization` header or the [`SESSION_COOKIE`].
    #[default]
    DemoSecret,
    /// Tokens signed by the keys of a JWKS (`--jwks`), with an optional expected issuer and
    /// audience (`--jwt-issuer`, `--jwt-audience`), from the `Authorization` header or the
    /// [`SESSION_COOKIE`].
    Jwks {
        /// The key set URL (`https`, or `http` on loopback).
        url: String,
        /// Required `iss`.
        issuer: Option<String>,
        /// Required `aud`.
        audience: Option<String>,
    },
    /// A Supabase project's users (`--supabase-url`, `SUPABASE_JWT_SECRET`), from the
    /// `Authorization` header or the SSR session cookie.
    Supabase {
        /// The project URL.
        url: String,
        /// The legacy HS256 secret, if the project still signs with it.
        jwt_secret: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DemoSecret => f.write_str("DemoSecret"),
            Self::Jwks {
                url,
                issuer,
                audience,
            } => f
                .debug_struct("Jwks")
                .field("url", &redact(url))
                .field("issuer", issuer)
                .field("audience", audience)
                .finish(),
            // Never the secret, only whether there is one.
            Self::Supabase { url, jwt_secret } => f
                .debug_struct("Supabase")
                .field("url", &redact(url))
                .field("jwt_secret", &jwt_secret.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DemoSecret => f.write_str("demo HS256 secret"),
            Self::Jwks { url, .. } => write!(f, "JWKS {}", redact(url)),
            Self::Supabase { url, jwt_secret } => write!(
                f,
                "Supabase project {}{}",
                redact(url),
                if jwt_secret.is_some() {
                    " (+ legacy JWT secret)"
                } else {
                    ""
                }
            ),
        }
    }
}

impl Identity {
    /// Checks the configuration (URLs, secrets) without any request, so a bad flag is reported
    /// before the demo announces itself.
    ///
    /// ```
    /// # use secure_routes_cli::{config::Config, demo::Identity};
    /// let config = Config { jwt_secret: vec![1; 32], csrf_secret: vec![2; 32],
    ///     trusted_proxies: vec![], allowed_origins: vec![], client_ip_header: Default::default(), production: false };
    /// let bad = Identity::Supabase { url: "https://abcd.supabase.co/rest/v1".into(), jwt_secret: None };
    /// assert!(bad.check(&config).is_err());
    /// assert!(Identity::DemoSecret.check(&config).is_ok());
    /// ```
    pub fn check(&self, config: &Config) -> anyhow::Result<()> {
        let wiring = Wiring {
            identity: self.clone(),
            ..Wiring::default()
        };
        authenticator(config, &wiring).map(drop)
    }
}

/// A JWKS-backed authenticator's key refresh, run once at start so a wrong URL shows at once.
enum Prefetch {
    Jwks(JwksAuthenticator),
    Supabase(SupabaseAuthenticator),
}

impl Prefetch {
    async fn run(self) {
        let (what, result): (&str, Result<usize, JwksError>) = match &self {
            Self::Jwks(a) => ("JWKS", a.refresh().await),
            Self::Supabase(a) => ("Supabase", a.refresh().await),
        };
        match result {
            Ok(n) => tracing::info!(keys = n, "{what} signing keys fetched"),
            // Not fatal: the provider may come up later (tokens are refused meanwhile, never
            // admitted), and a legacy-only Supabase project publishes no usable key.
            Err(e) => tracing::warn!(error = %e, "{what} signing keys not fetched yet"),
        }
    }
}

/// The authenticator for `identity`, and the key refresh to run at start, if any.
fn authenticator(
    config: &Config,
    wiring: &Wiring,
) -> anyhow::Result<(Arc<dyn Authenticator>, Option<Prefetch>)> {
    let clock = wiring.clock.clone();
    Ok(match &wiring.identity {
        Identity::DemoSecret => {
            let mut b = JwtAuthenticator::builder()
                .hs256(&config.jwt_secret)
                .cookie(SESSION_COOKIE);
            if let Some(c) = clock {
                b = b.clock(c);
            }
            (Arc::new(b.build()?), None)
        }
        Identity::Jwks {
            url,
            issuer,
            audience,
        } => {
            let mut b = JwksAuthenticator::builder(url)
                .cookie(SESSION_COOKIE)
                .cache(TOKEN_CACHE);
            if let Some(i) = issuer {
                b = b.issuer(i);
            }
            if let Some(a) = audience {
                b = b.audience(a);
            }
            if let Some(c) = clock {
                b = b.clock(c);
            }
            let a = b.build()?;
            (Arc::new(a.clone()), Some(Prefetch::Jwks(a)))
        }
        Identity::Supabase { url, jwt_secret } => {
            let mut b = SupabaseAuthenticator::builder(url).cache(TOKEN_CACHE);
            if let Some(s) = jwt_secret {
                b = b.jwt_secret(s);
            }
            if let Some(c) = clock {
                b = b.clock(c);
            }
            let a = b.build()?;
            (Arc::new(a.clone()), Some(Prefetch::Supabase(a)))
        }
    })
}

/// What the demo's [`Security`] is wired to; every part is optional (the default is memory
/// limits, no audit writer, the system clock, plain-HTTP cookies, the demo's HS256 secret).
///
/// ```
/// use std::sync::Arc;
/// use secure_routes::rate_limit::MemoryStore;
/// use secure_routes_cli::demo::Wiring;
/// let w = Wiring { limits: Some(Arc::new(MemoryStore::new())), ..Wiring::default() };
/// assert!(w.audit.is_none());
/// ```
#[derive(Clone, Default)]
pub struct Wiring {
    /// Audit writer (none: audit events are not recorded).
    pub audit: Option<AuditWriter>,
    /// Rate-limit store (none: an in-process memory store).
    pub limits: Option<Arc<dyn RateLimitStore>>,
    /// Clock for audit timestamps, CSRF tokens and token lifetimes (none: the system clock).
    pub clock: Option<Arc<dyn Clock>>,
    /// Whose tokens are accepted.
    pub identity: Identity,
    /// `__Host-` CSRF cookie with `Secure`, and HSTS.
    pub secure_cookies: bool,
    /// Longest wait for one rate-limit store call on every route (none: the policies' own,
    /// 50 ms by default); past it the route's failure mode applies.
    pub store_timeout: Option<Duration>,
}

impl std::fmt::Debug for Wiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wiring")
            .field("audit", &self.audit)
            .field("limits", &self.limits.as_ref().map(|s| s.name()))
            .field("clock", &self.clock)
            .field("secure_cookies", &self.secure_cookies)
            .field("store_timeout", &self.store_timeout)
            .field("identity", &self.identity)
            .finish()
    }
}

/// Builds the demo's [`Security`] from `config` and `wiring`. With a JWKS or Supabase identity
/// and a Tokio runtime at hand, the signing keys are fetched in the background at once.
pub fn security(config: &Config, wiring: &Wiring) -> anyhow::Result<Security> {
    let (auth, prefetch) = authenticator(config, wiring)?;
    if let (Some(p), Ok(rt)) = (prefetch, tokio::runtime::Handle::try_current()) {
        rt.spawn(p.run());
    }
    let mut b = Security::builder()
        .shared_authenticator(auth)
        .csrf_secret(&config.csrf_secret)
        .trusted_proxies(&config.trusted_proxies)
        .client_ip_header(config.client_ip_header)
        .allowed_origins(&config.allowed_origins)
        .development(!config.production)
        .https(wiring.secure_cookies);
    if let Some(w) = &wiring.audit {
        b = b.audit(w.clone());
    }
    if let Some(s) = &wiring.limits {
        b = b.shared_rate_limit_store(Arc::clone(s));
    }
    if let Some(c) = &wiring.clock {
        b = b.clock(Arc::clone(c));
    }
    Ok(b.build()?)
}

/// The demo router (serve it with connect info so client addresses are known).
pub fn router(config: &Config, wiring: &Wiring) -> anyhow::Result<Router> {
    let security = security(config, wiring)?;
    let layer = |policy: Policy| -> anyhow::Result<_> {
        let policy = match wiring.store_timeout {
            Some(t) => policy.to_builder().store_timeout(t).build()?,
            None => policy,
        };
        Ok(security.layer(policy)?)
    };
    let csrf_policy = Policy::public()
        .to_builder()
        .name("csrf")
        .methods([Method::GET])
        .auth(AuthMode::Optional)
        .build()?;
    let state = AppState {
        security: security.clone(),
        notes: Arc::default(),
    };
    Ok(Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/api/public-data",
            get(public_data)
                .post(public_post)
                .layer(layer(Policy::public())?),
        )
        .route("/api/csrf", get(csrf_token).layer(layer(csrf_policy)?))
        .route(
            "/api/user/notes",
            get(list_notes)
                .post(add_note)
                .put(update_note)
                .delete(delete_notes)
                .layer(layer(Policy::authenticated())?),
        )
        .route("/api/strict", post(success).layer(layer(Policy::strict())?))
        .route(
            "/api/sensitive-operation",
            post(success).layer(layer(sensitive_policy())?),
        )
        // Unknown paths: a counted, audited problem+json 404 (path scanning meets 429).
        .fallback_service(security.not_found()?)
        // `/health` and anything else no policy answers get the headers and a request id.
        .layer(security.headers_layer())
        .with_state(state))
}

async fn public_data() -> Json<Value> {
    Json(json!({"data": [
        {"id": 1, "name": "alpha"},
        {"id": 2, "name": "beta"},
        {"id": 3, "name": "gamma"}
    ]}))
}

async fn public_post(body: axum::body::Bytes) -> Json<Value> {
    Json(json!({"success": true, "received": body.len()}))
}

/// Reads the body as a real handler would (the body limit applies to what is read).
async fn success(_p: Principal, body: axum::body::Bytes) -> Json<Value> {
    Json(json!({"success": true, "received": body.len()}))
}

async fn csrf_token(
    State(s): State<AppState>,
    p: Option<Principal>,
    headers: HeaderMap,
) -> Response {
    let (token, cookie) = s.security.issue_csrf(&headers, p.as_ref());
    let mut res = Json(json!({"csrfToken": token})).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie);
    // A token (and its Set-Cookie) must never be served from a shared cache to someone else.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Deserialize)]
struct UpdateNote {
    id: u64,
    text: String,
}

fn bad_input(detail: &str) -> Rejection {
    Rejection::new(RejectionKind::InvalidInput, "invalid_json").with_detail(detail)
}

/// Parses a JSON body, answering malformed input with a 400 problem.
async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Rejection> {
    let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .map_err(|_| bad_input("The request body could not be read."))?;
    serde_json::from_slice(&bytes).map_err(|e| bad_input(&json_error_detail(&e)))
}

/// Longest serde message kept in a 400's detail, in characters.
const MAX_JSON_ERROR_CHARS: usize = 160;

/// What was wrong with a JSON body, for the client: serde_json's own message, which names the
/// field ("missing field `text`", "invalid type: integer `5`, expected a string"), without its
/// position suffix. The body is never echoed: a string value serde would quote ("invalid
/// type: string \"...\"") becomes "a string"; what is left is field names and types from our
/// own structs, cut to [`MAX_JSON_ERROR_CHARS`] and stripped of control characters so it
/// cannot stretch or break the response or a log line.
fn json_error_detail(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let mut msg = full
        .rsplit_once(" at line ")
        .filter(|(_, pos)| pos.split(" column ").all(|n| n.parse::<u64>().is_ok()))
        .map_or(full.as_str(), |(head, _)| head)
        .to_owned();
    if let Some(start) = msg.find("string \"") {
        let end = msg
            .rfind("\", expected")
            .filter(|&end| end > start)
            .map_or(msg.len(), |end| end + 1);
        msg.replace_range(start..end, "a string");
    }
    let mut clean: String = msg
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_JSON_ERROR_CHARS)
        .collect();
    if msg.chars().count() > MAX_JSON_ERROR_CHARS {
        clean.push('…');
    }
    if e.is_data() {
        format!("Invalid JSON body: {clean}.")
    } else {
        format!("Expected a JSON object: {clean}.")
    }
}

fn check_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() || text.chars().count() > MAX_NOTE_CHARS {
        return Err(bad_input("\"text\" must be 1 to 1000 characters."));
    }
    Ok(())
}

async fn list_notes(State(s): State<AppState>, p: Principal) -> Json<Value> {
    let notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let mine = notes.get(p.subject()).cloned().unwrap_or_default();
    Json(json!({"notes": mine}))
}

async fn add_note(State(s): State<AppState>, p: Principal, req: Request) -> Response {
    let n: NewNote = match json_body(req).await {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_text(&n.text) {
        return r.into_response();
    }
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let mine = notes.entry(p.subject().to_owned()).or_default();
    let id = mine.last().map_or(1, |n| n.id + 1);
    if mine.len() >= MAX_NOTES_PER_USER {
        mine.remove(0);
    }
    let note = Note { id, text: n.text };
    mine.push(note.clone());
    (
        http::StatusCode::CREATED,
        Json(json!({"success": true, "note": note})),
    )
        .into_response()
}

async fn update_note(State(s): State<AppState>, p: Principal, req: Request) -> Response {
    let u: UpdateNote = match json_body(req).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_text(&u.text) {
        return r.into_response();
    }
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    match notes
        .get_mut(p.subject())
        .and_then(|m| m.iter_mut().find(|n| n.id == u.id))
    {
        Some(n) => {
            n.text = u.text;
            Json(json!({"success": true, "note": n.clone()})).into_response()
        }
        None => (
            http::StatusCode::NOT_FOUND,
            Json(json!({"error": "Note not found"})),
        )
            .into_response(),
    }
}

async fn delete_notes(State(s): State<AppState>, p: Principal) -> Json<Value> {
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let removed = notes.remove(p.subject()).map_or(0, |v| v.len());
    Json(json!({"success": true, "deleted": removed}))
}

/// Serves `app` on `listener` until `shutdown` completes, with client addresses attached and
/// the default connection limits ([`ServeConfig::default`]: header-read timeout, idle timeout,
/// connection caps, HTTP/2 limits, 10 s shutdown grace). [`run`] serves with
/// [`DemoOptions::serve`] instead.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<ServeReport> {
    secure_routes::serve::serve(listener, app, ServeConfig::default(), shutdown).await
}

/// Where the demo keeps its state and how it serves (`secure-routes demo` flags).
///
/// ```
/// use secure_routes_cli::demo::DemoOptions;
/// let o = DemoOptions::default();
/// assert_eq!(o.limits.to_string(), "memory");
/// assert_eq!(o.audit.to_string(), "sqlite:./secure-routes.db");
/// ```
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Rate-limit store location.
    pub limits: LimitsLocation,
    /// Audit store location.
    pub audit: AuditLocation,
    /// `__Host-` CSRF cookie with `Secure`, and HSTS.
    pub secure_cookies: bool,
    /// Longest wait for one rate-limit store call (none: the policies' 50 ms).
    pub store_timeout: Option<Duration>,
    /// Milliseconds added to this instance's clock (negative: behind). For tests that run
    /// several instances whose clocks disagree; shared stores take time from the server, so
    /// this must not change what they admit.
    pub clock_skew_ms: i64,
    /// Whose tokens are accepted.
    pub identity: Identity,
    /// Connection limits and shutdown grace (`--header-read-timeout`, `--idle-timeout`,
    /// `--max-connections`, `--max-connections-per-ip`, `--shutdown-grace`).
    pub serve: ServeConfig,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            limits: LimitsLocation::Memory,
            audit: AuditLocation::Sqlite("./secure-routes.db".into()),
            secure_cookies: false,
            store_timeout: None,
            clock_skew_ms: 0,
            identity: Identity::DemoSecret,
            serve: ServeConfig::default(),
        }
    }
}

/// The system clock shifted by a fixed amount (see [`DemoOptions::clock_skew_ms`]).
#[derive(Debug)]
struct SkewedClock(i64);

impl Clock for SkewedClock {
    fn now(&self) -> Duration {
        let now = SystemClock.now();
        let skew = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            now.saturating_add(skew)
        } else {
            now.saturating_sub(skew)
        }
    }
}

/// Runs the demo on `stores` (opened from `options` with [`crate::stores::open`]): serves on
/// `listener` with the limits of [`DemoOptions::serve`] until `shutdown`, then flushes the
/// audit log, whether serving succeeded or not. Returns the audit writer's final counters.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    options: &DemoOptions,
    stores: OpenStores,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<AuditStats> {
    let writer = AuditWriter::spawn(
        Arc::clone(&stores.audit),
        AuditConfig {
            spill_path: options.audit.spill_path(),
            ..AuditConfig::default()
        },
    );
    let wiring = Wiring {
        audit: Some(writer.clone()),
        limits: Some(Arc::clone(&stores.limits)),
        clock: (options.clock_skew_ms != 0)
            .then(|| Arc::new(SkewedClock(options.clock_skew_ms)) as Arc<dyn Clock>),
        secure_cookies: options.secure_cookies,
        store_timeout: options.store_timeout,
        identity: options.identity.clone(),
    };
    let served = async {
        let app = router(config, &wiring)?;
        let report =
            secure_routes::serve::serve(listener, app, options.serve.clone(), shutdown).await?;
        // Only worth a line when connections were refused or cut (the stop line follows
        // anyway); a clean stop stays as quiet as the README shows.
        let notable = report.refused_per_ip
            + report.refused_max_connections
            + report.timed_out
            + report.closed_at_deadline
            + report.accept_errors
            > 0;
        if notable {
            tracing::info!(
                served = report.connections_served,
                refused_per_ip = report.refused_per_ip,
                refused_max_connections = report.refused_max_connections,
                timed_out = report.timed_out,
                closed_at_deadline = report.closed_at_deadline,
                accept_errors = report.accept_errors,
                "stopped serving"
            );
        }
        anyhow::Ok(())
    }
    .await;
    // Always, also when the router could not be built or serving failed: events recorded
    // so far must reach the store (or the spill file).
    writer.shutdown().await;
    drop(stores);
    served?;
    Ok(writer.stats())
}

/// The banner printed at start: routes and how to get a token.
pub fn banner(addr: SocketAddr, options: &DemoOptions) -> String {
    let audit_flag = match &options.audit {
        AuditLocation::Sqlite(p) if p.as_os_str() == "./secure-routes.db" => String::new(),
        other => format!(" --audit {other}"),
    };
    let how = match &options.identity {
        Identity::DemoSecret => format!(
            "Get a token:   TOKEN=$(secure-routes token --sub alice)
Call:          curl -H \"Authorization: Bearer $TOKEN\" http://{addr}/api/user/notes"
        ),
        Identity::Jwks { .. } => format!(
            "Call:          curl -H \"Authorization: Bearer $TOKEN\" http://{addr}/api/user/notes
               (TOKEN from your identity provider; the {SESSION_COOKIE} cookie works too, with CSRF)"
        ),
        Identity::Supabase { .. } => format!(
            "Call:          curl -H \"Authorization: Bearer $ACCESS_TOKEN\" http://{addr}/api/user/notes
               (a user's session.access_token; the SSR session cookie works too, with CSRF)"
        ),
    };
    format!(
        "secure-routes demo listening on http://{addr}  (limits: {limits}, audit log: {audit})
Tokens from:   {identity}

  GET            /health
  GET, POST      /api/public-data          PUBLIC: 60/min, 1 MiB
  GET            /api/csrf                 CSRF token for your session
  GET,POST,PUT,DELETE /api/user/notes      AUTHENTICATED: 20/hour, 5 MiB, CSRF for cookie sessions
  POST           /api/strict               STRICT: 10/min, 512 KiB
  POST           /api/sensitive-operation  auth + CSRF, 5/hour, 100 KiB

{how}
Audit log:     secure-routes audit{audit_flag}
Ctrl-C (or `kill %1` when started with `&`) stops the server and flushes the audit log.",
        limits = options.limits,
        audit = options.audit,
        identity = options.identity,
    )
}
