//! What every JWT authenticator shares (crate-private): the token limits, where the token is
//! found, the checks on its header, the claim rules (issuer, audience, `exp`/`nbf` against the
//! injected clock, a non-empty `sub`), the audit reason of each failure, and the
//! verified-token cache.
//!
//! [`jwt::JwtAuthenticator`](super::jwt::JwtAuthenticator) (one pinned key) and
//! `jwks::JwksAuthenticator` (keys from a JWK set) differ only in how they pick the key.
//!
//! This module is a leaf of `auth`: it names no authenticator and no provider. A provider
//! profile (Supabase) plugs its rules in as [`Hooks`] (how the session cookie holds the token,
//! which tokens are refused before any key is chosen) instead of being called from here, so
//! the profile builds on the verifier without the verifier depending on the profile.

use std::borrow::Cow;
use std::sync::{Arc, Once};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::request::Parts;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde_json::Value;

use super::cache::{CacheKey, TokenCache};
use super::claims::Claims;
use super::{AuthError, CredentialSource, Principal};
use crate::clock::{Clock, SystemClock};
use crate::cookies::{CookieLookup, single_cookie};

/// Tokens longer than this (in bytes) are refused before parsing.
///
/// ```
/// use secure_routes::auth::jwt::MAX_TOKEN_BYTES;
/// assert_eq!(MAX_TOKEN_BYTES, 8 * 1024);
/// ```
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default clock-skew allowance for `exp` and `nbf`.
///
/// ```
/// use secure_routes::auth::jwt::DEFAULT_LEEWAY;
/// assert_eq!(DEFAULT_LEEWAY.as_secs(), 30);
/// ```
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Largest clock-skew allowance accepted by the builders' `leeway` option
/// ([`JwtAuthenticatorBuilder::leeway`](crate::auth::jwt::JwtAuthenticatorBuilder::leeway)).
///
/// ```
/// use secure_routes::auth::jwt::{JwtAuthenticator, MAX_LEEWAY};
/// let b = || JwtAuthenticator::builder().hs256([7u8; 32]);
/// assert!(b().leeway(MAX_LEEWAY).build().is_ok());
/// assert!(b().leeway(MAX_LEEWAY + std::time::Duration::from_secs(1)).build().is_err());
/// ```
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Largest `capacity` accepted by the builders' `cache` option.
pub(crate) const MAX_CACHE_CAPACITY: usize = 10_000_000;

/// Selects jsonwebtoken's aws-lc-rs provider for the process, unless the application already
/// installed one. jsonwebtoken picks a provider from its crate features and panics at the first
/// signature if *both* backends end up enabled in the dependency graph; installing ours
/// explicitly before any token is handled rules that out.
pub(crate) fn ensure_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed: the application's choice stands.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    });
}

/// A configured key, before parsing.
#[derive(Clone)]
pub(crate) enum KeySpec {
    Hmac(Algorithm, Vec<u8>),
    Pem(Algorithm, Vec<u8>),
}

/// Parses a key spec, recording problems; never echoes secret material.
pub(crate) fn check_key(
    who: &str,
    k: &KeySpec,
    problems: &mut Vec<String>,
) -> Option<(Algorithm, DecodingKey, Option<EncodingKey>)> {
    match k {
        KeySpec::Hmac(alg, secret) => {
            // RFC 7518 §3.2: the key must be at least as long as the hash output.
            let min = match alg {
                Algorithm::HS384 => 48,
                Algorithm::HS512 => 64,
                _ => 32,
            };
            if secret.len() < min {
                problems.push(format!(
                    "{who}: the {alg:?} secret must be at least {min} bytes (got {})",
                    secret.len()
                ));
                return None;
            }
            Some((
                *alg,
                DecodingKey::from_secret(secret),
                Some(EncodingKey::from_secret(secret)),
            ))
        }
        KeySpec::Pem(alg, pem) => {
            if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
                problems.push(format!(
                    "{who}: the {alg:?} key must be a public key PEM, not a private key"
                ));
                return None;
            }
            let parsed = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
                _ => DecodingKey::from_ed_pem(pem),
            };
            match parsed {
                Ok(d) => Some((*alg, d, None)),
                Err(_) => {
                    problems.push(format!(
                        "{who}: the {alg:?} key is not a valid public key PEM"
                    ));
                    None
                }
            }
        }
    }
}

/// What a provider profile plugs into the verifier: plain functions, so the verifier calls the
/// profile without importing it (the Supabase profile sets both; see `supabase::HOOKS`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hooks {
    /// The token in the configured cookie `name`: [`AuthError::Missing`] when there is none
    /// (or it was emptied by a sign-out), [`AuthError::Invalid`] when it is unusable.
    pub(crate) cookie_token: fn(&HeaderMap, &str) -> Result<String, AuthError>,
    /// Refusals before any key is chosen. It sees the unverified token, so it may only
    /// refuse, never admit.
    pub(crate) precheck: fn(&str) -> Result<(), AuthError>,
}

impl Hooks {
    /// No provider: the cookie holds the token itself, and nothing is refused early.
    pub(crate) const GENERIC: Self = Self {
        cookie_token: plain_cookie_token,
        precheck: |_| Ok(()),
    };
}

/// The generic cookie rule: the cookie's value is the token.
fn plain_cookie_token(headers: &HeaderMap, name: &str) -> Result<String, AuthError> {
    match single_cookie(headers, name) {
        // An emptied cookie (a logout) is no credential.
        CookieLookup::Absent => Err(AuthError::Missing),
        CookieLookup::One(v) if v.is_empty() => Err(AuthError::Missing),
        CookieLookup::One(v) => Ok(v),
        // Two different session cookies (one planted for a sub-path or from a sibling
        // domain): refuse rather than guess which session the user meant.
        CookieLookup::Conflicting => Err(AuthError::Invalid("ambiguous_cookie")),
    }
}

/// The options both JWT builders share (issuer, audience, leeway, cookie, clock, cache).
#[derive(Clone, Debug)]
pub(crate) struct ClaimOptions {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: Duration,
    pub(crate) cookie: Option<String>,
    pub(crate) clock: Option<Arc<dyn Clock>>,
    pub(crate) cache: Option<usize>,
    pub(crate) hooks: Hooks,
}

impl Default for ClaimOptions {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            cookie: None,
            clock: None,
            cache: None,
            hooks: Hooks::GENERIC,
        }
    }
}

impl ClaimOptions {
    /// Records every problem with these options; `who` prefixes each message.
    pub(crate) fn check(&self, who: &str, problems: &mut Vec<String>) {
        if self.leeway > MAX_LEEWAY {
            problems.push(format!(
                "{who}: leeway {:?} is longer than the maximum {:?}",
                self.leeway, MAX_LEEWAY
            ));
        }
        if self.issuers.iter().any(|s| s.is_empty()) {
            problems.push(format!("{who}: an issuer must not be empty"));
        }
        if self.audiences.iter().any(|s| s.is_empty()) {
            problems.push(format!("{who}: an audience must not be empty"));
        }
        if let Some(c) = &self.cookie
            && !is_token(c)
        {
            problems.push(format!(
                "{who}: cookie name {:?} is not a valid cookie name",
                c.chars().take(64).collect::<String>()
            ));
        }
        if let Some(n) = self.cache
            && !(1..=MAX_CACHE_CAPACITY).contains(&n)
        {
            problems.push(format!(
                "{who}: the token cache capacity must be between 1 and {MAX_CACHE_CAPACITY} (got {n})"
            ));
        }
    }

    /// The runtime form; call after [`check`](Self::check) found nothing.
    pub(crate) fn build(self) -> ClaimRules {
        ensure_crypto_provider();
        ClaimRules {
            leeway_secs: self.leeway.as_secs(),
            clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            cache: self.cache.map(TokenCache::new),
            issuers: self.issuers,
            audiences: self.audiences,
            cookie: self.cookie,
            hooks: self.hooks,
        }
    }
}

/// Generates the builder methods of [`ClaimOptions`] on a builder with a `claims` field.
/// `$start` is the example's first line: an expression for a builder with a usable key.
macro_rules! claim_option_methods {
    ($builder:ty, $start:literal) => {
        impl $builder {
            #[doc = "Requires `iss` to be `issuer`. Call again to accept several issuers."]
            #[doc = ""]
            #[doc = concat!("```\nlet a = ", $start, "\n    .issuer(\"https://auth.example\")\n    .build()\n    .unwrap();\n# let _ = a;\n```")]
            pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
                self.claims.issuers.push(issuer.into());
                self
            }

            #[doc = "Requires `aud` to contain `audience` (Supabase: `\"authenticated\"`). Call"]
            #[doc = "again to accept several. Without any, a token that carries an `aud` is"]
            #[doc = "refused: RFC 7519 §4.1.3 says a recipient that does not identify itself with"]
            #[doc = "the audience must reject the token."]
            #[doc = ""]
            #[doc = concat!("```\nlet a = ", $start, "\n    .audience(\"authenticated\")\n    .build()\n    .unwrap();\n# let _ = a;\n```")]
            pub fn audience(mut self, audience: impl Into<String>) -> Self {
                self.claims.audiences.push(audience.into());
                self
            }

            #[doc = "Clock-skew allowance for `exp` and `nbf` (whole seconds; default"]
            #[doc = "[`DEFAULT_LEEWAY`](crate::auth::jwt::DEFAULT_LEEWAY), at most"]
            #[doc = "[`MAX_LEEWAY`](crate::auth::jwt::MAX_LEEWAY))."]
            #[doc = ""]
            #[doc = concat!("```\nlet err = ", $start, "\n    .leeway(std::time::Duration::from_secs(3600))\n    .build()\n    .unwrap_err();\nassert_eq!(err.problems().len(), 1);\n```")]
            pub fn leeway(mut self, leeway: std::time::Duration) -> Self {
                self.claims.leeway = leeway;
                self
            }

            #[doc = "Also reads the token from the cookie `name` (when no bearer header is"]
            #[doc = "present). Such a principal is ambient"]
            #[doc = "([`CredentialSource::Cookie`](crate::auth::CredentialSource::Cookie)), so CSRF"]
            #[doc = "protection applies."]
            #[doc = ""]
            #[doc = concat!("```\nlet a = ", $start, "\n    .cookie(\"sr-session\")\n    .build()\n    .unwrap();\nassert_eq!(a.cookie_name(), Some(\"sr-session\"));\n```")]
            pub fn cookie(mut self, name: impl Into<String>) -> Self {
                self.claims.cookie = Some(name.into());
                self
            }

            #[doc = "The time source for `exp` and `nbf` (and the token cache); the system clock"]
            #[doc = "by default. Tests pass a [`FakeClock`](crate::clock::FakeClock)."]
            #[doc = ""]
            #[doc = concat!("```\nuse std::sync::Arc;\nuse secure_routes::clock::FakeClock;\nlet a = ", $start, "\n    .clock(Arc::new(FakeClock::new(std::time::Duration::from_secs(1_700_000_000))))\n    .build()\n    .unwrap();\n# let _ = a;\n```")]
            pub fn clock(mut self, clock: std::sync::Arc<dyn crate::clock::Clock>) -> Self {
                self.claims.clock = Some(clock);
                self
            }

            #[doc = "Caches up to `capacity` successful verifications, keyed by the SHA-256 of"]
            #[doc = "the token, so that a repeated token skips the signature check. An entry is"]
            #[doc = "used only while the clock is before the token's `exp` (and, with a JWKS,"]
            #[doc = "while the key set it was verified with is current); failures are never"]
            #[doc = "cached. At most 10 000 000."]
            #[doc = ""]
            #[doc = concat!("```\nlet a = ", $start, "\n    .cache(10_000)\n    .build()\n    .unwrap();\nassert_eq!(a.cached_tokens(), 0);\n```")]
            pub fn cache(mut self, capacity: usize) -> Self {
                self.claims.cache = Some(capacity);
                self
            }
        }
    };
}
pub(crate) use claim_option_methods;

/// The verified claims of a token, ready to become a [`Principal`].
pub(crate) struct Verified {
    pub(crate) subject: Arc<str>,
    pub(crate) exp: u64,
    pub(crate) claims: Claims,
}

/// A request whose token was not in the cache: verify `token`, then [`ClaimRules::admit`].
pub(crate) struct Miss<'p> {
    pub(crate) token: Cow<'p, str>,
    pub(crate) source: CredentialSource,
    key: Option<CacheKey>,
}

/// The claim rules and token plumbing shared by the JWT authenticators.
#[derive(Debug)]
pub(crate) struct ClaimRules {
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway_secs: u64,
    cookie: Option<String>,
    clock: Arc<dyn Clock>,
    cache: Option<TokenCache>,
    hooks: Hooks,
}

impl ClaimRules {
    pub(crate) fn issuers(&self) -> &[String] {
        &self.issuers
    }

    pub(crate) fn audiences(&self) -> &[String] {
        &self.audiences
    }

    pub(crate) fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    pub(crate) fn now(&self) -> Duration {
        self.clock.now()
    }

    pub(crate) fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, TokenCache::len)
    }

    /// Refusals that come before any key is chosen ([`Hooks::precheck`]; under the Supabase
    /// profile, the project's API keys presented as a user's token, bearer or cookie).
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) fn precheck(&self, token: &str) -> Result<(), AuthError> {
        (self.hooks.precheck)(token)
    }

    /// jsonwebtoken's settings for tokens signed with `alg`: signature, `iss`, `aud` and the
    /// presence of `exp` and `sub`. Time is checked by [`check_time`](Self::check_time) against
    /// the injected clock instead of the library's system clock.
    pub(crate) fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_secs;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        let mut required = vec!["exp", "sub"];
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        if !self.audiences.is_empty() {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Verifies the signature with `key` and every claim rule.
    pub(crate) fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        validation: &Validation,
    ) -> Result<Verified, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| AuthError::Invalid(reason(e.kind())))?;
        self.finish(data.claims)
    }

    /// [`decode`](Self::decode) for an HMAC key, without jsonwebtoken: the same checks in the
    /// same order, with the HMAC keyed once ([`HmacKey`]), the header read once (by
    /// [`parse_header`], whose `well_formed` says what the library's own read would have
    /// said) and the claims read once. jsonwebtoken reads the header twice, keys a new HMAC
    /// and reads the claims twice for every token (issue 10 part 7; DESIGN.md, "JWT").
    ///
    /// The caller has pinned the algorithm: `header.alg` is `key`'s.
    pub(crate) fn decode_hmac(
        &self,
        token: &str,
        header: &TokenHeader,
        key: &HmacKey,
    ) -> Result<Verified, AuthError> {
        const MALFORMED: AuthError = AuthError::Invalid("malformed");
        if !header.well_formed {
            return Err(MALFORMED);
        }
        // `parse_header` saw exactly three segments.
        let (message, signature) = token.rsplit_once('.').ok_or(MALFORMED)?;
        let (_, payload) = message.split_once('.').ok_or(MALFORMED)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| MALFORMED)?;
        // Constant time (aws-lc's HMAC_verify compares with CRYPTO_memcmp): a timing
        // difference would let an attacker find a valid MAC byte by byte.
        aws_lc_rs::hmac::verify(&key.0, message.as_bytes(), &signature)
            .map_err(|_| AuthError::Invalid("bad_signature"))?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| MALFORMED)?;
        let claims = serde_json::from_slice::<StrictClaims>(&payload)
            .map_err(|_| MALFORMED)?
            .0;
        self.library_rules(&claims)?;
        self.finish(claims)
    }

    /// The claim rules jsonwebtoken applies with [`validation`](Self::validation)'s settings,
    /// for [`decode_hmac`](Self::decode_hmac): the required claims (`exp`, `sub`, and `iss` /
    /// `aud` when configured) present in a readable shape, then `iss` and `aud` against the
    /// configured values (any one in common), an `aud` refused when none is configured.
    fn library_rules(&self, claims: &Claims) -> Result<(), AuthError> {
        let iss = StrOrSet::of(claims.get("iss"));
        let aud = StrOrSet::of(claims.get("aud"));
        if claims.get("exp").and_then(numeric).is_none() {
            return Err(AuthError::Invalid("missing_exp"));
        }
        if !matches!(claims.get("sub"), Some(Value::String(_))) {
            return Err(AuthError::Invalid("missing_sub"));
        }
        if !self.issuers.is_empty() && !iss.parsed() {
            return Err(AuthError::Invalid("missing_iss"));
        }
        if !self.audiences.is_empty() && !aud.parsed() {
            return Err(AuthError::Invalid("missing_aud"));
        }
        if !self.issuers.is_empty() && !iss.meets(&self.issuers) {
            return Err(AuthError::Invalid("bad_issuer"));
        }
        // RFC 7519 §4.1.3: an audience the recipient cannot identify itself with, refused.
        if aud.parsed() && (self.audiences.is_empty() || !aud.meets(&self.audiences)) {
            return Err(AuthError::Invalid("bad_audience"));
        }
        Ok(())
    }

    /// The rules after the library's (or [`library_rules`](Self::library_rules)): shapes,
    /// time, a non-empty subject.
    fn finish(&self, claims: Claims) -> Result<Verified, AuthError> {
        self.check_shapes(&claims)?;
        let exp = self.check_time(&claims)?;
        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => Arc::from(s.as_str()),
            _ => return Err(AuthError::Invalid("missing_sub")),
        };
        Ok(Verified {
            subject,
            exp,
            claims,
        })
    }

    /// Claim shapes jsonwebtoken is lenient about: `iss` must be one string (RFC 7519
    /// §4.1.1; an array naming the real issuer beside another is refused), and `aud` a string
    /// or an array of strings; when no audience is configured a present `aud` of any type is
    /// refused (§4.1.3), where the library would treat an unreadable one as absent.
    fn check_shapes(&self, claims: &Claims) -> Result<(), AuthError> {
        if !self.issuers().is_empty() && !matches!(claims.get("iss"), Some(Value::String(_))) {
            return Err(AuthError::Invalid("bad_issuer"));
        }
        // `null` reads as absent here: it restricts nothing, so no check is skipped.
        match claims.get("aud") {
            None | Some(Value::Null) => {}
            Some(_) if self.audiences().is_empty() => {
                return Err(AuthError::Invalid("bad_audience"));
            }
            Some(Value::String(_)) => {}
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
            Some(_) => return Err(AuthError::Invalid("bad_audience")),
        }
        Ok(())
    }

    /// `exp` (required) and `nbf` (optional) against the clock, with the leeway; the same
    /// numeric rules as jsonwebtoken (a non-negative integer, or a finite float rounded).
    fn check_time(&self, claims: &Claims) -> Result<u64, AuthError> {
        let now = self.clock.now().as_secs();
        let exp = match claims.get("exp").map(numeric_date) {
            Some(Some(exp)) => exp,
            Some(None) => return Err(AuthError::Invalid("bad_claim")),
            None => return Err(AuthError::Invalid("missing_exp")),
        };
        if exp.saturating_add(self.leeway_secs) < now {
            return Err(AuthError::Invalid("expired"));
        }
        // A present `nbf` must be a NumericDate (RFC 7519 §4.1.5); `null` is not one, and
        // reading it as "absent" would let a malformed token skip the check.
        match claims.get("nbf") {
            None => {}
            Some(v) => match numeric_date(v) {
                Some(nbf) if nbf > now.saturating_add(self.leeway_secs) => {
                    return Err(AuthError::Invalid("not_yet_valid"));
                }
                Some(_) => {}
                None => return Err(AuthError::Invalid("bad_claim")),
            },
        }
        Ok(exp)
    }

    /// Finds the request's token and looks it up in the cache. `generation` names the key set
    /// an entry must have been verified with (`None`: no key set is usable now); entries
    /// verified with a pinned key (`cache::PINNED`) are usable either way.
    pub(crate) fn lookup<'p>(
        &self,
        parts: &'p Parts,
        generation: Option<u64>,
    ) -> Result<Result<Principal, Miss<'p>>, AuthError> {
        let (token, source) = self.credential(parts)?;
        let Some(cache) = &self.cache else {
            return Ok(Err(Miss {
                token,
                source,
                key: None,
            }));
        };
        let key = CacheKey::of(&token);
        if let Some((subject, claims)) = cache.get(&key, self.clock.now(), generation) {
            return Ok(Ok(Principal::from_shared(subject, source, claims)));
        }
        Ok(Err(Miss {
            token,
            source,
            key: Some(key),
        }))
    }

    /// The principal for a verified miss, cached under `generation` while its `exp` is ahead.
    pub(crate) fn admit(&self, miss: Miss<'_>, verified: Verified, generation: u64) -> Principal {
        let claims = Arc::new(verified.claims);
        if let (Some(cache), Some(key)) = (&self.cache, miss.key)
            && self.clock.now().as_secs() < verified.exp
        {
            cache.insert(
                key,
                Arc::clone(&verified.subject),
                Arc::clone(&claims),
                verified.exp,
                generation,
            );
        }
        Principal::from_shared(verified.subject, miss.source, claims)
    }

    /// Where the credential is, if anywhere: a bearer header wins over the cookie.
    fn credential<'p>(
        &self,
        parts: &'p Parts,
    ) -> Result<(Cow<'p, str>, CredentialSource), AuthError> {
        if let Some(t) = bearer(parts)? {
            return Ok((Cow::Borrowed(t), CredentialSource::Header));
        }
        let Some(name) = &self.cookie else {
            return Err(AuthError::Missing);
        };
        let token = (self.hooks.cookie_token)(&parts.headers, name)?;
        Ok((Cow::Owned(token), CredentialSource::Cookie))
    }
}

/// A number as jsonwebtoken reads `exp` and `nbf`: a non-negative integer, or a finite
/// non-negative float (rounded). Anything else (a string, a negative number) is `None`.
fn numeric(v: &Value) -> Option<u64> {
    match v.as_u64() {
        Some(n) => Some(n),
        None => {
            let f = v.as_f64()?;
            // `as` saturates; the bounds keep the rounding meaningful.
            if !(f.is_finite() && f >= 0.0 && f < u64::MAX as f64) {
                return None;
            }
            Some(f.round() as u64)
        }
    }
}

/// RFC 7519 NumericDate as jsonwebtoken reads it ([`numeric`]), bounded.
fn numeric_date(v: &Value) -> Option<u64> {
    let n = numeric(v)?;
    // Past 9999-12-31T23:59:59Z a date is a forged "never expires", and time arithmetic on
    // it (cache lifetimes) would overflow: refused as a malformed claim.
    (n <= MAX_NUMERIC_DATE).then_some(n)
}

/// 9999-12-31T23:59:59Z, the last NumericDate accepted.
const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// The parts of a JOSE header this crate reads. `jku`, `x5u`, `jwk` and `x5c` are never read:
/// a key named or embedded by the token itself would let the token choose who vouches for it
/// (RFC 8725 §3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenHeader {
    /// `alg`, if it is the exact name of an algorithm jsonwebtoken knows (every other value,
    /// `none` included, could never match a pinned or allowed algorithm).
    pub(crate) alg: Option<&'static str>,
    /// `kid`, if it is a string.
    #[cfg_attr(not(feature = "jwks"), allow(dead_code))]
    pub(crate) kid: Option<String>,
    /// Whether jsonwebtoken's own read of the header (its `Header` type) would succeed: `alg`
    /// a known algorithm, each registered member it types of that type, none twice.
    /// [`ClaimRules::decode_hmac`] refuses the token where the library would have.
    pub(crate) well_formed: bool,
}

/// Size and shape checks, then our own look at the header before the library's: a `crit`
/// header is refused because we understand no extension (RFC 7515 §4.1.11).
///
/// One pass over the JSON (issue 10 part 7): no map is built, only the members read here are
/// kept; the others are checked for the shape jsonwebtoken gives them, or skipped.
pub(crate) fn parse_header(token: &str) -> Result<TokenHeader, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid("oversized"));
    }
    let mut segments = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(AuthError::Invalid("malformed"));
    };
    // The header is a pure function of its segment, and an issuer's tokens share one: each
    // thread keeps the last segment it read and what it read (compared byte for byte, so a
    // hit is exact). Reading it was a quarter of an HS256 verification (issue 10 part 7).
    if let Some(hit) = LAST_HEADER.with_borrow(|last| {
        last.as_ref()
            .filter(|(segment, _)| **segment == *header)
            .map(|(_, read)| read.clone())
    }) {
        return Ok(hit);
    }
    let read = read_header(header)?;
    if header.len() <= MAX_CACHED_HEADER {
        LAST_HEADER.set(Some((header.into(), read.clone())));
    }
    Ok(read)
}

thread_local! {
    /// The last header segment this thread read, and its reading (see [`parse_header`]).
    static LAST_HEADER: std::cell::RefCell<Option<(Box<str>, TokenHeader)>> =
        const { std::cell::RefCell::new(None) };
}

/// The longest header segment [`parse_header`] keeps: an issuer's header (`alg`, `typ`, a
/// `kid`) is well under it, and an attacker's oversized one is not copied per request.
const MAX_CACHED_HEADER: usize = 512;

/// [`parse_header`]'s work on one header segment.
fn read_header(header: &str) -> Result<TokenHeader, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| AuthError::Invalid("malformed"))?;
    let header: RawHeader =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Invalid("malformed"))?;
    if header.crit {
        return Err(AuthError::Invalid("unsupported_header"));
    }
    // RFC 8725 §3.11: a JWT typed for another purpose (a security event, a logout token)
    // must not pass as an access token. Absent, `JWT` and `at+jwt` (RFC 9068) are accepted.
    match header.typ {
        Shape::Null => {}
        Shape::Str(t)
            if ["jwt", "at+jwt", "application/jwt", "application/at+jwt"]
                .iter()
                .any(|ok| t.eq_ignore_ascii_case(ok)) => {}
        Shape::Str(_) => return Err(AuthError::Invalid("wrong_type")),
        Shape::StrArray | Shape::Other => return Err(AuthError::Invalid("malformed")),
    }
    Ok(TokenHeader {
        alg: header.alg,
        kid: header.kid,
        well_formed: header.well_formed,
    })
}

/// The header as [`parse_header`] reads it. A member given twice: the last one counts (as
/// in a JSON map), and the header is not `well_formed` (jsonwebtoken refuses it).
struct RawHeader {
    alg: Option<&'static str>,
    kid: Option<String>,
    /// `typ`; `Null` when absent.
    typ: Shape<'static>,
    /// `crit` is present, whatever its value (`null` included).
    crit: bool,
    well_formed: bool,
}

/// The members jsonwebtoken's `Header` types, each of them a string or `null` unless named
/// below (`alg`: a known algorithm; `x5c`: an array of strings; `jwk`: a JWK; `crit`: refused
/// before this matters).
const HEADER_MEMBERS: [&str; 15] = [
    "typ", "alg", "cty", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "crit", "enc",
    "zip", "url", "nonce",
];

/// The algorithm names jsonwebtoken reads (its `Algorithm`'s serde names).
const ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384",
    "PS512", "EdDSA",
];

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> serde::de::Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JOSE header object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut h = RawHeader {
            alg: None,
            kid: None,
            typ: Shape::Null,
            crit: false,
            well_formed: true,
        };
        let mut seen = 0u16;
        let mut alg_known = false;
        while let Some(MemberName(name)) = map.next_key()? {
            let Some(i) = HEADER_MEMBERS.iter().position(|m| *m == name) else {
                // Read, not skipped: serde_json's skipping has no depth limit, its reading
                // does (128), and a header nested deeper is refused as the library refuses it.
                map.next_value::<Shape<'_>>()?;
                continue;
            };
            if seen & (1 << i) != 0 {
                h.well_formed = false;
            }
            seen |= 1 << i;
            match &*name {
                "alg" => {
                    let v: Shape<'_> = map.next_value()?;
                    h.alg = match v {
                        Shape::Str(s) => ALGORITHMS.iter().copied().find(|a| *a == s),
                        _ => None,
                    };
                    alg_known = h.alg.is_some();
                }
                "kid" => match map.next_value()? {
                    Shape::Str(s) => h.kid = Some(s.into_owned()),
                    Shape::Null => h.kid = None,
                    Shape::StrArray | Shape::Other => {
                        h.kid = None;
                        h.well_formed = false;
                    }
                },
                "typ" => {
                    h.typ = match map.next_value()? {
                        Shape::Str(s) => Shape::Str(Cow::Owned(s.into_owned())),
                        Shape::Null => Shape::Null,
                        Shape::StrArray => Shape::StrArray,
                        Shape::Other => Shape::Other,
                    };
                }
                "crit" => {
                    map.next_value::<Shape<'_>>()?;
                    h.crit = true;
                }
                "x5c" => {
                    let v: Shape<'_> = map.next_value()?;
                    h.well_formed &= matches!(v, Shape::StrArray | Shape::Null);
                }
                "jwk" => {
                    // Rare, and never used (RFC 8725 §3.10): only whether the library could
                    // read it.
                    let v: Value = map.next_value()?;
                    h.well_formed &=
                        v.is_null() || serde_json::from_value::<jsonwebtoken::jwk::Jwk>(v).is_ok();
                }
                _ => {
                    let v: Shape<'_> = map.next_value()?;
                    h.well_formed &= matches!(v, Shape::Str(_) | Shape::Null);
                }
            }
        }
        h.well_formed &= alg_known;
        Ok(h)
    }
}

/// A JSON object member's name, borrowed from the input when it has no escapes.
struct MemberName<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Shape::deserialize(d)? {
            Shape::Str(s) => Ok(MemberName(s)),
            _ => Err(serde::de::Error::custom("a member name is a string")),
        }
    }
}

/// The shape of a JSON value, keeping only a string's text.
enum Shape<'de> {
    Null,
    Str(Cow<'de, str>),
    /// An array whose elements are all strings (the empty one too).
    StrArray,
    Other,
}

impl<'de> serde::Deserialize<'de> for Shape<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> serde::de::Visitor<'de> for ShapeVisitor {
    type Value = Shape<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Shape<'de>, E> {
        Ok(Shape::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Shape<'de>, E> {
        Ok(Shape::Null)
    }
    fn visit_none<E>(self) -> Result<Shape<'de>, E> {
        Ok(Shape::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Shape<'de>, E> {
        Ok(Shape::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Shape<'de>, E> {
        Ok(Shape::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Shape<'de>, E> {
        Ok(Shape::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Shape<'de>, E> {
        Ok(Shape::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Shape<'de>, A::Error> {
        let mut strings = true;
        while let Some(e) = seq.next_element::<Shape<'de>>()? {
            strings &= matches!(e, Shape::Str(_));
        }
        Ok(if strings {
            Shape::StrArray
        } else {
            Shape::Other
        })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Shape<'de>, A::Error> {
        // Read (not skipped) for serde_json's depth limit, as in `RawHeaderVisitor`.
        while map.next_entry::<Shape<'de>, Shape<'de>>()?.is_some() {}
        Ok(Shape::Other)
    }
}

/// A token's claims, refused where jsonwebtoken cannot read them: one of the members the
/// library reads (`exp`, `nbf`, `sub`, `iss`, `aud`) given twice, or one its reader stops
/// on (serde_json leaves a `sub` that is an array or object unread, and an `exp` or `nbf`
/// that is a non-empty one half read, so the rest of the claims set no longer parses).
/// Another repeated member: the last one counts.
struct StrictClaims(Claims);

/// Whether jsonwebtoken's read of the claims set fails on this member (see [`StrictClaims`]).
fn unreadable_claim(name: &str, value: &Value) -> bool {
    match (name, value) {
        ("sub", Value::Array(_) | Value::Object(_)) => true,
        ("exp" | "nbf", Value::Array(a)) => !a.is_empty(),
        ("exp" | "nbf", Value::Object(o)) => !o.is_empty(),
        _ => false,
    }
}

impl<'de> serde::Deserialize<'de> for StrictClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StrictClaimsVisitor)
    }
}

struct StrictClaimsVisitor;

impl<'de> serde::de::Visitor<'de> for StrictClaimsVisitor {
    type Value = StrictClaims;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JWT claims object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictClaims, A::Error> {
        let mut claims = Claims::new();
        while let Some((name, value)) = map.next_entry::<String, Value>()? {
            let read = matches!(name.as_str(), "exp" | "nbf" | "sub" | "iss" | "aud");
            if read && unreadable_claim(&name, &value) {
                return Err(serde::de::Error::custom("a claim jsonwebtoken cannot read"));
            }
            if claims.insert(name, value).is_some() && read {
                return Err(serde::de::Error::custom("a claim given twice"));
            }
        }
        Ok(StrictClaims(claims))
    }
}

/// `iss` or `aud` as jsonwebtoken reads it: absent (or `null`), one string, a set of strings,
/// or unreadable.
enum StrOrSet<'c> {
    Absent,
    One(&'c str),
    Set(&'c [Value]),
    Unreadable,
}

impl<'c> StrOrSet<'c> {
    fn of(v: Option<&'c Value>) -> Self {
        match v {
            None | Some(Value::Null) => Self::Absent,
            Some(Value::String(s)) => Self::One(s),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => Self::Set(a),
            Some(_) => Self::Unreadable,
        }
    }

    /// Present and readable.
    fn parsed(&self) -> bool {
        matches!(self, Self::One(_) | Self::Set(_))
    }

    /// At least one value in common with `accepted` (an absent or unreadable claim passes
    /// here: the required-claim check is the one that refuses it).
    fn meets(&self, accepted: &[String]) -> bool {
        match self {
            Self::One(s) => accepted.iter().any(|a| a == s),
            Self::Set(values) => values
                .iter()
                .any(|v| v.as_str().is_some_and(|s| accepted.iter().any(|a| a == s))),
            Self::Absent | Self::Unreadable => true,
        }
    }
}

/// An HMAC secret keyed once, for [`ClaimRules::decode_hmac`].
pub(crate) struct HmacKey(aws_lc_rs::hmac::Key);

impl HmacKey {
    /// The key for `alg` (HS256, HS384 or HS512; another falls back to HS256, which
    /// `check_key` never builds).
    pub(crate) fn new(alg: Algorithm, secret: &[u8]) -> Self {
        use aws_lc_rs::hmac;
        let algorithm = match alg {
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => hmac::HMAC_SHA256,
        };
        Self(hmac::Key::new(algorithm, secret))
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

/// The name of `alg` as it appears in a token header.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        // jsonwebtoken's enum is non-exhaustive; never equal to a header's alg we would accept.
        _ => "\u{0}unsupported",
    }
}

/// The audit reason for a jsonwebtoken error (static, never the token).
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad_signature",
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not_yet_valid",
        ErrorKind::InvalidIssuer => "bad_issuer",
        ErrorKind::InvalidAudience => "bad_audience",
        ErrorKind::InvalidSubject => "missing_sub",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => "wrong_algorithm",
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "missing_exp",
            "sub" => "missing_sub",
            "iss" => "missing_iss",
            "aud" => "missing_aud",
            _ => "missing_claim",
        },
        ErrorKind::InvalidClaimFormat(_) => "bad_claim",
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed",
        _ => "invalid",
    }
}

/// RFC 9110 `token` (`1*tchar`): auth schemes and cookie names.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// Written branch-free so the compiler vectorises it: it runs over every byte of every bearer
/// token, on the token cache's hit path too.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty() && body.bytes().fold(true, |ok, b| ok & is_b64token_byte(b))
}

fn is_b64token_byte(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    // "-./0123456789" is one run of ASCII (0x2d..=0x39).
    let run = b.wrapping_sub(b'-') < 13;
    letter | run | (b == b'+') | (b == b'_') | (b == b'~')
}

/// The bearer token of the request, if it has one.
///
/// * no `Authorization` header: `None`;
/// * several: refused (which one would be meant? a proxy and a client may disagree);
/// * `Bearer <token>` (scheme case-insensitive, RFC 9110 §11.1 / RFC 6750 §2.1): the token;
/// * a well-formed header with another scheme: `None` (not ours);
/// * anything else (no scheme, `Bearer` without a token, bad characters): malformed.
fn bearer(parts: &Parts) -> Result<Option<&str>, AuthError> {
    let mut lines = parts.headers.get_all(http::header::AUTHORIZATION).iter();
    let value = match (lines.next(), lines.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => return Err(AuthError::Invalid("multiple_credentials")),
        (Some(v), None) => v,
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("malformed"))?
        .trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !is_token(scheme) {
        return Err(AuthError::Invalid("malformed"));
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    // Bound before anything else looks at it.
    if rest.len() > MAX_TOKEN_BYTES + 16 {
        return Err(AuthError::Invalid("oversized"));
    }
    let token = rest.trim_start_matches(' ');
    if !is_b64token(token) {
        return Err(AuthError::Invalid("malformed"));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_syntax() {
        for (s, ok) in [
            ("Bearer", true),
            ("x-y.z", true),
            ("", false),
            ("a b", false),
            ("a;b", false),
            ("é", false),
        ] {
            assert_eq!(is_token(s), ok, "{s:?}");
        }
        for (s, ok) in [
            ("abc.def-_~+/", true),
            ("abc==", true),
            ("==", false),
            ("a=b", false),
            ("", false),
            ("a b", false),
        ] {
            assert_eq!(is_b64token(s), ok, "{s:?}");
        }
    }

    #[test]
    fn bearer_refuses_obs_text_and_trims_only_whitespace() {
        let parse = |raw: &[u8]| {
            let (parts, ()) = http::Request::get("/")
                .header(
                    http::header::AUTHORIZATION,
                    http::HeaderValue::from_bytes(raw).unwrap(),
                )
                .body(())
                .unwrap()
                .into_parts();
            bearer(&parts).map(|t| t.map(str::to_owned))
        };
        assert_eq!(
            parse(b"\tBearer  abc.def \t"),
            Ok(Some("abc.def".to_owned()))
        );
        assert_eq!(parse(b"Basic dXNlcg=="), Ok(None));
        // Controls other than HTAB cannot be in a `HeaderValue`; obs-text (0x80..) can.
        for raw in [
            &b"Bearer ab\xc3\xa9"[..],
            b"Bearer abc\xa0",
            b"Bearer\xc2\xa0abc",
            b"B\xc3\xa9arer abc",
            b"Bearer abc\xff",
        ] {
            assert_eq!(
                parse(raw),
                Err(AuthError::Invalid("malformed")),
                "{}",
                raw.escape_ascii()
            );
        }
    }

    #[test]
    fn b64token_bytes_are_exactly_the_rfc_set() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_b64token_byte(b), rfc, "{b:#x}");
        }
    }

    #[test]
    fn numeric_dates_follow_jsonwebtoken() {
        for (v, want) in [
            (json!(5), Some(5)),
            (json!(5.4), Some(5)),
            (json!(5.6), Some(6)),
            (json!(-1), None),
            (json!(-0.5), None),
            (json!("5"), None),
            (json!(null), None),
            (json!(1e300), None),
            (json!([5]), None),
        ] {
            assert_eq!(numeric_date(&v), want, "{v}");
        }
    }

    /// The per-thread copy of the last header read is used only for the same segment, byte
    /// for byte: another header right after a cached one is read for itself.
    #[test]
    fn a_header_is_read_again_unless_its_segment_is_the_same() {
        let token = |header: &str| format!("{}.e30.sig", URL_SAFE_NO_PAD.encode(header));
        let good = token(r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let first = parse_header(&good).unwrap();
        assert_eq!(parse_header(&good).unwrap(), first);
        assert_eq!(first.kid.as_deref(), Some("k1"));
        let logout = token(r#"{"alg":"HS256","typ":"logout+jwt","kid":"k1"}"#);
        assert!(matches!(
            parse_header(&logout),
            Err(AuthError::Invalid("wrong_type"))
        ));
        let other_kid = token(r#"{"alg":"HS256","typ":"JWT","kid":"k2"}"#);
        assert_eq!(parse_header(&other_kid).unwrap().kid.as_deref(), Some("k2"));
        assert_eq!(parse_header(&good).unwrap(), first);
        // The shape checks on the whole token come first, whatever is cached.
        assert!(parse_header(&format!("{good}.extra")).is_err());
    }
}

/// `decode_hmac` against jsonwebtoken (`decode`) on tokens built from the members whose
/// reading differs most between JSON readers: both must give the same answer.
#[cfg(test)]
mod same_as_jsonwebtoken {
    use super::*;
    use crate::clock::FakeClock;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"differential-secret-differential!";
    const NOW: u64 = 1_700_000_000;

    fn rules(configured: bool) -> ClaimRules {
        let mut o = ClaimOptions {
            clock: Some(Arc::new(FakeClock::new(Duration::from_secs(NOW)))),
            ..ClaimOptions::default()
        };
        if configured {
            o.issuers = vec!["i".into()];
            o.audiences = vec!["a".into()];
        }
        o.build()
    }

    fn sign(header: &str, claims: &str) -> String {
        use aws_lc_rs::hmac;
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        let tag = hmac::sign(&key, message.as_bytes());
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The answer as a comparable value. jsonwebtoken checks its required claims in a hash
    /// set's order, so which missing claim it names first is random: `missing_*` compares as
    /// one.
    fn answer(r: Result<Verified, AuthError>) -> Answer {
        match r {
            Ok(v) => Ok((v.subject.to_string(), v.exp, v.claims)),
            Err(AuthError::Invalid(m)) if m.starts_with("missing_") => Err("missing_*"),
            Err(AuthError::Invalid(m)) => Err(m),
            Err(_) => Err("other"),
        }
    }

    type Answer = Result<(String, u64, Claims), &'static str>;

    fn both(rules: &ClaimRules, token: &str) -> (Answer, Answer) {
        let pinned = || {
            let h = parse_header(token)?;
            if h.alg != Some("HS256") {
                return Err(AuthError::Invalid("wrong_algorithm"));
            }
            Ok(h)
        };
        let library = pinned().and_then(|_| {
            rules.decode(
                token,
                &DecodingKey::from_secret(SECRET),
                &rules.validation(Algorithm::HS256),
            )
        });
        let ours = pinned()
            .and_then(|h| rules.decode_hmac(token, &h, &HmacKey::new(Algorithm::HS256, SECRET)));
        (answer(library), answer(ours))
    }

    fn header_member() -> impl Strategy<Value = String> {
        let values = |name: &'static str, vs: &'static [&'static str]| {
            prop::sample::select(vs).prop_map(move |v| format!("\"{name}\":{v}"))
        };
        prop_oneof![
            values("alg", &["\"HS256\"", "\"none\"", "\"HS384\"", "5", "null"]),
            values(
                "typ",
                &[
                    "\"JWT\"",
                    "\"at+jwt\"",
                    "\"secevent+jwt\"",
                    "5",
                    "null",
                    "[]"
                ]
            ),
            values("kid", &["\"k\"", "5", "null", "[\"k\"]"]),
            values("x5c", &["[\"a\"]", "[1]", "\"a\"", "null", "[]"]),
            values(
                "jwk",
                &["{}", "{\"kty\":\"oct\",\"k\":\"AA\"}", "5", "null"]
            ),
            values("cty", &["\"x\"", "1", "null", "{}"]),
            values("crit", &["null", "[\"b64\"]"]),
            values("x5t#S256", &["\"x\"", "true"]),
            values("zzz", &["[[1]]", "{}", "{\"a\":[1,{}]}", "\"\\u0041\""]),
            values("\\u0061lg", &["\"HS256\"", "\"none\""]),
        ]
    }

    fn claim_member() -> impl Strategy<Value = String> {
        let values = |name: &'static str, vs: &'static [&'static str]| {
            prop::sample::select(vs).prop_map(move |v| format!("\"{name}\":{v}"))
        };
        prop_oneof![
            values(
                "sub",
                &["\"s\"", "\"\"", "5", "{}", "[]", "null", "\"\\u0073\""]
            ),
            values(
                "exp",
                &[
                    "1700000100",
                    "1699990000",
                    "1700000100.4",
                    "\"5\"",
                    "[]",
                    "[1]",
                    "{}",
                    "{\"a\":1}",
                    "null",
                    "-1",
                    "true"
                ]
            ),
            values(
                "nbf",
                &[
                    "1700000100",
                    "1600000000",
                    "[]",
                    "[1]",
                    "{}",
                    "null",
                    "\"x\""
                ]
            ),
            values(
                "iss",
                &[
                    "\"i\"", "[\"i\"]", "[\"x\"]", "[1]", "5", "null", "[]", "{}"
                ]
            ),
            values(
                "aud",
                &[
                    "\"a\"",
                    "[\"a\",\"b\"]",
                    "[\"x\"]",
                    "[1]",
                    "5",
                    "null",
                    "[]",
                    "{}"
                ]
            ),
            values("other", &["[[[]]]", "{\"x\":null}", "1"]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn decode_hmac_answers_as_jsonwebtoken_does(
            alg_first in any::<bool>(),
            header in prop::collection::vec(header_member(), 0..5),
            valid in any::<bool>(),
            claims in prop::collection::vec(claim_member(), 0..7),
            configured in any::<bool>(),
        ) {
            let mut header = header;
            if alg_first {
                header.insert(0, "\"alg\":\"HS256\"".to_owned());
            }
            let mut claims = claims;
            if valid {
                claims.splice(0..0, ["\"sub\":\"s\"", "\"exp\":1700000100", "\"iss\":\"i\"", "\"aud\":\"a\""].map(str::to_owned));
            }
            let token = sign(&format!("{{{}}}", header.join(",")), &format!("{{{}}}", claims.join(",")));
            let rules = rules(configured);
            let (library, ours) = both(&rules, &token);
            prop_assert_eq!(library, ours, "{}", token);
            // A forged signature: refused alike.
            let forged = format!("{}AAAA", token.trim_end_matches(|c| c != '.'));
            let (library, ours) = both(&rules, &forged);
            prop_assert_eq!(library, ours, "{}", forged);
        }
    }
}
