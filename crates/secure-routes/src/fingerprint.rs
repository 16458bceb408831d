//! Request fingerprints: a JA4H-style summary of *how* a client wrote its request, for the
//! audit trail (every event the pipeline writes carries one) and as an optional rate-limit
//! key part ([`KeyPart::Fingerprint`](crate::rate_limit::KeyPart::Fingerprint)).
//!
//! Why: an address says where a request came from, not what sent it. Client software has a
//! recognisable header shape (which headers, in which order, which cookies), so a script
//! rotating addresses keeps its fingerprint, and two clients behind one NAT usually differ.
//!
//! # Format
//!
//! `ge11cn08enus_a1b2c3d4e5f6_000000000000`: 38 characters from `[a-z0-9_]`, in three parts
//! (after FoxIO's JA4H, which this follows except where noted):
//!
//! 1. twelve characters:
//!    * the method's first two characters, lower-cased (`ge`, `po`, `pu`, `de`, `pa`,
//!      `he`, `op`; any other byte is written `0`);
//!    * the version: `10`, `11`, `20`, `30` (`09` for HTTP/0.9, `00` if unknown);
//!    * `c` if the request has a `Cookie` header, else `n`;
//!    * `r` if it has a `Referer`, else `n`;
//!    * the number of header lines, not counting `Cookie` and `Referer`, two digits, capped
//!      at 99;
//!    * the first language of `Accept-Language`, lower-cased, `-` removed, its first four
//!      letters or digits, padded with `0` (`en-US,en;q=0.9` is `enus`, none is `0000`).
//! 2. twelve hex digits: the first 48 bits of a hash of the header names in the order
//!    received, without `Cookie` and `Referer`, each distinct name once: XXH3-64 of each name
//!    seeded with the result for the names before it (0 before the first; no names is 0).
//! 3. twelve hex digits: the same for the cookie names (the text before each `=`), combined
//!    without order: the wrapping sum of each name's XXH3-64 (unseeded), so the order of the
//!    jar does not matter (as JA4H's sorting); all zeros without cookies.
//!
//! Where it differs from JA4H: header names are lower-case (the `http` crate lower-cases them,
//! so the case a client used is not seen), a repeated header name is listed once, where its
//! first line was (the `HeaderMap` groups repeats), and the hashes are XXH3 rather than
//! SHA-256 of the joined list (below); JA4H's fourth part (cookie names with values) is left
//! out, since values identify a session, not a client program. So these fingerprints are not
//! comparable with JA4H ones.
//!
//! # Why XXH3 and not SHA-256
//!
//! The fingerprint is computed for every request (the headers have moved into the handler by
//! the time a refusal from inside the stack is audited), so it must cost a few tens of
//! nanoseconds. XXH3-64 is a fixed, published function (the same output on every machine,
//! version and restart, as a key part shared by instances must be). Each name is hashed in
//! place (no copy into a joined list) and the cookie names are summed rather than sorted, for
//! the same reason. It is **not** a cryptographic commitment: anyone can produce a chosen
//! fingerprint, most simply by sending a browser's headers in a browser's order. Nothing here
//! relies on it being hard to forge; see DESIGN.md, "Request fingerprint", for what it can and
//! cannot tell apart.
//!
//! ```
//! use http::Request;
//! use secure_routes::fingerprint::Fingerprint;
//!
//! let req = Request::get("/api/x")
//!     .header("host", "example.com")
//!     .header("user-agent", "curl/8.5.0")
//!     .header("accept", "*/*")
//!     .body(())
//!     .unwrap();
//! let fp = Fingerprint::of(req.method(), req.version(), req.headers());
//! assert_eq!(&fp.as_str()[..12], "ge11nn030000");
//! assert!(fp.as_str().ends_with("_000000000000")); // no cookies
//! assert_eq!(fp.as_str().len(), 38);
//! ```

use std::fmt;

use http::{HeaderMap, Method, Version, header};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Characters in a fingerprint.
pub const LEN: usize = 38;

/// A request's fingerprint (see the [module docs](self) for the format). `Copy`, 38 bytes.
///
/// ```
/// use http::Request;
/// use secure_routes::fingerprint::Fingerprint;
///
/// let fp = |req: Request<()>| Fingerprint::of(req.method(), req.version(), req.headers());
/// let a = fp(Request::post("/").header("accept", "*/*").header("host", "a").body(()).unwrap());
/// let b = fp(Request::post("/").header("host", "a").header("accept", "*/*").body(()).unwrap());
/// assert_ne!(a, b); // the order of the headers is part of the shape
/// assert_eq!(a.to_string(), a.as_str());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; LEN]);

impl Fingerprint {
    /// The fingerprint of a request with this method, version and headers. Never panics,
    /// whatever the headers hold (non-UTF-8 values, thousands of lines).
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue, Method, Version, header};
    /// use secure_routes::fingerprint::Fingerprint;
    ///
    /// let mut h = HeaderMap::new();
    /// h.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de-CH, de;q=0.8"));
    /// h.insert(header::COOKIE, HeaderValue::from_static("b=2; a=1"));
    /// let fp = Fingerprint::of(&Method::DELETE, Version::HTTP_2, &h);
    /// assert_eq!(&fp.as_str()[..12], "de20cn01dech");
    /// ```
    pub fn of(method: &Method, version: Version, headers: &HeaderMap) -> Self {
        let mut out = [b'0'; LEN];
        let m = method.as_str().as_bytes();
        for (o, b) in out[..2].iter_mut().zip(m) {
            *o = if b.is_ascii_alphanumeric() {
                b.to_ascii_lowercase()
            } else {
                b'0'
            };
        }
        let v: &[u8; 2] = match version {
            Version::HTTP_09 => b"09",
            Version::HTTP_10 => b"10",
            Version::HTTP_11 => b"11",
            Version::HTTP_2 => b"20",
            Version::HTTP_3 => b"30",
            _ => b"00",
        };
        out[2..4].copy_from_slice(v);

        let (mut cookie, mut referer) = (false, false);
        let mut names = 0u64;
        // Each distinct name once (`keys`: no walk through repeated values).
        for name in headers.keys() {
            // Standard names compare as an enum tag, not as text.
            if name == header::COOKIE {
                cookie = true;
            } else if name == header::REFERER {
                referer = true;
            } else {
                names = xxh3_64_with_seed(name.as_str().as_bytes(), names);
            }
        }
        out[4] = if cookie { b'c' } else { b'n' };
        out[5] = if referer { b'r' } else { b'n' };
        // Every line counts (`len` counts values), but Cookie's and Referer's.
        let mut count = headers.len();
        if referer {
            count = count.saturating_sub(headers.get_all(header::REFERER).iter().count());
        }
        let mut cookies = 0u64;
        if cookie {
            let (lines, sum) = cookie_names(headers);
            count = count.saturating_sub(lines);
            cookies = sum;
        }
        let count = count.min(99) as u8;
        out[6] = b'0' + count / 10;
        out[7] = b'0' + count % 10;
        if let Some(lang) = headers.get(header::ACCEPT_LANGUAGE) {
            language(lang.as_bytes(), &mut out[8..12]);
        }
        out[12] = b'_';
        write_hex48(names, &mut out[13..25]);
        out[25] = b'_';
        write_hex48(cookies, &mut out[26..38]);
        Fingerprint(out)
    }

    /// The fingerprint as text (38 characters from `[a-z0-9_]`).
    ///
    /// ```
    /// use http::{HeaderMap, Method, Version};
    /// use secure_routes::fingerprint::Fingerprint;
    /// let fp = Fingerprint::of(&Method::GET, Version::HTTP_11, &HeaderMap::new());
    /// assert_eq!(fp.as_str(), "ge11nn000000_000000000000_000000000000");
    /// ```
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the array, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The fingerprint's bytes (its text), for key derivation.
    pub(crate) fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.as_str())
    }
}

/// The first language tag of an `Accept-Language` value into `out` (already `0`-filled):
/// leading blanks skipped, `-` removed, letters and digits lower-cased, ended by anything
/// else (`,`, `;`, a blank, `*`, a non-ASCII byte).
fn language(value: &[u8], out: &mut [u8]) {
    let mut n = 0;
    for &b in value.iter().skip_while(|b| matches!(b, b' ' | b'\t')) {
        if n == out.len() {
            break;
        }
        if b == b'-' {
            continue;
        }
        if !b.is_ascii_alphanumeric() {
            break;
        }
        out[n] = b.to_ascii_lowercase();
        n += 1;
    }
}

/// The number of `Cookie` lines and the wrapping sum of the XXH3-64 of every cookie name
/// across them (HTTP/2 splits cookies into several lines, RFC 9113 §8.2.3): a sum, so the
/// order of the jar does not matter and nothing is sorted or stored.
fn cookie_names(headers: &HeaderMap) -> (usize, u64) {
    let (mut lines, mut sum) = (0usize, 0u64);
    for line in headers.get_all(header::COOKIE) {
        lines += 1;
        for pair in line.as_bytes().split(|&b| b == b';') {
            let name = pair
                .split(|&b| b == b'=')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if !name.is_empty() {
                sum = sum.wrapping_add(xxh3_64(name));
            }
        }
    }
    (lines, sum)
}

/// The first 48 bits of `h` as 12 lower-case hex digits.
fn write_hex48(h: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().take(12).enumerate() {
        *o = HEX[((h >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue, Request};

    use super::*;

    fn fp(method: Method, headers: &[(&str, &[u8])]) -> Fingerprint {
        let mut h = HeaderMap::new();
        for (name, value) in headers {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        Fingerprint::of(&method, Version::HTTP_11, &h)
    }

    /// A Chrome navigation, as Chrome 131 sends it over HTTP/1.1.
    fn chrome(accept_language: &str, cookie: &str) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("host", b"example.com".to_vec()),
            ("connection", b"keep-alive".to_vec()),
            ("sec-ch-ua", b"\"Chromium\";v=\"131\"".to_vec()),
            ("sec-ch-ua-mobile", b"?0".to_vec()),
            ("sec-ch-ua-platform", b"\"Linux\"".to_vec()),
            ("upgrade-insecure-requests", b"1".to_vec()),
            (
                "user-agent",
                b"Mozilla/5.0 (X11; Linux x86_64) Chrome/131".to_vec(),
            ),
            ("accept", b"text/html,*/*;q=0.8".to_vec()),
            ("sec-fetch-site", b"none".to_vec()),
            ("sec-fetch-mode", b"navigate".to_vec()),
            ("accept-encoding", b"gzip, deflate, br, zstd".to_vec()),
            ("accept-language", accept_language.as_bytes().to_vec()),
            ("cookie", cookie.as_bytes().to_vec()),
        ]
    }

    fn of(headers: &[(&'static str, Vec<u8>)]) -> Fingerprint {
        let h: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, &v[..])).collect();
        fp(Method::GET, &h)
    }

    /// The header names' part, computed the way the docs say: XXH3-64 of each name seeded
    /// with the result before it, the first 12 hex digits.
    fn reference(names: &[&str]) -> String {
        let h = names
            .iter()
            .fold(0u64, |h, n| xxh3_64_with_seed(n.as_bytes(), h));
        format!("{h:016x}")[..12].to_owned()
    }

    /// The cookie names' part: the wrapping sum of each name's XXH3-64.
    fn cookie_reference(names: &[&str]) -> String {
        let h = names
            .iter()
            .fold(0u64, |h, n| h.wrapping_add(xxh3_64(n.as_bytes())));
        format!("{h:016x}")[..12].to_owned()
    }

    #[test]
    fn the_same_browser_request_twice_has_the_same_fingerprint() {
        let a = of(&chrome("en-US,en;q=0.9", "sid=1; theme=dark"));
        let b = of(&chrome("en-US,en;q=0.9", "sid=1; theme=dark"));
        assert_eq!(a, b);
        assert_eq!(&a.as_str()[..12], "ge11cn12enus");
        let names = [
            "host",
            "connection",
            "sec-ch-ua",
            "sec-ch-ua-mobile",
            "sec-ch-ua-platform",
            "upgrade-insecure-requests",
            "user-agent",
            "accept",
            "sec-fetch-site",
            "sec-fetch-mode",
            "accept-encoding",
            "accept-language",
        ];
        assert_eq!(&a.as_str()[13..25], reference(&names));
        assert_eq!(&a.as_str()[26..], cookie_reference(&["theme", "sid"]));
    }

    #[test]
    fn header_order_changes_it() {
        let a = chrome("en-US", "");
        let mut b = a.clone();
        b.swap(0, 6); // user-agent before host
        assert_ne!(of(&a), of(&b));
        // Only the names' hash changes: same count, same flags.
        assert_eq!(&of(&a).as_str()[..12], &of(&b).as_str()[..12]);
    }

    #[test]
    fn header_values_do_not_change_it_except_the_language_prefix() {
        let a = chrome("en-US,en;q=0.9", "sid=1");
        let mut b = a.clone();
        b[0].1 = b"other.example".to_vec();
        b[6].1 = b"Mozilla/5.0 something else entirely".to_vec();
        b[11].1 = b"en-US;q=1, fr".to_vec(); // same first four: enus
        assert_eq!(of(&a), of(&b));
        let mut c = a.clone();
        c[11].1 = b"fr-FR,fr".to_vec();
        assert_ne!(of(&a), of(&c));
        assert_eq!(&of(&c).as_str()[8..12], "frfr");
    }

    #[test]
    fn cookie_values_do_not_change_it_but_names_do_in_any_order() {
        let a = of(&chrome("en", "sid=1; theme=dark"));
        assert_eq!(a, of(&chrome("en", "sid=999999; theme=light")));
        // Sorted: the order in the header does not matter.
        assert_eq!(a, of(&chrome("en", "theme=dark;sid=1")));
        assert_ne!(a, of(&chrome("en", "sid=1; lang=de")));
        assert_ne!(a, of(&chrome("en", "sid=1")));
        // Cookies split over two lines (HTTP/2) are one jar.
        let mut two = chrome("en", "theme=dark");
        two.push(("cookie", b"sid=1".to_vec()));
        assert_eq!(&of(&two).as_str()[26..], &a.as_str()[26..]);
    }

    #[test]
    fn cookie_and_referer_set_flags_and_are_not_counted() {
        let bare = fp(Method::POST, &[("accept", b"*/*")]);
        assert_eq!(&bare.as_str()[..12], "po11nn010000");
        assert_eq!(&bare.as_str()[26..], "000000000000");
        let both = fp(
            Method::POST,
            &[
                ("referer", b"https://a/"),
                ("accept", b"*/*"),
                ("cookie", b"x=1"),
            ],
        );
        assert_eq!(&both.as_str()[..12], "po11cr010000");
        // The names' hash skips them too.
        assert_eq!(&both.as_str()[13..25], &bare.as_str()[13..25]);
        // A Cookie header without any name: flagged, but no names to hash.
        let empty = fp(Method::GET, &[("cookie", b" ; ;")]);
        assert_eq!(&empty.as_str()[4..5], "c");
        assert_eq!(&empty.as_str()[26..], "000000000000");
    }

    #[test]
    fn method_version_and_language_edges() {
        let req = Request::builder()
            .method(Method::from_bytes(b"M-SEARCH").unwrap())
            .version(Version::HTTP_2)
            .header("accept-language", " zh-Hans-CN")
            .body(())
            .unwrap();
        let f = Fingerprint::of(req.method(), req.version(), req.headers());
        assert_eq!(&f.as_str()[..12], "m020nn01zhha");
        let one_letter = Method::from_bytes(b"X").unwrap();
        let f = Fingerprint::of(&one_letter, Version::HTTP_10, &HeaderMap::new());
        assert_eq!(&f.as_str()[..4], "x010");
        for (value, want) in [
            (&b"*"[..], "0000"),
            (b"en", "en00"),
            (b"-", "0000"),
            (b"\xff\xfe", "0000"),
            (b"de\xffxx", "de00"),
        ] {
            let f = fp(Method::GET, &[("accept-language", value)]);
            assert_eq!(&f.as_str()[8..12], want, "{value:?}");
        }
    }

    #[test]
    fn hostile_headers_do_not_panic_and_stay_in_format() {
        // Thousands of header lines, non-UTF-8 values, thousands of cookies.
        let mut h = HeaderMap::new();
        let mut names = Vec::new();
        for i in 0..3000 {
            let name = format!("x-h{i}");
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(b"\xff\x80 value").unwrap(),
            );
            names.push(name);
        }
        let jar: Vec<String> = (0..2000).rev().map(|i| format!("c{i:04}=v")).collect();
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(jar.join("; ").as_bytes()).unwrap(),
        );
        let f = Fingerprint::of(&Method::GET, Version::HTTP_11, &h);
        let s = f.as_str();
        assert_eq!(s.len(), LEN);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert_eq!(&s[..12], "ge11cn990000");
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(&s[13..25], reference(&names));
        let jar: Vec<String> = (0..2000).map(|i| format!("c{i:04}")).collect();
        let jar: Vec<&str> = jar.iter().map(String::as_str).collect();
        assert_eq!(&s[26..], cookie_reference(&jar));
    }

    #[test]
    fn repeated_lines_count_but_their_name_is_listed_once() {
        let once = fp(Method::GET, &[("accept", b"a"), ("host", b"h")]);
        let twice = fp(
            Method::GET,
            &[
                ("accept", b"a"),
                ("host", b"h"),
                ("accept", b"b"),
                ("referer", b"r"),
                ("referer", b"s"),
            ],
        );
        assert_eq!(&once.as_str()[..12], "ge11nn020000");
        assert_eq!(&twice.as_str()[..12], "ge11nr030000");
        assert_eq!(&once.as_str()[13..25], &twice.as_str()[13..25]);
        assert_eq!(&once.as_str()[13..25], reference(&["accept", "host"]));
    }
}
