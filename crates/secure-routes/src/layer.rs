//! The tower layer that runs the pipeline: [`Security::layer`] turns a [`Policy`] into a
//! [`SecurityLayer`] for one route or a router; its [`SecurityService`] runs the steps.
//!
//! Where the pieces live (see DESIGN.md, "Layout"): the shared state and its builder in
//! [`crate::security`]; the service and its named [`ResponseFuture`] in `service`; the steps in
//! `guard::*`; the responders in `respond`; the route and audit context in `context`. This
//! module also re-exports [`Security`], [`SecurityBuilder`], [`DEFAULT_AUTHENTICATE_TIMEOUT`]
//! and [`ClientIp`] under their former `layer::` paths, so existing imports keep working.
//!
//! The service is a stack, outermost first: the core checks (client, CORS preflight, method,
//! auth, rate limit, body, CSRF token, response headers and the CORS headers by tower-http's
//! rules, audit, and the catching of a panic below it), tower-http's Fetch Metadata / `Origin`
//! CSRF check, then the handler. Every rejection
//! is a response, never a service error, and carries a
//! [`RejectionInfo`](crate::response::problem::RejectionInfo) in its extensions.
//!
//! The client address is the socket peer from axum's `ConnectInfo<SocketAddr>` (serve with
//! `into_make_service_with_connect_info::<SocketAddr>()`). A request without it is refused
//! with a 500 and the configuration error is logged once: guessing an address would put every
//! client in one rate-limit bucket.
//!
//! A layer on a method router (`get(..).layer(..)`) wraps that router's fallback too, so a
//! method the policy does not allow is answered by the policy (below: a problem+json 405 with
//! the policy's `Allow`), not by axum. A method the policy allows but the route has no
//! handler for passes the checks and meets axum's own 405, inside the policy's headers.
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
//! // The policy answers, not axum: its method check (GET, POST, HEAD) with the `Allow` header.
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
use std::sync::Arc;

use http::Method;
use tower_http::csrf::CsrfLayer;
use tower_layer::Layer;

use crate::context::{self, Decoration, RouteState};
use crate::error::ConfigError;
use crate::fallback::NotFound;
use crate::policy::{AuthMode, CsrfMode, FailureMode, Policy};
use crate::rate_limit::headers::LimitHeaders;
use crate::rate_limit::{KeyPart, Quota};
use crate::respond::CsrfProblem;
use crate::response::cors;
use crate::service::IntoBody;

#[doc(no_inline)]
pub use crate::client_ip::ClientIp;
#[doc(no_inline)]
pub use crate::security::{DEFAULT_AUTHENTICATE_TIMEOUT, Security, SecurityBuilder};
pub use crate::service::{ResponseFuture, SecurityService};

impl Security {
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
        let mut csrf = self
            .shared
            .csrf_layer
            .clone()
            .with_rejection_response(CsrfProblem);
        // Dry-run: the real check runs on a stand-in request (recorded as `would_deny`), the
        // request itself goes through a bypassed copy.
        let fetch_probe = (policy.is_dry_run() && policy.csrf() != CsrfMode::Off)
            .then(|| tower::util::BoxCloneSyncService::new(csrf.clone().layer(Pass)));
        if policy.csrf() == CsrfMode::Off || policy.is_dry_run() {
            csrf = csrf.with_insecure_bypass(|_: &Method, _: &http::Uri| true);
        }
        let fixed_bucket = policy
            .bucket()
            .map(|b| Arc::<str>::from(format!("bucket:{b}")));
        let fallback_bucket = Arc::<str>::from(format!("policy:{}", policy.name()));
        let limit_headers = policy
            .rate_limit()
            .map(|q| LimitHeaders::new(policy.name(), q));
        let events_recorded = self.shared.audit.is_some() || self.shared.bans.is_some();
        let fingerprint_read =
            events_recorded || policy.rate_limit_key().contains(&KeyPart::Fingerprint);
        // What tower-http's rules add to an answer for a request without `Origin` does not
        // depend on the request: computed once, merged per request.
        let cors_without_origin = context::cors_headers(&cors, &http::HeaderMap::new(), false);
        let decoration = Decoration::new(
            &policy,
            self.shared.https,
            limit_headers.as_ref(),
            &cors_without_origin,
        );
        let state = RouteState {
            decoration,
            cors_without_origin,
            cors,
            shared: self.shared.clone(),
            policy,
            fixed_bucket,
            fallback_bucket,
            route_bucket: std::sync::OnceLock::new(),
            limit_headers,
            fetch_probe,
            events_recorded,
            fingerprint_read,
        };
        Ok(SecurityLayer {
            csrf,
            state: Arc::new(state),
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

/// The service behind a dry-run policy's Fetch Metadata probe: every request passes.
#[derive(Clone, Copy)]
struct Pass;

impl tower_service::Service<http::Request<()>> for Pass {
    type Response = http::Response<axum::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(axum::body::Body::empty())))
    }
}

/// Applies one [`Policy`] with the shared [`Security`] state. Build with [`Security::layer`].
#[derive(Clone)]
pub struct SecurityLayer {
    csrf: CsrfLayer<CsrfProblem>,
    state: Arc<RouteState>,
}

impl fmt::Debug for SecurityLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityLayer")
            .field("policy", &self.state.policy.name())
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;

    /// The stack, outermost first: the pipeline (`SecurityService`, which also adds the CORS
    /// response headers by tower-http's rules and catches a panic below it), tower-http's
    /// Fetch Metadata check, the handler.
    fn layer(&self, inner: S) -> SecurityService<S> {
        SecurityService::new(self.state.clone(), self.csrf.layer(IntoBody(inner)))
    }
}
