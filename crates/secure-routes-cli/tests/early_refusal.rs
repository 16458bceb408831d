//! Against the real `secure-routes demo` binary over loopback: a refusal decided before the
//! request body is read (401 without a token, 413 over the body limit) reaches a client that
//! writes its whole body before reading, as Python's `http.client` (and so `requests`) and
//! Node's `fetch` do. Before the lingering close these tries mostly ended in `Broken pipe`
//! (issue 13: 2 of 10 401s and 1 of 10 413s read; 13 of 20 at 600 KiB to `/api/strict`).
//!
//! Each try comes from its own client address (`X-Forwarded-For` from a trusted loopback
//! proxy), so the routes' quotas do not turn the refusals into 429s.

mod support;

use std::time::Duration;

use secure_routes_testkit::http1::{Framing, assert_closing_problem, write_whole_body_then_read};
use support::Demo;

const TRIES: usize = 20;
const BOUND: Duration = Duration::from_secs(20);

/// `POST path` with a body of `len` bytes written whole before reading, from `client`.
fn post_then_read(base: &str, path: &str, len: usize, framing: Framing, client: &str) -> String {
    let addr = base.trim_start_matches("http://");
    let headers = format!("X-Forwarded-For: {client}\r\nContent-Type: application/json\r\n");
    write_whole_body_then_read(addr, path, &headers, len, framing, BOUND)
        .unwrap_or_else(|e| panic!("POST {path} ({len} bytes, {framing:?}): {e}"))
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
    for framing in [Framing::Declared, Framing::Chunked] {
        for _ in 0..TRIES {
            let r = post_then_read(&demo.base, "/api/user/notes", big, framing, &next_client());
            assert_closing_problem(&r, 401, "Authentication required");
            let r = post_then_read(&demo.base, "/api/public-data", big, framing, &next_client());
            assert_closing_problem(&r, 413, "Request body too large");
        }
    }
    for _ in 0..TRIES {
        let r = post_then_read(
            &demo.base,
            "/api/strict",
            600 * 1024,
            Framing::Declared,
            &next_client(),
        );
        assert_closing_problem(&r, 401, "Authentication required");
    }
    demo.stop();
}
