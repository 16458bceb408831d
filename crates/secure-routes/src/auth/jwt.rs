//! JWT bearer authentication (RFC 7519 / RFC 7515), from `Authorization: Bearer` or a cookie.
//!
//! The classic JWT mistakes are ruled out by construction:
//!
//! * **The algorithm is pinned by configuration**, never taken from the token. The header's
//!   `alg` must equal the configured one exactly, so `"alg": "none"` (in any casing) is refused,
//!   and so is the RS256 → HS256 confusion attack (an attacker signing an HS256 token with the
//!   server's *public* RSA key as the HMAC secret).
//! * `exp` is required, `nbf` is honoured, clock leeway is small (30 s by default, at most
//!   [`MAX_LEEWAY`]), `iss` and `aud` are checked when configured, and `sub` must be a
//!   non-empty string: it becomes the [`Principal`]'s subject, with every claim attached.
//!   Time comes from the configured [`Clock`](crate::clock::Clock) (the system clock unless
//!   [`JwtAuthenticatorBuilder::clock`] says otherwise).
//! * HMAC secrets shorter than the hash output are refused at build time (RFC 7518 §3.2).
//! * Tokens over [`MAX_TOKEN_BYTES`] are refused before any parsing.
//! * Failure reasons are short static strings (`expired`, `bad_signature`, ...) for the audit
//!   log; they never contain the token.
//!
//! A token in the configured cookie is *ambient* (the browser sends it on cross-site requests),
//! so such a principal has [`CredentialSource::Cookie`](super::CredentialSource::Cookie) and
//! CSRF protection applies to it. A bearer header wins over the cookie; an `Authorization`
//! header with another scheme (say `Basic`) is not a credential for this authenticator and is
//! ignored.
//!
//! With [`cache`](JwtAuthenticatorBuilder::cache), successful verifications are remembered
//! (keyed by the token's SHA-256, until its `exp`), so a repeated asymmetric token costs a hash
//! and a map lookup instead of a signature check.
//!
//! ```
//! use std::time::Duration;
//! use http::Request;
//! use secure_routes::auth::{Authenticator, CredentialSource, jwt::JwtAuthenticator};
//!
//! let jwt = JwtAuthenticator::builder()
//!     .hs256(b"a-jwt-secret-of-at-least-32-bytes!!")
//!     .issuer("https://auth.example")
//!     .cookie("sr-session")
//!     .build()
//!     .unwrap();
//! let token = jwt.mint("alice", Duration::from_secs(300)).unwrap();
//!
//! let (parts, ()) = Request::get("/")
//!     .header("authorization", format!("Bearer {token}"))
//!     .body(())
//!     .unwrap()
//!     .into_parts();
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let p = jwt.authenticate(&parts).await.unwrap();
//! assert_eq!(p.subject(), "alice");
//! assert_eq!(p.source(), CredentialSource::Header);
//! assert_eq!(p.claim("iss").and_then(|v| v.as_str()), Some("https://auth.example"));
//! # });
//! ```

use std::fmt;
use std::time::Duration;

use http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::claims::{Claims, PINNED};
use super::verify::{
    ClaimOptions, ClaimRules, HmacKey, KeySpec, Verified, alg_name, check_key,
    claim_option_methods, parse_header,
};
use super::{AuthError, Authenticator, BoxFuture, Principal};
use crate::error::ConfigError;

// The limits belong to the shared verifier (every JWT authenticator applies them); this is
// their public home.
pub use super::verify::{DEFAULT_LEEWAY, MAX_LEEWAY, MAX_TOKEN_BYTES};

/// Configures a [`JwtAuthenticator`]; see [`JwtAuthenticator::builder`].
///
/// Exactly one key must be configured. [`build`](Self::build) reports every problem at once.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::auth::jwt::JwtAuthenticator;
/// let err = JwtAuthenticator::builder()
///     .hs256(b"short")
///     .leeway(Duration::from_secs(3600))
///     .cookie("bad cookie name")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.problems().len(), 3);
/// ```
#[derive(Clone)]
pub struct JwtAuthenticatorBuilder {
    keys: Vec<KeySpec>,
    claims: ClaimOptions,
}

impl fmt::Debug for JwtAuthenticatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticatorBuilder")
            .field("keys", &self.keys.len())
            .field("claims", &self.claims)
            .finish()
    }
}

claim_option_methods!(
    JwtAuthenticatorBuilder,
    "secure_routes::auth::jwt::JwtAuthenticator::builder().hs256([7u8; 32])"
);

impl JwtAuthenticatorBuilder {
    fn key(mut self, k: KeySpec) -> Self {
        self.keys.push(k);
        self
    }

    /// Verifies HS256 tokens with `secret` (at least 32 bytes).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// assert!(JwtAuthenticator::builder().hs256([1u8; 32]).build().is_ok());
    /// ```
    pub fn hs256(self, secret: impl AsRef<[u8]>) -> Self {
        self.key(KeySpec::Hmac(Algorithm::HS256, secret.as_ref().to_vec()))
    }

    /// Verifies HS384 tokens with `secret` (at least 48 bytes).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// assert!(JwtAuthenticator::builder().hs384([1u8; 47]).build().is_err());
    /// ```
    pub fn hs384(self, secret: impl AsRef<[u8]>) -> Self {
        self.key(KeySpec::Hmac(Algorithm::HS384, secret.as_ref().to_vec()))
    }

    /// Verifies HS512 tokens with `secret` (at least 64 bytes).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// assert_eq!(JwtAuthenticator::builder().hs512([1u8; 64]).build().unwrap().algorithm(), "HS512");
    /// ```
    pub fn hs512(self, secret: impl AsRef<[u8]>) -> Self {
        self.key(KeySpec::Hmac(Algorithm::HS512, secret.as_ref().to_vec()))
    }

    /// Verifies RS256 tokens with an RSA public key (PEM, `PUBLIC KEY` or `RSA PUBLIC KEY`).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// assert!(JwtAuthenticator::builder().rs256_pem("not a pem").build().is_err());
    /// ```
    pub fn rs256_pem(self, public_key_pem: impl AsRef<[u8]>) -> Self {
        self.key(KeySpec::Pem(
            Algorithm::RS256,
            public_key_pem.as_ref().to_vec(),
        ))
    }

    /// Verifies ES256 tokens with a P-256 public key (PEM, `PUBLIC KEY`).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// assert!(JwtAuthenticator::builder().es256_pem("").build().is_err());
    /// ```
    pub fn es256_pem(self, public_key_pem: impl AsRef<[u8]>) -> Self {
        self.key(KeySpec::Pem(
            Algorithm::ES256,
            public_key_pem.as_ref().to_vec(),
        ))
    }

    /// Verifies EdDSA (Ed25519) tokens with a public key (PEM, `PUBLIC KEY`).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// let private = "-----BEGIN PRIVATE KEY-----\n";
    /// assert!(JwtAuthenticator::builder().eddsa_pem(private).build().is_err());
    /// ```
    pub fn eddsa_pem(self, public_key_pem: impl AsRef<[u8]>) -> Self {
        self.key(KeySpec::Pem(
            Algorithm::EdDSA,
            public_key_pem.as_ref().to_vec(),
        ))
    }

    /// Validates the configuration and builds the authenticator.
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// assert_eq!(JwtAuthenticator::builder().build().unwrap_err().problems().len(), 1);
    /// ```
    pub fn build(self) -> Result<JwtAuthenticator, ConfigError> {
        let mut problems = Vec::new();
        let key = match self.keys.as_slice() {
            [] => {
                problems.push(
                    "jwt: no key configured (hs256, hs384, hs512, rs256_pem, es256_pem or eddsa_pem)"
                        .to_owned(),
                );
                None
            }
            [k] => check_key("jwt", k, &mut problems),
            _ => {
                problems.push(format!(
                    "jwt: {} keys configured; configure exactly one (the algorithm is pinned)",
                    self.keys.len()
                ));
                None
            }
        };
        self.claims.check("jwt", &mut problems);
        ConfigError::check(problems, ())?;
        let Some((alg, decoding, encoding)) = key else {
            return Err(ConfigError::new("jwt: no usable key"));
        };
        let hmac = match self.keys.as_slice() {
            [KeySpec::Hmac(alg, secret)] => Some(HmacKey::new(*alg, secret)),
            _ => None,
        };
        let rules = self.claims.build();
        Ok(JwtAuthenticator {
            alg,
            decoding,
            hmac,
            encoding,
            validation: rules.validation(alg),
            rules,
        })
    }
}

/// Verifies JWTs signed with one pinned key; build it with [`JwtAuthenticator::builder`].
///
/// ```
/// use secure_routes::auth::jwt::JwtAuthenticator;
/// let j = JwtAuthenticator::builder().hs256([1u8; 32]).build().unwrap();
/// assert_eq!(j.algorithm(), "HS256");
/// ```
pub struct JwtAuthenticator {
    alg: Algorithm,
    decoding: DecodingKey,
    /// The HMAC secret keyed once (HS256/384/512): verified without jsonwebtoken.
    hmac: Option<HmacKey>,
    encoding: Option<EncodingKey>,
    validation: Validation,
    rules: ClaimRules,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("alg", &self.alg)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    /// A builder with no key, leeway [`DEFAULT_LEEWAY`], no issuer, audience, cookie or cache,
    /// and the system clock.
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// let j = JwtAuthenticator::builder().hs384([3u8; 48]).build().unwrap();
    /// assert_eq!(j.algorithm(), "HS384");
    /// ```
    pub fn builder() -> JwtAuthenticatorBuilder {
        JwtAuthenticatorBuilder {
            keys: Vec::new(),
            claims: ClaimOptions::default(),
        }
    }

    /// The pinned algorithm's name as it appears in a token header (`"HS256"`, `"EdDSA"`, ...).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// let j = JwtAuthenticator::builder().hs512([1u8; 64]).build().unwrap();
    /// assert_eq!(j.algorithm(), "HS512");
    /// ```
    pub fn algorithm(&self) -> &'static str {
        alg_name(self.alg)
    }

    /// The cookie tokens are also read from, if any.
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// let j = JwtAuthenticator::builder().hs256([1u8; 32]).build().unwrap();
    /// assert_eq!(j.cookie_name(), None);
    /// ```
    pub fn cookie_name(&self) -> Option<&str> {
        self.rules.cookie()
    }

    /// How many verified tokens the cache holds now (0 without a cache).
    ///
    /// ```
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// let j = JwtAuthenticator::builder().hs256([1u8; 32]).cache(100).build().unwrap();
    /// assert_eq!(j.cached_tokens(), 0);
    /// ```
    pub fn cached_tokens(&self) -> usize {
        self.rules.cached_tokens()
    }

    /// Verifies `token` and returns its claims (which include a non-empty string `sub`).
    /// Always checks the signature: only [`authenticate`](Authenticator::authenticate)
    /// consults the cache.
    ///
    /// ```
    /// # use secure_routes::auth::{AuthError, jwt::JwtAuthenticator};
    /// let j = JwtAuthenticator::builder().hs256([1u8; 32]).build().unwrap();
    /// let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    /// assert_eq!(j.verify(none).unwrap_err(), AuthError::Invalid("wrong_algorithm"));
    /// ```
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_token(token).map(|v| v.claims)
    }

    /// The algorithm is pinned: compared exactly, so `none`, `None`, `NONE` and every other
    /// algorithm fail before the library sees the token.
    fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        let header = parse_header(token)?;
        if header.alg != Some(alg_name(self.alg)) {
            return Err(AuthError::Invalid("wrong_algorithm"));
        }
        match &self.hmac {
            Some(key) => self.rules.decode_hmac(token, &header, key),
            None => self.rules.decode(token, &self.decoding, &self.validation),
        }
    }

    /// Mints a token for `sub`, valid for `ttl` from now (by the configured clock), carrying
    /// `iat`, `exp`, the first configured issuer and every configured audience, so that it
    /// passes this authenticator. Only for HMAC keys (the others are configured with public
    /// keys only); used by the CLI's `token` command and by tests.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use secure_routes::auth::jwt::JwtAuthenticator;
    /// let j = JwtAuthenticator::builder().hs256([1u8; 32]).audience("authenticated").build().unwrap();
    /// let t = j.mint("alice", Duration::from_secs(60)).unwrap();
    /// assert_eq!(j.verify(&t).unwrap()["aud"], "authenticated");
    /// assert!(j.mint("", Duration::from_secs(60)).is_err());
    /// ```
    pub fn mint(&self, sub: &str, ttl: Duration) -> Result<String, ConfigError> {
        let Some(key) = &self.encoding else {
            return Err(ConfigError::new(
                "jwt: minting needs an HMAC key (this authenticator only holds a public key)",
            ));
        };
        if sub.is_empty() {
            return Err(ConfigError::new("jwt: the subject must not be empty"));
        }
        let now = self.rules.now().as_secs();
        let mut claims = Claims::new();
        claims.insert("sub".into(), sub.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
        if let Some(iss) = self.rules.issuers().first() {
            claims.insert("iss".into(), iss.as_str().into());
        }
        match self.rules.audiences() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), one.as_str().into());
            }
            many => {
                claims.insert("aud".into(), many.to_vec().into());
            }
        }
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|_| ConfigError::new("jwt: signing failed"))
    }

    fn check(&self, parts: &Parts) -> Result<Principal, AuthError> {
        // One pinned key never changes: every cache entry is pinned.
        let miss = match self.rules.lookup(parts, None)? {
            Ok(cached) => return Ok(cached),
            Err(miss) => miss,
        };
        let verified = self.verify_token(&miss.token)?;
        Ok(self.rules.admit(miss, verified, PINNED))
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let result = self.check(parts);
        Box::pin(async move { result })
    }

    fn authenticate_now(&self, parts: &Parts) -> Option<Result<Principal, AuthError>> {
        Some(self.check(parts))
    }
}

/// Mints an HS256 token for `sub` valid for `ttl` (for the CLI's `token` command). The secret
/// must be at least 32 bytes, as [`JwtAuthenticatorBuilder::hs256`] requires.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::auth::jwt::{JwtAuthenticator, mint_hs256};
/// let secret = b"a-jwt-secret-of-at-least-32-bytes!!";
/// let t = mint_hs256(secret, "alice", Duration::from_secs(60)).unwrap();
/// let j = JwtAuthenticator::builder().hs256(secret).build().unwrap();
/// assert_eq!(j.verify(&t).unwrap()["sub"], "alice");
/// assert!(mint_hs256(b"short", "alice", Duration::from_secs(60)).is_err());
/// ```
pub fn mint_hs256(secret: &[u8], sub: &str, ttl: Duration) -> Result<String, ConfigError> {
    JwtAuthenticator::builder()
        .hs256(secret)
        .build()?
        .mint(sub, ttl)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use http::{HeaderValue, Request};
    use jsonwebtoken::{EncodingKey, encode};
    use serde_json::{Value, json};

    use super::*;
    use crate::auth::CredentialSource;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn sign(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn auth() -> JwtAuthenticator {
        JwtAuthenticator::builder()
            .hs256(SECRET)
            .cookie("sr-session")
            .build()
            .unwrap()
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = Request::new(());
        for (k, v) in headers {
            req.headers_mut().append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        req.into_parts().0
    }

    fn run(a: &JwtAuthenticator, headers: &[(&str, &str)]) -> Result<Principal, AuthError> {
        let p = parts(headers);
        futures_util::FutureExt::now_or_never(a.authenticate(&p)).unwrap()
    }

    /// Request headers, and the expected credential source or error.
    type Case = (
        Vec<(&'static str, String)>,
        Result<CredentialSource, AuthError>,
    );

    #[test]
    fn credential_table() {
        let a = auth();
        let good = sign(&json!({"sub": "alice", "exp": now() + 60}));
        let bearer = format!("Bearer {good}");
        let cookie = format!("sr-session={good}");
        let other = sign(&json!({"sub": "bob", "exp": now() + 60}));
        let cases: Vec<Case> = vec![
            (vec![], Err(AuthError::Missing)),
            (
                vec![("authorization", bearer.clone())],
                Ok(CredentialSource::Header),
            ),
            (
                vec![("authorization", format!("bearer {good}"))],
                Ok(CredentialSource::Header),
            ),
            (
                vec![("authorization", format!("BEARER   {good}"))],
                Ok(CredentialSource::Header),
            ),
            (
                vec![("cookie", cookie.clone())],
                Ok(CredentialSource::Cookie),
            ),
            (
                vec![("cookie", format!("a=b; {cookie}; c=d"))],
                Ok(CredentialSource::Cookie),
            ),
            // Header wins over cookie, even a bad cookie.
            (
                vec![
                    ("authorization", bearer.clone()),
                    ("cookie", "sr-session=junk".into()),
                ],
                Ok(CredentialSource::Header),
            ),
            // Another scheme is not ours: fall back to the cookie, or Missing.
            (
                vec![("authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l".into())],
                Err(AuthError::Missing),
            ),
            (
                vec![
                    ("authorization", "Basic YWxh".into()),
                    ("cookie", cookie.clone()),
                ],
                Ok(CredentialSource::Cookie),
            ),
            // Malformed headers are Invalid, never Missing.
            (
                vec![("authorization", "Bearer".into())],
                Err(AuthError::Invalid("malformed")),
            ),
            (
                vec![("authorization", "Bearer ".into())],
                Err(AuthError::Invalid("malformed")),
            ),
            (
                vec![("authorization", format!("Bearer {good} extra"))],
                Err(AuthError::Invalid("malformed")),
            ),
            (
                vec![("authorization", "Bearer a=b".into())],
                Err(AuthError::Invalid("malformed")),
            ),
            (
                vec![("authorization", "(weird) x".into())],
                Err(AuthError::Invalid("malformed")),
            ),
            (
                vec![
                    ("authorization", bearer.clone()),
                    ("authorization", bearer.clone()),
                ],
                Err(AuthError::Invalid("multiple_credentials")),
            ),
            (
                vec![("authorization", "Bearer not.a.jwt".into())],
                Err(AuthError::Invalid("malformed")),
            ),
            (
                vec![("authorization", "Bearer abc".into())],
                Err(AuthError::Invalid("malformed")),
            ),
            // Cookie problems.
            (
                vec![("cookie", "sr-session=".into())],
                Err(AuthError::Missing),
            ),
            (vec![("cookie", "other=1".into())], Err(AuthError::Missing)),
            (
                vec![("cookie", format!("{cookie}; sr-session={other}"))],
                Err(AuthError::Invalid("ambiguous_cookie")),
            ),
            (
                vec![("cookie", cookie.clone()), ("cookie", cookie.clone())],
                Ok(CredentialSource::Cookie),
            ),
        ];
        for (hs, want) in cases {
            let pairs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let got = run(&a, &pairs).map(|p| {
                assert_eq!(p.subject(), "alice");
                p.source()
            });
            assert_eq!(got, want, "{hs:?}");
        }
    }

    #[test]
    fn no_cookie_configured_ignores_cookies() {
        let a = JwtAuthenticator::builder().hs256(SECRET).build().unwrap();
        let good = sign(&json!({"sub": "alice", "exp": now() + 60}));
        assert_eq!(
            run(&a, &[("cookie", &format!("sr-session={good}"))]).unwrap_err(),
            AuthError::Missing
        );
    }

    #[test]
    fn claims_table() {
        let a = JwtAuthenticator::builder()
            .hs256(SECRET)
            .issuer("iss-a")
            .issuer("iss-b")
            .audience("aud-a")
            .build()
            .unwrap();
        let n = now();
        let cases: Vec<(Value, Result<(), &str>)> = vec![
            (
                json!({"sub": "u", "exp": n + 60, "iss": "iss-a", "aud": "aud-a"}),
                Ok(()),
            ),
            (
                json!({"sub": "u", "exp": n + 60, "iss": "iss-b", "aud": ["x", "aud-a"]}),
                Ok(()),
            ),
            // Within leeway.
            (
                json!({"sub": "u", "exp": n - 5, "iss": "iss-a", "aud": "aud-a"}),
                Ok(()),
            ),
            (
                json!({"sub": "u", "exp": n + 60, "nbf": n + 5, "iss": "iss-a", "aud": "aud-a"}),
                Ok(()),
            ),
            (
                json!({"sub": "u", "exp": n - 120, "iss": "iss-a", "aud": "aud-a"}),
                Err("expired"),
            ),
            (
                json!({"sub": "u", "exp": n + 600, "nbf": n + 300, "iss": "iss-a", "aud": "aud-a"}),
                Err("not_yet_valid"),
            ),
            (
                json!({"sub": "u", "iss": "iss-a", "aud": "aud-a"}),
                Err("missing_exp"),
            ),
            // Not a number: jsonwebtoken counts it as absent.
            (
                json!({"sub": "u", "exp": "soon", "iss": "iss-a", "aud": "aud-a"}),
                Err("missing_exp"),
            ),
            (
                json!({"sub": "u", "exp": n + 60, "iss": "evil", "aud": "aud-a"}),
                Err("bad_issuer"),
            ),
            (
                json!({"sub": "u", "exp": n + 60, "aud": "aud-a"}),
                Err("missing_iss"),
            ),
            (
                json!({"sub": "u", "exp": n + 60, "iss": "iss-a", "aud": "other"}),
                Err("bad_audience"),
            ),
            (
                json!({"sub": "u", "exp": n + 60, "iss": "iss-a"}),
                Err("missing_aud"),
            ),
            (
                json!({"exp": n + 60, "iss": "iss-a", "aud": "aud-a"}),
                Err("missing_sub"),
            ),
            (
                json!({"sub": "", "exp": n + 60, "iss": "iss-a", "aud": "aud-a"}),
                Err("missing_sub"),
            ),
            (
                json!({"sub": 42, "exp": n + 60, "iss": "iss-a", "aud": "aud-a"}),
                Err("missing_sub"),
            ),
        ];
        for (claims, want) in cases {
            let got = a.verify(&sign(&claims)).map(|_| ());
            assert_eq!(got, want.map_err(AuthError::Invalid), "{claims}");
        }
    }

    #[test]
    fn aud_without_configured_audience_is_refused() {
        let a = auth();
        let t = sign(&json!({"sub": "u", "exp": now() + 60, "aud": "someone"}));
        assert_eq!(
            a.verify(&t).unwrap_err(),
            AuthError::Invalid("bad_audience")
        );
    }

    #[test]
    fn header_checks() {
        let a = auth();
        let payload = URL_SAFE_NO_PAD.encode(json!({"sub": "u", "exp": now() + 60}).to_string());
        for (header, want) in [
            (json!({"alg": "none"}), "wrong_algorithm"),
            (json!({"alg": "None"}), "wrong_algorithm"),
            (json!({"alg": "NONE"}), "wrong_algorithm"),
            (json!({"alg": "nOnE"}), "wrong_algorithm"),
            (json!({"alg": "hs256"}), "wrong_algorithm"),
            (json!({"alg": "HS512"}), "wrong_algorithm"),
            (json!({"alg": ["HS256"]}), "wrong_algorithm"),
            (json!({}), "wrong_algorithm"),
            (
                json!({"alg": "HS256", "crit": ["exp"]}),
                "unsupported_header",
            ),
            (json!("HS256"), "malformed"),
        ] {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            for sig in ["", "AAAA"] {
                let t = format!("{h}.{payload}.{sig}");
                assert_eq!(
                    a.verify(&t).unwrap_err(),
                    AuthError::Invalid(want),
                    "{header} {sig:?}"
                );
            }
        }
    }

    #[test]
    fn oversized_is_invalid() {
        let a = auth();
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            run(&a, &[("authorization", &big)]).unwrap_err(),
            AuthError::Invalid("oversized")
        );
        let big_cookie = format!("sr-session={}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            run(&a, &[("cookie", &big_cookie)]).unwrap_err(),
            AuthError::Invalid("oversized")
        );
    }

    #[test]
    fn config_problems_are_all_reported() {
        let err = JwtAuthenticator::builder()
            .hs256([0u8; 31])
            .hs512([0u8; 64])
            .issuer("")
            .audience("")
            .leeway(Duration::from_secs(301))
            .cookie("a;b")
            .build()
            .unwrap_err();
        assert_eq!(err.problems().len(), 5, "{err}");
        assert_eq!(
            JwtAuthenticator::builder()
                .build()
                .unwrap_err()
                .problems()
                .len(),
            1
        );
        for (b, ok) in [
            (JwtAuthenticator::builder().hs256([0u8; 31]), false),
            (JwtAuthenticator::builder().hs256([0u8; 32]), true),
            (JwtAuthenticator::builder().hs384([0u8; 47]), false),
            (JwtAuthenticator::builder().hs384([0u8; 48]), true),
            (JwtAuthenticator::builder().hs512([0u8; 63]), false),
            (JwtAuthenticator::builder().hs512([0u8; 64]), true),
            (JwtAuthenticator::builder().rs256_pem("not a pem"), false),
            (JwtAuthenticator::builder().es256_pem(""), false),
            (
                JwtAuthenticator::builder().eddsa_pem("-----BEGIN PRIVATE KEY-----\n"),
                false,
            ),
            (
                JwtAuthenticator::builder()
                    .hs256([0u8; 32])
                    .leeway(MAX_LEEWAY),
                true,
            ),
            (
                JwtAuthenticator::builder()
                    .hs256([0u8; 32])
                    .cookie("__Host-sr"),
                true,
            ),
            (
                JwtAuthenticator::builder().hs256([0u8; 32]).cookie(""),
                false,
            ),
        ] {
            let shown = format!("{b:?}");
            assert_eq!(b.build().is_ok(), ok, "{shown}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let b = JwtAuthenticator::builder().hs256(b"super-secret-short");
        assert!(!format!("{b:?}").contains("super-secret"));
        let e = b.clone().build().map(|_| ()).unwrap_err().to_string();
        assert!(!e.contains("super-secret"), "{e}");
        let a = auth();
        assert!(!format!("{a:?}").contains("0123456789"));
    }

    #[test]
    fn mint_round_trip_with_hs384() {
        let a = JwtAuthenticator::builder()
            .hs384([9u8; 48])
            .issuer("me")
            .audience("a")
            .audience("b")
            .build()
            .unwrap();
        let t = a.mint("carol", Duration::from_secs(60)).unwrap();
        let claims = a.verify(&t).unwrap();
        assert_eq!(claims["sub"], "carol");
        assert_eq!(claims["aud"], json!(["a", "b"]));
        assert_eq!(claims["iss"], "me");
        // A token for another key or algorithm does not pass.
        let other = JwtAuthenticator::builder()
            .hs384([8u8; 48])
            .issuer("me")
            .audience("a")
            .build()
            .unwrap();
        assert_eq!(
            other.verify(&t).unwrap_err(),
            AuthError::Invalid("bad_signature")
        );
        let hs256 = JwtAuthenticator::builder()
            .hs256([9u8; 48])
            .issuer("me")
            .audience("a")
            .build()
            .unwrap();
        assert_eq!(
            hs256.verify(&t).unwrap_err(),
            AuthError::Invalid("wrong_algorithm")
        );
    }
}
