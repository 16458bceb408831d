//! Router-wide pieces: the contract on responses no policy answered, and the 404.
//!
//! A [`SecurityLayer`](crate::SecurityLayer) decorates what passes through it, but a router
//! also answers things no policy sees: an unprotected `/health`, and axum's 404 for a path no
//! route matches. Without these, those answers lack the security headers and the request id a
//! client (and an operator correlating logs) relies on, and a scanner walking thousands of
//! unknown paths is never counted.
//!
//! * [`HeadersLayer`] ([`Security::headers_layer`](crate::Security::headers_layer)): applied to the whole router, it gives
//!   every response that has no `x-request-id` yet (so none a policy answered) the default
//!   security headers and a request id. Two things follow from that test: a handler that sets
//!   `x-request-id` itself (a proxied route, tower-http's request-id propagation inside this
//!   layer) is taken as answered and gets nothing added; and headers a handler set are kept,
//!   so an HTML page served from the same router should send its own
//!   `Content-Security-Policy` (the default, `default-src 'none'`, is for APIs).
//! * [`NotFound`] ([`Security::not_found`](crate::Security::not_found)): the router's fallback, run through the pipeline
//!   under a PUBLIC-like policy (60 per minute per client, one bucket for all unknown paths),
//!   so path scanning meets 429 like any other traffic. Each 404 is a problem+json body and an
//!   audit event (`invalid_input`, reason `not_found`).
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, body::Body, extract::ConnectInfo, routing::get};
//! use http::{Request, StatusCode};
//! use secure_routes::Security;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let security = Security::builder().csrf_secret([7u8; 32]).build().unwrap();
//! let app: Router = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .fallback_service(security.not_found().unwrap())
//!     .layer(security.headers_layer());
//! let peer = ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000)));
//! let res = app.clone()
//!     .oneshot(Request::get("/health").extension(peer).body(Body::empty()).unwrap())
//!     .await.unwrap();
//! assert_eq!(res.headers()["x-content-type-options"], "nosniff");
//! assert!(res.headers().contains_key("x-request-id"));
//! let res = app
//!     .oneshot(Request::get("/wp-admin").extension(peer).body(Body::empty()).unwrap())
//!     .await.unwrap();
//! assert_eq!(res.status(), StatusCode::NOT_FOUND);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! assert_eq!(res.headers()["ratelimit-policy"], "\"not_found\";q=60;w=60");
//! # });
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::audit::Reason;
use crate::response::headers::SecurityHeaders;
use crate::response::problem::{Rejection, RejectionKind};

/// Adds the default security headers and a request id to responses no policy answered; see
/// the [module docs](self). Build with [`Security::headers_layer`](crate::Security::headers_layer).
#[derive(Clone)]
pub struct HeadersLayer {
    state: Arc<HeadersState>,
}

pub(crate) struct HeadersState {
    pub(crate) headers: SecurityHeaders,
    pub(crate) https: bool,
    pub(crate) proxies: crate::client_ip::TrustedProxies,
}

impl HeadersLayer {
    pub(crate) fn new(state: HeadersState) -> Self {
        Self {
            state: Arc::new(state),
        }
    }
}

impl std::fmt::Debug for HeadersLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadersLayer")
    }
}

impl<S> Layer<S> for HeadersLayer {
    type Service = HeadersService<S>;

    fn layer(&self, inner: S) -> HeadersService<S> {
        HeadersService {
            state: self.state.clone(),
            inner,
        }
    }
}

/// The service a [`HeadersLayer`] produces.
#[derive(Clone)]
pub struct HeadersService<S> {
    state: Arc<HeadersState>,
    inner: S,
}

impl<S> std::fmt::Debug for HeadersService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeadersService")
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HeadersService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // An incoming id is kept only from a trusted proxy, as the pipeline does.
        let incoming = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .filter(|c| self.state.proxies.contains(c.0.ip()))
            .and_then(|_| req.headers().get(crate::request_id::X_REQUEST_ID))
            .filter(|v| crate::request_id::plain_request_id(v))
            .cloned();
        HeadersFuture {
            inner: self.inner.call(req),
            state: self.state.clone(),
            incoming,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`HeadersService`].
    pub struct HeadersFuture<F> {
        #[pin]
        inner: F,
        state: Arc<HeadersState>,
        incoming: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for HeadersFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        let h = res.headers_mut();
        if !h.contains_key(crate::request_id::X_REQUEST_ID) {
            // No policy answered this one (a policy always sets the id).
            this.state.headers.apply(h, this.state.https);
            let id = this
                .incoming
                .take()
                .unwrap_or_else(crate::request_id::fresh_request_id);
            h.insert(crate::request_id::X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(res))
    }
}

/// The 404 problem answer, for a router's fallback behind a policy; see
/// [`Security::not_found`](crate::Security::not_found).
#[derive(Clone, Copy, Debug, Default)]
pub struct NotFound;

impl<B> Service<Request<B>> for NotFound {
    type Response = Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        std::future::ready(Ok(Rejection::new(
            RejectionKind::NotFound,
            Reason::NotFound,
        )
        .into_response()))
    }
}
