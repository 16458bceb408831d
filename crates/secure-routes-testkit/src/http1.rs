//! A raw HTTP/1.1 client that writes its whole request before reading anything, the way
//! Python's `http.client` (and so `requests`) sends a body: what the early-refusal tests need,
//! since a client that reads while it writes never sees the reset those tests are about.

use std::io::{Read, Write};
use std::time::Duration;

/// How the body goes on the wire.
///
/// ```
/// use secure_routes_testkit::http1::Framing;
/// assert_ne!(Framing::Declared, Framing::Chunked);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    Declared,
    /// `Transfer-Encoding: chunked`, 64 KiB chunks.
    Chunked,
}

/// Connects to `addr` (`HOST:PORT`), writes `POST path` with `headers` (complete lines, each
/// ending in `\r\n`) and a body of `len` spaces framed as `framing`, then reads the response
/// until the server closes. The error is what the client saw instead of an answer (a broken
/// pipe or a reset when the server closed over unread data). Reads and writes time out after
/// `bound`.
///
/// ```no_run
/// use std::time::Duration;
/// use secure_routes_testkit::http1::{Framing, write_whole_body_then_read};
/// let response = write_whole_body_then_read(
///     "127.0.0.1:3000", "/upload", "Content-Type: application/json\r\n",
///     3 << 20, Framing::Declared, Duration::from_secs(20),
/// ).unwrap();
/// assert!(response.starts_with("HTTP/1.1 413 "));
/// ```
pub fn write_whole_body_then_read(
    addr: &str,
    path: &str,
    headers: &str,
    len: usize,
    framing: Framing,
    bound: Duration,
) -> std::io::Result<String> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(bound))?;
    conn.set_write_timeout(Some(bound))?;
    let framing_header = match framing {
        Framing::Declared => format!("Content-Length: {len}"),
        Framing::Chunked => "Transfer-Encoding: chunked".to_owned(),
    };
    conn.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}{framing_header}\r\n\r\n")
            .as_bytes(),
    )?;
    let chunk = vec![b' '; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        match framing {
            Framing::Declared => conn.write_all(&chunk[..n])?,
            Framing::Chunked => {
                conn.write_all(format!("{n:x}\r\n").as_bytes())?;
                conn.write_all(&chunk[..n])?;
                conn.write_all(b"\r\n")?;
            }
        }
        left -= n;
    }
    if framing == Framing::Chunked {
        conn.write_all(b"0\r\n\r\n")?;
    }
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// Asserts a raw HTTP/1.1 response is the early refusal the tests expect: `status`, a
/// problem+json body whose `error` is `error`, and `Connection: close` (the server closes
/// after a body it did not read).
///
/// ```
/// use secure_routes_testkit::http1::assert_closing_problem;
/// assert_closing_problem(
///     "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/problem+json\r\n\
///      connection: close\r\n\r\n{\"error\":\"Authentication required\"}",
///     401,
///     "Authentication required",
/// );
/// ```
///
/// # Panics
///
/// When the response is anything else.
pub fn assert_closing_problem(response: &str, status: u16, error: &str) {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head: {response:?}"));
    assert!(
        head.starts_with(&format!("HTTP/1.1 {status} ")),
        "status: {head}\n\n{body}"
    );
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let problem: serde_json::Value = serde_json::from_str(body).expect("problem+json body");
    assert_eq!(problem["error"], error, "{body}");
}
