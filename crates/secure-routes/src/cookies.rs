//! Reading one cookie from a request's `Cookie` header lines, shared by the CSRF check
//! ([`guard::csrf`](crate::guard::csrf)) and the authenticators' session cookies (`auth`).
//!
//! Why a module of its own: both sides must read cookies the same way (a planted duplicate is
//! a conflict for each of them), and neither should import the other to do it. Parsing is
//! `cookie::Cookie::split_parse`; what this adds is the lookup across several header lines and
//! the refusal to pick one of two different values.

use std::borrow::Cow;

use http::HeaderMap;

/// What the `Cookie` header(s) say about one cookie name.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CookieLookup {
    /// Not present.
    Absent,
    /// Present (possibly repeated, always with this value).
    One(String),
    /// Present more than once with different values: another cookie with the same name was
    /// planted for a different path or domain (cookie tossing). Refuse to pick one.
    Conflicting,
}

/// Looks `name` up across every `Cookie` header line (HTTP/2 may split cookies into several
/// lines, RFC 9113 §8.2.3). Values are taken verbatim (no percent-decoding, quotes kept).
/// Non-UTF-8 bytes are replaced rather than the line skipped, so a garbled line still counts
/// towards a conflict.
pub(crate) fn single_cookie(headers: &HeaderMap, name: &str) -> CookieLookup {
    let mut found: Option<String> = None;
    for line in headers.get_all(http::header::COOKIE) {
        let text: Cow<'_, str> = String::from_utf8_lossy(line.as_bytes());
        for c in cookie::Cookie::split_parse(text).flatten() {
            if c.name() != name {
                continue;
            }
            match &found {
                None => found = Some(c.value().to_owned()),
                Some(v) if v == c.value() => {}
                Some(_) => return CookieLookup::Conflicting,
            }
        }
    }
    found.map_or(CookieLookup::Absent, CookieLookup::One)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(http::header::COOKIE, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn lookup() {
        assert_eq!(single_cookie(&HeaderMap::new(), "a"), CookieLookup::Absent);
        let h = headers(&["a=1; b=2; a=1"]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::One("1".into()));
        let h = headers(&["a=1; b=2; a=3"]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::Conflicting);
        let h = headers(&["a=\"1\""]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::One("\"1\"".into()));
        let h = headers(&[";;=;a"]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::Absent);
        // Split over several lines (HTTP/2): one conflict is a conflict.
        let h = headers(&["a=1", "b=2; a=3"]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::Conflicting);
    }
}
