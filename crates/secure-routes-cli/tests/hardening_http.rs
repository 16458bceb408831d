//! Issue 9's client-facing contracts over loopback against the real `secure-routes demo`
//! binary, the way an outside client drives it: plain `OPTIONS`, preflights, `/health` and
//! unknown paths, unreadable bodies, `/api/csrf` caching, and the one forwarding header.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use support::Demo;

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn assert_contract_headers(res: &reqwest::Response, what: &str) {
    let h = res.headers();
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert!(h.contains_key("content-security-policy"), "{what}");
    assert_eq!(
        h.get("x-request-id").map(|v| v.len()),
        Some(36),
        "{what}: a request id"
    );
}

#[tokio::test]
async fn every_answer_carries_the_contract_and_every_request_meets_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start_with_env(
        dir.path(),
        "contract",
        &[],
        &[("SECURE_ROUTES_ALLOWED_ORIGINS", "https://app.example")],
    );
    let c = client();

    // A plain OPTIONS is an ordinary request: 405 with Allow, not a CORS answer.
    let res = c
        .request(Method::OPTIONS, demo.url("/api/public-data"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["allow"], "GET, POST, HEAD");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_contract_headers(&res, "plain OPTIONS");

    // A real preflight: 204, with the CORS grant, the security headers and a request id.
    let res = c
        .request(Method::OPTIONS, demo.url("/api/public-data"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_contract_headers(&res, "preflight");

    // A refusal from a policy still carries the CORS grant, so the browser can read it.
    let res = c
        .delete(demo.url("/api/public-data"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // /health and unknown paths.
    let res = c.get(demo.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_contract_headers(&res, "/health");
    let res = c.get(demo.url("/wp-login.php")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_contract_headers(&res, "404");

    // The CSRF token endpoint is never cached.
    let res = c.get(demo.url("/api/csrf")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["cache-control"], "no-store");

    // Path scanning is counted per client: 60 unknown paths a minute, then 429.
    let mut statuses = Vec::new();
    for i in 0..60 {
        let res = c.get(demo.url(&format!("/scan/{i}"))).send().await.unwrap();
        statuses.push(res.status().as_u16());
    }
    // One 404 above already counted: 59 more, then refusals.
    assert!(statuses[..59].iter().all(|&s| s == 404), "{statuses:?}");
    assert_eq!(statuses[59], 429, "{statuses:?}");
    demo.stop();
}

/// Sends raw bytes and returns the response head and body as text.
fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_problem_json_400() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), "chunked", &[]);
    let addr = demo.base.trim_start_matches("http://").to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        raw(
            &addr,
            b"POST /api/public-data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n5\r\nhello\r\nZZ\r\nnot a chunk\r\n0\r\n\r\n",
        )
    })
    .await
    .unwrap();
    let status_line = answer.lines().next().unwrap_or_default();
    assert!(status_line.contains(" 400 "), "{answer}");
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(answer.contains("\"error\":\"Invalid input\""), "{answer}");
    assert!(answer.contains("x-request-id:"), "{answer}");
    demo.stop();
}

#[tokio::test]
async fn behind_a_proxy_only_the_named_header_is_believed() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is the trusted proxy; it writes X-Forwarded-For (the default).
    let demo = Demo::start_with_env(
        dir.path(),
        "proxy",
        &[],
        &[("SECURE_ROUTES_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let c = client();
    let mut statuses = Vec::new();
    // PUBLIC: 60 per minute per client. A client adding a fresh Forwarded and X-Real-IP to
    // each request behind an X-Forwarded-For proxy stays one client.
    for i in 0..61 {
        let res = c
            .get(demo.url("/api/public-data"))
            .header("forwarded", format!("for=198.51.100.{}", i % 250))
            .header("x-real-ip", format!("192.0.2.{}", i % 250))
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 60);
    assert_eq!(statuses[60], 429);
    demo.stop();

    // A bad header name is a configuration error, not a silent default.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args(["demo", "--addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("SECURE_ROUTES_CLIENT_IP_HEADER", "x-client-ip")
        .env("SECURE_ROUTES_JWT_SECRET", support::JWT_SECRET)
        .env("CSRF_SECRET", support::CSRF_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SECURE_ROUTES_CLIENT_IP_HEADER"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
