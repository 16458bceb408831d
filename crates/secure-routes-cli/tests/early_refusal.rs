//! Against the real `secure-routes demo` binary over loopback: a refusal decided before the
//! request body is read (401 without a token, 413 over the body limit) reaches a client that
//! writes its whole body before reading, as Python's `http.client` (and so `requests`) and
//! Node's `fetch` do. Before the lingering close these tries mostly ended in `Broken pipe`
//! (issue 13: 2 of 10 401s and 1 of 10 413s read; 13 of 20 at 600 KiB to `/api/strict`).
//!
//! Each try comes from its own client address (`X-Forwarded-For` from a trusted loopback
//! proxy), so the routes' quotas do not turn the refusals into 429s.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::Demo;

const TRIES: usize = 20;
const BOUND: Duration = Duration::from_secs(20);

/// Writes `POST path` with a body of `len` bytes (declared or chunked) whole, then reads the
/// response to the end. The error is what the client saw instead of an answer.
fn post_then_read(base: &str, path: &str, len: usize, chunked: bool, client: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(BOUND)).unwrap();
    conn.set_write_timeout(Some(BOUND)).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {len}")
    };
    let sent = (|| -> std::io::Result<String> {
        conn.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {client}\r\n\
                 Content-Type: application/json\r\n{framing}\r\n\r\n"
            )
            .as_bytes(),
        )?;
        let chunk = vec![b' '; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if chunked {
                conn.write_all(format!("{n:x}\r\n").as_bytes())?;
            }
            conn.write_all(&chunk[..n])?;
            if chunked {
                conn.write_all(b"\r\n")?;
            }
            left -= n;
        }
        if chunked {
            conn.write_all(b"0\r\n\r\n")?;
        }
        let mut response = Vec::new();
        conn.read_to_end(&mut response)?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    })();
    sent.unwrap_or_else(|e| panic!("POST {path} ({len} bytes, chunked {chunked}): {e}"))
}

fn assert_problem(response: &str, status: u16, error: &str) {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head: {response:?}"));
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "{head}\n\n{body}"
    );
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_str(body).expect("problem+json");
    assert_eq!(problem["error"], error);
}

#[test]
fn early_refusals_reach_a_client_that_writes_its_whole_body_first() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start_with_env(
        dir.path(),
        "early",
        &[],
        &[("SECURE_ROUTES_TRUSTED_PROXIES", "127.0.0.1/32")],
    );
    let big = 3 * 1024 * 1024;
    let mut client = 0u32;
    let mut next_client = || {
        client += 1;
        format!("198.51.100.{}", client % 250 + 1)
    };
    for chunked in [false, true] {
        for _ in 0..TRIES {
            let r = post_then_read(&demo.base, "/api/user/notes", big, chunked, &next_client());
            assert_problem(&r, 401, "Authentication required");
            let r = post_then_read(&demo.base, "/api/public-data", big, chunked, &next_client());
            assert_problem(&r, 413, "Request body too large");
        }
    }
    for _ in 0..TRIES {
        let r = post_then_read(&demo.base, "/api/strict", 600 * 1024, false, &next_client());
        assert_problem(&r, 401, "Authentication required");
    }
    demo.stop();
}
