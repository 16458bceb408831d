//! The demo's wiring: the [`Security`] built from the configuration and [`Wiring`], the
//! router with one policy per route, and [`run`], which serves it and flushes the audit log.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use http::Method;
use secure_routes::audit::{AuditConfig, AuditObserver, AuditStats, AuditWriter};
use secure_routes::bans::Bans;
use secure_routes::clock::Clock;
use secure_routes::rate_limit::RateLimitStore;
use secure_routes::serve::{ServeConfig, ServeReport};
use secure_routes::{AuthMode, CsrfMode, Policy, Quota, Security};
use serde_json::json;
use tokio::net::TcpListener;

use super::handlers::{
    AppState, add_note, csrf_token, delete_notes, list_notes, public_data, public_post, success,
    update_note,
};
use super::identity::authenticator;
use super::options::SkewedClock;
use super::{DemoOptions, Identity};
use crate::config::Config;
use crate::stores::OpenStores;

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
    /// The cookie a session token may come in (HS256 and JWKS identities; none: the demo's
    /// `sr-session`).
    pub session_cookie: Option<String>,
    /// Escalating bans (none: off). `demo` and `serve` set them on by default, kept in the
    /// limits store ([`crate::stores::OpenStores::bans`]).
    pub bans: Option<Bans>,
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
            .field("session_cookie", &self.session_cookie)
            .field("bans", &self.bans)
            .finish()
    }
}

/// Builds the demo's [`Security`] from `config` and `wiring`. With a JWKS or Supabase identity
/// and a Tokio runtime at hand, the signing keys are fetched in the background at once.
pub fn security(config: &Config, wiring: &Wiring) -> anyhow::Result<Security> {
    security_for(config, wiring, Some(&wiring.identity))
}

/// [`security`] with the identity given apart: `None` builds no authenticator (the gateway
/// without an `[identity]` source, where no route authenticates).
pub(crate) fn security_for(
    config: &Config,
    wiring: &Wiring,
    identity: Option<&Identity>,
) -> anyhow::Result<Security> {
    let mut b = Security::builder()
        .csrf_secret(&config.csrf_secret)
        .trusted_proxies(&config.trusted_proxies)
        .client_ip_header(config.client_ip_header)
        .allowed_origins(&config.allowed_origins)
        .development(!config.production)
        .https(wiring.secure_cookies);
    if let Some(identity) = identity {
        let wiring = Wiring {
            identity: identity.clone(),
            ..wiring.clone()
        };
        let (auth, prefetch) = authenticator(config, &wiring)?;
        if let (Some(p), Ok(rt)) = (prefetch, tokio::runtime::Handle::try_current()) {
            rt.spawn(p.run());
        }
        b = b.shared_authenticator(auth);
    }
    if let Some(w) = &wiring.audit {
        b = b.audit(w.clone());
    }
    if let Some(s) = &wiring.limits {
        b = b.shared_rate_limit_store(Arc::clone(s));
    }
    if let Some(c) = &wiring.clock {
        b = b.clock(Arc::clone(c));
    }
    if let Some(bans) = &wiring.bans {
        b = b.bans(bans.clone());
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

/// Runs the demo on `stores` (opened from `options` with [`crate::stores::open`]): serves on
/// `listener` with the limits of [`DemoOptions::serve`] until `shutdown`, then flushes the
/// audit log, whether serving succeeded or not (and gives queued alert webhooks a bounded
/// time to go out). Returns the audit writer's final counters.
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
            observers: options
                .alerts
                .iter()
                .map(|a| Arc::new(a.clone()) as Arc<dyn AuditObserver>)
                .collect(),
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
        session_cookie: None,
        bans: options
            .bans
            .clone()
            .map(|policy| Bans::new(Arc::clone(&stores.bans), policy)),
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
    // Strikes still queued reach the ban store first (a ban they issue is an audit event).
    if let Some(bans) = &wiring.bans {
        bans.flush().await;
    }
    // Always, also when the router could not be built or serving failed: events recorded
    // so far must reach the store (or the spill file).
    writer.shutdown().await;
    if let Some(a) = &options.alerts {
        crate::alerts::drain(a).await;
    }
    drop(stores);
    served?;
    Ok(writer.stats())
}
