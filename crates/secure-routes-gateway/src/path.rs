//! One normalized request path, the only one the gateway looks at and the one it forwards.
//!
//! A reverse proxy that matches routes on one spelling of a path and forwards another lets a
//! client pick a route the proxy thinks is public while the upstream serves a protected one:
//! `/public/../admin`, `/admin%2Fusers`, `/%61dmin`, `//admin` and `/admin\users` are the usual
//! spellings (CVE-2025-47910 in Go's `CrossOriginProtection`, and the long line of proxy
//! path-confusion bugs before it). [`normalize`] makes one path out of all of them:
//!
//! 1. percent-encoded unreserved characters (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`) are decoded,
//!    and every other escape is kept with uppercase hex (§6.2.2.1);
//! 2. an encoded `/` or `\` (`%2F`, `%5C`), a raw `\`, a `;` (raw or `%3B`: servlet path
//!    parameters), an encoded or raw control character, a `?` or `#`, a byte outside visible
//!    ASCII, an escape no UTF-8 text contains (`%C0`, `%C1`, `%F5`-`%FF`: overlong encodings)
//!    or a broken escape is an error: no upstream agrees with every other about what those
//!    mean;
//! 3. empty segments (`//`) are dropped and dot segments resolved (RFC 3986 §5.2.4); a `..`
//!    that would climb above the root is an error rather than being clamped, because an
//!    upstream that clamps differently would see another path.
//!
//! The result is idempotent (`normalize(normalize(p)) == normalize(p)`) and, decoded once
//! more by an upstream, has no separator, backslash or dot segment the gateway did not see.
//! The fuzz target `path_normalize` checks both.
//!
//! ```
//! use secure_routes_gateway::path::{PathError, normalize};
//!
//! assert_eq!(normalize("/api//public/./../%75sers/").unwrap(), "/api/users/");
//! assert_eq!(normalize("/files/a%2fb"), Err(PathError::EncodedSeparator));
//! assert_eq!(normalize("/../etc/passwd"), Err(PathError::AboveRoot));
//! assert_eq!(normalize("/q/%e2%82%ac").unwrap(), "/q/%E2%82%AC");
//! ```

use std::fmt::Write as _;

/// Why a request path was refused (the gateway answers 400).
///
/// ```
/// use secure_routes_gateway::path::{PathError, normalize};
/// assert_eq!(normalize("api").unwrap_err(), PathError::NotAbsolute);
/// assert_eq!(PathError::Backslash.to_string(), "a backslash in the path");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("a broken percent-escape")]
    BadEscape,
    /// `%2F` or `%5C`: an encoded `/` or `\`, which upstreams disagree about.
    #[error("an encoded '/' or '\\' in the path")]
    EncodedSeparator,
    /// A raw `\`, which some servers (IIS, some Node routers) read as `/`.
    #[error("a backslash in the path")]
    Backslash,
    /// A control character, raw or encoded (`%00` truncates paths in C-based upstreams).
    #[error("a control character in the path")]
    ControlCharacter,
    /// `?`, `#`, a space or a byte outside visible ASCII: not part of a request path.
    #[error("a character that does not belong in a path")]
    InvalidCharacter,
    /// A `..` segment that would climb above `/`.
    #[error("a '..' segment above the root")]
    AboveRoot,
    /// A `;`, raw or encoded: servlet containers (Tomcat, Jetty, Spring) cut path parameters
    /// out of a segment, so `/public/..;/admin` is `/admin` to them.
    #[error("a ';' in the path")]
    Semicolon,
}

/// The normalized form of `raw`, a request path without its query (see the module docs).
///
/// ```
/// use secure_routes_gateway::path::normalize;
/// assert_eq!(normalize("/").unwrap(), "/");
/// assert_eq!(normalize("/a/b/..").unwrap(), "/a/");
/// assert_eq!(normalize("/a/%2e%2E/b").unwrap(), "/b");
/// ```
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let decoded = decode_unreserved(raw)?;
    resolve_segments(&decoded)
}

/// Step 1 and 2: decodes escaped unreserved characters, upper-cases the other escapes and
/// refuses what must not be forwarded.
fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| h << 4 | l),
                    _ => None,
                }
                .ok_or(PathError::BadEscape)?;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    b';' => return Err(PathError::Semicolon),
                    // Never in UTF-8: 0xC0/0xC1 only start overlong encodings (`%C0%AF` is a
                    // `/` to a lenient decoder), 0xF5.. nothing at all.
                    0xc0 | 0xc1 | 0xf5..=0xff => return Err(PathError::InvalidCharacter),
                    v if v < 0x20 || v == 0x7f => return Err(PathError::ControlCharacter),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    v => {
                        let _ = write!(out, "%{v:02X}");
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'?' | b'#' => return Err(PathError::InvalidCharacter),
            b';' => return Err(PathError::Semicolon),
            0x21..=0x7e => {
                out.push(char::from(b));
                i += 1;
            }
            // A space or a byte outside ASCII (never in a valid request target).
            _ => return Err(PathError::InvalidCharacter),
        }
    }
    Ok(out)
}

/// Step 3: drops empty segments and resolves dot segments (RFC 3986 §5.2.4), refusing a
/// climb above the root. A trailing `/`, `/.` or `/..` leaves a trailing slash, as in the RFC.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // `path` starts with '/': the first piece is empty.
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spellings_of_one_path_become_that_path() {
        for raw in [
            "/admin/users",
            "//admin//users",
            "/admin/./users",
            "/public/../admin/users",
            "/%61dmin/users",
            "/admin/%75%73%65%72%73",
            "/x/y/../../admin/users",
            "/admin/users/.",
        ] {
            let n = normalize(raw).unwrap();
            assert_eq!(n.trim_end_matches('/'), "/admin/users", "{raw}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        // RFC 3986 §5.2.4's examples, as paths from the root.
        assert_eq!(normalize("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(normalize("/mid/content=5/../6").unwrap(), "/mid/6");
        assert_eq!(normalize("/a/b/..").unwrap(), "/a/");
        assert_eq!(normalize("/a/..").unwrap(), "/");
        assert_eq!(normalize("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(normalize("/..a/b..").unwrap(), "/..a/b..");
        assert_eq!(normalize("/a/.../b").unwrap(), "/a/.../b");
    }

    #[test]
    fn what_upstreams_disagree_about_is_refused() {
        use PathError::*;
        for (raw, error) in [
            ("", NotAbsolute),
            ("admin", NotAbsolute),
            ("*", NotAbsolute),
            ("/a%2Fb", EncodedSeparator),
            ("/a%2fb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a\\b", Backslash),
            ("/a%00", ControlCharacter),
            ("/a%0d%0aX: y", ControlCharacter),
            ("/a\nb", ControlCharacter),
            ("/a%7F", ControlCharacter),
            ("/a%", BadEscape),
            ("/a%4", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%%41", BadEscape),
            ("/a b", InvalidCharacter),
            ("/a?b", InvalidCharacter),
            ("/a#b", InvalidCharacter),
            ("/caf\u{e9}", InvalidCharacter),
            ("/public/..;/admin", Semicolon),
            ("/admin;x/users", Semicolon),
            ("/admin%3bx", Semicolon),
            ("/%c0%af", InvalidCharacter),
            ("/%C1%9C", InvalidCharacter),
            ("/%ff", InvalidCharacter),
            ("/..", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/%2e%2e/etc", AboveRoot),
            ("/.%2E/etc", AboveRoot),
        ] {
            assert_eq!(normalize(raw), Err(error), "{raw:?}");
        }
    }

    #[test]
    fn other_escapes_are_kept_with_uppercase_hex() {
        assert_eq!(normalize("/a%20b").unwrap(), "/a%20b");
        assert_eq!(normalize("/%e2%82%ac").unwrap(), "/%E2%82%AC");
        // `%25` is a literal percent sign: decoding it would create a new escape.
        assert_eq!(normalize("/a%252e%252e").unwrap(), "/a%252e%252e");
        assert_eq!(normalize("/%7e%41").unwrap(), "/~A");
    }

    /// What an upstream that decodes every escape once sees of a normalized path.
    fn decoded_once(path: &str) -> Vec<u8> {
        let b = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(hex(b[i + 1]).unwrap() << 4 | hex(b[i + 2]).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn normalizing_is_idempotent_and_hides_nothing_from_the_upstream(
            raw in "(/|//|/\\.|/\\.\\.|%2[eEfF]|%5[cC]|%41|%25|%e2|[a-c.~%/\\\\?])*"
        ) {
            if let Ok(n) = normalize(&raw) {
                prop_assert_eq!(normalize(&n), Ok(n.clone()));
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"));
                let upstream = decoded_once(&n);
                prop_assert!(!upstream.contains(&b'\\'));
                // The upstream sees the same segments, and no dot segment among them.
                let segments: Vec<&[u8]> = upstream.split(|&c| c == b'/').collect();
                prop_assert_eq!(segments.len(), n.split('/').count());
                prop_assert!(segments.iter().all(|s| *s != b"." && *s != b".."));
            }
        }
    }
}
