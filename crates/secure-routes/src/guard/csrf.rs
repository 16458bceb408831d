//! Signed double-submit CSRF tokens (the OWASP "signed double-submit cookie" pattern), with
//! an issue time and a session binding.
//!
//! A token is 75 characters of base64url (no padding) over 56 bytes:
//!
//! ```text
//! nonce (16 random bytes) ‖ issued-at (u64 seconds since the epoch, big-endian, 8 bytes) ‖ tag
//! tag = HMAC-SHA256(secret, "secure-routes/csrf/v2" ‖ len(binding) as u64 BE ‖ binding
//!                           ‖ issued-at ‖ nonce)                                   (32 bytes)
//! ```
//!
//! The binding is [`Principal::csrf_binding`](crate::Principal::csrf_binding): the caller's
//! session id (the `session_id` claim Supabase sets, or OIDC's `sid`) when the credential names
//! one, else the subject; `""` for anonymous callers.
//!
//! A state-changing request must carry the token twice: in the CSRF cookie and in the
//! `X-CSRF-Token` header. A cross-site page can make the browser send the cookie but cannot
//! read it, so it cannot copy it into the header. Why the signature and binding matter: the
//! original compared an unsigned random cookie with the header using `!==`. An attacker who can
//! set cookies for the site (a sibling subdomain, a plain-HTTP response: "cookie tossing") could
//! plant a value of their choice and send the same value in the header. A signed token cannot
//! be forged without the secret, and binding it to the session stops the attacker from
//! planting a genuine token minted for their own session. All comparisons are constant time.
//!
//! Why the issue time: without it a token was good forever, so one that leaked (a log, a
//! shared machine, a cached page) kept its value for as long as the user kept their subject.
//! A token now expires [`DEFAULT_MAX_AGE`] (12 h, [`CsrfTokens::with_max_age`]) after it was
//! issued, and one "issued" more than [`MAX_CLOCK_SKEW`] in the future (a clock far behind on
//! another instance, or a token from the wrong deployment) is refused too. Why the session:
//! bound to the subject only, a token minted before a logout still works in the user's next
//! session; bound to the session id, logging out and in again (a new session) retires every
//! token of the old one. The domain string moved from `v1` to `v2` with the layout, so a token
//! of the old layout is refused rather than misread (it also has another length).
//!
//! The cookie is deliberately **not** `HttpOnly`: the page's script must read it to fill the
//! header (the original set `HttpOnly` and then read `document.cookie`, which can never work).
//! That is safe because the token is only half of the proof; it grants nothing on its own.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use http::HeaderMap;
//! use secure_routes::clock::FakeClock;
//! use secure_routes::guard::csrf::{CsrfTokens, COOKIE_NAME, HEADER_NAME};
//!
//! let clock = FakeClock::new(Duration::from_secs(1_700_000_000));
//! let tokens = CsrfTokens::new(b"a-csrf-secret-of-at-least-32-bytes!")
//!     .unwrap()
//!     .with_clock(Arc::new(clock.clone()));
//! let t = tokens.issue("alice");
//! assert!(tokens.verify(&t, "alice"));
//! assert!(!tokens.verify(&t, "mallory"));
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("cookie", format!("{COOKIE_NAME}={t}").parse().unwrap());
//! assert_eq!(tokens.check_request(&headers, COOKIE_NAME, "alice"), Err("missing_header"));
//! headers.insert(HEADER_NAME, t.parse().unwrap());
//! assert_eq!(tokens.check_request(&headers, COOKIE_NAME, "alice"), Ok(()));
//!
//! clock.advance(Duration::from_secs(12 * 3600));
//! assert_eq!(tokens.check_request(&headers, COOKIE_NAME, "alice"), Err("expired"));
//! ```

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, Method};
use rand::Rng as _;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::{Clock, SystemClock};
use crate::cookies::{CookieLookup, single_cookie};
// Re-exported for the pipeline, which reads the CSRF cookie to reuse a token.
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
/// Length of a token in characters (56 bytes in unpadded base64url).
pub const TOKEN_LEN: usize = 75;
/// How long a token is valid after it was issued, unless [`CsrfTokens::with_max_age`] says
/// otherwise: 12 hours, a working day with margin.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Longest accepted max age: 400 days, the longest cookie lifetime browsers honour
/// (RFC 6265bis §5.6.2 caps `Max-Age` there).
pub const MAX_MAX_AGE: Duration = Duration::from_secs(400 * 86_400);
/// How far in the future a token's issue time may lie (another instance's clock running ahead)
/// before it is refused as `issued_in_future`.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// `Max-Age` of the cookie written by [`cookie_header_value`], in seconds: [`DEFAULT_MAX_AGE`].
/// [`CsrfTokens::cookie_header_value`] follows the configured max age instead.
pub const COOKIE_MAX_AGE_SECS: u64 = DEFAULT_MAX_AGE.as_secs();

const NONCE_LEN: usize = 16;
const IAT_LEN: usize = 8;
const TAG_LEN: usize = 32;
const RAW_LEN: usize = NONCE_LEN + IAT_LEN + TAG_LEN;
/// Domain separation: the same secret may key other MACs (the rate-limit key derivation).
/// `v2`: the issue time joined the token (v1 tokens had none and are refused).
const DOMAIN: &[u8] = b"secure-routes/csrf/v2";

/// Whether `method` is safe in the sense of RFC 9110 §9.2.1 (GET, HEAD, OPTIONS, TRACE): a
/// request the client does not expect to change state, so it needs no CSRF token. This is a
/// safe-list on purpose: every other method, including extension methods such as WebDAV's
/// `PROPFIND` or `MKCOL` that a route may accept, needs the token, since "not one of POST,
/// PUT, PATCH, DELETE" says nothing about what a handler does with them. (tower-http's Fetch
/// Metadata `Csrf` layer exempts only GET, HEAD and OPTIONS, so it checks TRACE and extension
/// methods too: both layers fail closed on methods they do not know.)
pub(crate) fn is_safe_method(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Step 8b of the pipeline: an unsafe method must carry a valid token for `binding`; `None`
/// means the request needs none (the policy turns it off, or the credential was an explicit
/// header). Refuses with 403.
pub(crate) fn check(
    tokens: &CsrfTokens,
    cookie_name: &str,
    method: &Method,
    headers: &HeaderMap,
    binding: Option<&str>,
) -> Result<(), crate::response::problem::Rejection> {
    use crate::response::problem::{Rejection, RejectionKind};
    match binding {
        Some(binding) if !is_safe_method(method) => tokens
            .check_request(headers, cookie_name, binding)
            .map_err(|reason| Rejection::new(RejectionKind::CsrfFailed, reason)),
        _ => Ok(()),
    }
}

/// Issues and verifies signed double-submit tokens.
///
/// ```
/// use secure_routes::guard::csrf::{CsrfTokens, TOKEN_LEN};
/// assert!(CsrfTokens::new(b"too short").is_err());
/// let t = CsrfTokens::new(&[7u8; 32]).unwrap();
/// assert_eq!(t.issue("").len(), TOKEN_LEN);
/// ```
#[derive(Clone)]
pub struct CsrfTokens {
    mac: Hmac<Sha256>,
    clock: Arc<dyn Clock>,
    /// Whole seconds, at least 1.
    max_age_secs: u64,
}

impl std::fmt::Debug for CsrfTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("CsrfTokens")
            .field("max_age_secs", &self.max_age_secs)
            .finish_non_exhaustive()
    }
}

/// The parts of a decoded token.
struct Decoded {
    nonce: [u8; NONCE_LEN],
    iat: [u8; IAT_LEN],
    tag: [u8; TAG_LEN],
}

impl Decoded {
    /// Bounds the work and the input before decoding: only the exact length can be ours.
    fn parse(token: &str) -> Option<Self> {
        if token.len() != TOKEN_LEN {
            return None;
        }
        let mut raw = [0u8; RAW_LEN];
        // 75 characters carry 450 bits for 448: the base64 engine refuses non-zero spare bits
        // in the last character, so the decoding is canonical (no other spelling of the same
        // bytes exists, and no flipped character goes unnoticed).
        match URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return None,
        }
        let mut d = Decoded {
            nonce: [0; NONCE_LEN],
            iat: [0; IAT_LEN],
            tag: [0; TAG_LEN],
        };
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let (iat, tag) = rest.split_at(IAT_LEN);
        d.nonce.copy_from_slice(nonce);
        d.iat.copy_from_slice(iat);
        d.tag.copy_from_slice(tag);
        Some(d)
    }
}

impl CsrfTokens {
    /// Keyed with `secret`, which must be at least [`MIN_SECRET_LEN`] bytes. Tokens last
    /// [`DEFAULT_MAX_AGE`] by the system clock.
    pub fn new(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(ConfigError::new(format!(
                "the CSRF secret must be at least {MIN_SECRET_LEN} bytes (got {})",
                secret.len()
            )));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
            .map_err(|_| ConfigError::new("the CSRF secret was refused by HMAC"))?;
        Ok(Self {
            mac,
            clock: Arc::new(SystemClock),
            max_age_secs: DEFAULT_MAX_AGE.as_secs(),
        })
    }

    /// Reads time from `clock` (tests drive a [`FakeClock`](crate::clock::FakeClock)).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Tokens expire `max_age` after they were issued (whole seconds; default
    /// [`DEFAULT_MAX_AGE`]). Refused below one second or above [`MAX_MAX_AGE`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::guard::csrf::CsrfTokens;
    /// let t = CsrfTokens::new(&[7u8; 32]).unwrap();
    /// let hour = t.clone().with_max_age(Duration::from_secs(3600)).unwrap();
    /// assert_eq!(hour.max_age(), Duration::from_secs(3600));
    /// assert!(t.clone().with_max_age(Duration::from_millis(10)).is_err());
    /// assert!(t.with_max_age(Duration::from_secs(401 * 86_400)).is_err());
    /// ```
    pub fn with_max_age(mut self, max_age: Duration) -> Result<Self, ConfigError> {
        if max_age < Duration::from_secs(1) || max_age > MAX_MAX_AGE {
            return Err(ConfigError::new(format!(
                "the CSRF token max age must be between 1 s and {} days (got {max_age:?})",
                MAX_MAX_AGE.as_secs() / 86_400
            )));
        }
        self.max_age_secs = max_age.as_secs();
        Ok(self)
    }

    /// How long a token is valid after it was issued.
    pub fn max_age(&self) -> Duration {
        Duration::from_secs(self.max_age_secs)
    }

    fn tag(&self, binding: &str, iat: &[u8; IAT_LEN], nonce: &[u8; NONCE_LEN]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        // Length prefix: no two (binding, issued-at, nonce) triples feed the MAC the same
        // bytes (the two after the binding have fixed lengths).
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding.as_bytes());
        mac.update(iat);
        mac.update(nonce);
        mac
    }

    /// A fresh token bound to `binding` (normally
    /// [`Principal::csrf_binding`](crate::Principal::csrf_binding), or `""` for anonymous
    /// callers), issued now.
    ///
    /// ```
    /// # let t = secure_routes::guard::csrf::CsrfTokens::new(&[7u8; 32]).unwrap();
    /// assert_ne!(t.issue("alice"), t.issue("alice")); // a fresh nonce each time
    /// ```
    pub fn issue(&self, binding: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        // ThreadRng is a CSPRNG seeded from the OS; the nonce makes every token unique.
        rand::rng().fill_bytes(&mut nonce);
        let iat = self.clock.now().as_secs().to_be_bytes();
        let tag = self.tag(binding, &iat, &nonce).finalize().into_bytes();
        let mut raw = [0u8; RAW_LEN];
        let (n, rest) = raw.split_at_mut(NONCE_LEN);
        let (i, t) = rest.split_at_mut(IAT_LEN);
        n.copy_from_slice(&nonce);
        i.copy_from_slice(&iat);
        t.copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `token` was issued by us for `binding` and is still valid now. Any other
    /// string (wrong length, not base64url, another binding, a flipped bit, expired, issued in
    /// the future) is `false`; nothing panics.
    pub fn verify(&self, token: &str, binding: &str) -> bool {
        self.check_token(token, binding).is_ok()
    }

    /// Like [`verify`](Self::verify), with the reason for the audit log: `bad_signature` (not
    /// our token for this binding), `expired` (older than the max age) or `issued_in_future`
    /// (more than [`MAX_CLOCK_SKEW`] ahead of our clock).
    ///
    /// The signature is checked first (in constant time), so the time reasons are only ever
    /// given for genuine tokens.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::{clock::FakeClock, guard::csrf::CsrfTokens};
    /// let clock = FakeClock::new(Duration::from_secs(1_000_000));
    /// let t = CsrfTokens::new(&[7u8; 32]).unwrap().with_clock(Arc::new(clock.clone()));
    /// let tok = t.issue("alice");
    /// assert_eq!(t.check_token(&tok, "bob"), Err("bad_signature"));
    /// clock.advance(Duration::from_secs(11 * 3600 + 59 * 60));
    /// assert_eq!(t.check_token(&tok, "alice"), Ok(()));
    /// clock.advance(Duration::from_secs(60));
    /// assert_eq!(t.check_token(&tok, "alice"), Err("expired"));
    /// ```
    pub fn check_token(&self, token: &str, binding: &str) -> Result<(), &'static str> {
        let d = Decoded::parse(token).ok_or("bad_signature")?;
        // Constant-time comparison of the tag (`verify_slice` uses `subtle`).
        self.tag(binding, &d.iat, &d.nonce)
            .verify_slice(&d.tag)
            .map_err(|_| "bad_signature")?;
        let iat = u64::from_be_bytes(d.iat);
        let now = self.clock.now().as_secs();
        if iat > now.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
            return Err("issued_in_future");
        }
        // Valid while its age is under the max age: expired at exactly `max_age`.
        if now.saturating_sub(iat) >= self.max_age_secs {
            return Err("expired");
        }
        Ok(())
    }

    /// Whether a token the client already holds is worth handing out again rather than a
    /// fresh one: valid for `binding` and in the first half of its life. A token past that is
    /// replaced, so a page that fetched its token just before expiry does not fail a minute
    /// later.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::{clock::FakeClock, guard::csrf::CsrfTokens};
    /// let clock = FakeClock::new(Duration::from_secs(1_000_000));
    /// let t = CsrfTokens::new(&[7u8; 32]).unwrap().with_clock(Arc::new(clock.clone()));
    /// let tok = t.issue("alice");
    /// assert!(t.reusable(&tok, "alice"));
    /// clock.advance(Duration::from_secs(6 * 3600));
    /// assert!(t.verify(&tok, "alice") && !t.reusable(&tok, "alice"));
    /// ```
    pub fn reusable(&self, token: &str, binding: &str) -> bool {
        self.check_token(token, binding).is_ok()
            && self
                .age_secs(token)
                .is_some_and(|a| a < self.max_age_secs / 2)
    }

    /// Seconds since `token` was issued, by its (unauthenticated) issue time; `None` for a
    /// string that is not a token, 0 for one issued in the future.
    fn age_secs(&self, token: &str) -> Option<u64> {
        let iat = u64::from_be_bytes(Decoded::parse(token)?.iat);
        Some(self.clock.now().as_secs().saturating_sub(iat))
    }

    /// The `Set-Cookie` value carrying `token`, as [`cookie_header_value`] writes it but with a
    /// `Max-Age` that ends when the token expires (the configured max age for a fresh token;
    /// 0, deleting the cookie, for an expired one). A cookie never outlives its token, so the
    /// browser does not keep sending a token the server will refuse.
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::guard::csrf::CsrfTokens;
    /// let t = CsrfTokens::new(&[7u8; 32]).unwrap().with_max_age(Duration::from_secs(600)).unwrap();
    /// let tok = t.issue("");
    /// assert!(t.cookie_header_value(&tok, false).ends_with("; Max-Age=600"));
    /// ```
    pub fn cookie_header_value(&self, token: &str, secure: bool) -> String {
        let left = match self.age_secs(token) {
            Some(age) => self.max_age_secs.saturating_sub(age),
            None => self.max_age_secs,
        };
        cookie_with_max_age(token, secure, left)
    }

    /// Checks a state-changing request: the cookie `cookie_name` and the [`HEADER_NAME`] header
    /// must both be present, equal (compared in constant time), and hold a valid token we
    /// issued for `binding`.
    ///
    /// The error is a short reason for the audit log: `missing_cookie`, `missing_header`,
    /// `mismatch` (the two differ, the header is repeated, or the cookie appears twice with
    /// different values, the mark of cookie tossing), or one of
    /// [`check_token`](Self::check_token)'s: `bad_signature`, `expired`, `issued_in_future`.
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
        self.check_token(&cookie, binding)
    }
}

/// The `Set-Cookie` value carrying `token` (a token from [`CsrfTokens::issue`]).
///
/// `SameSite=Strict`, `Path=/`, `Max-Age=43200` (12 h, the default token lifetime; use
/// [`CsrfTokens::cookie_header_value`] to follow a configured one), and deliberately not
/// `HttpOnly` (script must read it to send the header). With `secure` the name is
/// [`SECURE_COOKIE_NAME`] and the cookie is `Secure`, as the `__Host-` prefix requires (and has
/// no `Domain`).
///
/// ```
/// use secure_routes::guard::csrf::cookie_header_value;
/// let c = cookie_header_value("tok", true);
/// assert!(c.starts_with("__Host-csrf-token=tok;"));
/// assert!(c.contains("; Secure") && !c.contains("HttpOnly") && !c.contains("Domain"));
/// assert!(cookie_header_value("tok", false).starts_with("csrf-token=tok;"));
/// ```
pub fn cookie_header_value(token: &str, secure: bool) -> String {
    cookie_with_max_age(token, secure, COOKIE_MAX_AGE_SECS)
}

fn cookie_with_max_age(token: &str, secure: bool, max_age_secs: u64) -> String {
    let name = if secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    };
    // At most MAX_MAX_AGE (400 days), so the conversion never saturates in practice.
    let max_age = i64::try_from(max_age_secs).unwrap_or(i64::MAX);
    cookie::Cookie::build((name, token))
        .path("/")
        .secure(secure)
        .same_site(cookie::SameSite::Strict)
        .max_age(time::Duration::seconds(max_age))
        .build()
        .to_string()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::clock::FakeClock;

    const T0: Duration = Duration::from_secs(1_700_000_000);
    const HOUR: u64 = 3600;

    fn tokens() -> CsrfTokens {
        CsrfTokens::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn clocked() -> (CsrfTokens, FakeClock) {
        let clock = FakeClock::new(T0);
        (tokens().with_clock(Arc::new(clock.clone())), clock)
    }

    /// The token's last character with one of its two unused low bits set.
    fn spare_bits_set(token: &str) -> char {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = token.as_bytes()[TOKEN_LEN - 1];
        let i = ALPHABET.iter().position(|&c| c == last).unwrap();
        char::from(ALPHABET[i | 1])
    }

    /// A token of this layout whose tag was computed under `domain`.
    fn token_under_domain(t: &CsrfTokens, domain: &[u8], binding: &str, iat: u64) -> String {
        let nonce = [9u8; NONCE_LEN];
        let iat = iat.to_be_bytes();
        let mut mac = t.mac.clone();
        mac.update(domain);
        mac.update(&(binding.len() as u64).to_be_bytes());
        mac.update(binding.as_bytes());
        mac.update(&iat);
        mac.update(&nonce);
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&iat);
        raw.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    #[test]
    fn layout_is_nonce_issued_at_tag() {
        let (t, _clock) = clocked();
        let tok = t.issue("alice");
        assert_eq!(tok.len(), TOKEN_LEN);
        let raw = URL_SAFE_NO_PAD.decode(&tok).unwrap();
        assert_eq!(raw.len(), RAW_LEN);
        assert_eq!(
            raw[NONCE_LEN..NONCE_LEN + IAT_LEN],
            T0.as_secs().to_be_bytes()
        );
        // The documented MAC input, rebuilt by hand, gives the same tag.
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let mut expected = t.mac.clone();
        expected.update(b"secure-routes/csrf/v2");
        expected.update(&5u64.to_be_bytes());
        expected.update(b"alice");
        expected.update(&T0.as_secs().to_be_bytes());
        expected.update(&nonce);
        assert_eq!(
            raw[NONCE_LEN + IAT_LEN..],
            expected.finalize().into_bytes()[..]
        );
    }

    #[test]
    fn tokens_expire_after_the_max_age() {
        let (t, clock) = clocked();
        let tok = t.issue("alice");
        clock.advance(Duration::from_secs(12 * HOUR - 1));
        assert_eq!(t.check_token(&tok, "alice"), Ok(()));
        clock.advance(Duration::from_secs(1));
        assert_eq!(t.check_token(&tok, "alice"), Err("expired"));
        clock.advance(Duration::from_secs(1000 * HOUR));
        assert_eq!(t.check_token(&tok, "alice"), Err("expired"));
        // The signature comes first: a wrong binding is a bad signature whatever the time.
        assert_eq!(t.check_token(&tok, "bob"), Err("bad_signature"));
    }

    #[test]
    fn the_max_age_is_configurable() {
        let (t, clock) = clocked();
        let short = t.clone().with_max_age(Duration::from_secs(600)).unwrap();
        let tok = short.issue("");
        clock.advance(Duration::from_secs(599));
        assert!(short.verify(&tok, ""));
        clock.advance(Duration::from_secs(1));
        assert!(!short.verify(&tok, ""));
        // The same key with the default max age still accepts it: the age is not in the MAC.
        assert!(t.verify(&tok, ""));
        for bad in [
            Duration::ZERO,
            Duration::from_millis(999),
            MAX_MAX_AGE + Duration::from_secs(1),
        ] {
            assert!(t.clone().with_max_age(bad).is_err(), "{bad:?}");
        }
        assert!(t.with_max_age(MAX_MAX_AGE).is_ok());
    }

    #[test]
    fn tokens_from_the_future_are_refused_beyond_the_skew() {
        let (t, clock) = clocked();
        let tok = t.issue("alice");
        clock.set(T0 - MAX_CLOCK_SKEW);
        assert_eq!(t.check_token(&tok, "alice"), Ok(()));
        clock.set(T0 - MAX_CLOCK_SKEW - Duration::from_secs(1));
        assert_eq!(t.check_token(&tok, "alice"), Err("issued_in_future"));
        // A clock before the epoch reads 0: still no panic, still refused.
        clock.set(Duration::ZERO);
        assert_eq!(t.check_token(&tok, "alice"), Err("issued_in_future"));
        let far = token_under_domain(&t, DOMAIN, "alice", u64::MAX);
        assert_eq!(t.check_token(&far, "alice"), Err("issued_in_future"));
    }

    #[test]
    fn tokens_of_the_v1_domain_or_layout_are_refused() {
        let (t, _clock) = clocked();
        let v2 = token_under_domain(&t, DOMAIN, "alice", T0.as_secs());
        assert_eq!(t.check_token(&v2, "alice"), Ok(()));
        let v1_domain = token_under_domain(&t, b"secure-routes/csrf/v1", "alice", T0.as_secs());
        assert_eq!(t.check_token(&v1_domain, "alice"), Err("bad_signature"));
        // The v1 layout: nonce ‖ HMAC(v1 ‖ len ‖ binding ‖ nonce), 64 characters.
        let nonce = [3u8; NONCE_LEN];
        let mut mac = t.mac.clone();
        mac.update(b"secure-routes/csrf/v1");
        mac.update(&5u64.to_be_bytes());
        mac.update(b"alice");
        mac.update(&nonce);
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&mac.finalize().into_bytes());
        let v1 = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(v1.len(), 64);
        assert_eq!(t.check_token(&v1, "alice"), Err("bad_signature"));
    }

    #[test]
    fn reusable_only_in_the_first_half_of_the_life() {
        let (t, clock) = clocked();
        let tok = t.issue("alice");
        assert!(t.reusable(&tok, "alice"));
        assert!(!t.reusable(&tok, "bob"));
        clock.advance(Duration::from_secs(6 * HOUR - 1));
        assert!(t.reusable(&tok, "alice"));
        clock.advance(Duration::from_secs(1));
        assert!(!t.reusable(&tok, "alice"));
        assert!(t.verify(&tok, "alice"));
        assert!(!t.reusable("junk", "alice"));
    }

    #[test]
    fn the_cookie_lives_as_long_as_its_token() {
        let (t, clock) = clocked();
        let tok = t.issue("");
        let max_age = |c: String| -> u64 {
            cookie::Cookie::parse(c)
                .unwrap()
                .max_age()
                .unwrap()
                .whole_seconds()
                .try_into()
                .unwrap()
        };
        assert_eq!(max_age(t.cookie_header_value(&tok, false)), 12 * HOUR);
        assert_eq!(max_age(t.cookie_header_value(&tok, true)), 12 * HOUR);
        clock.advance(Duration::from_secs(5 * HOUR));
        assert_eq!(max_age(t.cookie_header_value(&tok, false)), 7 * HOUR);
        clock.advance(Duration::from_secs(8 * HOUR));
        assert_eq!(max_age(t.cookie_header_value(&tok, false)), 0);
        let hour = t.with_max_age(Duration::from_secs(HOUR)).unwrap();
        assert_eq!(
            max_age(hour.cookie_header_value(&hour.issue(""), false)),
            HOUR
        );
        assert_eq!(max_age(hour.cookie_header_value("junk", false)), HOUR);
        assert_eq!(max_age(cookie_header_value("junk", false)), 12 * HOUR);
    }

    #[test]
    fn safe_methods_are_exactly_rfc_9110s() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(is_safe_method(&m), "{m}");
            assert!(m.is_safe(), "http agrees on {m}");
        }
        for m in [
            "POST", "PUT", "PATCH", "DELETE", "CONNECT", "PROPFIND", "MKCOL", "LOCK", "QUERY",
            "get", "Get", "X-CUSTOM",
        ] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!is_safe_method(&m), "{m}");
        }
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
            "a".repeat(TOKEN_LEN - 1),
            "a".repeat(TOKEN_LEN),
            "a".repeat(TOKEN_LEN + 1),
            format!("{good}="),
            good[..TOKEN_LEN - 1].to_owned(),
            good.replace(|_: char| true, "é")
                .chars()
                .take(TOKEN_LEN)
                .collect(),
            format!("{}+", &good[..TOKEN_LEN - 1]),
            // The last character carries two spare bits: non-zero, the spelling is refused.
            format!("{}{}", &good[..TOKEN_LEN - 1], spare_bits_set(&good)),
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
            "csrf-token=t; SameSite=Strict; Path=/; Max-Age=43200"
        );
        let secure = cookie_header_value("t", true);
        assert_eq!(
            secure,
            "__Host-csrf-token=t; SameSite=Strict; Secure; Path=/; Max-Age=43200"
        );
        for c in [plain, secure] {
            let parsed = cookie::Cookie::parse(c).unwrap();
            assert_eq!(parsed.http_only(), None);
            assert_eq!(parsed.same_site(), Some(cookie::SameSite::Strict));
            assert_eq!(parsed.path(), Some("/"));
            assert_eq!(parsed.domain(), None);
        }
    }
}
