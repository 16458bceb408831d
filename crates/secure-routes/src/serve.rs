//! Serving a router with connection limits and a bounded shutdown (feature `server`).
//!
//! `axum::serve` accepts every connection, never times out a slow client and waits for every
//! connection to finish before it returns. A security layer in front of each route does not
//! help against attacks on the connections themselves, so [`serve`] runs the router on
//! hyper-util's server builder (HTTP/1.1 and HTTP/2 on one listener, chosen by the client's
//! first bytes) with these limits ([`ServeConfig`], every one configurable):
//!
//! | limit | default | against |
//! | --- | --- | --- |
//! | [`header_read_timeout`](ServeConfig::header_read_timeout) | 10 s | slowloris: a client sending its request head a byte at a time holds a connection (and a slot of every cap) forever |
//! | [`idle_timeout`](ServeConfig::idle_timeout) | 60 s | idle keep-alive and HTTP/2 connections (which a client can keep busy with PINGs) filling the caps |
//! | [`max_connections`](ServeConfig::max_connections) | 10 000 | file-descriptor and memory exhaustion by sheer connection count |
//! | [`max_connections_per_ip`](ServeConfig::max_connections_per_ip) | 256 | one client taking all of `max_connections` from everyone else |
//! | [`http2_max_concurrent_streams`](ServeConfig::http2_max_concurrent_streams) | 100 | HTTP/2 stream floods: one connection multiplexing unbounded work |
//! | [`max_header_list_bytes`](ServeConfig::max_header_list_bytes), [`http1_max_headers`](ServeConfig::http1_max_headers) | 64 KiB, 100 | header-list bombs (HPACK-compressed headers expanding in memory, CVE-2016-6581-style) and oversized HTTP/1 heads |
//! | [`shutdown_grace`](ServeConfig::shutdown_grace) | 10 s | a slow or stuck client delaying a restart without bound |
//! | [`lingering_time`](ServeConfig::lingering_time), [`lingering_timeout`](ServeConfig::lingering_timeout), [`lingering_max_bytes`](ServeConfig::lingering_max_bytes) | 30 s, 5 s, 16 MiB | a client holding a connection by trickling a body that was already refused (the bounds of the [lingering close](self#early-refusals)) |
//!
//! How each works:
//!
//! * **Header-read timeout.** HTTP/1.1 uses hyper's `header_read_timeout`. hyper starts that
//!   timer whenever it waits for a request head, also between keep-alive requests, so an idle
//!   HTTP/1.1 connection lasts at most the shorter of the two timeouts. Until a connection's
//!   first request reaches the router, [`serve`] applies the same deadline itself: that covers
//!   the protocol sniffing (a client trickling the HTTP/2 preface) and the HTTP/2 handshake,
//!   where hyper has no header timer.
//! * **Idle timeout.** A connection with no request in flight (handler running or response body
//!   streaming) for this long is asked to close (HTTP/2 `GOAWAY`) and dropped a second later.
//!   Behind a load balancer that reuses connections, keep the backend's timeouts above the
//!   balancer's idle timeout, or the balancer may send a request on a connection being closed.
//! * **Connection caps.** Counted at accept time by the socket peer's address (IPv6 grouped by
//!   /64, the block one subscriber gets, as the rate-limit keys do; IPv4-mapped addresses as
//!   IPv4). The client behind a proxy is not known yet at this point: behind a proxy, the
//!   per-IP cap applies to the proxy, so size it for that. A connection over a cap is closed
//!   at once without a response: writing even a minimal 503 costs a write to a client that may
//!   never read it, and which protocol it speaks is not known before it sends something. Each
//!   refusal increments the counter `secure_routes_connections_refused_total` (label `reason`:
//!   `per_ip` or `max_connections`) and is logged at `warn` at most once per 10 s (with the
//!   number since the last line), so a flood cannot flood the log.
//! * **HTTP/2.** Besides the stream and header-list limits, hyper's (h2's) defaults stay on:
//!   at most 20 streams reset by the client before the server accepted them (HTTP/2 Rapid
//!   Reset, CVE-2023-44487) and 1024 streams the server had to reset, after which the
//!   connection gets `GOAWAY`.
//! * **Shutdown.** When the `shutdown` future completes, the listener is closed, every
//!   connection is asked to finish (`graceful_shutdown`: an idle HTTP/1.1 connection closes,
//!   one with a request in flight closes after the response, HTTP/2 sends `GOAWAY`), and
//!   whatever is still open after [`shutdown_grace`](ServeConfig::shutdown_grace) is dropped
//!   and counted in [`ServeReport::closed_at_deadline`]. The caller then flushes what it must
//!   (the demo flushes the audit log whatever `serve` returned).
//! * **Accept errors** (out of file descriptors, `EMFILE`) do not stop the server: it backs
//!   off 100 ms (logged at most once per 10 s) and accepts again, so it neither spins on the
//!   error nor dies of it.
//!
//! # Early refusals
//!
//! The security layer refuses before reading the body: a 401, a 413 for a declared
//! `Content-Length`, a 429 are answered while the client may still be sending. If the server
//! then closed the socket with that body unread, the kernel would send a reset, and a client
//! that writes its whole body before reading (Python's `http.client` and `requests`, Node's
//! `fetch`, curl without `Expect`) would see a broken pipe instead of the answer, and might
//! retry a request that can never succeed. So, on HTTP/1.1, when a response is ready and its
//! request body was not read to the end:
//!
//! * a declared remainder of at most [`drain_max_bytes`](ServeConfig::drain_max_bytes)
//!   (64 KiB) without `Expect: 100-continue` is read and discarded first (within
//!   [`lingering_timeout`](ServeConfig::lingering_timeout) in all), and the connection stays
//!   open for the next request (this also applies to a handler that answers without reading
//!   a small body);
//! * otherwise the response carries `Connection: close`; after it is sent the server closes its
//!   sending side (the client reads the whole response and end-of-file) and reads and
//!   discards what the client still sends, until the client closes, or
//!   [`lingering_timeout`](ServeConfig::lingering_timeout) (5 s) passes without a byte, or
//!   [`lingering_time`](ServeConfig::lingering_time) (30 s) in all, or
//!   [`lingering_max_bytes`](ServeConfig::lingering_max_bytes) (16 MiB) were discarded: this
//!   is nginx's lingering close. One connection spends at most `lingering_timeout` draining
//!   and then `lingering_time` lingering. A lingering connection keeps its place in the connection caps,
//!   so lingering cannot be used to open more connections than they allow, and the shutdown
//!   grace bounds it like any connection.
//!
//! HTTP/2 needs none of this: the response ends its stream and the rest of the request body
//! is refused with `RST_STREAM(NO_ERROR)` (RFC 9113 §8.1), which clients read as "answered
//! early"; the connection stays open.
//!
//! An app served by `axum::serve` (or hyper directly) gets no lingering close: hyper closes
//! at once, and clients that write first lose early refusals. Serve it with [`serve`], or put
//! a proxy with lingering close in front (nginx has it on by default), or accept that such
//! clients see a connection error for refused uploads.
//!
//! # Other limits
//!
//! Connection upgrades (WebSocket) are not offered: an upgraded connection would leave the
//! timeouts and the caps.
//!
//! Not covered here: a request whose body arrives slowly (slow POST) or whose handler never
//! answers counts as in flight, so neither timeout closes it; the route's body limit bounds
//! its size, and a timeout layer on the router (tower-http's `TimeoutLayer`) bounds its time.
//! At shutdown the grace bounds it either way.
//!
//! Every request carries [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo) with the
//! socket peer, which the security layer reads as the client address.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use secure_routes::serve::{ServeConfig, serve};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! let app = Router::new().route("/health", get(|| async { "ok" }));
//! let config = ServeConfig {
//!     header_read_timeout: Duration::from_secs(5),
//!     ..ServeConfig::default()
//! };
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(serve(listener, app, config, async {
//!     let _ = stopped.await;
//! }));
//!
//! let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
//! conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
//! let mut response = String::new();
//! conn.read_to_string(&mut response).await.unwrap();
//! assert!(response.starts_with("HTTP/1.1 200 OK"));
//!
//! stop.send(()).unwrap();
//! let report = server.await.unwrap().unwrap();
//! assert_eq!(report.connections_served, 1);
//! assert_eq!(report.closed_at_deadline, 0);
//!
//! // Zero caps are configuration errors.
//! let bad = ServeConfig { max_connections: 0, ..ServeConfig::default() };
//! assert!(bad.validate().is_err());
//! # });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::ConfigError;

/// How long a connection closed by a timeout may take to say goodbye (HTTP/2 `GOAWAY`) before
/// it is dropped. No request is in flight on it by then.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Pause after an accept error such as `EMFILE`, so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this interval for refusals and accept errors.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// hyper refuses an HTTP/1 read buffer smaller than this (it asserts).
const MIN_HEADER_LIST_BYTES: u32 = 8192;

/// The limits [`serve`] enforces. See the [module docs](self) for what each one is against.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::serve::ServeConfig;
/// let c = ServeConfig::default();
/// assert_eq!(c.header_read_timeout, Duration::from_secs(10));
/// assert_eq!(c.idle_timeout, Duration::from_secs(60));
/// assert_eq!(c.max_connections, 10_000);
/// assert_eq!(c.max_connections_per_ip, 256);
/// assert_eq!(c.http2_max_concurrent_streams, 100);
/// assert_eq!(c.max_header_list_bytes, 64 * 1024);
/// assert_eq!(c.http1_max_headers, 100);
/// assert_eq!(c.shutdown_grace, Duration::from_secs(10));
/// assert_eq!(c.lingering_time, Duration::from_secs(30));
/// assert_eq!(c.lingering_timeout, Duration::from_secs(5));
/// assert_eq!(c.lingering_max_bytes, 16 * 1024 * 1024);
/// assert_eq!(c.drain_max_bytes, 64 * 1024);
/// assert!(c.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Longest time a client may take to send a request head (10 s). Also bounds the time
    /// from accept to the first request, whatever the protocol. A timed-out connection is
    /// closed without an answer (hyper 1 sends no `408`: with nothing read there is no
    /// request to answer).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (60 s): long enough
    /// for a browser's or a client pool's reuse of a connection, short enough that idle
    /// connections do not hold the caps. For HTTP/1.1 the header-read timeout also runs
    /// between requests, so the shorter of the two applies.
    pub idle_timeout: Duration,
    /// Most open connections in this process (10 000); more are closed at once.
    pub max_connections: usize,
    /// Most open connections from one client address (256; IPv6 by /64); more are closed at
    /// once. Behind a proxy this is the proxy's address.
    pub max_connections_per_ip: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (100): requests one connection may have in
    /// flight.
    pub http2_max_concurrent_streams: u32,
    /// Largest request head in bytes (64 KiB, at least 8 KiB): HTTP/2
    /// `SETTINGS_MAX_HEADER_LIST_SIZE` (decoded size) and the HTTP/1 read buffer, which a
    /// head must fit. 64 KiB leaves room for the 32 KiB of session cookie chunks the Supabase
    /// authenticator accepts plus ordinary headers.
    pub max_header_list_bytes: u32,
    /// Most header fields in an HTTP/1 request (100, hyper's default).
    pub http1_max_headers: usize,
    /// After the shutdown signal, how long connections get to finish before they are dropped
    /// (10 s). Zero drops them at once.
    pub shutdown_grace: Duration,
    /// After an HTTP/1 response sent before its request body was read to the end (an early
    /// refusal: 401, 413, 429...), how long the connection may spend reading and discarding
    /// the rest of that body before it closes (30 s, nginx's `lingering_time`). Without it the
    /// close meets unread data and the kernel answers with a reset, which destroys the
    /// response before a client that writes its whole body first has read it. Zero closes at
    /// once (lingering off). See [Early refusals](self#early-refusals).
    pub lingering_time: Duration,
    /// While lingering, the longest wait for the next bytes of that body (5 s, nginx's
    /// `lingering_timeout`): a client that stops sending is closed after this.
    pub lingering_timeout: Duration,
    /// While lingering, the most bytes discarded (16 MiB): past this the connection closes
    /// even if the client is still sending (its answer may then be lost to a reset).
    pub lingering_max_bytes: u64,
    /// A left-over HTTP/1 body whose declared remainder (`Content-Length`) is at most this
    /// (64 KiB) is read and discarded before the response goes out (within
    /// [`lingering_timeout`](Self::lingering_timeout) in all), and the connection stays open
    /// for the next request. This holds for any response whose handler left the body unread,
    /// not only refusals. Larger, chunked, announced with `Expect: 100-continue`, or not done
    /// in time: the response carries `Connection: close` and the connection lingers. Zero
    /// never drains.
    pub drain_max_bytes: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            http2_max_concurrent_streams: 100,
            max_header_list_bytes: 64 * 1024,
            http1_max_headers: 100,
            shutdown_grace: Duration::from_secs(10),
            lingering_time: Duration::from_secs(30),
            lingering_timeout: Duration::from_secs(5),
            lingering_max_bytes: 16 * 1024 * 1024,
            drain_max_bytes: 64 * 1024,
        }
    }
}

impl ServeConfig {
    /// Checks every limit and reports every problem at once: zero timeouts and caps are
    /// errors (a zero cap would refuse everything; turn a limit off by making it large). The
    /// exceptions are [`lingering_time`](Self::lingering_time) and
    /// [`drain_max_bytes`](Self::drain_max_bytes), where zero turns lingering and draining off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::serve::ServeConfig;
    /// let bad = ServeConfig {
    ///     header_read_timeout: Duration::ZERO,
    ///     max_connections_per_ip: 0,
    ///     ..ServeConfig::default()
    /// };
    /// assert_eq!(bad.validate().unwrap_err().problems().len(), 2);
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.header_read_timeout.is_zero() {
            problems.push("header_read_timeout must be more than zero".to_owned());
        }
        if self.idle_timeout.is_zero() {
            problems.push("idle_timeout must be more than zero".to_owned());
        }
        if self.max_connections == 0 {
            problems.push("max_connections must be at least 1".to_owned());
        }
        if self.max_connections_per_ip == 0 {
            problems.push("max_connections_per_ip must be at least 1".to_owned());
        }
        if self.http2_max_concurrent_streams == 0 {
            problems.push("http2_max_concurrent_streams must be at least 1".to_owned());
        }
        if self.max_header_list_bytes < MIN_HEADER_LIST_BYTES {
            problems.push(format!(
                "max_header_list_bytes must be at least {MIN_HEADER_LIST_BYTES}"
            ));
        }
        if self.http1_max_headers == 0 {
            problems.push("http1_max_headers must be at least 1".to_owned());
        }
        if !self.lingering_time.is_zero() && self.lingering_timeout.is_zero() {
            problems.push(
                "lingering_timeout must be more than zero while lingering_time is".to_owned(),
            );
        }
        ConfigError::check(problems, ())
    }

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_headers(self.http1_max_headers)
            .max_buf_size(self.max_header_list_bytes as usize);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_max_concurrent_streams)
            .max_header_list_size(self.max_header_list_bytes);
        builder
    }
}

/// What [`serve`] did, for logs and tests.
///
/// ```
/// let r = secure_routes::serve::ServeReport::default();
/// assert_eq!(r.refused(), 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Connections accepted and served (not counting refused ones).
    pub connections_served: u64,
    /// Connections closed at accept because their address had
    /// [`max_connections_per_ip`](ServeConfig::max_connections_per_ip) open.
    pub refused_per_ip: u64,
    /// Connections closed at accept because
    /// [`max_connections`](ServeConfig::max_connections) were open.
    pub refused_max_connections: u64,
    /// Connections closed by the header-read or idle timeout. Undercounts one case: hyper's
    /// own HTTP/1 header timer between keep-alive requests ends the connection as a normal
    /// close, so those are not counted here.
    pub timed_out: u64,
    /// Connections still open when the shutdown grace ran out, dropped.
    pub closed_at_deadline: u64,
    /// Failed `accept` calls (each followed by a short pause when not about one connection).
    pub accept_errors: u64,
}

impl ServeReport {
    /// Connections refused by either cap.
    pub fn refused(&self) -> u64 {
        self.refused_per_ip + self.refused_max_connections
    }

    fn record(&mut self, finished: Result<Closed, JoinError>) {
        if let Ok(Closed::TimedOut) = finished {
            self.timed_out += 1;
        }
    }
}

/// Serves `app` on `listener` with the limits of `config` until `shutdown` completes, then
/// lets connections finish for at most [`ServeConfig::shutdown_grace`] and drops the rest.
///
/// Every request gets [`ConnectInfo<SocketAddr>`](ConnectInfo) (the socket peer). Returns an
/// error of kind [`io::ErrorKind::InvalidInput`] wrapping a [`ConfigError`] when `config` is
/// invalid, before serving anything; accept errors never end it. See the
/// [module docs](self) for an example.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<ServeReport> {
    serve_on(listener, Plain, app, config, shutdown).await
}

/// [`serve`] over TLS (feature `tls`): each accepted connection completes its TLS handshake
/// (within [`ServeConfig::header_read_timeout`], which also bounds a handshake that stalls)
/// before its first request; every limit of [`serve`] applies as before, the caps counting
/// connections from their accept. HTTP/2 is served to clients that offer `h2` by ALPN when
/// `tls` lists it (`tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()]`).
///
/// ```no_run
/// # async fn run(tls: std::sync::Arc<rustls::ServerConfig>) -> std::io::Result<()> {
/// use axum::{Router, routing::get};
/// use secure_routes::serve::{ServeConfig, serve_tls};
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// serve_tls(listener, app, ServeConfig::default(), tls, std::future::pending()).await?;
/// # Ok(()) }
/// ```
#[cfg(feature = "tls")]
pub async fn serve_tls(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<ServeReport> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_on(listener, Tls(acceptor), app, config, shutdown).await
}

/// What turns an accepted TCP stream into the stream HTTP is served on.
trait Handshake: Clone + Send + Sync + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Plain TCP: no handshake.
#[derive(Clone, Copy)]
struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<TcpStream>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// TLS with rustls.
#[cfg(feature = "tls")]
#[derive(Clone)]
struct Tls(tokio_rustls::TlsAcceptor);

#[cfg(feature = "tls")]
impl Handshake for Tls {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;
    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send {
        self.0.accept(tcp)
    }
}

/// Where connections come from: a [`TcpListener`], or in tests one that fails on purpose.
trait Accept {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }
}

async fn serve_on<H: Handshake>(
    mut listener: impl Accept,
    handshake: H,
    app: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<ServeReport> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let builder = Arc::new(config.builder());
    let timeouts = Timeouts {
        header: config.header_read_timeout,
        idle: config.idle_timeout,
        lingering: Lingering {
            time: config.lingering_time,
            timeout: config.lingering_timeout,
            max_bytes: config.lingering_max_bytes,
            drain_max_bytes: config.drain_max_bytes,
        },
    };
    let slots = Arc::new(Slots::new(
        config.max_connections,
        config.max_connections_per_ip,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut report = ServeReport::default();
    let mut refusal_log = Throttle::default();
    let mut accept_log = Throttle::default();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            Some(finished) = conns.join_next(), if !conns.is_empty() => report.record(finished),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match slots.acquire(peer.ip()) {
                    Ok(slot) => {
                        report.connections_served += 1;
                        conns.spawn(handshake_then_serve(
                            handshake.clone(),
                            Arc::clone(&builder),
                            stream,
                            peer,
                            app.clone(),
                            timeouts,
                            stop_rx.clone(),
                            slot,
                        ));
                    }
                    Err(refusal) => {
                        // Dropping the stream closes it: no response (see the module docs).
                        drop(stream);
                        let reason = match refusal {
                            Refusal::PerIp => {
                                report.refused_per_ip += 1;
                                "per_ip"
                            }
                            Refusal::Total => {
                                report.refused_max_connections += 1;
                                "max_connections"
                            }
                        };
                        metrics::counter!("secure_routes_connections_refused_total", "reason" => reason)
                            .increment(1);
                        if let Some(suppressed) = refusal_log.ready() {
                            tracing::warn!(
                                peer = %peer.ip(),
                                reason,
                                suppressed,
                                "connection refused: connection cap reached"
                            );
                        }
                    }
                },
                Err(e) => {
                    report.accept_errors += 1;
                    // About one connection only (it went away before we took it): go on.
                    if is_connection_error(&e) {
                        continue;
                    }
                    if let Some(suppressed) = accept_log.ready() {
                        tracing::warn!(error = %e, suppressed, "accept failed; retrying shortly");
                    }
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            },
        }
    }

    drop(listener);
    // Receivers see it even if their task has not started yet (they check the value).
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while let Some(finished) = conns.join_next().await {
            report.record(finished);
        }
    })
    .await;
    if drained.is_err() {
        report.closed_at_deadline = conns.len() as u64;
        tracing::warn!(
            connections = conns.len(),
            grace = ?config.shutdown_grace,
            "shutdown grace over; closing the remaining connections"
        );
        conns.shutdown().await;
    }
    Ok(report)
}

/// Errors about one incoming connection, not the listener (as hyper's and axum's accept loops
/// treat them).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[derive(Clone, Copy)]
struct Timeouts {
    header: Duration,
    idle: Duration,
    lingering: Lingering,
}

/// How a connection task ended.
enum Closed {
    Normally,
    TimedOut,
}

/// Completes the connection's handshake (none for plain TCP) within the header-read timeout,
/// then serves it. A handshake that fails or stalls closes the connection; its slot is held
/// until then, so a flood of stalled handshakes meets the caps like stalled requests do.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site, each argument distinct"
)]
async fn handshake_then_serve<H: Handshake>(
    handshake: H,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    slot: Slot,
) -> Closed {
    // Small responses go out at once rather than after Nagle's delay.
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(timeouts.header, handshake.handshake(tcp)).await {
        Ok(Ok(stream)) => connection(builder, stream, peer, app, timeouts, stop, slot).await,
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "handshake failed");
            Closed::Normally
        }
        Err(_) => Closed::TimedOut,
    }
}

async fn connection<S>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: S,
    peer: SocketAddr,
    app: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) -> Closed
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (activity_tx, activity_rx) = watch::channel(Activity::default());
    let activity_tx = Arc::new(activity_tx);
    let early = Arc::new(EarlyAnswers {
        lingering: timeouts.lingering,
        linger: AtomicBool::new(false),
    });
    let (stream, returned) = ReturningStream::new(stream);
    let service = {
        let early = Arc::clone(&early);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = InFlight::start(&activity_tx);
            let app = app.clone();
            let early = Arc::clone(&early);
            async move {
                let (req, left) = watch_body(req, peer);
                let mut res = app.oneshot(req).await?;
                if let Some(left) = left {
                    early.finish(left, res.headers_mut()).await;
                }
                // The request stays in flight until its response body is sent or dropped.
                Ok::<_, std::convert::Infallible>(res.map(|body| {
                    Body::new(TrackedBody {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    // In a block of its own, so the connection (and with it the stream) is dropped before
    // the lingering close takes the stream back.
    let closed = {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut conn = std::pin::pin!(conn);
        let mut watchdog = std::pin::pin!(watchdog(activity_rx, timeouts));
        let mut linger = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        let mut timed_out = false;
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    break match result {
                        Err(e) if is_timeout(e.as_ref()) => Closed::TimedOut,
                        Err(e) => {
                            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                            if timed_out { Closed::TimedOut } else { Closed::Normally }
                        }
                        Ok(()) if timed_out => Closed::TimedOut,
                        Ok(()) => Closed::Normally,
                    };
                }
                () = watchdog.as_mut(), if !timed_out => {
                    timed_out = true;
                    conn.as_mut().graceful_shutdown();
                    linger.as_mut().reset(Instant::now() + CLOSE_LINGER);
                }
                () = linger.as_mut(), if timed_out => break Closed::TimedOut,
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if early.linger.load(Ordering::Acquire)
        && let Ok(stream) = returned.await
    {
        lingering_close(stream, timeouts.lingering).await;
    }
    closed
}

/// The lingering-close bounds (see [Early refusals](self#early-refusals)).
#[derive(Clone, Copy)]
struct Lingering {
    time: Duration,
    timeout: Duration,
    max_bytes: u64,
    drain_max_bytes: u64,
}

/// Per connection: what to do about request bodies left unread by their response.
struct EarlyAnswers {
    lingering: Lingering,
    /// Set when a response went out with `Connection: close` over an unread body: the
    /// connection lingers after it ends.
    linger: AtomicBool,
}

impl EarlyAnswers {
    /// Called with a response ready and the request body the app left unread (HTTP/1 only).
    /// Drains a small declared remainder and keeps the connection; otherwise marks the
    /// response `Connection: close` and the connection for a lingering close.
    async fn finish(&self, left: Arc<LeftBody>, headers: &mut http::HeaderMap) {
        let Some(body) = left.take() else {
            return;
        };
        let small = !body.expects_continue
            && body
                .incoming
                .size_hint()
                .exact()
                .is_some_and(|n| n <= self.lingering.drain_max_bytes);
        if small && drain(body.incoming, self.lingering).await {
            return;
        }
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        self.linger.store(true, Ordering::Release);
    }
}

/// Reads `body` to its end within [`lingering_timeout`](ServeConfig::lingering_timeout) in
/// all (not per read: the answer waits meanwhile). `true` when it ended cleanly.
async fn drain(mut body: Incoming, lingering: Lingering) -> bool {
    use http_body_util::BodyExt;
    let deadline = Instant::now() + lingering.timeout;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return false;
        }
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(None) => return true,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_))) | Err(_) => return false,
        }
    }
}

/// nginx's lingering close: stop sending (the client reads the response and end-of-file),
/// then read and discard what the client still sends, within the bounds, so that closing
/// does not meet unread data and turn into a reset that destroys the response.
async fn lingering_close<S>(mut stream: S, lingering: Lingering)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + lingering.time;
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0u64;
    while discarded < lingering.max_bytes {
        let wait = lingering
            .timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            break;
        }
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => discarded += n as u64,
        }
    }
}

/// A request body the app may leave unread, and whether its client waits for
/// `100 Continue` before sending it.
struct UnreadBody {
    incoming: Incoming,
    expects_continue: bool,
}

/// Where a [`WatchedBody`] puts its body when it is dropped before the end.
#[derive(Default)]
struct LeftBody(Mutex<Option<UnreadBody>>);

impl LeftBody {
    fn take(&self) -> Option<UnreadBody> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Adds [`ConnectInfo`] and, for an HTTP/1 request with a body, wraps the body so that what
/// the app leaves unread comes back to the connection ([`LeftBody`]).
fn watch_body(req: Request<Incoming>, peer: SocketAddr) -> (Request<Body>, Option<Arc<LeftBody>>) {
    let (mut parts, incoming) = req.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    // HTTP/2 refuses the rest of a stream by itself (see the module docs); a request without
    // a body has nothing to leave.
    if parts.version > http::Version::HTTP_11 || incoming.is_end_stream() {
        return (Request::from_parts(parts, Body::new(incoming)), None);
    }
    let expects_continue = parts.headers.contains_key(http::header::EXPECT);
    let left = Arc::new(LeftBody::default());
    let body = WatchedBody {
        body: Some(UnreadBody {
            incoming,
            expects_continue,
        }),
        left: Arc::clone(&left),
    };
    (Request::from_parts(parts, Body::new(body)), Some(left))
}

/// A request body that hands itself to its [`LeftBody`] when dropped before its end.
struct WatchedBody {
    body: Option<UnreadBody>,
    left: Arc<LeftBody>,
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(&mut body.incoming).poll_frame(cx));
        // At the end, or broken (the client went away): nothing is left to read.
        if !matches!(frame, Some(Ok(_))) {
            this.body = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(|b| b.incoming.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.incoming.size_hint())
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        if let Some(body) = self.body.take()
            && !body.incoming.is_end_stream()
        {
            *self.left.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
        }
    }
}

/// The connection's socket, given back to the connection task when hyper drops it, so the
/// task can close it lingering.
struct ReturningStream<S> {
    stream: Option<S>,
    back: Option<oneshot::Sender<S>>,
}

impl<S: Unpin> ReturningStream<S> {
    fn new(stream: S) -> (Self, oneshot::Receiver<S>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                stream: Some(stream),
                back: Some(tx),
            },
            rx,
        )
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut S> {
        // Present from `new` until `drop`; the stream is `Unpin`.
        Pin::new(
            self.get_mut()
                .stream
                .as_mut()
                .expect("the stream is present until drop"),
        )
    }
}

impl<S> Drop for ReturningStream<S> {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // The task may be gone (aborted at the shutdown deadline): then the stream closes.
            let _ = back.send(stream);
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ReturningStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for ReturningStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(tokio::io::AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

/// hyper's HTTP/1 header-read timeout, as the connection reports it.
fn is_timeout(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

/// Requests on one connection: in flight now, and started so far.
#[derive(Clone, Copy, Default)]
struct Activity {
    in_flight: usize,
    started: u64,
}

/// One request in flight, from the router call until its response body is done or dropped.
struct InFlight(Arc<watch::Sender<Activity>>);

impl InFlight {
    fn start(tx: &Arc<watch::Sender<Activity>>) -> Self {
        tx.send_modify(|a| {
            a.in_flight += 1;
            a.started += 1;
        });
        Self(Arc::clone(tx))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|a| a.in_flight -= 1);
    }
}

/// Completes when the connection should be closed: no first request within the header-read
/// timeout, or no request in flight for the idle timeout.
async fn watchdog(mut activity: watch::Receiver<Activity>, timeouts: Timeouts) {
    // Until the first request reaches the router: the header deadline, whatever the
    // protocol (hyper's HTTP/1 timer does not run during protocol sniffing, and HTTP/2 has
    // none).
    let first = tokio::time::timeout(timeouts.header, async {
        if activity.wait_for(|a| a.started > 0).await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await;
    if first.is_err() {
        return;
    }
    loop {
        if activity.wait_for(|a| a.in_flight == 0).await.is_err() {
            // The connection is gone; its task ends on its own.
            return std::future::pending().await;
        }
        let seen = activity.borrow().started;
        let next = tokio::time::timeout(timeouts.idle, async {
            if activity.wait_for(|a| a.started != seen).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
        .await;
        if next.is_err() {
            return;
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is done.
    struct TrackedBody {
        #[pin]
        inner: Body,
        _in_flight: InFlight,
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which cap refused a connection.
enum Refusal {
    PerIp,
    Total,
}

/// Open connections, in all and per client address.
struct Slots {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Slots {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            open: Mutex::new(OpenConnections::default()),
        }
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = ip_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let count = open.per_ip.entry(key).or_insert(0);
        if *count >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *count += 1;
        open.total += 1;
        Ok(Slot {
            slots: Arc::clone(self),
            key,
        })
    }
}

/// One open connection's place in [`Slots`], given back when the connection task ends
/// (also when it is aborted at the shutdown deadline).
struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        // Remove the entry at zero, so the map holds only addresses with open connections.
        if let Some(count) = open.per_ip.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&self.key);
            }
        }
    }
}

/// The per-IP cap's key: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by its /64, the block one
/// subscriber is given (RFC 6177), so one client cannot take a fresh address per connection.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// At most one log line per [`LOG_EVERY`], counting what it held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(number held back since the last line)` when a line may be written now.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn slots_are_given_back_and_the_map_empties() {
        let slots = Arc::new(Slots::new(3, 2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = slots.acquire(ip).ok().unwrap();
        let b = slots.acquire(ip).ok().unwrap();
        assert!(matches!(slots.acquire(ip), Err(Refusal::PerIp)));
        let c = slots.acquire(other).ok().unwrap();
        assert!(matches!(slots.acquire(other), Err(Refusal::Total)));
        drop((a, b, c));
        let open = slots.open.lock().unwrap();
        assert_eq!(open.total, 0);
        assert!(open.per_ip.is_empty());
    }

    #[test]
    fn throttle_writes_one_line_per_interval_and_counts_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = t.last.map(|l| l - LOG_EVERY);
        assert_eq!(t.ready(), Some(2));
    }

    /// A listener whose first `failures` accepts fail with `EMFILE`.
    struct Failing {
        inner: TcpListener,
        failures: usize,
    }

    impl Accept for Failing {
        fn accept(&mut self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
            let fail = self.failures > 0;
            self.failures = self.failures.saturating_sub(1);
            let inner = &self.inner;
            async move {
                if fail {
                    // EMFILE: too many open files.
                    Err(io::Error::from_raw_os_error(24))
                } else {
                    inner.accept().await
                }
            }
        }
    }

    #[tokio::test]
    async fn accept_errors_back_off_and_serving_goes_on() {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = inner.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(
            Failing { inner, failures: 3 },
            Plain,
            app,
            ServeConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let response = tokio::time::timeout(Duration::from_secs(10), async {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).await.unwrap();
            response
        })
        .await
        .expect("served after the accept errors");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        stop.send(()).unwrap();
        let report = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(report.accept_errors, 3);
        assert_eq!(report.connections_served, 1);
    }
}
