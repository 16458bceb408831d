//! `secure_routes::serve` over loopback: slow and idle connections are closed, the connection
//! caps refuse, shutdown is bounded, HTTP/2 works with its limits advertised.
//!
//! Timeouts are configured tight (hundreds of milliseconds) so the server's own timers do the
//! work; every wait in the test is wrapped in a generous `tokio::time::timeout`, so a
//! regression fails instead of hanging.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secure_routes::serve::{ServeConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};

use common::Server;

/// A liveness bound for waits: far above what the server's configured timers need.
const BOUND: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {BOUND:?}"))
}

/// `GET /` answers `ok`; `GET /peer` answers the `ConnectInfo` address.
fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" })).route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
    )
}

fn config() -> ServeConfig {
    ServeConfig {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        ..ServeConfig::default()
    }
}

/// Connects from `source` (an address on loopback) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one keep-alive `GET path` and reads its response (the body is short and
/// `Content-Length`-delimited), leaving the connection open.
async fn request(conn: &mut TcpStream, path: &str) -> String {
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    bounded("a response", async {
        loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed after: {}",
                String::from_utf8_lossy(&response)
            );
            response.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    return text.into_owned();
                }
            }
        }
    })
    .await
}

/// Reads until the server closes the connection; returns what it sent before.
async fn read_until_closed(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    bounded("the server to close the connection", async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `bytes` one at a time every `every`, then stays silent; returns how many were sent
/// when the server closed the connection (or `None` if it never did within the bound).
async fn trickle(
    addr: SocketAddr,
    bytes: Vec<u8>,
    every: Duration,
    connected: mpsc::Sender<()>,
) -> Option<usize> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    connected.send(()).await.unwrap();
    let mut tick = tokio::time::interval(every);
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            tokio::select! {
                _ = tick.tick(), if sent < bytes.len() => {
                    if conn.write_all(&bytes[sent..=sent]).await.is_err() {
                        return sent;
                    }
                    sent += 1;
                }
                read = conn.read(&mut buf) => match read {
                    // A 408 may come first; the close is what counts.
                    Ok(0) | Err(_) => return sent,
                    Ok(_) => {}
                },
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn slowloris_connections_are_closed_at_the_header_read_timeout() {
    let server = Server::start(
        app(),
        ServeConfig {
            header_read_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .await;
    // 45 HTTP/1.1 heads that never end, and 5 clients trickling the HTTP/2 preface (caught
    // while the server is still sniffing the protocol): one byte every 50 ms, far more often
    // than the timeout, for longer than the test's bound.
    let mut slow_head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    slow_head.extend(std::iter::repeat_n(b'a', 400));
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r".to_vec();
    let (connected_tx, mut connected) = mpsc::channel(64);
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let bytes = if i % 10 == 9 {
                preface.clone()
            } else {
                slow_head.clone()
            };
            tokio::spawn(trickle(
                server.addr,
                bytes,
                Duration::from_millis(50),
                connected_tx.clone(),
            ))
        })
        .collect();
    bounded("50 connections", async {
        for _ in 0..50 {
            connected.recv().await.unwrap();
        }
    })
    .await;

    // Meanwhile a well-behaved client is served.
    let mut good = TcpStream::connect(server.addr).await.unwrap();
    let response = request(&mut good, "/").await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    drop(good);

    for (i, client) in clients.into_iter().enumerate() {
        let sent = client.await.unwrap();
        let sent = sent.unwrap_or_else(|| panic!("slow client {i} was never closed"));
        let total = if i % 10 == 9 {
            preface.len()
        } else {
            slow_head.len()
        };
        // Closed by the timeout, not by finishing or by a bad byte.
        if i % 10 != 9 {
            assert!(
                sent < total,
                "client {i} sent its whole head ({sent} bytes)"
            );
        }
    }
    let report = server.stop().await;
    assert_eq!(report.timed_out, 50, "{report:?}");
    assert_eq!(report.connections_served, 51);
    assert_eq!(report.closed_at_deadline, 0);
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_read_timeout() {
    let server = Server::start(
        app(),
        ServeConfig {
            header_read_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    read_until_closed(&mut silent).await;
    let report = server.stop().await;
    assert_eq!(report.timed_out, 1);
}

#[tokio::test]
async fn idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header timeout (30 s) is far away: only the idle timeout can close it in time.
    let server = Server::start(
        app(),
        ServeConfig {
            idle_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let first = request(&mut conn, "/").await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    // Still usable right after a request (keep-alive works).
    let second = request(&mut conn, "/").await;
    assert!(second.starts_with("HTTP/1.1 200 OK"), "{second}");
    assert_eq!(read_until_closed(&mut conn).await, "");
    let report = server.stop().await;
    assert_eq!(report.timed_out, 1, "{report:?}");
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    let server = Server::start(
        app(),
        ServeConfig {
            idle_timeout: Duration::from_millis(300),
            ..config()
        },
    )
    .await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let request = http::Request::get("http://x/").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = bounded("an HTTP/2 response", async {
        tokio::select! {
            r = response => r.unwrap(),
            r = &mut conn => panic!("connection ended first: {r:?}"),
        }
    })
    .await;
    assert_eq!(response.status(), 200);
    drop(client);
    // The server sends GOAWAY and closes; the client connection future then completes.
    bounded("the idle HTTP/2 connection to close", conn)
        .await
        .unwrap();
    let report = server.stop().await;
    assert_eq!(report.timed_out, 1, "{report:?}");
}

#[tokio::test]
async fn per_ip_cap_refuses_the_next_connection_from_that_ip_only() {
    let server = Server::start(
        app(),
        ServeConfig {
            max_connections_per_ip: 2,
            ..config()
        },
    )
    .await;
    // Two open connections from 127.0.0.1, each known to be accepted (it was answered).
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut conn = connect_from("127.0.0.1", server.addr).await;
        assert!(request(&mut conn, "/").await.starts_with("HTTP/1.1 200"));
        open.push(conn);
    }
    // The third from the same address is closed without an answer.
    let mut third = connect_from("127.0.0.1", server.addr).await;
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_until_closed(&mut third).await, "");
    // Another address is not affected, and sees its own address in ConnectInfo.
    let mut other = connect_from("127.0.0.2", server.addr).await;
    let response = request(&mut other, "/peer").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\n127.0.0.2"), "{response}");
    // The first two still work.
    for conn in &mut open {
        assert!(request(conn, "/").await.starts_with("HTTP/1.1 200"));
    }
    drop((open, other));
    let report = server.stop().await;
    assert_eq!(report.refused_per_ip, 1, "{report:?}");
    assert_eq!(report.refused_max_connections, 0);
    assert_eq!(report.connections_served, 3);
}

#[tokio::test]
async fn process_cap_refuses_any_address_over_it() {
    let server = Server::start(
        app(),
        ServeConfig {
            max_connections: 2,
            ..config()
        },
    )
    .await;
    let mut a = connect_from("127.0.0.1", server.addr).await;
    let mut b = connect_from("127.0.0.2", server.addr).await;
    assert!(request(&mut a, "/").await.starts_with("HTTP/1.1 200"));
    assert!(request(&mut b, "/").await.starts_with("HTTP/1.1 200"));
    let mut c = connect_from("127.0.0.3", server.addr).await;
    let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(read_until_closed(&mut c).await, "");
    drop((a, b));
    let report = server.stop().await;
    assert_eq!(report.refused_max_connections, 1, "{report:?}");
    assert_eq!(report.refused_per_ip, 0);
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_within_the_grace() {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = {
        let (started, release) = (Arc::clone(&started), Arc::clone(&release));
        Router::new().route(
            "/slow",
            get(move || async move {
                started.notify_one();
                release.notified().await;
                "done"
            }),
        )
    };
    let server = Server::start(app, config()).await;
    let addr = server.addr;
    let client = tokio::spawn(async move {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let response = request(&mut conn, "/slow").await;
        // After the response the connection closes: shutdown disabled keep-alive.
        let rest = read_until_closed(&mut conn).await;
        (response, rest)
    });
    bounded("the handler to start", started.notified()).await;
    let _ = server.stop.send(());
    // The listener closes: new connections are refused once shutdown has begun.
    bounded("the listener to close", async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    release.notify_one();
    let (response, rest) = bounded("the slow response", client).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("done"), "{response}");
    assert_eq!(rest, "");
    let report = bounded("serve to return", server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.closed_at_deadline, 0, "{report:?}");
}

#[tokio::test]
async fn stuck_connections_do_not_delay_shutdown_past_the_grace() {
    let started = Arc::new(Notify::new());
    let app = {
        let started = Arc::clone(&started);
        app().route(
            "/stuck",
            get(move || async move {
                started.notify_one();
                std::future::pending::<&str>().await
            }),
        )
    };
    // Header and idle timeouts far away; the grace is what must end these.
    let server = Server::start(
        app,
        ServeConfig {
            shutdown_grace: Duration::from_millis(300),
            ..config()
        },
    )
    .await;
    // A client that never finishes its request head...
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // ... and one whose handler never answers.
    let mut waiting = TcpStream::connect(server.addr).await.unwrap();
    waiting
        .write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    bounded("the stuck handler to start", started.notified()).await;
    // A later connection answered: the half-sent one, accepted before it, is open.
    let mut probe = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut probe, "/").await.starts_with("HTTP/1.1 200"));
    drop(probe);

    // Shutdown returns (within the test's bound, with a 300 ms grace) though neither
    // connection could finish, and says it closed them.
    let report = server.stop().await;
    assert_eq!(report.closed_at_deadline, 2, "{report:?}");
    // They are really closed.
    read_until_closed(&mut half).await;
    read_until_closed(&mut waiting).await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_with_connect_info() {
    let server = Server::start(app(), config()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{}/peer", server.addr).parse().unwrap();
    let response = bounded("an HTTP/2 response", client.get(uri))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"127.0.0.1");
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn http2_advertises_its_max_concurrent_streams() {
    let server = Server::start(
        app(),
        ServeConfig {
            http2_max_concurrent_streams: 7,
            ..config()
        },
    )
    .await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let (response, _) = client
        .send_request(http::Request::get("http://x/").body(()).unwrap(), true)
        .unwrap();
    let response = bounded("an HTTP/2 response", async {
        tokio::select! {
            r = response => r.unwrap(),
            r = &mut conn => panic!("connection ended first: {r:?}"),
        }
    })
    .await;
    assert_eq!(response.status(), 200);
    // The server's SETTINGS arrived before its response: the client may open at most 7.
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    drop((client, conn));
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_http1_head_is_refused_with_431() {
    let server = Server::start(
        app(),
        ServeConfig {
            max_header_list_bytes: 16 * 1024,
            ..config()
        },
    )
    .await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    // The server may close before it has read everything; the answer is what counts.
    let _ = conn.write_all(head.as_bytes()).await;
    let response = read_until_closed(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_config_is_an_error_before_serving() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = serve(
        listener,
        app(),
        ServeConfig {
            max_connections: 0,
            http2_max_concurrent_streams: 0,
            ..config()
        },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let config = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<secure_routes::ConfigError>())
        .expect("a ConfigError inside");
    assert_eq!(config.problems().len(), 2);
}

/// Reads one HTTP/2 frame: (type, flags, stream id, payload).
async fn read_frame(conn: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn http2_streams_over_the_limit_are_refused() {
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const REFUSED_STREAM: u32 = 0x7;
    let app = app().route("/stuck", get(std::future::pending::<&'static str>));
    let server = Server::start(
        app,
        ServeConfig {
            http2_max_concurrent_streams: 2,
            ..config()
        },
    )
    .await;
    // A raw client that ignores the advertised limit (h2's own client would respect it).
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    conn.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    bounded("the server's SETTINGS", async {
        loop {
            let (kind, flags, _, _) = read_frame(&mut conn).await;
            if kind == SETTINGS && flags & 0x1 == 0 {
                break;
            }
        }
    })
    .await;
    // The limit binds once the client acknowledged it (RFC 9113 §6.5.3).
    conn.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
    // GET http /stuck: indexed :method GET, :scheme http, literal :path.
    let mut block = vec![0x82, 0x86, 0x04, 6];
    block.extend_from_slice(b"/stuck");
    for stream in [1, 3, 5] {
        // END_STREAM | END_HEADERS
        conn.write_all(&frame(HEADERS, 0x5, stream, &block))
            .await
            .unwrap();
    }
    let (stream, code) = bounded("a refused stream", async {
        loop {
            let (kind, _, stream, payload) = read_frame(&mut conn).await;
            if kind == RST_STREAM {
                let code = u32::from_be_bytes(payload[..4].try_into().unwrap());
                break (stream, code);
            }
        }
    })
    .await;
    assert_eq!((stream, code), (5, REFUSED_STREAM));
    drop(conn);
    server.stop().await;
}
