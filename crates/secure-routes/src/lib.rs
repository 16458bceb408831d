//! # secure-routes
//!
//! Composable security middleware for [tower] and [axum]: one [`Policy`] per route enforces
//! allowed methods, authentication, rate limits backed by a real store, request body limits,
//! CSRF protection, security and CORS headers, and writes an audit trail of every security
//! decision. It is the Rust counterpart of the Next.js `withSecurity(handler, config)` pattern,
//! with its presets ([`Policy::public`], [`Policy::authenticated`], [`Policy::strict`]) and
//! without its flaws (spoofable client IPs, racy limits, unsigned CSRF tokens, lost audit
//! events).
//!
//! ## Layout
//!
//! * [`policy`]: what a route enforces, presets, validation.
//! * [`security`]: [`Security`], the shared state, and its validating builder.
//! * [`layer`]: the tower layer and the service running the pipeline (`run`, a list of steps).
//! * [`fallback`]: router-wide security headers and request ids, and the counted 404.
//! * [`guard`]: the pipeline's steps, one module each (client, method, auth, rate limit,
//!   authorization, body, CSRF); public are the limited body and the CSRF token issuer.
//! * [`client_ip`]: the client address behind trusted proxies, [`ClientIp`].
//! * [`fingerprint`]: a JA4H-style fingerprint of a request's header shape (audit, keys).
//! * [`auth`]: the [`auth::Authenticator`] trait, [`Principal`], JWT and API-key authenticators.
//! * [`rate_limit`]: quotas, the store trait, the algorithms and the memory store.
//! * [`bans`]: escalating bans for repeat violators, the ban store trait.
//! * [`audit`]: audit events, sinks and the batching writer.
//! * `alerts` (feature `alerts`): alert rules over the audit trail, signed webhooks.
//! * [`response`]: problem bodies (RFC 9457), security headers, CORS.
//! * [`clock`]: injectable time.
//! * `serve` (feature `server`): serving a router with header-read and idle timeouts,
//!   connection caps, HTTP/2 limits and a bounded graceful shutdown.
//!
//! ## The pipeline
//!
//! In order: client address and request id, CORS preflight, method allow-list (405),
//! authentication (401), rate limit (429), body size (413, declared and streamed), CSRF
//! (403: Fetch Metadata / `Origin`, and a signed double-submit token bound to the subject),
//! the handler (a panic becomes a generic 500), then response headers. Every refusal is an
//! `application/problem+json` body that keeps the original's `error` field, and an audit event.
//!
//! ## Example
//!
//! The original's four examples, as one axum router:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Json, Router, body::Body, routing::{get, post}};
//! use http::{Method, Request, StatusCode};
//! use secure_routes::{AuthMode, CsrfMode, Policy, Principal, Quota, Security};
//! use secure_routes::auth::jwt::JwtAuthenticator;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let jwt = JwtAuthenticator::builder()
//!     .hs256(b"a-jwt-secret-of-at-least-32-bytes!!")
//!     .cookie("sr-session")
//!     .build()
//!     .unwrap();
//! let security = Security::builder()
//!     .authenticator(jwt)
//!     .csrf_secret(b"a-csrf-secret-of-at-least-32-bytes!")
//!     .build()
//!     .unwrap();
//!
//! // Example 3: a custom policy.
//! let sensitive = Policy::builder("sensitive-operation")
//!     .methods([Method::POST])
//!     .auth(AuthMode::Required)
//!     .csrf(CsrfMode::Auto)
//!     .rate_limit(Quota::per_hour(5))
//!     .max_body_bytes(100 * 1024)
//!     .build()
//!     .unwrap();
//!
//! let app: Router = Router::new()
//!     // Example 1: public data.
//!     .route("/api/public-data", get(|| async { Json(serde_json::json!({"data": [1, 2, 3]})) })
//!         .layer(security.layer(Policy::public()).unwrap()))
//!     // Example 2: authenticated, with CSRF for cookie sessions.
//!     .route("/api/user/notes", post(|p: Principal| async move { format!("saved for {}", p.subject()) })
//!         .layer(security.layer(Policy::authenticated()).unwrap()))
//!     .route("/api/sensitive-operation", post(|| async { "done" })
//!         .layer(security.layer(sensitive).unwrap()));
//!
//! // Served, the socket peer comes from `into_make_service_with_connect_info` (or
//! // `secure_routes::serve`); without it every request is refused with 500.
//! let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1], 4000)));
//! let res = app.clone()
//!     .oneshot(Request::get("/api/public-data").extension(peer).body(Body::empty()).unwrap())
//!     .await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["x-ratelimit-remaining"], "59");
//!
//! let res = app
//!     .oneshot(Request::post("/api/user/notes").extension(peer).body(Body::empty()).unwrap())
//!     .await.unwrap();
//! assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
//! # });
//! ```
//!
//! [tower]: https://docs.rs/tower
//! [axum]: https://docs.rs/axum

#[cfg(feature = "alerts")]
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod bans;
pub mod client_ip;
pub mod clock;
mod context;
mod cookies;
pub mod error;
pub mod fallback;
pub mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
#[cfg(any(feature = "jwks", feature = "alerts"))]
mod http_client;
pub mod layer;
pub mod policy;
pub mod rate_limit;
mod request_id;
mod respond;
pub mod response;
pub mod security;
#[cfg(feature = "server")]
pub mod serve;
mod service;

pub use auth::Principal;
pub use client_ip::ClientIp;
pub use error::{ConfigError, StoreError};
pub use layer::{SecurityLayer, SecurityService};
pub use policy::{AuthMode, CsrfMode, FailureMode, Policy, PolicyBuilder};
pub use rate_limit::Quota;
pub use request_id::RequestId;
pub use security::{Security, SecurityBuilder};
