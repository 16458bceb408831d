//! JWTs verified against a remote JSON Web Key Set (RFC 7517) with rotating keys: the way an
//! identity provider (Supabase, Auth0, Cognito, Keycloak, ...) publishes its signing keys.
//! Needs the `jwks` feature.
//!
//! What a careful identity-aware proxy does, and this authenticator does:
//!
//! * **The key set is fetched lazily** (or by [`JwksAuthenticator::refresh`]) and kept for
//!   [`max_age`](JwksAuthenticatorBuilder::max_age) (10 minutes by default), or for the
//!   response's `Cache-Control: max-age` clamped to bounds when
//!   [`cache_control`](JwksAuthenticatorBuilder::cache_control) is set. Building needs no
//!   network.
//! * **An unknown `kid` triggers at most one refetch per
//!   [`cooldown`](JwksAuthenticatorBuilder::cooldown)** (30 s by default), however many such
//!   tokens arrive: fetches are single-flight (concurrent callers wait for the same fetch) and a
//!   fetch attempt within the cooldown is skipped, so a flood of tokens with random `kid`s costs
//!   the identity provider one request per cooldown, not one per token.
//! * **Never fail open**: when the endpoint fails, times out (bounded by
//!   [`fetch_timeout`](JwksAuthenticatorBuilder::fetch_timeout)), answers more than
//!   [`MAX_JWKS_BYTES`] or answers something that is not a key set with a usable key, the last
//!   good set is kept. Before any set was fetched, every token is refused (`401`,
//!   `jwks_unavailable`).
//! * **Removed keys stop verifying** once the set is past its lifetime and refetched.
//! * **The algorithm comes from the key, never from the token**: a key's `alg`, or, when the
//!   JWK has none, the one its `kty`/`crv` implies (RSA: RS256, P-256: ES256, P-384: ES384,
//!   Ed25519: EdDSA), from the allow-list RS256, RS384, RS512, PS256, ES256, ES384, EdDSA. A token
//!   whose header `alg` differs from its key's is refused. HMAC (`oct`) keys in a JWKS are
//!   ignored: a shared secret has no business in a public document, and loading one would let
//!   an HS256 token verify against published material (the RFC 8725 §2.1 confusion). An HS256
//!   secret can only come from configuration ([`hs256`](JwksAuthenticatorBuilder::hs256)).
//! * **The token cannot choose its key**: the `jku`, `x5u`, `jwk` and `x5c` headers are never
//!   read (RFC 8725 §3.10: fetching a URL the token names is server-side request forgery, and
//!   trusting an embedded key trusts the attacker). A `kid` is only ever a map lookup, at most
//!   [`MAX_KID_BYTES`] long, never part of a path or URL.
//! * The URL must be `https` (plain `http` only for a loopback address, for tests): keys fetched
//!   in clear text could be swapped by anyone on the path. Redirects are not followed.
//!
//! Time (token `exp`/`nbf`, the cooldown, the key set's lifetime, the token cache) comes from
//! the injected [`Clock`](crate::clock::Clock).
//!
//! ```
//! use std::time::Duration;
//! use secure_routes::auth::jwks::JwksAuthenticator;
//!
//! let jwks = JwksAuthenticator::builder("https://example.supabase.co/auth/v1/.well-known/jwks.json")
//!     .issuer("https://example.supabase.co/auth/v1")
//!     .audience("authenticated")
//!     .cookie("sr-session")
//!     .cooldown(Duration::from_secs(30))
//!     .max_age(Duration::from_secs(600))
//!     .cache(10_000)
//!     .build()
//!     .unwrap();
//! // No request was made yet: the first token (or `jwks.refresh().await`) fetches the keys.
//! assert_eq!(jwks.cached_tokens(), 0);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::Uri;
use http::request::Parts;
use http_body::Body as _;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::claims::{Claims, PINNED};
use super::verify::{
    ClaimOptions, ClaimRules, HmacKey, Hooks, KeySpec, Miss, Verified, alg_name, check_key,
    claim_option_methods, parse_header,
};
use super::{AuthError, Authenticator, BoxFuture, Principal};
use crate::error::ConfigError;

/// Default least time between two fetches of the key set (unknown `kid`s and failed fetches
/// wait this long before the next attempt).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// Default lifetime of a fetched key set.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// Default bound on one fetch of the key set, connection included.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set response accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Longest `kid` accepted, in a token header or a JWK.
pub const MAX_KID_BYTES: usize = 256;
/// Keys kept from one key set; the rest are ignored.
const MAX_KEYS: usize = 100;
/// Longest key set lifetime and cooldown accepted.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The asymmetric algorithms a JWK may be used with.
const ALLOWED: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a key set fetch failed. The previous key set (if any) stays in use.
///
/// ```
/// use secure_routes::auth::jwks::JwksError;
/// assert_eq!(JwksError::Status(503).to_string(), "the JWKS endpoint answered HTTP 503");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// No complete answer within the fetch timeout.
    #[error("the JWKS fetch timed out")]
    Timeout,
    /// The endpoint could not be reached (DNS, connection, TLS).
    #[error("the JWKS endpoint is unreachable: {0}")]
    Transport(String),
    /// The endpoint answered a status other than 200 (redirects are not followed).
    #[error("the JWKS endpoint answered HTTP {0}")]
    Status(u16),
    /// The answer was longer than [`MAX_JWKS_BYTES`].
    #[error("the JWKS response is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// The answer is not a JSON object with a `keys` array.
    #[error("the JWKS response is not a JWK set")]
    Malformed,
    /// The set holds no key this authenticator can use (see the module docs).
    #[error("the JWKS response has no usable signing key")]
    NoUsableKeys,
}

/// Configures a [`JwksAuthenticator`]; see [`JwksAuthenticator::builder`].
///
/// [`build`](Self::build) validates everything and reports every problem at once; it makes no
/// request.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::auth::jwks::JwksAuthenticator;
/// let err = JwksAuthenticator::builder("http://idp.example/jwks.json")
///     .cooldown(Duration::ZERO)
///     .hs256(b"short")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.problems().len(), 3);
/// ```
#[derive(Clone)]
pub struct JwksAuthenticatorBuilder {
    url: String,
    claims: ClaimOptions,
    hmac: Vec<KeySpec>,
    cooldown: Duration,
    max_age: Duration,
    cache_control: Option<(Duration, Duration)>,
    fetch_timeout: Duration,
}

impl fmt::Debug for JwksAuthenticatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksAuthenticatorBuilder")
            .field("url", &self.url)
            .field("claims", &self.claims)
            .field("hmac", &self.hmac.len())
            .field("cooldown", &self.cooldown)
            .field("max_age", &self.max_age)
            .field("cache_control", &self.cache_control)
            .field("fetch_timeout", &self.fetch_timeout)
            .finish()
    }
}

claim_option_methods!(
    JwksAuthenticatorBuilder,
    "secure_routes::auth::jwks::JwksAuthenticator::builder(\"https://idp.example/jwks.json\")"
);

impl JwksAuthenticatorBuilder {
    /// Least time between two fetches (default [`DEFAULT_COOLDOWN`]; 1 s to 24 h). A token with
    /// an unknown `kid` triggers a fetch only when the last attempt is older than this, and so
    /// does a retry after a failed fetch.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let b = JwksAuthenticator::builder("https://idp.example/jwks.json");
    /// assert!(b.clone().cooldown(Duration::from_secs(10)).build().is_ok());
    /// assert!(b.cooldown(Duration::from_millis(10)).build().is_err());
    /// ```
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// How long a fetched key set is used before it is fetched again (default
    /// [`DEFAULT_MAX_AGE`]; 1 s to 24 h). A key removed from the JWKS stops verifying tokens
    /// once this has passed and the set was refetched.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let b = JwksAuthenticator::builder("https://idp.example/jwks.json");
    /// assert!(b.clone().max_age(Duration::from_secs(300)).build().is_ok());
    /// assert!(b.max_age(Duration::from_secs(3 * 24 * 3600)).build().is_err());
    /// ```
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Uses the response's `Cache-Control: max-age` as the key set's lifetime, clamped to
    /// `min..=max` (`no-cache` and `no-store` count as `min`); without that header the lifetime
    /// stays [`max_age`](Self::max_age). The clamp keeps a provider's (or an attacker-controlled
    /// cache's) header from pinning keys for days or from forcing a fetch per request.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let b = JwksAuthenticator::builder("https://idp.example/jwks.json");
    /// let ok = b.clone().cache_control(Duration::from_secs(60), Duration::from_secs(3600));
    /// assert!(ok.build().is_ok());
    /// let backwards = b.cache_control(Duration::from_secs(3600), Duration::from_secs(60));
    /// assert!(backwards.build().is_err());
    /// ```
    pub fn cache_control(mut self, min: Duration, max: Duration) -> Self {
        self.cache_control = Some((min, max));
        self
    }

    /// Bound on one fetch, connecting and reading included (default
    /// [`DEFAULT_FETCH_TIMEOUT`]; 10 ms to 60 s). Requests waiting for keys wait at most this.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let b = JwksAuthenticator::builder("https://idp.example/jwks.json");
    /// assert!(b.clone().fetch_timeout(Duration::from_secs(2)).build().is_ok());
    /// assert!(b.fetch_timeout(Duration::from_secs(600)).build().is_err());
    /// ```
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Also accepts HS256 tokens signed with this shared secret (at least 32 bytes), as a
    /// provider's legacy tokens are (Supabase's JWT secret). The token's `alg` picks the key
    /// family, among the configured ones only: an HS256 token is checked against this secret and
    /// nothing else (its `kid` is ignored), an asymmetric token against the JWKS and never
    /// against this secret.
    ///
    /// ```
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let b = JwksAuthenticator::builder("https://idp.example/jwks.json");
    /// assert!(b.clone().hs256([7u8; 32]).build().is_ok());
    /// assert!(b.hs256([7u8; 31]).build().is_err());
    /// ```
    pub fn hs256(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.hmac
            .push(KeySpec::Hmac(Algorithm::HS256, secret.as_ref().to_vec()));
        self
    }

    /// Provider-specific rules (the Supabase profile's cookie format and API-key refusal).
    pub(crate) fn hooks(mut self, hooks: Hooks) -> Self {
        self.claims.hooks = hooks;
        self
    }

    /// Validates the configuration and builds the authenticator, without fetching anything.
    ///
    /// ```
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let err = JwksAuthenticator::builder("ftp://user:pw@idp.example/jwks.json").build().unwrap_err();
    /// assert_eq!(err.problems().len(), 2);
    /// ```
    pub fn build(self) -> Result<JwksAuthenticator, ConfigError> {
        let mut problems = Vec::new();
        let url = check_url(&self.url, &mut problems);
        let hmac = match self.hmac.as_slice() {
            [] => None,
            [k] => check_key("jwks", k, &mut problems),
            _ => {
                problems.push("jwks: configure at most one HS256 secret".to_owned());
                None
            }
        };
        let in_range = |d: Duration, min: Duration, max: Duration| (min..=max).contains(&d);
        let second = Duration::from_secs(1);
        if !in_range(self.cooldown, second, MAX_LIFETIME) {
            problems.push(format!(
                "jwks: the cooldown must be between 1 s and 24 h (got {:?})",
                self.cooldown
            ));
        }
        if !in_range(self.max_age, second, MAX_LIFETIME) {
            problems.push(format!(
                "jwks: max_age must be between 1 s and 24 h (got {:?})",
                self.max_age
            ));
        }
        if let Some((min, max)) = self.cache_control
            && !(min >= second && min <= max && max <= MAX_LIFETIME)
        {
            problems.push(format!(
                "jwks: the Cache-Control bounds must satisfy 1 s <= min <= max <= 24 h (got {min:?}..{max:?})"
            ));
        }
        if !in_range(
            self.fetch_timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        ) {
            problems.push(format!(
                "jwks: the fetch timeout must be between 10 ms and 60 s (got {:?})",
                self.fetch_timeout
            ));
        }
        self.claims.check("jwks", &mut problems);
        let client = url.as_ref().and_then(|u| {
            http_client(self.fetch_timeout, u.scheme_str() == Some("https"))
                .map_err(|e| problems.push(format!("jwks: cannot set up the HTTP client: {e}")))
                .ok()
        });
        ConfigError::check(problems, ())?;
        let (Some(url), Some(client)) = (url, client) else {
            return Err(ConfigError::new("jwks: no usable URL"));
        };
        let rules = self.claims.build();
        // Only an HMAC secret gets here (`hs256`): keyed once.
        let hmac = match (hmac, self.hmac.as_slice()) {
            (Some((alg, _, _)), [KeySpec::Hmac(_, secret)]) => {
                Some((alg, HmacKey::new(alg, secret)))
            }
            _ => None,
        };
        let validations = ALLOWED.map(|alg| (alg, rules.validation(alg)));
        Ok(JwksAuthenticator {
            inner: Arc::new(Inner {
                url,
                client,
                rules,
                hmac,
                validations,
                cooldown: self.cooldown,
                max_age: self.max_age,
                cache_control: self.cache_control,
                fetch_timeout: self.fetch_timeout,
                keys: RwLock::new(Arc::new(KeySet::default())),
                last_attempt: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

/// `https`, or `http` to a loopback address; no credentials in the URL.
fn check_url(raw: &str, problems: &mut Vec<String>) -> Option<Uri> {
    let parsed = raw.parse::<Uri>().ok();
    let Some((uri, scheme, authority)) = parsed.as_ref().and_then(|u| {
        let scheme = u.scheme_str()?.to_ascii_lowercase();
        Some((u, scheme, u.authority()?))
    }) else {
        problems.push("jwks: the JWKS URL is not a valid absolute URL".to_owned());
        return None;
    };
    let before = problems.len();
    if authority.as_str().contains('@') {
        problems.push("jwks: the JWKS URL must not carry credentials".to_owned());
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match scheme.as_str() {
        "https" => {}
        "http" if loopback => {}
        _ => problems.push(
            "jwks: the JWKS URL must be https (keys fetched in clear text can be replaced by \
             anyone on the path); plain http is accepted only for a loopback address"
                .to_owned(),
        ),
    }
    (problems.len() == before).then(|| uri.clone())
}

/// The fetcher's HTTP client (shared with the alert webhooks: `crate::http_client`).
type HttpClient = crate::http_client::HttpClient<Empty<Bytes>>;

use crate::http_client::{error_chain, http_client};

/// Verifies JWTs against the keys of a remote JWK set; build it with
/// [`JwksAuthenticator::builder`]. Cloning is cheap and shares the keys, the fetch state and
/// the token cache, so an application can keep a handle to call [`refresh`](Self::refresh).
///
/// ```
/// use secure_routes::auth::jwks::JwksAuthenticator;
/// let a = JwksAuthenticator::builder("https://idp.example/jwks.json").build().unwrap();
/// let handle = a.clone();
/// # let _ = handle;
/// ```
#[derive(Clone)]
pub struct JwksAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    url: Uri,
    client: HttpClient,
    rules: ClaimRules,
    /// The configured HMAC secret, keyed once (verified without jsonwebtoken).
    hmac: Option<(Algorithm, HmacKey)>,
    validations: [(Algorithm, Validation); ALLOWED.len()],
    cooldown: Duration,
    max_age: Duration,
    cache_control: Option<(Duration, Duration)>,
    fetch_timeout: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch was attempted. Held across a fetch: that is the single flight.
    last_attempt: tokio::sync::Mutex<Option<Duration>>,
}

/// One usable key of the set.
struct JwksKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<Arc<JwksKey>>>,
    /// Until when the set may be used without a refetch; `None` before the first fetch.
    fresh_until: Option<Duration>,
    /// Changes whenever the keys change; cached verifications carry it.
    generation: u64,
    fingerprint: [u8; 32],
}

impl KeySet {
    fn fetched(&self) -> bool {
        self.fresh_until.is_some()
    }

    fn is_fresh(&self, now: Duration) -> bool {
        self.fresh_until.is_some_and(|t| now < t)
    }

    fn len(&self) -> usize {
        self.by_kid.values().map(Vec::len).sum()
    }
}

/// A parsed key set, before it replaces the current one.
struct Fetched {
    by_kid: HashMap<String, Vec<Arc<JwksKey>>>,
    fingerprint: [u8; 32],
    lifetime: Option<Duration>,
}

impl fmt::Debug for JwksAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        let keys = i.current();
        f.debug_struct("JwksAuthenticator")
            .field("url", &i.url.to_string())
            .field("rules", &i.rules)
            .field("hs256", &i.hmac.is_some())
            .field("cooldown", &i.cooldown)
            .field("max_age", &i.max_age)
            .field("cache_control", &i.cache_control)
            .field("fetch_timeout", &i.fetch_timeout)
            .field("keys", &keys.len())
            .field("generation", &keys.generation)
            .finish_non_exhaustive()
    }
}

impl JwksAuthenticator {
    /// A builder for the key set at `url`, with leeway
    /// [`DEFAULT_LEEWAY`](crate::auth::jwt::DEFAULT_LEEWAY), cooldown [`DEFAULT_COOLDOWN`],
    /// max age [`DEFAULT_MAX_AGE`], fetch timeout [`DEFAULT_FETCH_TIMEOUT`], no issuer,
    /// audience, cookie, cache or HS256 secret, and the system clock.
    ///
    /// ```
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let a = JwksAuthenticator::builder("https://idp.example/.well-known/jwks.json")
    ///     .issuer("https://idp.example/")
    ///     .audience("api")
    ///     .build()
    ///     .unwrap();
    /// # let _ = a;
    /// ```
    pub fn builder(url: impl Into<String>) -> JwksAuthenticatorBuilder {
        JwksAuthenticatorBuilder {
            url: url.into(),
            claims: ClaimOptions::default(),
            hmac: Vec::new(),
            cooldown: DEFAULT_COOLDOWN,
            max_age: DEFAULT_MAX_AGE,
            cache_control: None,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// Fetches the key set now (ignoring the cooldown, but never concurrently with another
    /// fetch) and returns how many usable keys it holds. On failure the previous set stays.
    /// Call it at start-up to fail fast on a wrong URL, or from a timer.
    ///
    /// ```no_run
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let a = JwksAuthenticator::builder("https://idp.example/jwks.json").build()?;
    /// let keys = a.refresh().await?;
    /// assert!(keys > 0);
    /// # Ok(()) }
    /// ```
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        // A forced fetch is never skipped, so `None` does not happen.
        self.inner
            .refetch(true)
            .await
            .unwrap_or(Err(JwksError::Timeout))
    }

    /// Verifies `token` (fetching keys if needed) and returns its claims, which include a
    /// non-empty string `sub`. Always checks the signature: only
    /// [`authenticate`](Authenticator::authenticate) consults the token cache.
    ///
    /// ```
    /// # use secure_routes::auth::{AuthError, jwks::JwksAuthenticator};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let a = JwksAuthenticator::builder("https://idp.example/jwks.json").build().unwrap();
    /// // `alg: none` is refused before any key is looked up (or fetched).
    /// let none = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    /// assert_eq!(a.verify(none).await.unwrap_err(), AuthError::Invalid("wrong_algorithm"));
    /// # });
    /// ```
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.inner.verify_token(token).await.map(|(v, _)| v.claims)
    }

    /// The cookie tokens are also read from, if any.
    ///
    /// ```
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let a = JwksAuthenticator::builder("https://idp.example/jwks.json").build().unwrap();
    /// assert_eq!(a.cookie_name(), None);
    /// ```
    pub fn cookie_name(&self) -> Option<&str> {
        self.inner.rules.cookie()
    }

    /// How many verified tokens the cache holds now (0 without a cache).
    ///
    /// ```
    /// # use secure_routes::auth::jwks::JwksAuthenticator;
    /// let a = JwksAuthenticator::builder("https://idp.example/jwks.json").cache(64).build().unwrap();
    /// assert_eq!(a.cached_tokens(), 0);
    /// ```
    pub fn cached_tokens(&self) -> usize {
        self.inner.rules.cached_tokens()
    }
}

impl Authenticator for JwksAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let miss = match inner.cached(parts)? {
                Ok(cached) => return Ok(cached),
                Err(miss) => miss,
            };
            // Boxed: the fetch path's future is large, and moving it into every request's
            // future would cost a cache hit more than the hit itself.
            let (verified, generation) = Box::pin(inner.verify_token(&miss.token)).await?;
            Ok(inner.rules.admit(miss, verified, generation))
        })
    }

    /// A cached verification (or a request without a usable credential) at once; a token
    /// that must be verified, perhaps after a key-set fetch, goes to `authenticate`.
    fn authenticate_now(&self, parts: &Parts) -> Option<Result<Principal, AuthError>> {
        match self.inner.cached(parts) {
            Ok(Ok(cached)) => Some(Ok(cached)),
            Ok(Err(_miss)) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl Inner {
    /// The request's principal from the verified-token cache, or the miss to verify.
    fn cached<'p>(&self, parts: &'p Parts) -> Result<Result<Principal, Miss<'p>>, AuthError> {
        let set = self.current();
        // A cached verification counts only while the key set it was made with is the
        // current one and still fresh: past its lifetime the set must be refetched first.
        // One made with the configured HS256 secret counts whatever the set is doing.
        let generation = set.is_fresh(self.rules.now()).then_some(set.generation);
        self.rules.lookup(parts, generation)
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Verifies a token; also returns the key set generation it was verified under.
    async fn verify_token(&self, token: &str) -> Result<(Verified, u64), AuthError> {
        self.rules.precheck(token)?;
        let header = parse_header(token)?;
        let Some(name) = header.alg else {
            return Err(AuthError::Invalid("wrong_algorithm"));
        };
        if let Some((alg, key)) = &self.hmac
            && name == alg_name(*alg)
        {
            // The configured shared secret, and only it: never a JWKS key for an HMAC token.
            // It never rotates, so its verifications stay usable whatever the key set does.
            return Ok((self.rules.decode_hmac(token, &header, key)?, PINNED));
        }
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| alg_name(*a) == name)
        else {
            // `none`, HMAC without a configured secret, or anything off the allow-list.
            return Err(AuthError::Invalid("wrong_algorithm"));
        };
        let kid = header.kid.ok_or(AuthError::Invalid("missing_kid"))?;
        if kid.is_empty() || kid.len() > MAX_KID_BYTES {
            return Err(AuthError::Invalid("bad_kid"));
        }
        let (key, generation) = self.key_for(&kid, *alg).await?;
        Ok((self.rules.decode(token, &key.key, validation)?, generation))
    }

    /// The key for `kid`, whose algorithm must be `alg`, fetching the set when it is stale or
    /// when the `kid` is unknown (each at most once per cooldown).
    async fn key_for(&self, kid: &str, alg: Algorithm) -> Result<(Arc<JwksKey>, u64), AuthError> {
        let mut set = self.current();
        if !set.is_fresh(self.rules.now()) {
            // Stale or never fetched. If the fetch fails (or is in cooldown) the last good set
            // is used as it is: an outage must not lock everyone out, nor let anyone in. While
            // another request's fetch is in flight, a request that has a set to work with does
            // not queue behind it (a hanging endpoint would hold it for the fetch timeout).
            let in_flight = set.fetched() && self.last_attempt.try_lock().is_err();
            if !in_flight {
                self.refetch(false).await;
                set = self.current();
            }
        }
        let mut refetched = false;
        loop {
            if let Some(keys) = set.by_kid.get(kid) {
                return match keys.iter().find(|k| k.alg == alg) {
                    Some(k) => Ok((Arc::clone(k), set.generation)),
                    // The key exists but is for another algorithm: the token's header lies.
                    None => Err(AuthError::Invalid("wrong_algorithm")),
                };
            }
            if refetched || self.refetch(false).await.is_none() {
                break;
            }
            // A new key may have rotated in since the last fetch.
            refetched = true;
            set = self.current();
        }
        Err(AuthError::Invalid(if set.fetched() {
            "unknown_kid"
        } else {
            "jwks_unavailable"
        }))
    }

    /// Fetches and installs the key set, unless (without `force`) the last attempt is more
    /// recent than the cooldown: then `None`. Concurrent callers queue on the lock and, once a
    /// fetch has happened, find themselves inside the cooldown: one fetch serves them all.
    async fn refetch(&self, force: bool) -> Option<Result<usize, JwksError>> {
        let mut last = self.last_attempt.lock().await;
        let now = self.rules.now();
        if !force
            && let Some(t) = *last
            && now.saturating_sub(t) < self.cooldown
        {
            return None;
        }
        *last = Some(now);
        let result = match tokio::time::timeout(self.fetch_timeout, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(JwksError::Timeout),
        };
        Some(match result {
            Ok(fetched) => {
                metrics::counter!("secure_routes_jwks_fetches_total", "outcome" => "ok")
                    .increment(1);
                Ok(self.install(fetched, now))
            }
            Err(e) => {
                metrics::counter!("secure_routes_jwks_fetches_total", "outcome" => "error")
                    .increment(1);
                tracing::warn!(
                    host = self.url.host().unwrap_or(""),
                    error = %e,
                    "JWKS fetch failed; keeping the last good key set"
                );
                Err(e)
            }
        })
    }

    /// Replaces the key set; a new generation only when the keys differ.
    fn install(&self, fetched: Fetched, now: Duration) -> usize {
        let lifetime = fetched.lifetime.unwrap_or(self.max_age);
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let generation = if keys.fetched() && keys.fingerprint == fetched.fingerprint {
            keys.generation
        } else {
            // Never PINNED, which marks verifications with the configured secret.
            keys.generation.wrapping_add(1) % PINNED
        };
        if generation != keys.generation {
            tracing::info!(
                host = self.url.host().unwrap_or(""),
                keys = fetched.by_kid.values().map(Vec::len).sum::<usize>(),
                "JWKS key set changed"
            );
        }
        let set = KeySet {
            by_kid: fetched.by_kid,
            fresh_until: Some(now.saturating_add(lifetime)),
            generation,
            fingerprint: fetched.fingerprint,
        };
        let n = set.len();
        *keys = Arc::new(set);
        n
    }

    /// One GET of the key set, bounded in size; the caller bounds it in time.
    async fn fetch(&self) -> Result<Fetched, JwksError> {
        let transport = |e: &dyn std::error::Error| JwksError::Transport(error_chain(e));
        let request = http::Request::get(self.url.clone())
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(
                http::header::USER_AGENT,
                concat!("secure-routes/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| transport(&e))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| transport(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        if response
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let lifetime = self.cache_control.and_then(|(min, max)| {
            let header = response.headers().get(http::header::CACHE_CONTROL)?;
            cache_lifetime(header.to_str().ok()?, min, max)
        });
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    JwksError::TooLarge
                } else {
                    transport(&*e)
                }
            })?
            .to_bytes();
        let (by_kid, fingerprint) = parse_set(&body)?;
        Ok(Fetched {
            by_kid,
            fingerprint,
            lifetime,
        })
    }
}

/// The lifetime a `Cache-Control` value asks for, clamped to `min..=max`; `None` when it says
/// nothing about freshness.
fn cache_lifetime(value: &str, min: Duration, max: Duration) -> Option<Duration> {
    let mut lifetime = None;
    for directive in value.split(',') {
        let directive = directive.trim();
        let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(min);
        }
        if name.eq_ignore_ascii_case("max-age") {
            // RFC 9111 §1.2.2: delta-seconds; a value too large for u64 means "a very long time".
            let arg = arg.trim_matches('"');
            if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
                lifetime = Some(Duration::from_secs(arg.parse().unwrap_or(u64::MAX)));
            }
        }
    }
    lifetime.map(|l| l.clamp(min, max))
}

type KeyMap = HashMap<String, Vec<Arc<JwksKey>>>;

/// The usable keys of a JWK set document, and a fingerprint of them.
///
/// The document is read as `{"keys": [...]}` with each key parsed on its own (as a
/// jsonwebtoken [`Jwk`]) rather than as one [`JwkSet`](jsonwebtoken::jwk::JwkSet): with the
/// latter, one key with an odd field (a numeric `kid`, a malformed `key_ops`) would make the
/// whole set unreadable, and the provider's good keys with it.
fn parse_set(body: &[u8]) -> Result<(KeyMap, [u8; 32]), JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| JwksError::Malformed)?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err(JwksError::Malformed);
    };
    let mut by_kid = KeyMap::new();
    let mut prints = Vec::new();
    for jwk in keys {
        if prints.len() == MAX_KEYS {
            break;
        }
        let Some((kid, key, print)) = parse_key(jwk) else {
            continue;
        };
        let slot = by_kid.entry(kid).or_default();
        // Two keys with the same `kid` and algorithm: the first one wins, deterministically.
        if slot.iter().all(|k| k.alg != key.alg) {
            slot.push(Arc::new(key));
            prints.push(print);
        }
    }
    if prints.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    prints.sort_unstable();
    let mut h = Sha256::new();
    for p in &prints {
        h.update(p);
    }
    Ok((by_kid, h.finalize().into()))
}

/// Key families a JWK can be, with their allowed algorithms.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    fn allows(self, alg: Algorithm) -> bool {
        match self {
            Family::Rsa => matches!(
                alg,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256
            ),
            Family::P256 => alg == Algorithm::ES256,
            Family::P384 => alg == Algorithm::ES384,
            Family::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// The signature algorithm a JWK's `alg` names, if it is one of [`ALLOWED`].
fn allowed_alg(alg: KeyAlgorithm) -> Option<Algorithm> {
    let alg = match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        // HMAC, encryption algorithms, PS384/PS512, unknown names: never a key's algorithm here.
        _ => return None,
    };
    ALLOWED.contains(&alg).then_some(alg)
}

/// One JWK, if usable for signatures: its `kid`, the key and a digest of both for the set's
/// fingerprint. Anything unexpected makes the key unusable, never the whole set.
///
/// jsonwebtoken reads the JWK ([`Jwk`]) and builds the key ([`DecodingKey::from_jwk`]); the
/// rules on top are ours: signature use only, a bounded `kid`, the algorithm from the key's
/// type and curve (an `alg` must agree with them), no `oct` keys, RSA moduli of 2048 to 8192
/// bits and exact curve point sizes.
fn parse_key(jwk: &Value) -> Option<(String, JwksKey, [u8; 32])> {
    let jwk = Jwk::deserialize(jwk).ok()?;
    let common = &jwk.common;
    let bytes = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    // RFC 7517 §4.2-4.3: a key published for encryption is not a signature key.
    if !matches!(common.public_key_use, None | Some(PublicKeyUse::Signature)) {
        return None;
    }
    if let Some(ops) = &common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return None;
    }
    let kid = common.key_id.as_deref()?;
    if kid.is_empty() || kid.len() > MAX_KID_BYTES {
        return None;
    }
    let (family, implied) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Family::Rsa, Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            (Family::P256, Algorithm::ES256)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
            (Family::P384, Algorithm::ES384)
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (Family::Ed25519, Algorithm::EdDSA)
        }
        // `oct` (shared secrets) and every other type or curve: not used.
        _ => return None,
    };
    let alg = match common.key_algorithm {
        None => implied,
        Some(named) => allowed_alg(named).filter(|a| family.allows(*a))?,
    };
    // The raw material, checked here and digested for the set's fingerprint.
    let material = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let (n, e) = (bytes(&p.n)?, bytes(&p.e)?);
            let first = n.iter().position(|b| *b != 0)?;
            let bits = (n.len() - first) * 8 - n[first].leading_zeros() as usize;
            // RFC 7518 §3.3: at least 2048 bits; aws-lc verifies up to 8192.
            if !(2048..=8192).contains(&bits) || e.is_empty() || e.len() > 8 {
                return None;
            }
            [n, e].concat()
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let size = if family == Family::P256 { 32 } else { 48 };
            let (x, y) = (bytes(&p.x)?, bytes(&p.y)?);
            if x.len() != size || y.len() != size {
                return None;
            }
            // The uncompressed SEC1 point, as jsonwebtoken builds it from `x` and `y`.
            [&[0x04][..], &x, &y].concat()
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            let x = bytes(&p.x)?;
            if x.len() != 32 {
                return None;
            }
            x
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let mut h = Sha256::new();
    h.update(kid.as_bytes());
    h.update([0]);
    h.update(alg_name(alg).as_bytes());
    h.update([0]);
    h.update(&material);
    Some((kid.to_owned(), JwksKey { alg, key }, h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_control_is_clamped() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        for (value, want) in [
            ("max-age=300", Some(300)),
            ("public, max-age=5", Some(60)),
            ("max-age=999999999999999999999999", Some(3600)),
            ("MAX-AGE=120, must-revalidate", Some(120)),
            ("max-age=\"90\"", Some(90)),
            ("no-store", Some(60)),
            ("max-age=600, no-cache", Some(60)),
            ("max-age=-5", None),
            ("max-age=", None),
            ("public", None),
            ("", None),
        ] {
            assert_eq!(
                cache_lifetime(value, min, max),
                want.map(Duration::from_secs),
                "{value}"
            );
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn key_parsing_rules() {
        let x32 = b64(&[1u8; 32]);
        let x48 = b64(&[1u8; 48]);
        let mut n = vec![0xc1u8; 256];
        n[0] = 0xff;
        let n2048 = b64(&n);
        let n1024 = b64(&n[..128]);
        let e = b64(&[1, 0, 1]);
        let cases = [
            (
                json!({"kid": "a", "kty": "RSA", "n": n2048, "e": e}),
                Some(Algorithm::RS256),
            ),
            (
                json!({"kid": "a", "kty": "RSA", "alg": "PS256", "n": n2048, "e": e}),
                Some(Algorithm::PS256),
            ),
            (
                json!({"kid": "a", "kty": "RSA", "alg": "RS512", "use": "sig", "n": n2048, "e": e}),
                Some(Algorithm::RS512),
            ),
            (
                json!({"kid": "a", "kty": "RSA", "alg": "PS512", "n": n2048, "e": e}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "RSA", "alg": "ES256", "n": n2048, "e": e}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "RSA", "alg": "HS256", "n": n2048, "e": e}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "RSA", "use": "enc", "n": n2048, "e": e}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "RSA", "key_ops": ["encrypt"], "n": n2048, "e": e}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "RSA", "key_ops": ["verify"], "n": n2048, "e": e}),
                Some(Algorithm::RS256),
            ),
            (json!({"kid": "a", "kty": "RSA", "n": n1024, "e": e}), None),
            (json!({"kty": "RSA", "n": n2048, "e": e}), None),
            (json!({"kid": "", "kty": "RSA", "n": n2048, "e": e}), None),
            (
                json!({"kid": "k".repeat(MAX_KID_BYTES + 1), "kty": "RSA", "n": n2048, "e": e}),
                None,
            ),
            (json!({"kid": 7, "kty": "RSA", "n": n2048, "e": e}), None),
            (
                json!({"kid": "a", "kty": "RSA", "n": format!("{n2048}="), "e": e}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "EC", "crv": "P-256", "x": x32, "y": x32}),
                Some(Algorithm::ES256),
            ),
            (
                json!({"kid": "a", "kty": "EC", "crv": "P-256", "alg": "ES384", "x": x32, "y": x32}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "EC", "crv": "P-256", "x": x48, "y": x32}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "EC", "crv": "P-384", "x": x48, "y": x48}),
                Some(Algorithm::ES384),
            ),
            (
                json!({"kid": "a", "kty": "EC", "crv": "P-521", "x": x32, "y": x32}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "OKP", "crv": "Ed25519", "x": x32}),
                Some(Algorithm::EdDSA),
            ),
            (
                json!({"kid": "a", "kty": "OKP", "crv": "X25519", "x": x32}),
                None,
            ),
            (json!({"kid": "a", "kty": "oct", "k": x32}), None),
            (
                json!({"kid": "a", "kty": "oct", "alg": "HS256", "k": x32}),
                None,
            ),
            (
                json!({"kid": "a", "kty": "oct", "alg": "RS256", "k": x32}),
                None,
            ),
            (json!("not an object"), None),
        ];
        for (jwk, want) in cases {
            let got = parse_key(&jwk).map(|(_, k, _)| k.alg);
            assert_eq!(got, want, "{jwk}");
        }
    }

    #[test]
    fn set_parsing() {
        let x32 = b64(&[1u8; 32]);
        let ed = |kid: &str| json!({"kid": kid, "kty": "OKP", "crv": "Ed25519", "x": x32});
        assert_eq!(parse_set(b"{}").err(), Some(JwksError::Malformed));
        assert_eq!(parse_set(b"<html>").err(), Some(JwksError::Malformed));
        assert_eq!(
            parse_set(br#"{"keys": {}}"#).err(),
            Some(JwksError::Malformed)
        );
        assert_eq!(
            parse_set(br#"{"keys": []}"#).err(),
            Some(JwksError::NoUsableKeys)
        );
        let only_oct = json!({"keys": [{"kid": "h", "kty": "oct", "k": x32}]});
        assert_eq!(
            parse_set(only_oct.to_string().as_bytes()).err(),
            Some(JwksError::NoUsableKeys)
        );
        let two = json!({"keys": [ed("a"), ed("b"), ed("a"), {"kty": "weird"}]});
        let (map, print) = parse_set(two.to_string().as_bytes()).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map["a"].len(), 1, "a duplicate (kid, alg) is dropped");
        // The fingerprint ignores order and changes with the keys.
        let swapped = json!({"keys": [ed("b"), ed("a")]});
        assert_eq!(parse_set(swapped.to_string().as_bytes()).unwrap().1, print);
        let other = json!({"keys": [ed("b"), ed("c")]});
        assert_ne!(parse_set(other.to_string().as_bytes()).unwrap().1, print);
        let many: Vec<Value> = (0..MAX_KEYS + 10).map(|i| ed(&format!("k{i}"))).collect();
        let (map, _) = parse_set(json!({ "keys": many }).to_string().as_bytes()).unwrap();
        assert_eq!(map.len(), MAX_KEYS);
    }

    #[test]
    fn generation_changes_only_with_the_keys() {
        let a = JwksAuthenticator::builder("https://idp.example/jwks.json")
            .build()
            .unwrap();
        let x = |byte: u8| b64(&[byte; 32]);
        let fetched = |keys: Value| {
            let (by_kid, fingerprint) =
                parse_set(json!({ "keys": keys }).to_string().as_bytes()).unwrap();
            Fetched {
                by_kid,
                fingerprint,
                lifetime: None,
            }
        };
        let ed =
            |kid: &str, byte: u8| json!({"kid": kid, "kty": "OKP", "crv": "Ed25519", "x": x(byte)});
        let i = &a.inner;
        let t = Duration::from_secs(1_000);
        assert!(!i.current().fetched());
        assert_eq!(i.install(fetched(json!([ed("a", 1)])), t), 1);
        let first = i.current().generation;
        assert!(
            i.current()
                .is_fresh(t + DEFAULT_MAX_AGE - Duration::from_nanos(1))
        );
        assert!(!i.current().is_fresh(t + DEFAULT_MAX_AGE));
        // The same keys (in another order, with other fields) keep the generation...
        i.install(
            fetched(json!([ed("a", 1), {"kid": "h", "kty": "oct", "k": "AAAA"}])),
            t,
        );
        assert_eq!(i.current().generation, first);
        // ...but another key under the same kid, or one key more, changes it.
        i.install(fetched(json!([ed("a", 2)])), t);
        let second = i.current().generation;
        assert_ne!(second, first);
        i.install(fetched(json!([ed("a", 2), ed("b", 3)])), t);
        assert_ne!(i.current().generation, second);
    }

    #[test]
    fn urls() {
        for (url, ok) in [
            ("https://idp.example/jwks.json", true),
            ("https://idp.example:8443/.well-known/jwks.json?x=1", true),
            ("http://127.0.0.1:8080/jwks", true),
            ("http://127.9.9.9/jwks", true),
            ("http://localhost/jwks", true),
            ("http://[::1]:9/jwks", true),
            ("http://idp.example/jwks.json", false),
            ("http://10.0.0.1/jwks", false),
            ("https://user:pw@idp.example/jwks.json", false),
            ("ftp://idp.example/jwks.json", false),
            ("/relative/jwks.json", false),
            ("", false),
        ] {
            let mut problems = Vec::new();
            assert_eq!(check_url(url, &mut problems).is_some(), ok, "{url}");
            assert_eq!(problems.is_empty(), ok, "{url}");
        }
    }
}
