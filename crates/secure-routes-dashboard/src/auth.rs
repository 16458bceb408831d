//! Who may use the dashboard: the admin token as a bearer (scripts), or a signed session
//! cookie the login form issues (browsers), plus the checks that keep another site from
//! acting with that cookie (CSRF) or from logging a browser in (login CSRF).
//!
//! * **Bearer**: `Authorization: Bearer <SECURE_ROUTES_ADMIN_TOKEN>`, compared as SHA-256
//!   digests in constant time (neither the token's content nor its length leaks through
//!   timing). A bearer header is never sent by a browser on its own, so it needs no CSRF check.
//! * **Session**: `v1.<expiry>.<nonce>.<mac>`, the MAC an HMAC-SHA256 keyed from the admin
//!   token (a key derived for this purpose only, so the cookie is no oracle for the token
//!   itself). Nothing is stored server-side except logged-out nonces; changing the admin token
//!   ends every session at once.
//! * **CSRF** (cookie-authenticated unsafe requests): the page's token (an HMAC of the session
//!   value under a second derived key) in `X-CSRF-Token`, compared in constant time, AND a
//!   same-origin `Sec-Fetch-Site` / `Origin`. SameSite=Strict alone would do in current
//!   browsers; the token covers older ones and same-site (not same-origin) sibling hosts.
//!
//! ```
//! use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
//! use secure_routes_dashboard::auth::bearer_authorized;
//! let mut headers = HeaderMap::new();
//! headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
//! assert!(bearer_authorized(&headers, "s3cret"));
//! assert!(!bearer_authorized(&headers, "other"));
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sr-admin";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Failed logins (or bearer guesses) allowed per client address per [`LOCKOUT_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window [`MAX_FAILURES`] counts over; a locked-out address waits until it ends.
pub const LOCKOUT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Addresses the failure counter tracks at most (memory bound under a spray of addresses;
/// beyond it every address shares one counter, so guessing stays bounded).
const MAX_TRACKED: usize = 10_000;

/// Whether `headers` carry exactly one `Authorization: Bearer <token>`.
///
/// An empty `token` authorizes nothing. The scheme is case-insensitive (RFC 9110 §11.1); two
/// `Authorization` headers are refused rather than one picked.
///
/// ```
/// use http::HeaderMap;
/// assert!(!secure_routes_dashboard::auth::bearer_authorized(&HeaderMap::new(), "t"));
/// ```
pub fn bearer_authorized(headers: &HeaderMap, token: &str) -> bool {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return false;
    };
    let (scheme, rest) = value.split_at(space);
    scheme.eq_ignore_ascii_case(b"bearer") && token_matches(rest.trim_ascii_start(), token)
}

/// Whether `presented` is the admin `token`: SHA-256 digests compared in constant time, so
/// neither the content nor the length of the secret shows in the timing. An empty `token`
/// matches nothing.
///
/// ```
/// use secure_routes_dashboard::auth::token_matches;
/// assert!(token_matches(b"abc", "abc"));
/// assert!(!token_matches(b"", ""));
/// ```
pub fn token_matches(presented: &[u8], token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    let presented = Sha256::digest(presented);
    let expected = Sha256::digest(token.as_bytes());
    presented.ct_eq(&expected).into()
}

/// Session keys derived from the admin token.
pub(crate) struct Keys {
    session: [u8; 32],
    csrf: [u8; 32],
    /// Nonces of sessions logged out before their expiry (nonce -> expiry, unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
}

fn derive(token: &str, label: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

fn mac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl Keys {
    pub(crate) fn new(token: &str) -> Self {
        Self {
            session: derive(token, "secure-routes dashboard session v1"),
            csrf: derive(token, "secure-routes dashboard csrf v1"),
            revoked: Mutex::new(HashMap::new()),
        }
    }

    /// A new session value expiring `SESSION_TTL` after `now` (unix seconds).
    pub(crate) fn issue(&self, now: u64) -> String {
        use rand::Rng as _;
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let body = format!("v1.{}.{}", now + SESSION_TTL.as_secs(), B64.encode(nonce));
        let tag = B64.encode(mac(&self.session, body.as_bytes()));
        format!("{body}.{tag}")
    }

    /// The session's expiry (unix seconds) when `value` is a valid, unexpired, not logged-out
    /// session at `now`.
    pub(crate) fn verify(&self, value: &str, now: u64) -> Option<u64> {
        let (body, tag) = value.rsplit_once('.')?;
        let tag = B64.decode(tag).ok()?;
        let want = mac(&self.session, body.as_bytes());
        if !bool::from(tag.ct_eq(&want)) {
            return None;
        }
        let mut parts = body.split('.');
        let (Some("v1"), Some(exp), Some(nonce), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let exp: u64 = exp.parse().ok()?;
        if exp <= now {
            return None;
        }
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        (!revoked.contains_key(nonce)).then_some(exp)
    }

    /// Ends a session before its expiry (logout): its nonce is refused until it would have
    /// expired anyway.
    pub(crate) fn revoke(&self, value: &str, now: u64) {
        let Some(exp) = self.verify(value, now) else {
            return;
        };
        let Some(nonce) = value.split('.').nth(2) else {
            return;
        };
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.retain(|_, e| *e > now);
        if revoked.len() < MAX_TRACKED {
            revoked.insert(nonce.to_owned(), exp);
        }
    }

    /// The page's CSRF token for a session value.
    pub(crate) fn csrf_token(&self, session: &str) -> String {
        B64.encode(mac(&self.csrf, session.as_bytes()))
    }

    /// Whether `presented` is the CSRF token of `session`, in constant time.
    pub(crate) fn csrf_ok(&self, session: &str, presented: &[u8]) -> bool {
        let want = self.csrf_token(session);
        presented.ct_eq(want.as_bytes()).into()
    }
}

/// The `sr-admin` cookie's value in `headers`, if any (the first one).
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// Whether a browser request is same-origin by its fetch metadata or `Origin`.
///
/// `Sec-Fetch-Site` (sent by every current browser) decides when present: only
/// `same-origin` passes (`same-site` is a sibling host, not us). Otherwise `Origin`, when
/// present, must be this host's origin. A request with neither comes from a non-browser client
/// or a browser too old to send either; cookie-authenticated ones must still show the CSRF
/// token. `https` picks the scheme the origin must have.
pub(crate) fn same_origin(headers: &HeaderMap, https: bool) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) => {
            let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
                return false;
            };
            let scheme = if https { "https" } else { "http" };
            origin.as_bytes() == format!("{scheme}://{host}").as_bytes()
        }
    }
}

/// Counts failed logins and bearer guesses per client address (a fixed window, no sleeps):
/// past [`MAX_FAILURES`] in [`LOCKOUT_WINDOW`] the address is refused with 429 until the
/// window ends, even with the right token, so guessing is bounded to a few tries per hour.
#[derive(Default)]
pub(crate) struct Lockout {
    /// address -> (window start, failures), unix seconds.
    by_ip: Mutex<HashMap<Option<IpAddr>, (u64, u32)>>,
}

/// The address the counter keys on: an IPv6 address by its /64 (one host holds a whole /64,
/// so counting each address apart would give it 2^64 counters, and let it fill the table of
/// tracked addresses from one network, after which every new address, the admin's too,
/// shares one locked counter); an IPv4-mapped address as IPv4. As the bans and rate limits
/// group them.
fn group(ip: Option<IpAddr>) -> Option<IpAddr> {
    ip.map(|ip| match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    })
}

impl Lockout {
    /// Seconds to wait when `ip` is locked out at `now`.
    pub(crate) fn locked(&self, ip: Option<IpAddr>, now: u64) -> Option<u64> {
        let ip = group(ip);
        let map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let ip = if map.contains_key(&ip) || map.len() < MAX_TRACKED {
            ip
        } else {
            None
        };
        let (start, n) = *map.get(&ip)?;
        let end = start + LOCKOUT_WINDOW.as_secs();
        (n >= MAX_FAILURES && now < end).then(|| end - now)
    }

    /// Counts one failure from `ip` at `now`.
    pub(crate) fn fail(&self, ip: Option<IpAddr>, now: u64) {
        let ip = group(ip);
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        let window = LOCKOUT_WINDOW.as_secs();
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now < *start + window);
        }
        // Still full: every new address shares one counter (see MAX_TRACKED).
        let ip = if map.contains_key(&ip) || map.len() < MAX_TRACKED {
            ip
        } else {
            None
        };
        let entry = map.entry(ip).or_insert((now, 0));
        if now >= entry.0 + window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn sessions_verify_expire_and_revoke() {
        let keys = Keys::new("token-a");
        let s = keys.issue(1_000);
        assert_eq!(keys.verify(&s, 1_000), Some(1_000 + SESSION_TTL.as_secs()));
        assert_eq!(keys.verify(&s, 1_000 + SESSION_TTL.as_secs()), None);
        // Another token's key, a changed expiry, garbage: refused.
        assert_eq!(Keys::new("token-b").verify(&s, 1_000), None);
        let forged = s.replacen(
            &format!("v1.{}", 1_000 + SESSION_TTL.as_secs()),
            "v1.9999999999",
            1,
        );
        assert_eq!(keys.verify(&forged, 1_000), None);
        for junk in ["", ".", "v1..", "v1.1.2.3.4", "v1.x.y.%%%"] {
            assert_eq!(keys.verify(junk, 0), None, "{junk:?}");
        }
        let token = keys.csrf_token(&s);
        assert!(keys.csrf_ok(&s, token.as_bytes()));
        assert!(!keys.csrf_ok(&keys.issue(1_000), token.as_bytes()));
        keys.revoke(&s, 1_001);
        assert_eq!(keys.verify(&s, 1_002), None);
    }

    #[test]
    fn lockout_after_max_failures_until_the_window_ends() {
        let l = Lockout::default();
        let ip = Some("203.0.113.9".parse().unwrap());
        for _ in 0..MAX_FAILURES - 1 {
            l.fail(ip, 100);
        }
        assert_eq!(l.locked(ip, 100), None);
        l.fail(ip, 100);
        assert_eq!(l.locked(ip, 160), Some(LOCKOUT_WINDOW.as_secs() - 60));
        assert_eq!(l.locked(Some("203.0.113.10".parse().unwrap()), 160), None);
        assert_eq!(l.locked(ip, 100 + LOCKOUT_WINDOW.as_secs()), None);
    }

    #[test]
    fn an_ipv6_network_shares_one_counter() {
        let l = Lockout::default();
        // Each failure from another address of one /64: still one client.
        for i in 0..MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            l.fail(Some(ip), 100);
        }
        let fresh = Some("2001:db8:1:2:ffff::9".parse().unwrap());
        assert!(l.locked(fresh, 100).is_some());
        assert_eq!(
            l.locked(Some("2001:db8:1:3::1".parse().unwrap()), 100),
            None
        );
        assert_eq!(l.by_ip.lock().unwrap().len(), 1);
    }

    #[test]
    fn same_origin_rules() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[("sec-fetch-site", "same-origin")]), false));
        assert!(!same_origin(&h(&[("sec-fetch-site", "same-site")]), false));
        assert!(!same_origin(&h(&[("sec-fetch-site", "cross-site")]), false));
        assert!(same_origin(
            &h(&[("host", "a:1"), ("origin", "http://a:1")]),
            false
        ));
        assert!(!same_origin(
            &h(&[("host", "a:1"), ("origin", "http://a:1")]),
            true
        ));
        assert!(!same_origin(
            &h(&[("host", "a:1"), ("origin", "http://b:1")]),
            false
        ));
        assert!(!same_origin(
            &h(&[("host", "a:1"), ("origin", "null")]),
            false
        ));
        assert!(same_origin(&h(&[]), false));
        let c = h(&[("cookie", "x=1; sr-admin=abc.def; y=2")]);
        assert_eq!(session_cookie(&c), Some("abc.def"));
    }
}
