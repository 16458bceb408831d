//! The reverse proxy: what the gateway does with a request every check has passed.
//!
//! [`Upstream`] is one pooled keep-alive client for the configured upstream; [`Forward`] is
//! the tower service a route's [`SecurityLayer`](secure_routes::SecurityLayer) wraps. It
//! rewrites the request for the upstream and streams both bodies (nothing is buffered whole):
//!
//! * **Hop-by-hop headers** (RFC 9110 7.6.1: `Connection` and every header it names,
//!   `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, and the
//!   `Proxy-Authorization`/`Proxy-Authenticate` pair meant for this hop) are removed both ways;
//!   they describe one connection, and passing them on is how request smuggling starts.
//! * **`X-Forwarded-For`/`-Proto`/`-Host` and `Forwarded`** (RFC 7239) describe the client as
//!   the gateway saw it. They are appended to only when the socket peer is a trusted proxy;
//!   from anyone else they are replaced, so a client cannot make the upstream believe it
//!   came from another address.
//! * **The body limit** is the pipeline's, enforced on the stream: a body that grows past it
//!   fails mid-stream, the upstream sees the request aborted (the connection is cut before the
//!   last chunk or the declared length), never a truncated body passed off as complete. The
//!   client gets the pipeline's 413 (audited) when that happens before the upstream answers;
//!   an upstream that answers before reading the whole body has its answer passed on and
//!   then cut.
//! * **Failures** are answers, not dropped connections: the upstream unreachable is a 502 and
//!   no response head within `upstream_timeout` is a 504, both `application/problem+json`
//!   and audited (`upstream_failure`) by the pipeline like any refusal from inside the stack.
//!   Once the head is sent, a body that stalls for `upstream_timeout` between two reads aborts
//!   the client's response (nginx's `proxy_read_timeout`).
//! * **Upgrades** (WebSocket and any `Upgrade`) are forwarded after the route's checks; on the
//!   upstream's `101` the two connections are joined and bytes flow both ways until either
//!   side closes. Except `h2c`: after it the tunnel carries HTTP/2 requests straight to the
//!   upstream, past every route's checks (h2c smuggling), so a request naming it is forwarded
//!   as a plain request without the upgrade (RFC 9113 3.1 deprecated the h2c upgrade anyway).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ipnet::IpNet;
use secure_routes::audit::Reason;
use secure_routes::guard::body::LimitedBody;
use secure_routes::response::problem::{Rejection, RejectionKind};
use secure_routes::{Principal, RequestId};
use tower_service::Service;

use crate::identity;

/// The hop-by-hop headers of RFC 9110 7.6.1 (and RFC 9112's `Proxy-Connection` habit), plus
/// the proxy authentication pair, which is addressed to this hop.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Why an [`Upstream`] could not be built.
///
/// ```
/// use secure_routes_gateway::proxy::{Upstream, UpstreamOptions};
/// let err = Upstream::new("ftp://x", UpstreamOptions::default()).unwrap_err();
/// assert!(err.to_string().contains("http"));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("upstream {url:?}: {message}")]
pub struct UpstreamError {
    url: String,
    message: String,
}

/// How the gateway talks to its upstream and whom it believes.
///
/// ```
/// use secure_routes_gateway::proxy::UpstreamOptions;
/// let o = UpstreamOptions::default();
/// assert_eq!(o.timeout.as_secs(), 30);
/// assert!(o.trusted_proxies.is_empty());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct UpstreamOptions {
    /// Longest wait for the upstream's response head (504 past it), and for each read of
    /// its body once the head is sent (the response is cut past it).
    pub timeout: Duration,
    /// Socket peers whose `X-Forwarded-*`/`Forwarded` headers are kept and appended to.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether the gateway's own listener is TLS (`X-Forwarded-Proto`, `Forwarded: proto`).
    pub https: bool,
    /// Most upgraded connections (WebSocket tunnels) open at once (10 000); past it an
    /// upgrade is answered 503.
    pub max_tunnels: usize,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            https: false,
            max_tunnels: 10_000,
        }
    }
}

impl UpstreamOptions {
    /// These options with `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes_gateway::proxy::UpstreamOptions;
    /// let o = UpstreamOptions::default().timeout(Duration::from_secs(5));
    /// assert_eq!(o.timeout, Duration::from_secs(5));
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// These options with `trusted_proxies`.
    ///
    /// ```
    /// use secure_routes_gateway::proxy::UpstreamOptions;
    /// let o = UpstreamOptions::default().trusted_proxies(vec!["10.0.0.0/8".parse().unwrap()]);
    /// assert_eq!(o.trusted_proxies.len(), 1);
    /// ```
    pub fn trusted_proxies(mut self, nets: Vec<IpNet>) -> Self {
        self.trusted_proxies = nets;
        self
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// The upstream: its origin and one pooled keep-alive client shared by every route.
///
/// ```
/// use secure_routes_gateway::proxy::{Upstream, UpstreamOptions};
/// let u = Upstream::new("http://127.0.0.1:3000", UpstreamOptions::default()).unwrap();
/// assert_eq!(u.origin(), "http://127.0.0.1:3000");
/// ```
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    client: HttpsClient,
    scheme: Scheme,
    authority: Authority,
    /// The path prefix of the upstream URL without its trailing `/` (often empty).
    base_path: String,
    origin: String,
    options: UpstreamOptions,
    /// Open upgraded connections (WebSocket tunnels), at most [`UpstreamOptions::max_tunnels`].
    tunnels: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.inner.origin)
            .finish()
    }
}

impl Upstream {
    /// A client for `url` (`http://` or `https://`, with an optional path prefix). HTTPS
    /// upstreams are verified against the Web PKI roots.
    pub fn new(url: &str, options: UpstreamOptions) -> Result<Upstream, UpstreamError> {
        // Never the user-info part of the URL (a password) in the error, which gets logged.
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..end].rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://***@{host}{}", &rest[end..]),
                    None => url.to_owned(),
                }
            }
            None => url.to_owned(),
        };
        let err = |message: &str| UpstreamError {
            url: shown.clone(),
            message: message.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| err("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| err("no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(err("must be an http:// or https:// URL"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| err("no host"))?;
        if authority.as_str().contains('@') {
            return Err(err("credentials in the URL are not supported"));
        }
        if uri.query().is_some() {
            return Err(err("a query in the upstream URL is not supported"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(options.timeout));
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Below Node's 5 s keep-alive timeout (and most servers'): a pooled connection
            // the upstream is closing at the moment it is reused is a spurious 502.
            .pool_idle_timeout(Duration::from_secs(4))
            .build(connector);
        let origin = format!("{scheme}://{authority}");
        Ok(Upstream {
            inner: Arc::new(UpstreamInner {
                client,
                scheme,
                authority,
                base_path,
                origin,
                tunnels: Arc::new(tokio::sync::Semaphore::new(options.max_tunnels)),
                options,
            }),
        })
    }

    /// `scheme://host[:port]`: the audience of the gateway's assertion.
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The URI `path_and_query` maps to on the upstream.
    fn uri(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let pq = path_and_query.map_or("/", PathAndQuery::as_str);
        let pq = if self.inner.base_path.is_empty() {
            PathAndQuery::try_from(pq)?
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.inner.base_path))?
        };
        Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(pq)
            .build()
    }

    fn trusted(&self, peer: IpAddr) -> bool {
        let peer = fold(peer);
        self.inner
            .options
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so `10.0.0.0/8` matches `::ffff:10.0.0.1`.
fn fold(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What the gateway adds to a forwarded request to say who the caller is (see
/// [`crate::identity`]). See [`Forward`] for an example.
#[derive(Clone)]
pub struct IdentityOptions {
    /// Signs `X-Secure-Routes-Assertion`.
    pub signer: Arc<identity::AssertionSigner>,
    /// Remove `Authorization` and credential cookies before forwarding.
    pub strip_credentials: bool,
    /// The credential cookies [`strip_credentials`](Self::strip_credentials) removes.
    pub cookie_names: Arc<identity::CookieNames>,
}

/// The service behind one route's policy: forwards to the [`Upstream`].
///
/// ```
/// use std::sync::Arc;
/// use secure_routes_gateway::identity::{AssertionSigner, CookieNames};
/// use secure_routes_gateway::proxy::{Forward, IdentityOptions, Upstream, UpstreamOptions};
/// let upstream = Upstream::new("http://127.0.0.1:3000", UpstreamOptions::default()).unwrap();
/// let identity = IdentityOptions {
///     signer: Arc::new(AssertionSigner::generate().unwrap()),
///     strip_credentials: false,
///     cookie_names: Arc::new(CookieNames::default()),
/// };
/// let _forward = Forward::new(upstream, identity, "public");
/// ```
#[derive(Clone)]
pub struct Forward {
    upstream: Upstream,
    identity: IdentityOptions,
    /// The route's policy name, for the metrics.
    policy: Arc<str>,
}

impl Forward {
    /// Forwards to `upstream` for the route whose policy is named `policy`, telling the
    /// upstream who the caller is as `identity` says.
    pub fn new(upstream: Upstream, identity: IdentityOptions, policy: &str) -> Forward {
        Forward {
            upstream,
            identity,
            policy: policy.into(),
        }
    }
}

type ForwardFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> Service<Request<LimitedBody<B>>> for Forward
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<LimitedBody<B>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(req.map(Body::new)).await) })
    }
}

impl Forward {
    async fn forward(self, req: Request<Body>) -> Response {
        crate::metrics::allowed(&self.policy);
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let upgrade = upgrade_protocol(&parts.headers);
        let on_client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let uri = match self.upstream.uri(parts.uri.path_and_query()) {
            Ok(u) => u,
            // The path was normalized before routing; a URI that still does not build is the
            // client's (400), not the upstream's.
            Err(_) => {
                return Rejection::new(RejectionKind::InvalidInput, Reason::BadPath)
                    .into_response();
            }
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let mut headers = std::mem::take(&mut parts.headers);
        remove_hop_by_hop(&mut headers);
        // The client that reached us, not what it claims.
        headers.remove(header::HOST);
        // `100-continue` was this hop's business: the server answered it when the body was
        // first read, and the body streams on to the upstream without waiting again.
        headers.remove(header::EXPECT);
        let trusted = peer.is_some_and(|p| self.upstream.trusted(p));
        match peer {
            Some(peer) => {
                set_forwarded(
                    &mut headers,
                    peer,
                    trusted,
                    self.upstream.inner.options.https,
                    host.as_ref(),
                );
            }
            // No socket peer (the pipeline refuses such requests first): nothing the client
            // said about its address is passed on.
            None => {
                for name in [
                    X_FORWARDED_FOR,
                    header::FORWARDED,
                    X_FORWARDED_PROTO,
                    X_FORWARDED_HOST,
                ] {
                    headers.remove(name);
                }
            }
        }
        strip_overrides(&mut headers, trusted);
        join_cookie_lines(&mut headers);
        identity::strip_incoming(&mut headers);
        if self.identity.strip_credentials {
            identity::strip_credentials(&mut headers, &self.identity.cookie_names);
        }
        let principal = parts.extensions.get::<Principal>();
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .and_then(|r| r.0.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let assertion = match self.identity.signer.sign(&identity::Assertion {
            principal,
            request_id: &request_id,
            audience: self.upstream.origin(),
        }) {
            Ok(a) => a,
            // Never forward without the assertion: the upstream could not tell this request
            // from one that went around the gateway.
            Err(e) => {
                tracing::error!(error = %e, "signing the gateway assertion failed");
                return Rejection::new(RejectionKind::Internal, Reason::Other("assertion_failed"))
                    .into_response();
            }
        };
        identity::set_identity(&mut headers, principal, &request_id, &assertion);
        if let Some(proto) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        *out.headers_mut() = headers;
        // HTTP/1.1 to the upstream whatever the client spoke (the pool's connections are
        // HTTP/1.1; an HTTP/2 request's version would not fit them).
        *out.version_mut() = http::Version::HTTP_11;

        let timeout = self.upstream.inner.options.timeout;
        let sent = tokio::time::timeout(timeout, self.upstream.inner.client.request(out)).await;
        let mut res = match sent {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.upstream.inner.origin, error = %e, "upstream request failed");
                crate::metrics::upstream_response(502, started.elapsed());
                return Rejection::new(RejectionKind::BadGateway, Reason::UpstreamUnreachable)
                    .into_response();
            }
            Err(_) => {
                tracing::warn!(upstream = %self.upstream.inner.origin, "upstream timed out");
                crate::metrics::upstream_response(504, started.elapsed());
                return Rejection::new(RejectionKind::GatewayTimeout, Reason::UpstreamTimeout)
                    .into_response();
            }
        };
        crate::metrics::upstream_response(res.status().as_u16(), started.elapsed());
        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Only to the protocol the client asked for (and that passed the route's checks):
            // an upstream switching to anything else (h2c) would open an unchecked tunnel.
            let agreed = match (&upgrade, res.headers().get(header::UPGRADE)) {
                (Some(asked), Some(got)) => asked.as_bytes().eq_ignore_ascii_case(got.as_bytes()),
                _ => false,
            };
            let (Some(on_client), true) = (on_client_upgrade, agreed) else {
                tracing::warn!(upstream = %self.upstream.inner.origin, "upstream switched to a protocol the client did not ask for");
                return Rejection::new(RejectionKind::BadGateway, Reason::UpstreamUnreachable)
                    .with_detail("The upstream's protocol switch was refused.")
                    .into_response();
            };
            // Upgraded connections leave the server's connection caps: the gateway counts its
            // tunnels itself, so a client cannot hold an unbounded number open.
            let Ok(permit) = self.upstream.inner.tunnels.clone().try_acquire_owned() else {
                tracing::warn!("tunnel limit reached; upgrade refused");
                return Rejection::new(RejectionKind::Unavailable, Reason::Other("tunnel_limit"))
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
                    .into_response();
            };
            let on_upstream = hyper::upgrade::on(&mut res);
            tokio::spawn(async move {
                let (client, upstream) = match tokio::try_join!(on_client, on_upstream) {
                    Ok(both) => both,
                    Err(e) => {
                        tracing::debug!(error = %e, "upgrade failed");
                        return;
                    }
                };
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                // The tunnel's place is free again.
                drop(permit);
            });
            let (mut head, _) = res.into_parts();
            let proto = head.headers.get(header::UPGRADE).cloned();
            remove_hop_by_hop(&mut head.headers);
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(p) = proto {
                head.headers.insert(header::UPGRADE, p);
            }
            return Response::from_parts(head, Body::empty());
        }
        remove_hop_by_hop(res.headers_mut());
        res.map(|body| Body::new(IdleTimeoutBody::new(body, timeout)))
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body that fails when no bytes arrive for `idle` (nginx's
    /// `proxy_read_timeout`): an upstream that stalls after its head would otherwise hold the
    /// client, and a connection slot, forever. The failure aborts the client's response
    /// (never a short body passed off as complete).
    struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
    }
}

impl<B> IdleTimeoutBody<B> {
    fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            sleep: tokio::time::sleep(idle),
            idle,
        }
    }
}

/// The error an [`IdleTimeoutBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no body bytes for {0:?}")]
struct UpstreamStalled(Duration);

impl<B> http_body::Body for IdleTimeoutBody<B>
where
    B: http_body::Body,
    B::Error: Into<tower::BoxError>,
{
    type Data = B::Data;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, Self::Error>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + *this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.poll(cx) {
                Poll::Ready(()) => {
                    tracing::warn!(idle = ?this.idle, "upstream body stalled; response aborted");
                    Poll::Ready(Some(Err(Box::new(UpstreamStalled(*this.idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Headers some frameworks read as the request's real URL or method (Symfony, Laminas, IIS
/// rewrite; Rails, Express's method-override): forwarded, they would let a request matched
/// as one route run another route's handler, or a method the route refuses. Never forwarded.
const OVERRIDES: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that claim the client's address or the original request's port and prefix, which
/// upstreams read when configured to trust their proxy: believed only from a trusted proxy
/// (`X-Forwarded-For`/`Forwarded` are rewritten by [`set_forwarded`]).
const CLIENT_CLAIMS: [&str; 6] = [
    "x-real-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-client-ip",
    "x-forwarded-port",
    "x-forwarded-prefix",
];

/// Removes [`OVERRIDES`] always and [`CLIENT_CLAIMS`] unless the peer is a trusted proxy.
fn strip_overrides(headers: &mut HeaderMap, trusted: bool) {
    for name in OVERRIDES {
        headers.remove(name);
    }
    if !trusted {
        for name in CLIENT_CLAIMS {
            headers.remove(name);
        }
    }
}

/// Joins several `Cookie` fields into one with `"; "`: an HTTP/2 client may send one field per
/// cookie (RFC 9113 8.2.3), but an HTTP/1.1 upstream expects one field (RFC 6265 5.4).
fn join_cookie_lines(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            headers.insert(header::COOKIE, v);
        }
        Err(_) => {
            headers.remove(header::COOKIE);
        }
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` with `Upgrade`), if any.
/// Never `h2c` (see the [module docs](self)): an upgrade offering it anywhere in its list is
/// no upgrade, since the upstream could pick it.
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // Unreadable bytes count as h2c: what the upstream would make of them is unknown.
    let offers_h2c = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',').any(|p| {
                p.trim()
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("h2c")
            })
        })
    });
    (asks && !offers_h2c)
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Removes the hop-by-hop headers, first those `Connection` names (RFC 9110 7.6.1).
///
/// ```
/// use http::HeaderMap;
/// let mut h = HeaderMap::new();
/// h.insert("connection", "close, x-secret-hop".parse().unwrap());
/// h.insert("x-secret-hop", "1".parse().unwrap());
/// h.insert("keep-alive", "timeout=5".parse().unwrap());
/// h.insert("x-kept", "1".parse().unwrap());
/// secure_routes_gateway::proxy::remove_hop_by_hop(&mut h);
/// assert_eq!(h.len(), 1);
/// assert!(h.contains_key("x-kept"));
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` for a request from `peer`:
/// appended to what a trusted proxy sent, replacing whatever anyone else sent.
///
/// ```
/// use http::HeaderMap;
/// use secure_routes_gateway::proxy::set_forwarded;
/// let mut h = HeaderMap::new();
/// h.insert("x-forwarded-for", "198.51.100.9".parse().unwrap());
/// let peer = "203.0.113.7".parse().unwrap();
/// set_forwarded(&mut h, peer, false, false, Some(&"app.example".parse().unwrap()));
/// assert_eq!(h["x-forwarded-for"], "203.0.113.7");
/// assert_eq!(h["forwarded"], "for=203.0.113.7;proto=http;host=\"app.example\"");
/// ```
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: bool,
    https: bool,
    host: Option<&HeaderValue>,
) {
    let peer = fold(peer);
    let proto = if https { "https" } else { "http" };
    // Joined into one value: several `X-Forwarded-For` fields are one list (RFC 9110 5.3),
    // but upstreams often read only the first.
    let previous = |headers: &HeaderMap, name: &HeaderName| -> Option<String> {
        let parts: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    let xff = match previous(headers, &X_FORWARDED_FOR).filter(|_| trusted) {
        Some(p) => format!("{p}, {peer}"),
        None => peer.to_string(),
    };
    let node = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        // RFC 7239 6: an IPv6 node is bracketed and the value quoted.
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(h) = host.and_then(|h| h.to_str().ok())
        && h.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        element.push_str(&format!(";host=\"{h}\""));
    }
    let forwarded = match previous(headers, &header::FORWARDED).filter(|_| trusted) {
        Some(p) => format!("{p}, {element}"),
        None => element,
    };
    let keep_proto = trusted && headers.contains_key(&X_FORWARDED_PROTO);
    let keep_host = trusted && headers.contains_key(&X_FORWARDED_HOST);
    for (name, value) in [(X_FORWARDED_FOR, xff), (header::FORWARDED, forwarded)] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        } else {
            headers.remove(name);
        }
    }
    if !keep_proto {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !keep_host {
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut m = h(&[
            ("connection", "keep-alive, X-Internal"),
            ("connection", "te"),
            ("x-internal", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x"),
            ("keep-alive", "timeout=5"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
        ]);
        remove_hop_by_hop(&mut m);
        let mut left: Vec<_> = m.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "cookie"]);
    }

    #[test]
    fn forwarded_headers_are_replaced_for_clients_and_appended_for_trusted_proxies() {
        let spoof = [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4"),
        ];
        let host: HeaderValue = "app.example".parse().unwrap();
        let peer: IpAddr = "203.0.113.7".parse().unwrap();

        let mut m = h(&spoof);
        set_forwarded(&mut m, peer, false, false, Some(&host));
        assert_eq!(m["x-forwarded-for"], "203.0.113.7");
        assert_eq!(m["x-forwarded-proto"], "http");
        assert_eq!(m["x-forwarded-host"], "app.example");
        assert_eq!(
            m["forwarded"],
            "for=203.0.113.7;proto=http;host=\"app.example\""
        );

        let mut m = h(&spoof);
        set_forwarded(&mut m, peer, true, false, Some(&host));
        assert_eq!(m["x-forwarded-for"], "1.2.3.4, 203.0.113.7");
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["x-forwarded-host"], "evil.example");
        assert_eq!(
            m["forwarded"],
            "for=1.2.3.4, for=203.0.113.7;proto=http;host=\"app.example\""
        );

        // Several fields from a trusted proxy are one list.
        let mut m = h(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        set_forwarded(&mut m, peer, true, true, None);
        assert_eq!(m.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(m["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 203.0.113.7");
        assert_eq!(m["x-forwarded-proto"], "https");
        assert_eq!(m["forwarded"], "for=203.0.113.7;proto=https");
        assert!(!m.contains_key("x-forwarded-host"));
    }

    #[test]
    fn ipv6_peers_are_bracketed_and_quoted_in_forwarded_and_mapped_ipv4_folded() {
        let mut m = HeaderMap::new();
        set_forwarded(&mut m, "2001:db8::1".parse().unwrap(), false, false, None);
        assert_eq!(m["forwarded"], "for=\"[2001:db8::1]\";proto=http");
        assert_eq!(m["x-forwarded-for"], "2001:db8::1");
        let mut m = HeaderMap::new();
        set_forwarded(
            &mut m,
            "::ffff:10.1.2.3".parse().unwrap(),
            false,
            false,
            None,
        );
        assert_eq!(m["x-forwarded-for"], "10.1.2.3");
    }

    #[test]
    fn a_host_that_would_break_the_forwarded_quoting_is_left_out() {
        let mut m = HeaderMap::new();
        let host = HeaderValue::from_static("a\"b");
        set_forwarded(
            &mut m,
            "10.0.0.1".parse().unwrap(),
            false,
            false,
            Some(&host),
        );
        assert_eq!(m["forwarded"], "for=10.0.0.1;proto=http");
    }

    /// A body whose frames come from a channel, as a slow upstream sends them.
    struct Frames(tokio::sync::mpsc::Receiver<bytes::Bytes>);

    impl http_body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upstream_body_fails_after_the_idle_time_and_a_live_one_does_not() {
        use http_body_util::BodyExt as _;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut body = Box::pin(IdleTimeoutBody::new(Frames(rx), Duration::from_secs(30)));
        tx.send(bytes::Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(29)).await;
        tx.send(bytes::Bytes::from_static(b"b")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok(), "29 s idle is in time");
        // Nothing more: the paused clock runs to the deadline and the read fails, a full idle
        // time after the last frame (the timer restarts with each one).
        let waiting = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<UpstreamStalled>(), "{err}");
        assert_eq!(waiting.elapsed(), Duration::from_secs(30));
        drop(tx);
    }

    #[test]
    fn url_and_method_overrides_never_pass_and_address_claims_only_from_trusted_proxies() {
        let sent = [
            ("x-original-url", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-method-override", "DELETE"),
            ("x-real-ip", "10.9.9.9"),
            ("cf-connecting-ip", "10.9.9.9"),
            ("x-forwarded-prefix", "/admin"),
            ("accept", "*/*"),
        ];
        let mut m = h(&sent);
        strip_overrides(&mut m, false);
        let left: Vec<_> = m.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, ["accept"]);
        let mut m = h(&sent);
        strip_overrides(&mut m, true);
        assert!(m.contains_key("x-real-ip") && m.contains_key("cf-connecting-ip"));
        assert!(!m.contains_key("x-original-url") && !m.contains_key("x-method-override"));
    }

    #[test]
    fn an_upstream_url_error_never_shows_its_password() {
        let err = Upstream::new("http://user:s3cret@h:1/x", UpstreamOptions::default())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("***@h:1/x"), "{err}");
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut m = h(&[("cookie", "a=1"), ("cookie", "b=2"), ("x", "y")]);
        join_cookie_lines(&mut m);
        assert_eq!(m.get_all("cookie").iter().count(), 1);
        assert_eq!(m["cookie"], "a=1; b=2");
        let mut one = h(&[("cookie", "a=1")]);
        join_cookie_lines(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn an_h2c_upgrade_is_never_an_upgrade() {
        for offer in ["h2c", "H2C", "websocket, h2c", "h2c/1.0", " h2c "] {
            assert!(
                upgrade_protocol(&h(&[
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("upgrade", offer)
                ]))
                .is_none(),
                "{offer}"
            );
        }
        // In a second Upgrade field too.
        assert!(
            upgrade_protocol(&h(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("upgrade", "h2c")
            ]))
            .is_none()
        );
        // Not a prefix match: a protocol merely starting with the letters is still upgraded.
        assert!(upgrade_protocol(&h(&[("connection", "upgrade"), ("upgrade", "h2cx")])).is_some());
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(upgrade_protocol(&h(&[("upgrade", "websocket")])).is_none());
        assert_eq!(
            upgrade_protocol(&h(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket")
            ]))
            .unwrap(),
            "websocket"
        );
    }

    #[test]
    fn upstream_urls_are_checked_and_prefixes_kept() {
        for bad in ["ftp://x", "x", "http://u:p@host", "http://h/?q=1"] {
            assert!(
                Upstream::new(bad, UpstreamOptions::default()).is_err(),
                "{bad}"
            );
        }
        let u = Upstream::new("http://h:3000/app/", UpstreamOptions::default()).unwrap();
        let pq = PathAndQuery::from_static("/api/x?y=1");
        assert_eq!(
            u.uri(Some(&pq)).unwrap().to_string(),
            "http://h:3000/app/api/x?y=1"
        );
        let u = Upstream::new("https://h", UpstreamOptions::default()).unwrap();
        assert_eq!(u.origin(), "https://h");
        assert_eq!(u.uri(None).unwrap().to_string(), "https://h/");
    }

    #[test]
    fn trusted_peers_match_mapped_addresses() {
        let u = Upstream::new(
            "http://h",
            UpstreamOptions::default().trusted_proxies(vec!["10.0.0.0/8".parse().unwrap()]),
        )
        .unwrap();
        assert!(u.trusted("10.2.3.4".parse().unwrap()));
        assert!(u.trusted("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!u.trusted("11.0.0.1".parse().unwrap()));
    }
}
