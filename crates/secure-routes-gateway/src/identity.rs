//! Identity to the upstream (issue 11 part 3): what the gateway tells the app behind it about
//! who is calling, and how the app can prove the gateway said it.
//!
//! Per proxied request, in this order:
//!
//! 1. [`strip_incoming`] removes every `X-Secure-Routes-*` header the client sent, so a client
//!    can never forge an identity the upstream would believe.
//! 2. On routes with `strip_credentials = true`, [`strip_credentials`] removes `Authorization`
//!    and the credential cookies ([`CookieNames`]), keeping every other cookie.
//! 3. [`AssertionSigner::sign`] makes `X-Secure-Routes-Assertion`: a 60-second ES256 JWT
//!    (`iss` `secure-routes`, `aud` the upstream origin, `sub`, `roles`, `rid` the request id,
//!    `iat`, `nbf`, `exp`, `jti`) whose public key the gateway serves as a JWK Set
//!    ([`AssertionSigner::jwks_json`], at `/_secure-routes/jwks.json`). This is the model
//!    Pomerium uses (its `X-Pomerium-Jwt-Assertion`): the plain headers are a convenience, the
//!    signed assertion is what an upstream reachable by other paths than the gateway must
//!    check, since anyone who can reach the upstream directly can send plain headers.
//! 4. [`set_identity`] sets `X-Secure-Routes-Subject`, `X-Secure-Routes-Roles`, `X-Request-Id`
//!    and `X-Secure-Routes-Assertion`.
//!
//! The key: one fresh P-256 key per process ([`AssertionSigner::generate`]) unless the
//! environment variable [`KEY_ENV`] (`SECURE_ROUTES_ASSERTION_KEY`) holds a PKCS#8 PEM key
//! ([`AssertionSigner::from_pem`]), which several gateway instances behind one load balancer
//! must share: an upstream caches the JWK Set, and a key it has never seen fails verification.
//!
//! ```
//! use http::{HeaderMap, HeaderValue};
//! use secure_routes::auth::{CredentialSource, Principal};
//! use secure_routes_gateway::identity::{self, Assertion, AssertionSigner};
//!
//! let signer = AssertionSigner::generate().unwrap();
//! let mut headers = HeaderMap::new();
//! headers.insert("x-secure-routes-subject", HeaderValue::from_static("admin")); // forged
//! identity::strip_incoming(&mut headers);
//!
//! let alice = Principal::new("alice", CredentialSource::Header);
//! let assertion = signer
//!     .sign(&Assertion {
//!         audience: "http://127.0.0.1:3000",
//!         principal: Some(&alice),
//!         request_id: "req-1",
//!     })
//!     .unwrap();
//! identity::set_identity(&mut headers, Some(&alice), "req-1", &assertion);
//! assert_eq!(headers["x-secure-routes-subject"], "alice");
//! assert_eq!(headers["x-request-id"], "req-1");
//! assert!(headers.get("x-secure-routes-roles").is_none());
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use http::header::{AUTHORIZATION, COOKIE, HeaderName};
use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use secure_routes::auth::Principal;
use secure_routes::clock::{Clock, SystemClock};
use serde::Serialize;

/// The prefix of every header the gateway sets for the upstream; any incoming header with it
/// is removed by [`strip_incoming`]. Lower case, as `http` stores every header name.
///
/// ```
/// use secure_routes_gateway::identity::{HEADER_PREFIX, SUBJECT};
/// assert!(SUBJECT.as_str().starts_with(HEADER_PREFIX));
/// ```
pub const HEADER_PREFIX: &str = "x-secure-routes-";

/// `X-Secure-Routes-Subject`: the principal's subject, absent for anonymous requests.
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::SUBJECT, "x-secure-routes-subject");
/// ```
pub const SUBJECT: HeaderName = HeaderName::from_static("x-secure-routes-subject");

/// `X-Secure-Routes-Roles`: the principal's roles, comma-separated; absent when there are none.
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::ROLES, "x-secure-routes-roles");
/// ```
pub const ROLES: HeaderName = HeaderName::from_static("x-secure-routes-roles");

/// `X-Secure-Routes-Assertion`: the signed ES256 JWT ([`AssertionSigner::sign`]).
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::ASSERTION, "x-secure-routes-assertion");
/// ```
pub const ASSERTION: HeaderName = HeaderName::from_static("x-secure-routes-assertion");

/// `X-Request-Id`: the request id the gateway audited the request under.
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::REQUEST_ID, "x-request-id");
/// ```
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The environment variable that holds the shared assertion key (a PKCS#8 PEM P-256 key, see
/// [`AssertionSigner::from_pem`]). Unset, each process generates its own key.
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::KEY_ENV, "SECURE_ROUTES_ASSERTION_KEY");
/// ```
pub const KEY_ENV: &str = "SECURE_ROUTES_ASSERTION_KEY";

/// The assertion's `iss` claim.
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::ISSUER, "secure-routes");
/// ```
pub const ISSUER: &str = "secure-routes";

/// How long an assertion is valid (`exp - iat`): long enough for clock skew between the
/// gateway and the upstream and for a slow upstream to read it, short enough that a leaked
/// assertion (an upstream's access log) is useless soon after.
///
/// ```
/// assert_eq!(secure_routes_gateway::identity::LIFETIME.as_secs(), 60);
/// ```
pub const LIFETIME: Duration = Duration::from_secs(60);

/// Removes every header whose name starts with `X-Secure-Routes-` (any case: header names are
/// case-insensitive and `http` stores them lower case), all values of each. Run it on every
/// proxied request before anything else reads or sets identity headers: otherwise a client
/// could send `X-Secure-Routes-Subject: admin` and an upstream trusting the header would
/// believe it.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use secure_routes_gateway::identity::strip_incoming;
/// let mut h = HeaderMap::new();
/// h.append("X-Secure-Routes-Subject", HeaderValue::from_static("admin"));
/// h.append("x-SECURE-routes-roles", HeaderValue::from_static("admin"));
/// h.append("accept", HeaderValue::from_static("*/*"));
/// strip_incoming(&mut h);
/// assert_eq!(h.len(), 1);
/// assert!(h.contains_key("accept"));
/// ```
pub fn strip_incoming(headers: &mut HeaderMap) {
    // A Vec with nothing pushed does not allocate: the common case costs one pass over names.
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(HEADER_PREFIX))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// The names of the cookies that carry credentials, for [`strip_credentials`].
///
/// A configured name also covers its chunks `NAME.0`, `NAME.1`, ... (any digits). Supabase's
/// session cookies `sb-<ref>-auth-token` (and their chunks) are always covered, for any
/// project ref, whatever the gateway's identity config: the `@supabase/ssr` helpers name them
/// so, and an upstream using them would sign the user in from them. Names are case-sensitive
/// (RFC 6265 §5.4 compares them exactly; so does the core's cookie lookup).
///
/// ```
/// use secure_routes_gateway::identity::CookieNames;
/// let names = CookieNames::new(["sr-session"]);
/// assert!(names.is_credential("sr-session"));
/// assert!(names.is_credential("sr-session.3"));
/// assert!(names.is_credential("sb-abcd-auth-token.0"));
/// assert!(!names.is_credential("sr-session.x"));
/// assert!(!names.is_credential("theme"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct CookieNames {
    names: Vec<Box<str>>,
}

impl CookieNames {
    /// The configured credential cookies: the session cookie of the gateway's authenticator
    /// (`JwtAuthenticator::cookie_name`, `SupabaseAuthenticator::cookie_name`), if any.
    /// Empty names are ignored.
    ///
    /// ```
    /// use secure_routes_gateway::identity::CookieNames;
    /// let none: [&str; 0] = [];
    /// assert!(!CookieNames::new(none).is_credential("sr-session"));
    /// assert!(CookieNames::new(Some("sr-session")).is_credential("sr-session"));
    /// ```
    pub fn new<I>(names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self {
            names: names
                .into_iter()
                .filter(|n| !n.as_ref().is_empty())
                .map(|n| n.as_ref().into())
                .collect(),
        }
    }

    /// Whether a cookie named `name` carries a credential.
    ///
    /// ```
    /// use secure_routes_gateway::identity::CookieNames;
    /// let names = CookieNames::default();
    /// assert!(names.is_credential("sb-xyz-auth-token"));
    /// assert!(!names.is_credential("sb-xyz-auth-token-code-verifier"));
    /// ```
    pub fn is_credential(&self, name: &str) -> bool {
        self.is_credential_bytes(name.as_bytes())
    }

    /// Whether the raw bytes before a pair's `=` name a credential as any reader would trim
    /// them: the `cookie` crate (the core's reader, and Rust upstreams) trims Unicode
    /// whitespace after UTF-8 decoding; Node decodes header bytes as Latin-1 and JavaScript's
    /// `trim` also removes the no-break space `0xA0` (and `0x0B`-`0x0D`, which `http` already
    /// refuses in a header value). A name any of them would read as a credential is one.
    fn names_credential(&self, raw: &[u8]) -> bool {
        let js_space = |b: &u8| matches!(b, b'\t'..=b'\r' | b' ' | 0xA0);
        let start = raw.iter().position(|b| !js_space(b)).unwrap_or(raw.len());
        let end = raw
            .iter()
            .rposition(|b| !js_space(b))
            .map_or(start, |e| e + 1);
        let latin1 = &raw[start..end.max(start)];
        if !latin1.is_empty() && self.is_credential_bytes(latin1) {
            return true;
        }
        let text = String::from_utf8_lossy(raw);
        let unicode = text.trim();
        !unicode.is_empty() && self.is_credential(unicode)
    }

    fn is_credential_bytes(&self, name: &[u8]) -> bool {
        self.names.iter().any(|n| base_or_chunk(name, n.as_bytes())) || is_supabase_session(name)
    }
}

/// `name` is `base` or `base.<digits>`.
fn base_or_chunk(name: &[u8], base: &[u8]) -> bool {
    match name.strip_prefix(base) {
        Some([]) => true,
        Some([b'.', digits @ ..]) => !digits.is_empty() && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// `sb-<ref>-auth-token` or one of its chunks.
fn is_supabase_session(name: &[u8]) -> bool {
    const TAIL: &[u8] = b"-auth-token";
    let Some(rest) = name.strip_prefix(b"sb-") else {
        return false;
    };
    // The last occurrence of the tail: `sb-x-auth-token-auth-token` is project `x-auth-token`.
    (0..rest.len().saturating_sub(TAIL.len() - 1))
        .rev()
        .find(|&i| rest[i..].starts_with(TAIL))
        .is_some_and(|i| i > 0 && base_or_chunk(rest, &rest[..i + TAIL.len()]))
}

/// For routes with `strip_credentials = true`: removes every `Authorization` header, and from
/// every `Cookie` header line only the credential cookies ([`CookieNames`]), keeping the other
/// cookies (as they were, joined by `"; "`) and the line structure; a line left with no cookie
/// is removed. The upstream then sees who the caller is only through the gateway's identity
/// headers and cannot replay the caller's credentials elsewhere.
///
/// Cookie lines are untrusted bytes: they are split on `;` and each pair's name is what comes
/// before the first `=`; a pair goes when its name is a credential as any common reader trims
/// it (the `cookie` crate the core reads with, JavaScript's `trim` over Latin-1 in Node), so
/// `"\u{a0}sr-session=..."` goes too. Nothing is decoded and nothing panics. A pair without `=`
/// is kept (it is no credential of ours); kept pairs lose only surrounding spaces and tabs.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use secure_routes_gateway::identity::{CookieNames, strip_credentials};
/// let mut h = HeaderMap::new();
/// h.insert("authorization", HeaderValue::from_static("Bearer eyJ..."));
/// h.append("cookie", HeaderValue::from_static("theme=dark; sr-session=abc; sb-p-auth-token.0=x"));
/// h.append("cookie", HeaderValue::from_static("sb-p-auth-token.1=y"));
/// strip_credentials(&mut h, &CookieNames::new(["sr-session"]));
/// assert!(h.get("authorization").is_none());
/// let cookies: Vec<_> = h.get_all("cookie").iter().collect();
/// assert_eq!(cookies, ["theme=dark"]);
/// ```
pub fn strip_credentials(headers: &mut HeaderMap, cookie_names: &CookieNames) {
    headers.remove(AUTHORIZATION);
    if !headers.contains_key(COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|line| without_credentials(line, cookie_names))
        .collect();
    headers.remove(COOKIE);
    for line in kept {
        headers.append(COOKIE, line);
    }
}

/// One `Cookie` line without its credential cookies; `None` when nothing is left.
fn without_credentials(line: &HeaderValue, names: &CookieNames) -> Option<HeaderValue> {
    let trim = |b: &[u8]| -> (usize, usize) {
        let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
        let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
        match (start, end) {
            (Some(s), Some(e)) => (s, e + 1),
            _ => (0, 0),
        }
    };
    let bytes = line.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    for pair in bytes.split(|&b| b == b';') {
        let (s, e) = trim(pair);
        let pair = &pair[s..e];
        if pair.is_empty() {
            continue;
        }
        let credential = pair
            .iter()
            .position(|&b| b == b'=')
            .is_some_and(|eq| names.names_credential(&pair[..eq]));
        if credential {
            changed = true;
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair);
    }
    if !changed {
        return Some(line.clone());
    }
    if out.is_empty() {
        return None;
    }
    // Only bytes of a valid value and "; ": always valid. Were it not, dropping the line is the
    // safe side (a credential must not reach the upstream).
    let mut value = HeaderValue::from_bytes(&out).ok()?;
    value.set_sensitive(line.is_sensitive());
    Some(value)
}

/// Bytes percent-encoded in identity header values: controls (which would end or split a
/// header), space (trimmed at the edges of a value), `%` (so decoding is exact), `,` (the roles
/// separator) and, by `utf8_percent_encode`, every non-ASCII byte.
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ').add(b'%').add(b',');

/// A header value for `text`, percent-encoded as [`set_identity`] documents.
fn encoded(text: &str) -> Option<HeaderValue> {
    let encoded = utf8_percent_encode(text, HEADER_UNSAFE).to_string();
    HeaderValue::from_str(&encoded).ok()
}

/// Sets the identity headers for the upstream, replacing any already there:
///
/// * `X-Secure-Routes-Subject`: the principal's subject; removed when `principal` is `None`.
/// * `X-Secure-Routes-Roles`: its roles ([`secure_routes::authz::roles`], duplicates dropped),
///   joined by `,`; removed when there are none.
/// * `X-Request-Id`: `request_id`.
/// * `X-Secure-Routes-Assertion`: `assertion` ([`AssertionSigner::sign`]); removed if it is
///   not a valid header value (a signed assertion always is).
///
/// Subject, roles and request id are percent-encoded (UTF-8): control characters, space, `%`,
/// `,` and non-ASCII characters become `%XX`, so any subject fits in a header and is never
/// dropped (a dropped subject would read as anonymous), and JavaScript's `decodeURIComponent`
/// restores it exactly. Ordinary subjects (UUIDs, e-mail addresses) and roles pass unchanged.
/// The assertion's `sub` and `roles` carry the exact strings.
///
/// ```
/// use http::HeaderMap;
/// use secure_routes::auth::{CredentialSource, Principal};
/// use secure_routes_gateway::identity::set_identity;
/// let claims = serde_json::json!({"role": "admin", "roles": ["editor", "admin", "a,b"]});
/// let p = Principal::new("José\n", CredentialSource::Header)
///     .with_claims(claims.as_object().unwrap().clone());
/// let mut h = HeaderMap::new();
/// set_identity(&mut h, Some(&p), "r1", "eyJ.x.y");
/// assert_eq!(h["x-secure-routes-subject"], "Jos%C3%A9%0A");
/// assert_eq!(h["x-secure-routes-roles"], "admin,editor,a%2Cb");
/// set_identity(&mut h, None, "r2", "eyJ.x.y");
/// assert!(h.get("x-secure-routes-subject").is_none());
/// assert!(h.get("x-secure-routes-roles").is_none());
/// assert_eq!(h["x-request-id"], "r2");
/// ```
pub fn set_identity(
    headers: &mut HeaderMap,
    principal: Option<&Principal>,
    request_id: &str,
    assertion: &str,
) {
    set_or_remove(
        headers,
        SUBJECT,
        principal.and_then(|p| encoded(p.subject())),
    );
    let roles = principal.map(distinct_roles).unwrap_or_default();
    let roles = if roles.is_empty() {
        None
    } else {
        let joined: Vec<String> = roles
            .iter()
            .map(|r| utf8_percent_encode(r, HEADER_UNSAFE).to_string())
            .collect();
        HeaderValue::from_str(&joined.join(",")).ok()
    };
    set_or_remove(headers, ROLES, roles);
    set_or_remove(headers, REQUEST_ID, encoded(request_id));
    // Sensitive: HTTP/2 never indexes it in HPACK tables and `Debug` does not print it.
    let assertion = HeaderValue::from_str(assertion).ok().map(|mut v| {
        v.set_sensitive(true);
        v
    });
    set_or_remove(headers, ASSERTION, assertion);
}

fn set_or_remove(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// The principal's roles in claim order, each once.
fn distinct_roles(principal: &Principal) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for role in secure_routes::authz::roles(principal) {
        if !out.contains(&role) {
            out.push(role);
        }
    }
    out
}

/// What one assertion says: who, for which upstream, for which request.
///
/// ```
/// use secure_routes_gateway::identity::Assertion;
/// let anonymous = Assertion { audience: "http://127.0.0.1:3000", principal: None, request_id: "r1" };
/// assert!(anonymous.principal.is_none());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Assertion<'a> {
    /// The `aud` claim: the upstream's origin (`scheme://host[:port]`), so an assertion meant
    /// for one upstream is refused by another that checks its audience.
    pub audience: &'a str,
    /// The authenticated principal (`sub`, `roles`); `None` for an anonymous request (no
    /// `sub`, empty `roles`).
    pub principal: Option<&'a Principal>,
    /// The `rid` claim: the request id, to join the upstream's logs with the gateway's audit.
    pub request_id: &'a str,
}

/// Why a key could not be loaded or an assertion signed. Never contains key material.
///
/// ```
/// use secure_routes_gateway::identity::{AssertionSigner, KeyError};
/// assert!(matches!(AssertionSigner::from_pem("not a key"), Err(KeyError::Pem(_))));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not one PEM block, or its label is not `PRIVATE KEY` / `EC PRIVATE KEY`.
    #[error("assertion key: {0}")]
    Pem(String),
    /// The key is not an unencrypted P-256 private key (PKCS#8 or SEC1).
    #[error("assertion key rejected: {0} (need an unencrypted P-256 key)")]
    Rejected(&'static str),
    /// The crypto library failed to generate a key or a signature (not expected).
    #[error("assertion key: the crypto library failed")]
    Crypto,
}

/// The claims of one assertion, in the order they are written.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'static str,
    aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    roles: Vec<&'a str>,
    rid: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

/// An ES256 (ECDSA P-256 with SHA-256, RFC 7518 §3.4) key that signs assertions.
///
/// ES256 rather than an HMAC: the upstream verifies with the public key alone (from the JWK
/// Set), so no secret is shared with it and an upstream cannot mint assertions itself; rather
/// than RS256: signatures are 64 bytes and signing is faster.
///
/// The key pair is parsed once and kept (`jsonwebtoken::encode` would re-parse a PKCS#8
/// document, with its key check, on every request); the JWT is assembled here and verifies
/// with any JOSE library. `Debug` shows only the key id.
///
/// ```
/// use secure_routes_gateway::identity::AssertionSigner;
/// let a = AssertionSigner::generate().unwrap();
/// let b = AssertionSigner::from_pem(&a.to_pkcs8_pem()).unwrap();
/// assert_eq!(a.kid(), b.kid());
/// assert_ne!(a.kid(), AssertionSigner::generate().unwrap().kid());
/// ```
pub struct AssertionSigner {
    key: EcdsaKeyPair,
    kid: Box<str>,
    /// `base64url({"alg":"ES256","typ":"JWT","kid":...})`, the same for every assertion.
    header: Box<str>,
    jwks: Bytes,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionSigner {
    /// A fresh random key (this process only: its assertions verify only against this
    /// process's JWK Set). Reads time from the system clock.
    ///
    /// ```
    /// use secure_routes_gateway::identity::AssertionSigner;
    /// assert_eq!(AssertionSigner::generate().unwrap().kid().len(), 43);
    /// ```
    pub fn generate() -> Result<Self, KeyError> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| KeyError::Crypto)?;
        Self::from_key(key)
    }

    /// Loads a P-256 private key from PEM: PKCS#8 (`-----BEGIN PRIVATE KEY-----`, what
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` and
    /// [`to_pkcs8_pem`](Self::to_pkcs8_pem) write) or SEC1 (`-----BEGIN EC PRIVATE KEY-----`).
    /// For gateways that must share one key: the gateway reads it from [`KEY_ENV`]. Literal
    /// `\n` sequences count as line breaks, so the key fits on one line of an env file.
    ///
    /// ```
    /// use secure_routes_gateway::identity::AssertionSigner;
    /// let pem = AssertionSigner::generate().unwrap().to_pkcs8_pem();
    /// let one_line = pem.replace('\n', "\\n");
    /// assert!(AssertionSigner::from_pem(&one_line).is_ok());
    /// assert!(AssertionSigner::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    /// ```
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let text = pem.trim().replace("\\n", "\n");
        let block = pem::parse(text.as_bytes()).map_err(|e| KeyError::Pem(e.to_string()))?;
        match block.tag() {
            "PRIVATE KEY" | "EC PRIVATE KEY" => {}
            "ENCRYPTED PRIVATE KEY" => {
                return Err(KeyError::Pem("encrypted keys are not supported".into()));
            }
            other => return Err(KeyError::Pem(format!("unexpected PEM label {other:?}"))),
        }
        let key =
            EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, block.contents())
                .map_err(|e| KeyError::Rejected(e.description_()))?;
        Self::from_key(key)
    }

    fn from_key(key: EcdsaKeyPair) -> Result<Self, KeyError> {
        // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = key.public_key().as_ref();
        let [4, coords @ ..] = point else {
            return Err(KeyError::Rejected(
                "public key is not an uncompressed point",
            ));
        };
        if coords.len() != 64 {
            return Err(KeyError::Rejected("public key is not a P-256 point"));
        }
        let (x, y) = (B64.encode(&coords[..32]), B64.encode(&coords[32..]));
        // RFC 7638 thumbprint: SHA-256 of the required members in lexicographic order, no
        // whitespace. Stable for a key, so every instance sharing it publishes the same kid.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64.encode(digest::digest(&digest::SHA256, canonical.as_bytes()));
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": "ES256",
        }]});
        Ok(Self {
            key,
            header: B64.encode(header.to_string()).into(),
            kid: kid.into(),
            jwks: Bytes::from(jwks.to_string()),
            clock: Arc::new(SystemClock),
        })
    }

    /// Reads time from `clock` instead of the system clock (tests use a
    /// [`FakeClock`](secure_routes::clock::FakeClock)).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::clock::FakeClock;
    /// use secure_routes_gateway::identity::AssertionSigner;
    /// let signer = AssertionSigner::generate().unwrap()
    ///     .with_clock(Arc::new(FakeClock::new(Duration::from_secs(1_000))));
    /// # let _ = signer;
    /// ```
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The key id: the RFC 7638 JWK thumbprint of the public key (base64url SHA-256, 43
    /// characters), in every assertion's header and in the JWK Set.
    ///
    /// ```
    /// use secure_routes_gateway::identity::AssertionSigner;
    /// let s = AssertionSigner::generate().unwrap();
    /// assert!(std::str::from_utf8(&s.jwks_json()).unwrap().contains(s.kid()));
    /// ```
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK Set with the public key, `{"keys":[{"kty":"EC","crv":"P-256","x":...,"y":...,
    /// "kid":...,"use":"sig","alg":"ES256"}]}`, computed once (cloning the `Bytes` is cheap).
    /// The gateway serves it at `/_secure-routes/jwks.json`.
    ///
    /// ```
    /// use secure_routes_gateway::identity::AssertionSigner;
    /// let jwks: serde_json::Value =
    ///     serde_json::from_slice(&AssertionSigner::generate().unwrap().jwks_json()).unwrap();
    /// assert_eq!(jwks["keys"][0]["alg"], "ES256");
    /// assert!(jwks["keys"][0].get("d").is_none()); // public only
    /// ```
    pub fn jwks_json(&self) -> Bytes {
        self.jwks.clone()
    }

    /// The private key as a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`), to put in
    /// [`KEY_ENV`] for other instances. It is the secret: never log it.
    ///
    /// ```
    /// use secure_routes_gateway::identity::AssertionSigner;
    /// assert!(AssertionSigner::generate().unwrap().to_pkcs8_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    /// ```
    pub fn to_pkcs8_pem(&self) -> String {
        // Serializing a key we hold cannot fail short of an allocation failure in the library;
        // an empty string then fails `from_pem` loudly rather than panicking here.
        let der = self.key.to_pkcs8v1().map(|d| d.as_ref().to_vec());
        der.map(|der| {
            pem::encode_config(
                &pem::Pem::new("PRIVATE KEY", der),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .unwrap_or_default()
    }

    /// Signs one assertion: a compact JWT, header `{"alg":"ES256","typ":"JWT","kid":...}`,
    /// claims `iss` ([`ISSUER`]), `aud`, `sub` (absent when anonymous), `roles` (possibly
    /// empty; [`secure_routes::authz::roles`], duplicates dropped), `rid`, `iat` and `nbf` (now,
    /// from the clock), `exp` (`iat` + [`LIFETIME`]) and `jti` (a fresh UUID, so an upstream
    /// can refuse a replay within the lifetime).
    ///
    /// ```
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// use secure_routes_gateway::identity::{Assertion, AssertionSigner};
    /// let signer = AssertionSigner::generate().unwrap();
    /// let p = Principal::new("alice", CredentialSource::Header);
    /// let jwt = signer.sign(&Assertion { audience: "http://up", principal: Some(&p), request_id: "r" }).unwrap();
    /// assert_eq!(jwt.split('.').count(), 3);
    /// ```
    pub fn sign(&self, assertion: &Assertion<'_>) -> Result<String, KeyError> {
        let now = self.clock.now().as_secs();
        let claims = Claims {
            iss: ISSUER,
            aud: assertion.audience,
            sub: assertion.principal.map(Principal::subject),
            roles: assertion.principal.map(distinct_roles).unwrap_or_default(),
            rid: assertion.request_id,
            iat: now,
            nbf: now,
            exp: now.saturating_add(LIFETIME.as_secs()),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Crypto)?;
        let mut jwt = String::with_capacity(self.header.len() + payload.len() * 4 / 3 + 100);
        jwt.push_str(&self.header);
        jwt.push('.');
        B64.encode_string(&payload, &mut jwt);
        let signature = self
            .key
            .sign(&SystemRandom::new(), jwt.as_bytes())
            .map_err(|_| KeyError::Crypto)?;
        jwt.push('.');
        B64.encode_string(signature.as_ref(), &mut jwt);
        Ok(jwt)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use secure_routes::auth::CredentialSource;

    use super::*;

    fn cookies(h: &HeaderMap) -> Vec<&str> {
        h.get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn forged_identity_headers_are_removed_others_kept() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("X-Secure-Routes-Subject", "admin"),
            ("x-secure-routes-subject", "root"),
            ("X-SECURE-ROUTES-ROLES", "admin"),
            ("x-Secure-Routes-Assertion", "eyJ.forged.sig"),
            ("x-secure-routes-anything-else", "1"),
            ("x-secure-route", "kept: not the prefix"),
            ("x-request-id", "client-id"),
            ("accept", "*/*"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        strip_incoming(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-request-id", "x-secure-route"]);
        assert_eq!(h["x-request-id"], "client-id");
    }

    #[test]
    fn credentials_are_stripped_other_cookies_kept() {
        let names = CookieNames::new(["sr-session"]);
        let mut h = HeaderMap::new();
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(AUTHORIZATION, HeaderValue::from_static("Basic b"));
        h.append(
            COOKIE,
            HeaderValue::from_static(
                "theme=dark;sr-session=tok ; sb-abcd-auth-token.0=c0;  lang = en ;;flag",
            ),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("sb-abcd-auth-token.1=c1; sb-abcd-auth-token=whole"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static(
                "sr-session.2=x; sr-session2=keep; SR-SESSION=keep; sb-abcd-auth-token-code-verifier=keep",
            ),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("untouched=1;  spacing=kept "),
        );
        // Whitespace other readers trim: a UTF-8 no-break space (the cookie crate) and a
        // Latin-1 one, 0xA0 (JavaScript's trim in Node).
        h.append(
            COOKIE,
            HeaderValue::from_bytes("\u{a0}sr-session=a; a=1".as_bytes()).unwrap(),
        );
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"\xa0sr-session=b; \xa0sb-p-auth-token=c\xa0").unwrap(),
        );
        h.append("accept", HeaderValue::from_static("*/*"));
        strip_credentials(&mut h, &names);
        assert!(h.get(AUTHORIZATION).is_none());
        assert_eq!(
            cookies(&h),
            [
                "theme=dark; lang = en; flag",
                "sr-session2=keep; SR-SESSION=keep; sb-abcd-auth-token-code-verifier=keep",
                // A line with nothing to strip is passed on byte for byte.
                "untouched=1;  spacing=kept ",
                "a=1",
            ]
        );
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn cookie_name_rules() {
        let names = CookieNames::new(["sr-session", ""]);
        for yes in [
            "sr-session",
            "sr-session.0",
            "sr-session.15",
            "sb-x-auth-token",
            "sb-abcdefghijklmnop-auth-token.3",
            "sb-a-auth-token-auth-token",
            "sb-a-auth-token-auth-token.1",
        ] {
            assert!(names.is_credential(yes), "{yes}");
        }
        for no in [
            "",
            "sr-session.",
            "sr-session.1a",
            "sr-sessionx",
            "sb--auth-token",
            "sb-auth-token",
            "sb-x-auth-token.",
            "sb-x-auth-token.a",
            "sb-x-auth-tokens",
            "xsb-x-auth-token",
            "sb-x-auth-token-code-verifier",
        ] {
            assert!(!names.is_credential(no), "{no}");
        }
    }

    #[test]
    fn identity_headers_replace_and_encode() {
        let claims = serde_json::json!({
            "role": "admin",
            "roles": ["admin", "ed itor", "50%"],
            "app_metadata": {"roles": ["ops"]},
            "user_metadata": {"role": "owner"},
        });
        let p = Principal::new("a\r\nb\0", CredentialSource::Header)
            .with_claims(claims.as_object().unwrap().clone());
        let mut h = HeaderMap::new();
        h.append(SUBJECT, HeaderValue::from_static("stale"));
        h.append(SUBJECT, HeaderValue::from_static("stale2"));
        h.append(REQUEST_ID, HeaderValue::from_static("client"));
        set_identity(&mut h, Some(&p), "r\u{7f}1", "h.p.s");
        assert_eq!(h.get_all(SUBJECT).iter().count(), 1);
        assert_eq!(h[SUBJECT], "a%0D%0Ab%00");
        assert_eq!(h[ROLES], "admin,ed%20itor,50%25,ops");
        assert_eq!(h[REQUEST_ID], "r%7F1");
        assert_eq!(h[ASSERTION], "h.p.s");
        assert!(h[ASSERTION].is_sensitive());
        // A value that is not a header value is left out rather than passed on half-set.
        set_identity(&mut h, None, "r2", "bad\nassertion");
        assert!(h.get(SUBJECT).is_none() && h.get(ROLES).is_none());
        assert!(h.get(ASSERTION).is_none());
    }

    #[test]
    fn pem_errors_name_the_problem_without_the_key() {
        let e = AssertionSigner::from_pem("").unwrap_err();
        assert!(matches!(e, KeyError::Pem(_)), "{e}");
        let e = AssertionSigner::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        )
        .unwrap_err();
        assert!(e.to_string().contains("CERTIFICATE"), "{e}");
        let e = AssertionSigner::from_pem(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
        let e = AssertionSigner::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(matches!(e, KeyError::Rejected(_)), "{e}");
        let signer = AssertionSigner::generate().unwrap();
        assert_eq!(
            format!("{signer:?}"),
            format!("AssertionSigner {{ kid: {:?}, .. }}", signer.kid())
        );
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // The RFC 7638 §3.1 example is RSA; check against jsonwebtoken's own thumbprint of the
        // served JWK instead, an implementation written apart from this one.
        let signer = AssertionSigner::generate().unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&signer.jwks_json()).unwrap();
        let thumb = set.keys[0]
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap();
        assert_eq!(thumb, signer.kid());
    }

    /// Any header-value bytes (what a client can put on the wire).
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        proptest::collection::vec(any::<u8>(), 0..64)
            .prop_filter_map("not a header value", |b| HeaderValue::from_bytes(&b).ok())
    }

    /// Bytes that often look like cookies.
    fn cookie_line() -> impl Strategy<Value = HeaderValue> {
        let piece = prop_oneof![
            Just("sr-session=".to_owned()),
            Just("sb-p-auth-token.".to_owned()),
            Just("sb-".to_owned()),
            Just("-auth-token".to_owned()),
            Just("; ".to_owned()),
            Just("=".to_owned()),
            "[ -~\t\u{80}-\u{ff}]{0,6}",
        ];
        proptest::collection::vec(piece, 0..8).prop_filter_map("not a header value", |parts| {
            HeaderValue::from_bytes(parts.concat().as_bytes()).ok()
        })
    }

    proptest! {
        #[test]
        fn strip_credentials_never_panics_and_leaves_no_credential(
            lines in proptest::collection::vec(prop_oneof![header_value(), cookie_line()], 0..4),
        ) {
            let names = CookieNames::new(["sr-session"]);
            let mut h = HeaderMap::new();
            for l in &lines {
                h.append(COOKIE, l.clone());
            }
            strip_credentials(&mut h, &names);
            // The core's own reader (the cookie crate, as `cookies::single_cookie` uses it)
            // finds no credential in what is left.
            for line in h.get_all(COOKIE) {
                let text = String::from_utf8_lossy(line.as_bytes());
                for c in cookie::Cookie::split_parse(text).flatten() {
                    prop_assert!(!names.is_credential(c.name()), "{line:?}");
                }
            }
        }

        #[test]
        fn set_identity_never_panics_and_round_trips(
            subject in any::<String>(),
            roles in proptest::collection::vec(any::<String>(), 0..4),
            request_id in any::<String>(),
            assertion in any::<String>(),
        ) {
            let claims = serde_json::json!({"roles": roles});
            let p = Principal::new(subject.as_str(), CredentialSource::Header)
                .with_claims(claims.as_object().unwrap().clone());
            let mut h = HeaderMap::new();
            set_identity(&mut h, Some(&p), &request_id, &assertion);
            let decode = |v: &HeaderValue| {
                percent_encoding::percent_decode(v.as_bytes()).decode_utf8().unwrap().into_owned()
            };
            prop_assert_eq!(decode(&h[SUBJECT]), subject);
            prop_assert_eq!(decode(&h[REQUEST_ID]), request_id);
            let listed: Vec<String> = h.get(ROLES).map(|v| {
                v.to_str().unwrap().split(',').map(|r| {
                    percent_encoding::percent_decode_str(r).decode_utf8().unwrap().into_owned()
                }).collect()
            }).unwrap_or_default();
            prop_assert_eq!(listed, distinct_roles(&p));
        }
    }
}
