//! The exact header lines of a PUBLIC and an AUTHENTICATED answer, as the real `secure-routes
//! demo` binary writes them on the wire (raw HTTP/1.1 over loopback, so the order and the
//! spelling are what a client reads, not what a client library makes of them).
//!
//! Why: the pipeline's step 10 is tuned for speed (issue 10 part 7: per-policy header maps
//! copied, values formatted without `fmt`); this pins that no such change adds, drops,
//! reorders or respells a header. The values that change per request (date, request id,
//! the rate-limit reset and remaining counts) are checked by shape.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::Demo;

/// The demo's allowed CORS origin in this test.
const ORIGIN: &str = "https://app.example";

/// One raw `GET` on a fresh connection: the status line and the header lines, in order.
fn raw_get(base: &str, path: &str, extra: &[(&str, &str)]) -> (String, Vec<(String, String)>) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let head = text.split("\r\n\r\n").next().unwrap().to_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(": ")
                .unwrap_or_else(|| panic!("header line {l:?}"));
            (n.to_owned(), v.to_owned())
        })
        .collect();
    (status, headers)
}

/// A value that changes per request: checked by shape, then replaced by `*`.
fn normalize(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(n, v)| {
            let shape_ok = match n.as_str() {
                "date" => v.ends_with(" GMT"),
                "x-request-id" => v.len() == 36 && v.chars().filter(|c| *c == '-').count() == 4,
                "x-ratelimit-reset" => v.parse::<u64>().is_ok_and(|t| t > 1_700_000_000),
                "x-ratelimit-remaining" => v.parse::<u64>().is_ok(),
                "content-length" => v.parse::<u64>().is_ok(),
                "ratelimit" => v
                    .split_once(";r=")
                    .is_some_and(|(_, rest)| rest.contains(";t=")),
                _ => return (n, v),
            };
            assert!(shape_ok, "{n}: {v:?}");
            (n, "*".to_owned())
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

const SECURITY: [(&str, &str); 8] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-xss-protection", "0"),
];

fn expected(
    route_name: &str,
    quota: u32,
    window: u32,
    extra: &[(&str, &str)],
    granted: bool,
) -> Vec<(String, String)> {
    let policy = format!("\"{route_name}\";q={quota};w={window}");
    let quota = quota.to_string();
    let mut e: Vec<(&str, &str)> = SECURITY.to_vec();
    e.extend([
        ("ratelimit-policy", policy.as_str()),
        ("x-ratelimit-limit", quota.as_str()),
        ("content-type", "application/json"),
        ("ratelimit", "*"),
        ("x-ratelimit-remaining", "*"),
        ("x-ratelimit-reset", "*"),
    ]);
    e.extend_from_slice(extra);
    e.push(("x-request-id", "*"));
    // The CORS grants only for an allowed `Origin`: without `Access-Control-Allow-Origin`
    // the others are inert, so an answer to a request without one carries `Vary` alone.
    if granted {
        e.extend([
            ("vary", "origin"),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-origin", ORIGIN),
            (
                "access-control-expose-headers",
                "ratelimit,ratelimit-policy,x-ratelimit-limit,x-ratelimit-remaining,\
                 x-ratelimit-reset,retry-after,x-request-id",
            ),
        ]);
    } else {
        e.push(("vary", "origin"));
    }
    e.extend([
        ("content-length", "*"),
        ("connection", "close"),
        ("date", "*"),
    ]);
    pairs(&e)
}

#[test]
fn public_and_authenticated_answers_carry_exactly_these_header_lines() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start_with_env(
        dir.path(),
        "wire",
        &[],
        &[("SECURE_ROUTES_ALLOWED_ORIGINS", ORIGIN)],
    );

    let (status, headers) = raw_get(&demo.base, "/api/public-data", &[]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let got = normalize(headers);
    assert_eq!(
        got,
        expected("public", 60, 60, &[], false),
        "PUBLIC, no Origin"
    );

    let bearer = support::bearer("wire-alice");
    let (status, headers) = raw_get(&demo.base, "/api/user/notes", &[("Authorization", &bearer)]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let got = normalize(headers);
    assert_eq!(
        got,
        expected(
            "authenticated",
            20,
            3600,
            &[("cache-control", "no-store")],
            false
        ),
        "AUTHENTICATED, no Origin"
    );

    // From the allowed origin: the grants tower-http's rules give, after the request id.
    let (status, headers) = raw_get(&demo.base, "/api/public-data", &[("Origin", ORIGIN)]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    let got = normalize(headers);
    assert_eq!(
        got,
        expected("public", 60, 60, &[], true),
        "PUBLIC, allowed Origin"
    );
}
