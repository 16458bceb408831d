//! Early refusals reach the client (`secure_routes::serve`'s lingering close): a 401 or 413
//! decided before the request body is read is read by a client that writes its whole body
//! before reading, over HTTP/1.1 (declared and chunked bodies) and HTTP/2; the lingering is
//! bounded; a small left-over body is drained and the connection kept.
//!
//! The HTTP/1 client is a blocking `std::net::TcpStream` that does what Python's
//! `http.client` does: write the head, write the whole body, then read. Without the lingering
//! close most of these tries end in `Broken pipe` or `Connection reset` (measured before the
//! fix: 2 of 10 and 1 of 10 answers read).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use common::{Server, harness};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use secure_routes::serve::ServeConfig;
use secure_routes::{Policy, Quota};
use secure_routes_testkit::http1::{Framing, assert_closing_problem, write_whole_body_then_read};

/// A liveness bound for waits, far above what the server's timers need.
const BOUND: Duration = Duration::from_secs(20);
/// The body every early-refusal try sends: three times the PUBLIC preset's 1 MiB limit.
const BIG: usize = 3 * 1024 * 1024;
const TRIES: usize = 20;

/// The app under test: `/auth` refuses without a credential (401), `/public` refuses a body
/// over 1 MiB (413), `/` answers `ok`.
async fn start(config: ServeConfig) -> Server {
    let h = harness(|b| b);
    let router = Router::new().route("/", get(|| async { "ok" }));
    // AUTHENTICATED: a request without a credential is a 401 before its body is read.
    // Its quota is raised so that 40 tries stay under it.
    let auth = Policy::authenticated()
        .to_builder()
        .rate_limit(Quota::per_hour(1000))
        .build()
        .unwrap();
    let router = h.add(router, "/auth", auth, post(echo));
    // PUBLIC: a body over 1 MiB is a 413, before reading when it is declared.
    let app = h.add(router, "/public", Policy::public(), post(echo));
    Server::start(app, config).await
}

async fn echo(body: Bytes) -> String {
    body.len().to_string()
}

async fn tries(addr: SocketAddr, path: &'static str, framing: Framing, status: u16, error: &str) {
    for i in 0..TRIES {
        let response = tokio::task::spawn_blocking(move || {
            let content_type = "Content-Type: application/octet-stream\r\n";
            write_whole_body_then_read(&addr.to_string(), path, content_type, BIG, framing, BOUND)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("try {i} to {path} ({framing:?}): {e}"));
        assert_closing_problem(&response, status, error);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_before_the_body_reaches_a_client_that_writes_first() {
    let server = start(ServeConfig::default()).await;
    let error = "Authentication required";
    tries(server.addr, "/auth", Framing::Declared, 401, error).await;
    tries(server.addr, "/auth", Framing::Chunked, 401, error).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_reaches_a_client_that_writes_first_declared_or_chunked() {
    let server = start(ServeConfig::default()).await;
    let error = "Request body too large";
    // Declared: refused from the header, nothing read. Chunked: refused after 1 MiB was read.
    tries(server.addr, "/public", Framing::Declared, 413, error).await;
    tries(server.addr, "/public", Framing::Chunked, 413, error).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_early_refusals_are_read_and_the_connection_stays_open() {
    let server = start(ServeConfig::default()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for (path, status, error) in [
        ("/auth", 401, "Authentication required"),
        ("/public", 413, "Request body too large"),
    ] {
        for i in 0..TRIES {
            let req = http::Request::post(format!("http://{}{path}", server.addr))
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(vec![b'a'; BIG])))
                .unwrap();
            let res = tokio::time::timeout(BOUND, client.request(req))
                .await
                .expect("answered in time")
                .unwrap_or_else(|e| panic!("try {i} to {path}: {e}"));
            assert_eq!(res.status().as_u16(), status, "{path}");
            assert_eq!(res.version(), http::Version::HTTP_2);
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem["error"], error);
        }
    }
    let report = server.stop().await;
    // One pooled HTTP/2 connection carried all 40 refusals: none closed it.
    assert_eq!(report.connections_served, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_left_over_body_is_drained_and_the_connection_kept() {
    let server = start(ServeConfig::default()).await;
    let mut conn = std::net::TcpStream::connect(server.addr).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    let small = 10 * 1024;
    let mut request = format!(
        "POST /auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {small}\r\n\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'a', small));
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = tokio::task::spawn_blocking(move || {
        conn.write_all(&request).unwrap();
        let mut response = Vec::new();
        conn.read_to_end(&mut response).unwrap();
        String::from_utf8_lossy(&response).into_owned()
    })
    .await
    .unwrap();
    // Both answers on one connection: the 401 without `Connection: close`, then the GET.
    let (first, second) = response
        .split_once("HTTP/1.1 200 OK")
        .unwrap_or_else(|| panic!("the GET was not answered on the same connection: {response}"));
    assert!(first.starts_with("HTTP/1.1 401 "), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    assert!(second.ends_with("ok"), "{second}");
    assert_eq!(server.stop().await.connections_served, 1);
}

/// A sender that never stops (declares 1 GiB), writing `chunk` bytes then pausing `pause`,
/// while a second handle reads the answer. Returns the bytes sent before the server cut it
/// off, the error the sender saw, and what was read.
fn endless_sender(
    addr: SocketAddr,
    chunk: usize,
    pause: Duration,
) -> (usize, std::io::Error, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_write_timeout(Some(BOUND)).unwrap();
    let mut reader = conn.try_clone().unwrap();
    reader.set_read_timeout(Some(BOUND)).unwrap();
    let read = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    });
    conn.write_all(b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
        .unwrap();
    let data = vec![b'a'; chunk];
    let mut sent = 0usize;
    let error = loop {
        match conn.write(&data) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        assert!(sent < 1 << 30, "never cut off");
        if !pause.is_zero() {
            // Pacing the sender (below the byte cap), not timing anything.
            std::thread::sleep(pause);
        }
    };
    (sent, error, read.join().unwrap())
}

fn assert_cut_off(what: &str, error: &std::io::Error, answer: &str) {
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{what}: {error}"
    );
    // The answer was read before the cut: the lingering kept the connection readable.
    assert!(answer.starts_with("HTTP/1.1 401 "), "{what}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_stops_at_its_byte_cap() {
    let cap = 32 * 1024 * 1024;
    let server = start(ServeConfig {
        lingering_max_bytes: cap as u64,
        ..ServeConfig::default()
    })
    .await;
    let addr = server.addr;
    let (sent, error, answer) = tokio::time::timeout(
        BOUND,
        tokio::task::spawn_blocking(move || endless_sender(addr, 64 * 1024, Duration::ZERO)),
    )
    .await
    .expect("the sender was not cut off")
    .unwrap();
    assert_cut_off("byte cap", &error, &answer);
    // The server read (and discarded) the cap's worth: more than loopback socket buffers hold
    // (a few MiB), so this was lingering, not a close that reset the sender.
    assert!(sent >= cap, "cut off after {sent} bytes, before the cap");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sender_is_cut_off_at_the_lingering_time() {
    let server = start(ServeConfig {
        lingering_time: Duration::from_millis(500),
        ..ServeConfig::default()
    })
    .await;
    let addr = server.addr;
    // 8 KiB every 20 ms: under 8 MiB within the test's bound, so the 16 MiB byte cap never
    // ends it and neither does the 5 s lingering timeout; only the 500 ms lingering time can.
    let (sent, error, answer) = tokio::time::timeout(
        BOUND,
        tokio::task::spawn_blocking(move || {
            endless_sender(addr, 8 * 1024, Duration::from_millis(20))
        }),
    )
    .await
    .expect("the slow sender was not cut off")
    .unwrap();
    assert_cut_off("lingering time", &error, &answer);
    assert!(sent < 16 * 1024 * 1024, "{sent}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sender_keeps_its_connection_slot_until_the_lingering_timeout() {
    let server = start(ServeConfig {
        max_connections_per_ip: 1,
        lingering_timeout: Duration::from_secs(2),
        ..ServeConfig::default()
    })
    .await;
    let addr = server.addr;
    // Declares 10 MiB, sends 100 KiB, reads its 401, then sends nothing more.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(BOUND)).unwrap();
    let mut request =
        b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let got = tokio::task::spawn_blocking(move || {
        stalled.write_all(&request).unwrap();
        let mut response = Vec::new();
        // The server stops sending after the response (end of file), then lingers.
        stalled.read_to_end(&mut response).unwrap();
        (stalled, String::from_utf8_lossy(&response).into_owned())
    })
    .await
    .unwrap();
    let (stalled, response) = got;
    assert_closing_problem(&response, 401, "Authentication required");

    // While it lingers the connection still holds the only slot for this address: the next
    // connection is closed without an answer.
    let refused = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(BOUND)).unwrap();
        let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(refused.is_empty(), "{}", String::from_utf8_lossy(&refused));

    // After the lingering timeout the slot is free again: a new connection is served.
    let served = tokio::time::timeout(BOUND, async {
        loop {
            let got = tokio::task::spawn_blocking(move || {
                let mut conn = std::net::TcpStream::connect(addr).unwrap();
                conn.set_read_timeout(Some(BOUND)).unwrap();
                let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got);
                String::from_utf8_lossy(&got).into_owned()
            })
            .await
            .unwrap();
            if got.starts_with("HTTP/1.1 200") {
                return got;
            }
            // Refused again: the lingering connection is still open. Poll again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stalled sender's slot is given back after the lingering timeout");
    assert!(served.ends_with("ok"));
    drop(stalled);
    server.stop().await;
}
