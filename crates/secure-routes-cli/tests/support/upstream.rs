//! A recording upstream for the gateway's black-box tests: a hyper HTTP/1.1 server on
//! 127.0.0.1:0 that records every request it receives (method, path and query, version,
//! headers, body length, the first 64 KiB of the body, and whether the body ended cleanly or
//! was cut off), so a test can prove what reached the upstream and what did not. It is also
//! the alert tests' webhook receiver (the body is what a receiver verifies a signature over).
//!
//! What it answers is chosen per path prefix ([`Upstream::on`]); anything else gets a small
//! JSON body. The behaviours are the upstream failures a proxy must survive: a 50 MB body, no
//! answer at all, a body cut off mid-way, an answer held until the test releases it, and a
//! WebSocket echo.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResBody = BoxBody<Bytes, BoxError>;

/// How a request body ended, as the upstream read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end (the declared length, or the last chunk).
    Complete,
    /// The connection failed before the end: the body was aborted, not complete.
    Aborted(String),
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, exactly as on the request line.
    pub path_and_query: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// The body's first [`KEPT_BODY`] bytes, exactly as received.
    pub body: Vec<u8>,
    pub body_end: BodyEnd,
}

/// How much of each body is kept (a 50 MB upload is counted, not held).
pub const KEPT_BODY: usize = 64 * 1024;

impl Recorded {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split('?')
            .next()
            .unwrap_or(&self.path_and_query)
    }

    /// A header as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the upstream does for a path prefix.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// `200` with a small JSON body naming the path and the body length read.
    Json,
    /// `200` with `bytes` zero bytes, streamed in 64 KiB chunks (never held whole), with a
    /// `Content-Length`.
    Download { bytes: u64 },
    /// Never answers (the connection stays open until the client goes away).
    Never,
    /// Sends the head and 16 KiB of a longer body, then closes the connection. With
    /// `declared`, the head says `Content-Length: 1048576`; without, the body is chunked.
    MidBody { declared: bool },
    /// Answers `200` only once the test calls [`Upstream::release`].
    Hold,
    /// Accepts a WebSocket upgrade and echoes every text and binary message.
    WebSocketEcho,
    /// Accepts `Upgrade: h2c` as an HTTP/2-capable server does (RFC 7540 3.2) and then serves
    /// HTTP/2 on the connection, recording each request and answering [`Behaviour::Json`].
    /// (Requests without the upgrade get the JSON answer.)
    H2cUpgrade,
    /// Answers `status` (empty body) to the first request on each path, then as
    /// [`Behaviour::Json`]: a webhook receiver that fails once.
    FailFirst { status: u16 },
}

struct State {
    records: Mutex<Vec<Recorded>>,
    behaviours: Mutex<Vec<(String, Behaviour)>>,
    /// Bumped on every new record, so a test can wait for one without sleeping.
    changed: watch::Sender<u64>,
    released: watch::Sender<bool>,
    /// Paths a [`Behaviour::FailFirst`] has failed once already.
    failed_once: Mutex<Vec<String>>,
}

/// The running upstream (its task ends with the test's runtime).
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Upstream {
    /// Starts listening on 127.0.0.1 on a free port.
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(State {
            records: Mutex::new(Vec::new()),
            behaviours: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            released: watch::channel(false).0,
            failed_once: Mutex::new(Vec::new()),
        });
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr, state }
    }

    /// `http://127.0.0.1:PORT`: the gateway's `upstream` and its assertion's audience.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Paths starting with `prefix` get `behaviour` (the first matching prefix wins).
    pub fn on(&self, prefix: &str, behaviour: Behaviour) {
        self.state
            .behaviours
            .lock()
            .unwrap()
            .push((prefix.to_owned(), behaviour));
    }

    /// Lets every [`Behaviour::Hold`] request (held now or later) answer.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// Everything recorded so far, in arrival order.
    pub fn records(&self) -> Vec<Recorded> {
        self.state.records.lock().unwrap().clone()
    }

    /// The records whose path (without the query) is `path`.
    pub fn records_for(&self, path: &str) -> Vec<Recorded> {
        self.records()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }

    /// Waits (at most `bound`, a liveness bound) for a record matching `pred`.
    pub async fn wait_for(
        &self,
        bound: Duration,
        pred: impl Fn(&Recorded) -> bool,
    ) -> Option<Recorded> {
        let mut changes = self.state.changed.subscribe();
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| pred(r)) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    fn record(&self, r: Recorded) {
        record(&self.state, r);
    }
}

fn record(state: &State, r: Recorded) {
    state.records.lock().unwrap().push(r);
    state.changed.send_modify(|n| *n += 1);
}

fn behaviour(state: &State, path: &str) -> Behaviour {
    state
        .behaviours
        .lock()
        .unwrap()
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map_or(Behaviour::Json, |(_, b)| *b)
}

async fn handle(state: Arc<State>, mut req: Request<Incoming>) -> Response<ResBody> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned());
    let chosen = behaviour(&state, req.uri().path());
    let mut recorded = Recorded {
        method: req.method().clone(),
        path_and_query: path_and_query.clone(),
        version: req.version(),
        headers: req.headers().clone(),
        body_len: 0,
        body: Vec::new(),
        body_end: BodyEnd::Complete,
    };
    if let Behaviour::WebSocketEcho = chosen {
        record(&state, recorded);
        return websocket_echo(&mut req);
    }
    if let Behaviour::H2cUpgrade = chosen
        && req
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"h2c"))
    {
        record(&state, recorded);
        return h2c_upgrade(&state, &mut req);
    }
    // Count the body frame by frame, keeping only its start: a 50 MB upload costs no memory.
    let mut body = req.into_body();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    recorded.body_len += data.len() as u64;
                    let room = KEPT_BODY.saturating_sub(recorded.body.len());
                    recorded
                        .body
                        .extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(e)) => {
                recorded.body_end = BodyEnd::Aborted(e.to_string());
                break;
            }
            None => break,
        }
    }
    let body_len = recorded.body_len;
    let aborted = recorded.body_end != BodyEnd::Complete;
    record(&state, recorded);
    if aborted {
        // The connection is gone; nobody reads this.
        return status(StatusCode::BAD_REQUEST);
    }
    match chosen {
        Behaviour::Json | Behaviour::WebSocketEcho | Behaviour::H2cUpgrade => {
            json(&path_and_query, body_len)
        }
        Behaviour::FailFirst { status: code } => {
            let path = path_and_query.split('?').next().unwrap_or("").to_owned();
            let mut failed = state.failed_once.lock().unwrap();
            if failed.contains(&path) {
                json(&path_and_query, body_len)
            } else {
                failed.push(path);
                status(StatusCode::from_u16(code).unwrap())
            }
        }
        Behaviour::Download { bytes } => Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Zeros::new(bytes).boxed())
            .unwrap(),
        Behaviour::Never => std::future::pending().await,
        Behaviour::MidBody { declared } => {
            let mut res = Response::builder().header(header::CONTENT_TYPE, "text/plain");
            if declared {
                res = res.header(header::CONTENT_LENGTH, 1 << 20);
            }
            res.body(CutOff { polls: 0 }.boxed()).unwrap()
        }
        Behaviour::Hold => {
            let mut released = state.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
            json(&path_and_query, body_len)
        }
    }
}

/// The JSON answer. It also carries a hop-by-hop header named in `Connection` (which the
/// gateway must not pass on) and an end-to-end one (which it must).
fn json(path_and_query: &str, body_len: u64) -> Response<ResBody> {
    let body = serde_json::json!({ "path": path_and_query, "received": body_len }).to_string();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "X-Upstream-Hop")
        .header("x-upstream-hop", "1")
        .header("x-upstream-end", "1")
        .body(full(body))
        .unwrap()
}

fn status(code: StatusCode) -> Response<ResBody> {
    Response::builder().status(code).body(full("")).unwrap()
}

fn full(text: impl Into<Bytes>) -> ResBody {
    http_body_util::Full::new(text.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// The server half of the WebSocket handshake (RFC 6455 4.2.2), then an echo loop on the
/// upgraded connection.
fn websocket_echo(req: &mut Request<Incoming>) -> Response<ResBody> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return status(StatusCode::BAD_REQUEST);
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

/// `101 Switching Protocols` to h2c, then HTTP/2 on the upgraded connection: whatever the
/// client asks there is recorded and answered, as a real h2c-capable server would.
fn h2c_upgrade(state: &Arc<State>, req: &mut Request<Incoming>) -> Response<ResBody> {
    let upgrade = hyper::upgrade::on(req);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move {
                let path_and_query = req
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
                record(
                    &state,
                    Recorded {
                        method: req.method().clone(),
                        path_and_query: path_and_query.clone(),
                        version: req.version(),
                        headers: req.headers().clone(),
                        body_len: 0,
                        body: Vec::new(),
                        body_end: BodyEnd::Complete,
                    },
                );
                Ok::<_, Infallible>(json(&path_and_query, 0))
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .serve_connection(upgraded, service)
            .await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "h2c")
        .body(full(""))
        .unwrap()
}

/// `left` zero bytes in 64 KiB frames, all slices of one shared buffer.
struct Zeros {
    left: u64,
    chunk: Bytes,
}

impl Zeros {
    fn new(bytes: u64) -> Zeros {
        Zeros {
            left: bytes,
            chunk: Bytes::from(vec![0u8; 64 * 1024]),
        }
    }
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        #[allow(clippy::cast_possible_truncation)] // n <= 64 KiB
        let data = self.chunk.slice(..n as usize);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}

/// 16 KiB, then an error: hyper closes the connection without finishing the body.
struct CutOff {
    polls: u8,
}

impl Body for CutOff {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polls += 1;
        match self.polls {
            1 => Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 16 * 1024]))))),
            // Pending once, so hyper flushes the head and the first chunk before the error
            // (otherwise the gateway could see no response at all, a 502, not a cut body).
            2 => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            _ => Poll::Ready(Some(Err("upstream closes mid-body".into()))),
        }
    }
}
