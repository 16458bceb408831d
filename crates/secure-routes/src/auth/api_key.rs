//! API-key authentication from a request header (for example `x-api-key`).
//!
//! Keys are stored only as SHA-256 digests, so a memory dump or a leaked configuration does not
//! hand out working keys. A plain (unsalted, fast) hash is enough because API keys are random
//! and long (at least [`MIN_KEY_LEN`] bytes are required): they are not passwords, and there is
//! no dictionary to try. A presented key is hashed and compared with **every** stored digest in
//! constant time, without stopping at a match, so the response time says nothing about which
//! keys exist or how close a guess came.
//!
//! The principal's subject is the key's id (never the key), with
//! [`CredentialSource::ApiKey`]: an explicit header, not ambient, so no CSRF token is needed.
//!
//! ```
//! use axum::{Router, body::Body, routing::get};
//! use http::{Request, StatusCode};
//! use secure_routes::{AuthMode, Policy, Principal, Security};
//! use secure_routes::auth::api_key::ApiKeyAuthenticator;
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let keys = ApiKeyAuthenticator::builder("x-api-key")
//!     .key("ci-bot", "k_3f9a1c7e5b2d8f60a4c1")
//!     .build()
//!     .unwrap();
//! let security = Security::builder().authenticator(keys).csrf_secret([1u8; 32]).build().unwrap();
//! let policy = Policy::public().to_builder().auth(AuthMode::Required).build().unwrap();
//! let app: Router = Router::new()
//!     .route("/me", get(|p: Principal| async move { p.subject().to_owned() }))
//!     .layer(security.layer(policy).unwrap());
//!
//! let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1], 4000)));
//! let ok = Request::get("/me").header("x-api-key", "k_3f9a1c7e5b2d8f60a4c1").extension(peer).body(Body::empty()).unwrap();
//! assert_eq!(app.clone().oneshot(ok).await.unwrap().status(), StatusCode::OK);
//! let bad = Request::get("/me").header("x-api-key", "k_guess_guess_guess_").extension(peer).body(Body::empty()).unwrap();
//! assert_eq!(app.oneshot(bad).await.unwrap().status(), StatusCode::UNAUTHORIZED);
//! # });
//! ```

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::{AuthError, Authenticator, BoxFuture, CredentialSource, Principal};
use crate::error::ConfigError;

/// Minimum key length in bytes: shorter keys could be guessed, and the unsalted hash relies on
/// keys being high-entropy.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key header accepted; anything longer is refused before hashing.
pub const MAX_KEY_LEN: usize = 1024;

/// The SHA-256 of `key`, lowercase hex: what [`ApiKeyAuthenticatorBuilder::key_hash`] expects,
/// so configuration can carry digests instead of keys.
///
/// ```
/// use secure_routes::auth::api_key::hash_key;
/// assert_eq!(hash_key(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
/// ```
pub fn hash_key(key: &[u8]) -> String {
    hex::encode(Sha256::digest(key))
}

/// Configures an [`ApiKeyAuthenticator`]; see [`ApiKeyAuthenticator::builder`].
///
/// [`build`](Self::build) reports every problem at once. The builder authenticates nobody: only
/// a configuration that passed `build` becomes an [`ApiKeyAuthenticator`].
///
/// ```
/// use secure_routes::auth::api_key::ApiKeyAuthenticator;
/// let err = ApiKeyAuthenticator::builder("x-api-key")
///     .key("a", "short")
///     .key_hash("b", "not-hex")
///     .build()
///     .unwrap_err();
/// assert_eq!(err.problems().len(), 2);
/// ```
///
/// ```compile_fail
/// use secure_routes::auth::{Authenticator, api_key::ApiKeyAuthenticator};
/// // An unchecked configuration cannot be used to authenticate.
/// let unchecked = ApiKeyAuthenticator::builder("x-api-key").key("ops", "0123456789abcdef-ops");
/// let _: &dyn Authenticator = &unchecked;
/// ```
#[derive(Clone)]
pub struct ApiKeyAuthenticatorBuilder {
    header: Option<HeaderName>,
    keys: Vec<(Arc<str>, [u8; 32])>,
    problems: Vec<String>,
}

impl fmt::Debug for ApiKeyAuthenticatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: not even the digests.
        f.debug_struct("ApiKeyAuthenticatorBuilder")
            .field("header", &self.header)
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .field("problems", &self.problems.len())
            .finish()
    }
}

impl ApiKeyAuthenticatorBuilder {
    /// Accepts `key` for the principal `id`. The key is hashed at once and not kept. It must be
    /// at least [`MIN_KEY_LEN`] and at most [`MAX_KEY_LEN`] bytes.
    ///
    /// ```
    /// use secure_routes::auth::api_key::ApiKeyAuthenticator;
    /// let a = ApiKeyAuthenticator::builder("x-api-key")
    ///     .key("ci-bot", "k_3f9a1c7e5b2d8f60a4c1")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(a.key_ids().collect::<Vec<_>>(), ["ci-bot"]);
    /// ```
    pub fn key(mut self, id: impl Into<Arc<str>>, key: impl AsRef<[u8]>) -> Self {
        let id = id.into();
        let key = key.as_ref();
        if key.len() < MIN_KEY_LEN || key.len() > MAX_KEY_LEN {
            // Never echo the key itself.
            self.problems.push(format!(
                "api key {id:?} must be {MIN_KEY_LEN}..={MAX_KEY_LEN} bytes (got {})",
                key.len()
            ));
            return self;
        }
        let digest: [u8; 32] = Sha256::digest(key).into();
        self.add(id, digest)
    }

    /// Accepts the key whose SHA-256 is `hex_digest` (64 hex digits, see [`hash_key`]) for the
    /// principal `id`.
    ///
    /// ```
    /// use secure_routes::auth::api_key::{ApiKeyAuthenticator, hash_key};
    /// let a = ApiKeyAuthenticator::builder("x-api-key")
    ///     .key_hash("ops", &hash_key(b"0123456789abcdef-ops"))
    ///     .build();
    /// assert!(a.is_ok());
    /// ```
    pub fn key_hash(mut self, id: impl Into<Arc<str>>, hex_digest: &str) -> Self {
        let id = id.into();
        match decode_hex32(hex_digest.trim()) {
            Some(digest) => self.add(id, digest),
            None => {
                self.problems.push(format!(
                    "api key hash for {id:?} must be 64 hex digits (a SHA-256)"
                ));
                self
            }
        }
    }

    fn add(mut self, id: Arc<str>, digest: [u8; 32]) -> Self {
        if id.is_empty() {
            self.problems
                .push("api key id must not be empty".to_owned());
        } else if self.keys.iter().any(|(k, _)| *k == id) {
            self.problems
                .push(format!("api key id {id:?} is configured twice"));
        } else if self.keys.iter().any(|(_, d)| *d == digest) {
            // One key, two identities: which one would a request be?
            self.problems
                .push(format!("api key {id:?} is the same key as another id"));
        } else {
            self.keys.push((id, digest));
        }
        self
    }

    /// The authenticator if the configuration is sound, else every problem found. No key at
    /// all is a problem too (nobody could ever authenticate).
    ///
    /// ```
    /// use secure_routes::auth::api_key::ApiKeyAuthenticator;
    /// let err = ApiKeyAuthenticator::builder("x-api-key").build().unwrap_err();
    /// assert_eq!(err.problems(), ["no api key configured"]);
    /// ```
    pub fn build(self) -> Result<ApiKeyAuthenticator, ConfigError> {
        let mut problems = self.problems;
        if self.keys.is_empty() && problems.is_empty() {
            problems.push("no api key configured".to_owned());
        }
        let header = self.header;
        ConfigError::check(problems, ())?;
        let Some(header) = header else {
            return Err(ConfigError::new("api key header is not usable"));
        };
        Ok(ApiKeyAuthenticator {
            header,
            keys: self.keys,
        })
    }
}

/// Authenticates requests by an API key in a header.
///
/// Built by [`ApiKeyAuthenticator::builder`], which checks the whole configuration first.
///
/// ```
/// use secure_routes::auth::api_key::ApiKeyAuthenticator;
/// let a = ApiKeyAuthenticator::builder("x-api-key")
///     .key("ci-bot", "k_3f9a1c7e5b2d8f60a4c1")
///     .build()
///     .unwrap();
/// assert_eq!(a.header_name(), "x-api-key");
/// ```
#[derive(Clone)]
pub struct ApiKeyAuthenticator {
    header: HeaderName,
    keys: Vec<(Arc<str>, [u8; 32])>,
}

impl fmt::Debug for ApiKeyAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: not even the digests.
        f.debug_struct("ApiKeyAuthenticator")
            .field("header", &self.header)
            .field(
                "key_ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl ApiKeyAuthenticator {
    /// Starts a configuration reading keys from `header_name` (case-insensitive). It must be a
    /// valid header name, and neither `Cookie` (a key there would be ambient, sent by the
    /// browser on cross-site requests) nor `Authorization` (left to bearer tokens).
    ///
    /// ```
    /// use secure_routes::auth::api_key::ApiKeyAuthenticator;
    /// let err = ApiKeyAuthenticator::builder("cookie")
    ///     .key("ci-bot", "k_3f9a1c7e5b2d8f60a4c1")
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.problems().len(), 1);
    /// ```
    pub fn builder(header_name: &str) -> ApiKeyAuthenticatorBuilder {
        let mut problems = Vec::new();
        let header = match HeaderName::from_bytes(header_name.as_bytes()) {
            Ok(h) if h == http::header::COOKIE || h == http::header::AUTHORIZATION => {
                problems.push(format!("api key header must not be {h:?}"));
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                problems.push(format!(
                    "api key header {:?} is not a valid header name",
                    header_name.chars().take(64).collect::<String>()
                ));
                None
            }
        };
        ApiKeyAuthenticatorBuilder {
            header,
            keys: Vec::new(),
            problems,
        }
    }

    /// The ids of the configured keys.
    ///
    /// ```
    /// use secure_routes::auth::api_key::ApiKeyAuthenticator;
    /// let a = ApiKeyAuthenticator::builder("x-api-key")
    ///     .key("a", "0123456789abcdef-a")
    ///     .key("b", "0123456789abcdef-b")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(a.key_ids().collect::<Vec<_>>(), ["a", "b"]);
    /// ```
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| &**id)
    }

    /// The header keys are read from.
    ///
    /// ```
    /// use secure_routes::auth::api_key::ApiKeyAuthenticator;
    /// let a = ApiKeyAuthenticator::builder("X-Api-Key").key("a", "0123456789abcdef").build();
    /// assert_eq!(a.unwrap().header_name(), "x-api-key");
    /// ```
    pub fn header_name(&self) -> &HeaderName {
        &self.header
    }

    fn check(&self, parts: &Parts) -> Result<Principal, AuthError> {
        let mut values = parts.headers.get_all(&self.header).iter();
        let presented = match (values.next(), values.next()) {
            (None, _) => return Err(AuthError::Missing),
            (Some(_), Some(_)) => return Err(AuthError::Invalid("multiple_credentials")),
            (Some(v), None) => v.as_bytes().trim_ascii(),
        };
        if presented.is_empty() || presented.len() > MAX_KEY_LEN {
            return Err(AuthError::Invalid("malformed"));
        }
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Constant time: every stored digest is compared, the match is selected without a
        // branch, and the loop never exits early.
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, (_, stored)) in self.keys.iter().enumerate() {
            let eq = stored.ct_eq(&digest);
            index.conditional_assign(&(i as u64), eq);
            found |= eq;
        }
        if !bool::from(found) {
            return Err(AuthError::Invalid("unknown_key"));
        }
        let id = usize::try_from(index)
            .ok()
            .and_then(|i| self.keys.get(i))
            .map(|(id, _)| Arc::clone(id))
            .ok_or(AuthError::Invalid("unknown_key"))?;
        Ok(Principal::new(id, CredentialSource::ApiKey))
    }
}

impl Authenticator for ApiKeyAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        let result = self.check(parts);
        Box::pin(async move { result })
    }

    fn authenticate_now(&self, parts: &Parts) -> Option<Result<Principal, AuthError>> {
        Some(self.check(parts))
    }
}

/// 64 hex digits (either case) into 32 bytes.
fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use http::{HeaderValue, Request};

    use super::*;

    fn ids(a: &ApiKeyAuthenticator) -> HashSet<&str> {
        a.key_ids().collect()
    }

    const K1: &str = "k1-0123456789abcdef";
    const K2: &str = "k2-fedcba9876543210";

    fn auth() -> ApiKeyAuthenticator {
        ApiKeyAuthenticator::builder("X-Api-Key")
            .key("one", K1)
            .key_hash("two", &hash_key(K2.as_bytes()).to_uppercase())
            .build()
            .unwrap()
    }

    fn parts(values: &[&[u8]]) -> Parts {
        let mut req = Request::new(());
        for v in values {
            req.headers_mut()
                .append("x-api-key", HeaderValue::from_bytes(v).unwrap());
        }
        req.into_parts().0
    }

    fn run(a: &ApiKeyAuthenticator, values: &[&[u8]]) -> Result<Principal, AuthError> {
        let p = parts(values);
        futures_util::FutureExt::now_or_never(a.authenticate(&p)).unwrap()
    }

    /// Header values presented, and the expected key id or error.
    type Case<'a> = (&'a [&'a [u8]], Result<&'a str, AuthError>);

    #[test]
    fn table() {
        let a = auth();
        assert_eq!(ids(&a), HashSet::from(["one", "two"]));
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        let cases: &[Case<'_>] = &[
            (&[K1.as_bytes()], Ok("one")),
            (&[K2.as_bytes()], Ok("two")),
            (&[b"  k1-0123456789abcdef "], Ok("one")),
            (&[], Err(AuthError::Missing)),
            (&[b""], Err(AuthError::Invalid("malformed"))),
            (&[&long], Err(AuthError::Invalid("malformed"))),
            (
                &[b"k1-0123456789abcdeF"],
                Err(AuthError::Invalid("unknown_key")),
            ),
            (
                &[b"\xff\xfe binary"],
                Err(AuthError::Invalid("unknown_key")),
            ),
            (
                &[K1.as_bytes(), K1.as_bytes()],
                Err(AuthError::Invalid("multiple_credentials")),
            ),
        ];
        for (values, want) in cases {
            let got = run(&a, values);
            match (got, want) {
                (Ok(p), Ok(id)) => {
                    assert_eq!(p.subject(), *id);
                    assert_eq!(p.source(), CredentialSource::ApiKey);
                    assert!(!p.is_ambient());
                }
                (got, want) => assert_eq!(
                    got.map(|p| p.subject().to_owned()),
                    want.clone().map(str::to_owned)
                ),
            }
        }
    }

    #[test]
    fn config_problems_are_all_reported() {
        let err = ApiKeyAuthenticator::builder("bad header")
            .key("a", "short")
            .key("", "0123456789abcdef")
            .key("b", "0123456789abcdef")
            .key("b", "0123456789abcdefg")
            .key("c", "0123456789abcdef")
            .key_hash("d", "zz")
            .build()
            .unwrap_err();
        assert_eq!(err.problems().len(), 6, "{err}");
        // The key itself never appears in a message.
        assert!(!err.to_string().contains("0123456789abcdef"), "{err}");
    }

    #[test]
    fn ambient_or_reserved_headers_are_refused() {
        for h in ["cookie", "Authorization"] {
            assert!(
                ApiKeyAuthenticator::builder(h)
                    .key("a", K1)
                    .build()
                    .is_err(),
                "{h}"
            );
        }
        assert!(
            ApiKeyAuthenticator::builder("x-api-key").build().is_err(),
            "no keys"
        );
    }

    #[test]
    fn a_bad_configuration_builds_nothing() {
        // The old fail-closed state (an unchecked authenticator answering 503) cannot exist:
        // only `build` makes an authenticator (see the builder's compile_fail example).
        let bad = ApiKeyAuthenticator::builder("x-api-key")
            .key("one", K1)
            .key("bad", "short");
        assert!(format!("{bad:?}").contains("problems: 1"));
        assert!(bad.build().is_err());
    }

    #[test]
    fn debug_shows_ids_only() {
        let s = format!("{:?}", auth());
        assert!(
            s.contains("one") && !s.contains(&hash_key(K1.as_bytes())[..16]),
            "{s}"
        );
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex32(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_hex32(&"AB".repeat(32)), Some([0xab; 32]));
        assert_eq!(decode_hex32(&"ab".repeat(31)), None);
        assert_eq!(decode_hex32(&"g0".repeat(32)), None);
        assert_eq!(decode_hex32(&"é".repeat(32)), None);
    }
}
