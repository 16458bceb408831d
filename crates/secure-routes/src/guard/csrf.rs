//! Signed double-submit CSRF tokens (the OWASP "signed double-submit cookie" pattern).
//!
//! A token is `base64url(nonce ‖ HMAC-SHA256(secret, "secure-routes/csrf/v1" ‖ len(binding) ‖
//! binding ‖ nonce))` with a fresh 16-byte random nonce: 64 characters. The binding is the
//! authenticated subject (or `""` for anonymous callers), so a token minted for one session is
//! worthless in another.
//!
//! A state-changing request must carry the token twice: in the CSRF cookie and in the
//! `X-CSRF-Token` header. A cross-site page can make the browser send the cookie but cannot
//! read it, so it cannot copy it into the header. Why the signature and binding matter: the
//! original compared an unsigned random cookie with the header using `!==`. An attacker who can
//! set cookies for the site (a sibling subdomain, a plain-HTTP response: "cookie tossing") could
//! plant a value of their choice and send the same value in the header. A signed token cannot
//! be forged without the secret, and binding it to the subject stops the attacker from planting
//! a genuine token minted for their own session. All comparisons are constant time.
//!
//! The cookie is deliberately **not** `HttpOnly`: the page's script must read it to fill the
//! header (the original set `HttpOnly` and then read `document.cookie`, which can never work).
//! That is safe because the token is only half of the proof; it grants nothing on its own.
//!
//! ```
//! use http::HeaderMap;
//! use secure_routes::guard::csrf::{CsrfTokens, COOKIE_NAME, HEADER_NAME};
//!
//! let tokens = CsrfTokens::new(b"a-csrf-secret-of-at-least-32-bytes!").unwrap();
//! let t = tokens.issue("alice");
//! assert!(tokens.verify(&t, "alice"));
//! assert!(!tokens.verify(&t, "mallory"));
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("cookie", format!("{COOKIE_NAME}={t}").parse().unwrap());
//! assert_eq!(tokens.check_request(&headers, COOKIE_NAME, "alice"), Err("missing_header"));
//! headers.insert(HEADER_NAME, t.parse().unwrap());
//! assert_eq!(tokens.check_request(&headers, COOKIE_NAME, "alice"), Ok(()));
//! ```

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::error::ConfigError;

/// Cookie name over plain HTTP.
pub const COOKIE_NAME: &str = "csrf-token";
/// Cookie name over HTTPS. The `__Host-` prefix makes browsers refuse the cookie unless it is
/// `Secure`, has `Path=/` and no `Domain`, so a sibling subdomain cannot set or shadow it.
pub const SECURE_COOKIE_NAME: &str = "__Host-csrf-token";
/// Request header carrying the token.
pub const HEADER_NAME: &str = "x-csrf-token";
/// Minimum secret length in bytes (256 bits, the HMAC-SHA256 output size).
pub const MIN_SECRET_LEN: usize = 32;
/// Length of a token in characters.
pub const TOKEN_LEN: usize = 64;
/// `Max-Age` of the cookie, in seconds.
pub const COOKIE_MAX_AGE_SECS: u64 = 86_400;

const NONCE_LEN: usize = 16;
const TAG_LEN: usize = 32;
const RAW_LEN: usize = NONCE_LEN + TAG_LEN;
/// Domain separation: the same secret may key other MACs (the rate-limit key derivation).
const DOMAIN: &[u8] = b"secure-routes/csrf/v1";

/// Issues and verifies signed double-submit tokens.
///
/// ```
/// use secure_routes::guard::csrf::CsrfTokens;
/// assert!(CsrfTokens::new(b"too short").is_err());
/// let t = CsrfTokens::new(&[7u8; 32]).unwrap();
/// assert_eq!(t.issue("").len(), 64);
/// ```
#[derive(Clone)]
pub struct CsrfTokens {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for CsrfTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfTokens(..)")
    }
}

impl CsrfTokens {
    /// Keyed with `secret`, which must be at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(format!(
                "the CSRF secret must be at least {MIN_SECRET_LEN} bytes (got {})",
                secret.len()
            )));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .map_err(|_| ConfigError::new("the CSRF secret was refused by HMAC"))?;
        Ok(Self { mac })
    }

    fn tag(&self, binding: &str, nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        // Length prefix: no two (binding, nonce) pairs feed the MAC the same bytes.
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding.as_bytes());
        mac.update(nonce);
        mac
    }

    /// A fresh token bound to `binding` (the subject, or `""` for anonymous callers).
    ///
    /// ```
    /// # let t = secure_routes::guard::csrf::CsrfTokens::new(&[7u8; 32]).unwrap();
    /// assert_ne!(t.issue("alice"), t.issue("alice")); // a fresh nonce each time
    /// ```
    pub fn issue(&self, binding: &str) -> String {
        let mut raw = [0u8; RAW_LEN];
        let (nonce, tag) = raw.split_at_mut(NONCE_LEN);
        // ThreadRng is a CSPRNG seeded from the OS; the nonce makes every token unique.
        rand::rng().fill_bytes(nonce);
        tag.copy_from_slice(&self.tag(binding, nonce).finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `token` was issued by us for `binding`. Any other string (wrong length, not
    /// base64url, another binding, a flipped bit) is `false`; nothing panics.
    pub fn verify(&self, token: &str, binding: &str) -> bool {
        // Bound the work before decoding: only the exact length can be ours.
        if token.len() != TOKEN_LEN {
            return false;
        }
        let mut raw = [0u8; RAW_LEN];
        // 64 characters carry exactly 384 bits, so the decoding is canonical: no other
        // spelling of the same bytes exists.
        match URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return false,
        }
        let (nonce, tag) = raw.split_at(NONCE_LEN);
        // Constant-time comparison of the tag (`verify_slice` uses `subtle`).
        self.tag(binding, nonce).verify_slice(tag).is_ok()
    }

    /// Checks a state-changing request: the cookie `cookie_name` and the [`HEADER_NAME`] header
    /// must both be present, equal (compared in constant time), and hold a token we issued for
    /// `binding`.
    ///
    /// The error is a short reason for the audit log: `missing_cookie`, `missing_header`,
    /// `mismatch` (the two differ, the header is repeated, or the cookie appears twice with
    /// different values, the mark of cookie tossing) or `bad_signature`.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use secure_routes::guard::csrf::CsrfTokens;
    /// let t = CsrfTokens::new(&[7u8; 32]).unwrap();
    /// let mine = t.issue("alice");
    /// let mut h = HeaderMap::new();
    /// h.insert("cookie", format!("csrf-token={mine}; csrf-token={}", t.issue("alice")).parse().unwrap());
    /// h.insert("x-csrf-token", mine.parse().unwrap());
    /// assert_eq!(t.check_request(&h, "csrf-token", "alice"), Err("mismatch"));
    /// ```
    pub fn check_request(
        &self,
        headers: &HeaderMap,
        cookie_name: &str,
        binding: &str,
    ) -> Result<(), &'static str> {
        let cookie = match single_cookie(headers, cookie_name) {
            CookieLookup::Absent => return Err("missing_cookie"),
            CookieLookup::Conflicting => return Err("mismatch"),
            CookieLookup::One(v) => v,
        };
        let mut lines = headers.get_all(HEADER_NAME).iter();
        let header = match (lines.next(), lines.next()) {
            (None, _) => return Err("missing_header"),
            // Two header lines: which one did the page write? Refuse to guess.
            (Some(_), Some(_)) => return Err("mismatch"),
            (Some(v), None) => v.as_bytes().trim_ascii(),
        };
        if header.is_empty() {
            return Err("missing_header");
        }
        // Constant time: the cookie value is the secret half of the proof.
        if !bool::from(header.ct_eq(cookie.as_bytes())) {
            return Err("mismatch");
        }
        if !self.verify(&cookie, binding) {
            return Err("bad_signature");
        }
        Ok(())
    }
}

/// The `Set-Cookie` value carrying `token` (a token from [`CsrfTokens::issue`]).
///
/// `SameSite=Strict`, `Path=/`, `Max-Age=86400`, and deliberately not `HttpOnly` (script must
/// read it to send the header). With `secure` the name is [`SECURE_COOKIE_NAME`] and the cookie
/// is `Secure`, as the `__Host-` prefix requires (and has no `Domain`).
///
/// ```
/// use secure_routes::guard::csrf::cookie_header_value;
/// let c = cookie_header_value("tok", true);
/// assert!(c.starts_with("__Host-csrf-token=tok;"));
/// assert!(c.contains("; Secure") && !c.contains("HttpOnly") && !c.contains("Domain"));
/// assert!(cookie_header_value("tok", false).starts_with("csrf-token=tok;"));
/// ```
pub fn cookie_header_value(token: &str, secure: bool) -> String {
    if secure {
        format!(
            "{SECURE_COOKIE_NAME}={token}; Path=/; Secure; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}"
        )
    } else {
        format!("{COOKIE_NAME}={token}; Path=/; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_SECS}")
    }
}

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

    fn tokens() -> CsrfTokens {
        CsrfTokens::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(CsrfTokens::new(&[0u8; 31]).is_err());
        assert!(CsrfTokens::new(&[]).is_err());
        assert!(CsrfTokens::new(&[0u8; 32]).is_ok());
    }

    #[test]
    fn tokens_are_bound_and_keyed() {
        let t = tokens();
        let other = CsrfTokens::new(b"another-secret-another-secret-!!").unwrap();
        let a = t.issue("alice");
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(t.verify(&a, "alice"));
        assert!(!t.verify(&a, "alice "));
        assert!(!t.verify(&a, ""));
        assert!(!other.verify(&a, "alice"));
        let anon = t.issue("");
        assert!(t.verify(&anon, ""));
        assert!(!t.verify(&anon, "alice"));
    }

    #[test]
    fn garbage_is_rejected() {
        let t = tokens();
        let good = t.issue("x");
        for bad in [
            String::new(),
            "a".repeat(63),
            "a".repeat(64),
            "a".repeat(65),
            format!("{good}="),
            good[..63].to_owned(),
            good.replace(|_: char| true, "é").chars().take(64).collect(),
            format!("{}+", &good[..63]),
        ] {
            assert!(!t.verify(&bad, "x"), "{bad:?}");
        }
    }

    /// Request headers, binding, expected outcome.
    type Case = (
        Vec<(&'static str, String)>,
        &'static str,
        Result<(), &'static str>,
    );

    #[test]
    fn check_request_table() {
        let t = tokens();
        let tok = t.issue("alice");
        let other = t.issue("alice");
        let anon = t.issue("");
        let c = |v: &str| format!("{COOKIE_NAME}={v}");
        let cases: Vec<Case> = vec![
            (
                vec![("cookie", c(&tok)), (HEADER_NAME, tok.clone())],
                "alice",
                Ok(()),
            ),
            (
                vec![(HEADER_NAME, tok.clone())],
                "alice",
                Err("missing_cookie"),
            ),
            (vec![("cookie", c(&tok))], "alice", Err("missing_header")),
            (
                vec![("cookie", c(&tok)), (HEADER_NAME, " ".into())],
                "alice",
                Err("missing_header"),
            ),
            (
                vec![("cookie", c(&tok)), (HEADER_NAME, other.clone())],
                "alice",
                Err("mismatch"),
            ),
            // Right subject? The token says otherwise.
            (
                vec![("cookie", c(&anon)), (HEADER_NAME, anon.clone())],
                "alice",
                Err("bad_signature"),
            ),
            (
                vec![("cookie", c("forged")), (HEADER_NAME, "forged".into())],
                "alice",
                Err("bad_signature"),
            ),
            // Cookie split across lines (HTTP/2) and among other cookies.
            (
                vec![
                    ("cookie", "a=1; b=2".into()),
                    ("cookie", format!("x=y; {}", c(&tok))),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Ok(()),
            ),
            // The same cookie twice with one value: fine.
            (
                vec![
                    ("cookie", format!("{}; {}", c(&tok), c(&tok))),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Ok(()),
            ),
            // Cookie tossing: a second value, in either order, on either line.
            (
                vec![
                    ("cookie", format!("{}; {}", c(&other), c(&tok))),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Err("mismatch"),
            ),
            (
                vec![
                    ("cookie", c(&tok)),
                    ("cookie", c(&other)),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Err("mismatch"),
            ),
            // Two header lines.
            (
                vec![
                    ("cookie", c(&tok)),
                    (HEADER_NAME, tok.clone()),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Err("mismatch"),
            ),
            // The name must match exactly: the secure variant is a different cookie.
            (
                vec![
                    ("cookie", format!("{SECURE_COOKIE_NAME}={tok}")),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Err("missing_cookie"),
            ),
            (
                vec![
                    ("cookie", format!("CSRF-TOKEN={tok}")),
                    (HEADER_NAME, tok.clone()),
                ],
                "alice",
                Err("missing_cookie"),
            ),
        ];
        for (hs, binding, want) in cases {
            let pairs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            assert_eq!(
                t.check_request(&headers(&pairs), COOKIE_NAME, binding),
                want,
                "{hs:?}"
            );
        }
    }

    #[test]
    fn secure_cookie_name_works_when_asked_for() {
        let t = tokens();
        let tok = t.issue("");
        let h = headers(&[
            (
                "cookie",
                &format!("{COOKIE_NAME}=junk; {SECURE_COOKIE_NAME}={tok}"),
            ),
            (HEADER_NAME, &tok),
        ]);
        assert_eq!(t.check_request(&h, SECURE_COOKIE_NAME, ""), Ok(()));
    }

    #[test]
    fn non_utf8_cookie_line_does_not_panic() {
        let t = tokens();
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_bytes(b"csrf-token=\xff\xfe").unwrap(),
        );
        h.append(HEADER_NAME, HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(t.check_request(&h, COOKIE_NAME, ""), Err("mismatch"));
    }

    #[test]
    fn cookie_attributes() {
        let plain = cookie_header_value("t", false);
        assert_eq!(
            plain,
            "csrf-token=t; Path=/; SameSite=Strict; Max-Age=86400"
        );
        let secure = cookie_header_value("t", true);
        assert_eq!(
            secure,
            "__Host-csrf-token=t; Path=/; Secure; SameSite=Strict; Max-Age=86400"
        );
        for c in [plain, secure] {
            let parsed = cookie::Cookie::parse(c).unwrap();
            assert_eq!(parsed.http_only(), None);
            assert_eq!(parsed.same_site(), Some(cookie::SameSite::Strict));
            assert_eq!(parsed.path(), Some("/"));
            assert_eq!(parsed.domain(), None);
        }
    }

    #[test]
    fn lookup() {
        assert_eq!(single_cookie(&HeaderMap::new(), "a"), CookieLookup::Absent);
        let h = headers(&[("cookie", "a=1; b=2; a=1")]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::One("1".into()));
        let h = headers(&[("cookie", "a=1; b=2; a=3")]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::Conflicting);
        let h = headers(&[("cookie", "a=\"1\"")]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::One("\"1\"".into()));
        let h = headers(&[("cookie", ";;=;a")]);
        assert_eq!(single_cookie(&h, "a"), CookieLookup::Absent);
    }
}
