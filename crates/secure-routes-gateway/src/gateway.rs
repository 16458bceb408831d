//! The gateway as one axum [`Router`]: every request's path is normalized once, the route
//! table picks its policy, and that policy's pipeline (the library's [`SecurityLayer`], not a
//! copy) runs in front of the [`Forward`] proxy. The reserved prefix `/_secure-routes/` holds
//! the gateway's own endpoints. The routes can be swapped at run time ([`GatewayHandle::reload`],
//! SIGHUP in `secure-routes serve`): the new table is built whole, then replaces the old one in
//! one step, so a request sees either the old routes or the new, never a mix.
//!
//! [`SecurityLayer`]: secure_routes::SecurityLayer

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, Method, Request, Uri, header};
use secure_routes::audit::Reason;
use secure_routes::guard::body::LimitedBody;
use secure_routes::response::problem::{Rejection, RejectionKind};
use secure_routes::{AuthMode, ConfigError, Policy, Principal, Quota, Security};
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use crate::config::GatewayConfig;
use crate::identity::{AssertionSigner, CookieNames};
use crate::metrics::{GatewayMetrics, InFlight};
use crate::path;
use crate::proxy::{Forward, IdentityOptions, Upstream, UpstreamOptions};
use crate::routes::RouteTable;

/// The reserved prefix of the gateway's own endpoints.
///
/// ```
/// assert_eq!(secure_routes_gateway::gateway::RESERVED_PREFIX, "/_secure-routes/");
/// ```
pub const RESERVED_PREFIX: &str = "/_secure-routes/";

/// The browser helper served at `/_secure-routes/csrf-fetch.js` (clients/js).
///
/// ```
/// assert!(secure_routes_gateway::gateway::CSRF_FETCH_JS.contains("export"));
/// ```
pub const CSRF_FETCH_JS: &str = include_str!("../../../clients/js/csrf-fetch.js");

type Route = BoxCloneSyncService<Request<Body>, Response, Infallible>;

/// What the gateway is built from besides its config file: the shared [`Security`] (stores,
/// identity, secrets), the assertion key, the admin token, the metrics.
#[derive(Clone)]
#[non_exhaustive]
pub struct GatewayParts {
    /// Stores, authenticator, secrets, trusted proxies and origins.
    pub security: Security,
    /// Signs `X-Secure-Routes-Assertion`; its public key is `/_secure-routes/jwks.json`.
    pub signer: Arc<AssertionSigner>,
    /// The credential cookies `strip_credentials` removes.
    pub cookie_names: Arc<CookieNames>,
    /// `SECURE_ROUTES_ADMIN_TOKEN`; `None` closes `/_secure-routes/metrics`.
    pub admin_token: Option<Arc<str>>,
    /// The Prometheus recorder `/_secure-routes/metrics` renders, if installed.
    pub metrics: Option<GatewayMetrics>,
    /// Whether the listener is TLS (the forwarding headers' `proto`).
    pub https: bool,
    /// The audit trail the dashboard at `/_secure-routes/` reads. The dashboard is served when
    /// this and [`admin_token`](Self::admin_token) are both set; it lists and lifts the bans
    /// of the [`Security`]'s ban store and records in its audit writer.
    pub audit_reader: Option<Arc<dyn secure_routes::audit::AuditReader>>,
}

impl GatewayParts {
    /// Parts with a fresh assertion key, no admin token and no metrics.
    ///
    /// ```
    /// use secure_routes::Security;
    /// use secure_routes_gateway::gateway::GatewayParts;
    /// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
    /// let parts = GatewayParts::new(security).unwrap();
    /// assert!(parts.admin_token.is_none());
    /// ```
    pub fn new(security: Security) -> Result<GatewayParts, crate::identity::KeyError> {
        Ok(GatewayParts {
            security,
            signer: Arc::new(AssertionSigner::generate()?),
            cookie_names: Arc::new(CookieNames::default()),
            admin_token: None,
            metrics: None,
            https: false,
            audit_reader: None,
        })
    }
}

/// One built table: a service per route, the default, and the reserved endpoints.
struct Routes {
    table: RouteTable,
    routes: Vec<Route>,
    default: Route,
    bad_path: Route,
    internal: Route,
}

/// Swaps the running routes (see the [module docs](self)).
#[derive(Clone)]
pub struct GatewayHandle {
    current: Arc<RwLock<Arc<Routes>>>,
    parts: GatewayParts,
}

impl std::fmt::Debug for GatewayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayHandle")
    }
}

impl GatewayHandle {
    /// Builds the routes of `config` and, if every one builds, makes them the running ones.
    /// On error the running routes stay. Settings that live in the shared [`Security`]
    /// (stores, identity, trusted proxies, origins) and `listen` need a restart; the rest
    /// (routes, policies, upstream, timeout) is reloaded.
    ///
    /// ```
    /// use secure_routes::Security;
    /// use secure_routes_gateway::config::GatewayConfig;
    /// use secure_routes_gateway::gateway::{GatewayParts, gateway};
    /// let parse = |routes: &str| GatewayConfig::parse(&format!(
    ///     "upstream = \"http://127.0.0.1:3000\"\n{routes}")).unwrap();
    /// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
    /// let (_router, handle) =
    ///     gateway(&parse("[[routes]]\npath = \"/a\"\n"), GatewayParts::new(security).unwrap()).unwrap();
    /// // A route that authenticates cannot be built without an authenticator: the old table stays.
    /// let mut needs_auth = parse("[identity]\njwt = true\n[[routes]]\npath = \"/b\"\npreset = \"authenticated\"\n");
    /// assert!(handle.reload(&needs_auth).is_err());
    /// needs_auth = parse("[[routes]]\npath = \"/b\"\n");
    /// assert!(handle.reload(&needs_auth).is_ok());
    /// ```
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let routes = build(config, &self.parts)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(routes);
        Ok(())
    }
}

/// The gateway for `config`: the router to serve (with connect info, as
/// [`secure_routes::serve::serve`] does) and the handle that reloads it.
///
/// ```
/// use secure_routes::Security;
/// use secure_routes_gateway::config::GatewayConfig;
/// use secure_routes_gateway::gateway::{GatewayParts, gateway};
/// let config = GatewayConfig::parse(
///     "upstream = \"http://127.0.0.1:3000\"\n[[routes]]\npath = \"/api/{*rest}\"\n",
/// ).unwrap();
/// let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
/// let (_router, _handle) = gateway(&config, GatewayParts::new(security).unwrap()).unwrap();
/// ```
pub fn gateway(
    config: &GatewayConfig,
    parts: GatewayParts,
) -> Result<(Router, GatewayHandle), ConfigError> {
    let routes = build(config, &parts)?;
    let handle = GatewayHandle {
        current: Arc::new(RwLock::new(Arc::new(routes))),
        parts,
    };
    let dispatch = Dispatch {
        current: Arc::clone(&handle.current),
    };
    Ok((Router::new().fallback_service(dispatch), handle))
}

fn build(config: &GatewayConfig, parts: &GatewayParts) -> Result<Routes, ConfigError> {
    let trusted = config
        .trusted_proxies
        .iter()
        .map(|s| {
            s.parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::new(format!("trusted_proxies: {s:?} is not a CIDR")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut options = UpstreamOptions::default()
        .timeout(config.upstream_timeout)
        .trusted_proxies(trusted);
    options.https = parts.https;
    let upstream =
        Upstream::new(&config.upstream, options).map_err(|e| ConfigError::new(e.to_string()))?;
    let security = &parts.security;
    let route = |r: &crate::config::Route| -> Result<Route, ConfigError> {
        let forward = Forward::new(
            upstream.clone(),
            IdentityOptions {
                signer: Arc::clone(&parts.signer),
                strip_credentials: r.strip_credentials,
                cookie_names: Arc::clone(&parts.cookie_names),
            },
            r.policy.name(),
        );
        Ok(BoxCloneSyncService::new(tower_layer::Layer::layer(
            &security.layer(r.policy.clone())?,
            forward,
        )))
    };
    let routes = config
        .routes()
        .iter()
        .map(route)
        .collect::<Result<Vec<_>, _>>()?;
    let default = route(config.default_route())?;
    let bad_path = BoxCloneSyncService::new(tower_layer::Layer::layer(
        &security.layer(config.default_route().policy.clone())?,
        RefuseBadPath,
    ));
    Ok(Routes {
        table: config.table().clone(),
        routes,
        default,
        bad_path,
        internal: internal(parts)?,
    })
}

/// The reserved endpoints under [`RESERVED_PREFIX`].
fn internal(parts: &GatewayParts) -> Result<Route, ConfigError> {
    let security = parts.security.clone();
    let csrf_policy = Policy::public()
        .to_builder()
        .name("gateway-csrf")
        .methods([Method::GET])
        .auth(if security.has_authenticator() {
            AuthMode::Optional
        } else {
            AuthMode::Off
        })
        .build()?;
    // Guessing the admin token meets a rate limit like any other credential.
    let admin_policy = Policy::builder("gateway-admin")
        .methods([Method::GET])
        .rate_limit(Quota::per_minute(60))
        .build()?;
    let csrf = {
        let security = security.clone();
        move |req: Request<Body>| {
            let security = security.clone();
            async move {
                security.csrf_token_response(req.headers(), req.extensions().get::<Principal>())
            }
        }
    };
    let jwks = parts.signer.jwks_json();
    let metrics = {
        let token = parts.admin_token.clone();
        let recorder = parts.metrics.clone();
        move |req: Request<Body>| {
            let (token, recorder) = (token.clone(), recorder.clone());
            async move {
                let allowed = token
                    .as_deref()
                    .is_some_and(|t| crate::metrics::admin_authorized(req.headers(), t));
                if !allowed {
                    return Rejection::unauthorized(Reason::Invalid)
                        .with_detail("Send the admin token: Authorization: Bearer <token>.")
                        .into_response();
                }
                let text = recorder.map(|m| m.render()).unwrap_or_default();
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                    )],
                    text,
                )
                    .into_response()
            }
        }
    };
    let router = Router::new()
        .route(
            "/_secure-routes/health",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"ok"}"#,
                )
            }),
        )
        .route(
            "/_secure-routes/csrf",
            get(csrf).layer(security.layer(csrf_policy)?),
        )
        .route(
            "/_secure-routes/csrf-fetch.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=300"),
                    ],
                    CSRF_FETCH_JS,
                )
            }),
        )
        .route(
            "/_secure-routes/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "public, max-age=60"),
                        ],
                        jwks,
                    )
                }
            }),
        )
        .route(
            "/_secure-routes/metrics",
            get(metrics).layer(security.layer(admin_policy)?),
        )
        .merge(dashboard(parts))
        .fallback_service(security.not_found()?)
        .layer(security.headers_layer());
    Ok(BoxCloneSyncService::new(router))
}

/// The audit dashboard's routes when there is an admin token and an audit reader, else none
/// (its paths then meet the reserved prefix's 404).
fn dashboard(parts: &GatewayParts) -> Router {
    let (Some(token), Some(reader)) = (&parts.admin_token, &parts.audit_reader) else {
        return Router::new();
    };
    let mut state =
        secure_routes_dashboard::DashboardState::new(Arc::clone(reader), Arc::clone(token))
            .with_https(parts.https);
    if let Some(bans) = parts.security.bans() {
        // The pipeline's own `Bans`: a lift ends the ban in this gateway's snapshot at once.
        state = state.with_bans(bans.clone());
    }
    if let Some(writer) = parts.security.audit() {
        state = state.with_audit(writer.clone());
    }
    secure_routes_dashboard::router(state)
}

/// The default policy's answer to a path that cannot be normalized safely: 400, audited.
#[derive(Clone, Copy)]
struct RefuseBadPath;

impl<B> Service<Request<LimitedBody<B>>> for RefuseBadPath {
    type Response = Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<LimitedBody<B>>) -> Self::Future {
        std::future::ready(Ok(Rejection::new(
            RejectionKind::InvalidInput,
            Reason::BadPath,
        )
        .with_detail(
            "The path has an encoded '/' or '\\', a dot segment above the root, or a character \
             that cannot be in a path.",
        )
        .into_response()))
    }
}

/// Normalizes the path, picks the route, hands the request to its pipeline.
#[derive(Clone)]
struct Dispatch {
    current: Arc<RwLock<Arc<Routes>>>,
}

impl Service<Request<Body>> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let routes = Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()));
        let in_flight = InFlight::enter();
        let service = match path::normalize(req.uri().path()) {
            Err(_) => routes.bad_path.clone(),
            Ok(normalized) => {
                if normalized != req.uri().path() {
                    match with_path(req.uri(), &normalized) {
                        Some(uri) => *req.uri_mut() = uri,
                        None => {
                            let svc = routes.bad_path.clone();
                            return Box::pin(async move {
                                let res = svc.oneshot(req).await;
                                drop(in_flight);
                                res
                            });
                        }
                    }
                }
                // After normalizing: `/%5Fsecure-routes/metrics` is the reserved path too.
                if normalized.starts_with(RESERVED_PREFIX)
                    || normalized == RESERVED_PREFIX.trim_end_matches('/')
                {
                    routes.internal.clone()
                } else {
                    match routes.table.find(&normalized) {
                        Some(i) => routes.routes[i].clone(),
                        None => routes.default.clone(),
                    }
                }
            }
        };
        Box::pin(async move {
            let res = service.oneshot(req).await;
            drop(in_flight);
            res
        })
    }
}

/// `uri` with its path replaced by `path` (query, scheme and authority kept).
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_path_keeps_the_query_and_authority() {
        let uri: Uri = "http://h:1/a/../b?x=1".parse().unwrap();
        assert_eq!(
            with_path(&uri, "/b").unwrap().to_string(),
            "http://h:1/b?x=1"
        );
        let uri: Uri = "/a//b".parse().unwrap();
        assert_eq!(with_path(&uri, "/a/b").unwrap().to_string(), "/a/b");
    }
}
