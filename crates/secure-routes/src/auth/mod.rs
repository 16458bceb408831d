//! Authentication: the [`Authenticator`] trait, the [`Principal`] it yields, and its
//! implementations: [`jwt::JwtAuthenticator`] (one pinned key), [`api_key::ApiKeyAuthenticator`]
//! and, with the `jwks` feature, `jwks::JwksAuthenticator` (keys from a rotating JWK set) and
//! `supabase::SupabaseAuthenticator` (a Supabase project's tokens and session cookies).
//!
//! An authenticator sees the request head only (never the body), and answers one of three
//! ways: a [`Principal`], [`AuthError::Missing`] when the request carries no credential it
//! understands, or [`AuthError::Invalid`] when it carries a bad one. The pipeline turns both
//! errors into `401` with `WWW-Authenticate: Bearer` and audits the failure.
//!
//! A principal remembers where its credential came from. A cookie is *ambient*: the browser
//! attaches it to cross-site requests too, so a principal authenticated by a cookie still has
//! to pass the CSRF token check; one authenticated by an `Authorization` header does not.
//!
//! ```
//! use secure_routes::auth::{CredentialSource, Principal};
//! let p = Principal::new("alice", CredentialSource::Cookie);
//! assert!(p.is_ambient());
//! assert_eq!(p.subject(), "alice");
//! ```

pub mod api_key;
mod cache;
mod claims;
#[cfg(feature = "jwks")]
pub mod jwks;
pub mod jwt;
pub mod supabase;
mod verify;

use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use http::request::Parts;

pub use crate::rate_limit::BoxFuture;
use crate::response::problem::Rejection;

/// Where a principal's credential was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CredentialSource {
    /// `Authorization: Bearer ...` (or another explicit header): not sent by browsers on
    /// their own, so no CSRF token is needed.
    Header,
    /// A cookie: ambient, so CSRF protection applies.
    Cookie,
    /// An API key header.
    ApiKey,
}

/// An authenticated caller.
///
/// Handlers take it as an extractor; it is present whenever the route's policy requires
/// authentication (and the request got that far).
///
/// ```
/// use axum::{Router, routing::get};
/// use secure_routes::Principal;
/// async fn me(p: Principal) -> String { format!("hello {}", p.subject()) }
/// let _app: Router = Router::new().route("/me", get(me));
/// ```
#[derive(Clone, Debug)]
pub struct Principal {
    subject: Arc<str>,
    source: CredentialSource,
    claims: Arc<serde_json::Map<String, serde_json::Value>>,
    /// [`csrf_binding`](Self::csrf_binding) when it is not the subject itself, computed on
    /// first use (most requests never need it).
    csrf_binding: OnceLock<Option<Box<str>>>,
}

/// Starts every CSRF binding that is not a plain subject. A subject that starts with it (or is
/// empty, the anonymous binding) is escaped, so no session id can ever equal a subject.
const BINDING_MARK: char = '\0';

impl Principal {
    /// A principal with no extra claims.
    pub fn new(subject: impl Into<Arc<str>>, source: CredentialSource) -> Self {
        Self {
            subject: subject.into(),
            source,
            claims: Arc::default(),
            csrf_binding: OnceLock::new(),
        }
    }

    /// A principal sharing already-verified parts (the token cache hands out the same `Arc`s).
    pub(crate) fn from_shared(
        subject: Arc<str>,
        source: CredentialSource,
        claims: Arc<serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        Self {
            subject,
            source,
            claims,
            csrf_binding: OnceLock::new(),
        }
    }

    /// Attaches the verified claims (for JWTs, the whole payload).
    pub fn with_claims(mut self, claims: serde_json::Map<String, serde_json::Value>) -> Self {
        self.claims = Arc::new(claims);
        self.csrf_binding = OnceLock::new();
        self
    }

    /// The stable subject identifier (`sub` for JWTs, the key id for API keys).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// What the caller's CSRF tokens are bound to
    /// ([`CsrfTokens::issue`](crate::guard::csrf::CsrfTokens::issue)): the session when the
    /// credential names one, else the subject.
    ///
    /// The session is the `session_id` claim (Supabase) or else the `sid` claim (OpenID
    /// Connect), when it is a non-empty string. Bound to the session, a token minted before a
    /// logout fails in the next session of the same user, and a token planted from the
    /// attacker's own session of the same account fails too; a credential without a session
    /// claim binds to the subject as before.
    ///
    /// Session bindings are `"\0sid:"` followed by the id, so no session id can equal a
    /// subject (nor the anonymous binding `""`): a subject that is empty or starts with `\0`
    /// is written `"\0sub:"` followed by the subject; every other subject is itself.
    ///
    /// ```
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let p = |claims: serde_json::Value| Principal::new("alice", CredentialSource::Cookie)
    ///     .with_claims(claims.as_object().unwrap().clone());
    /// assert_eq!(p(serde_json::json!({})).csrf_binding(), "alice");
    /// assert_eq!(p(serde_json::json!({"sid": "s1"})).csrf_binding(), "\0sid:s1");
    /// assert_eq!(p(serde_json::json!({"session_id": "s2", "sid": "s1"})).csrf_binding(), "\0sid:s2");
    /// assert_eq!(p(serde_json::json!({"session_id": ""})).csrf_binding(), "alice");
    /// ```
    pub fn csrf_binding(&self) -> &str {
        self.csrf_binding
            .get_or_init(|| {
                let session = ["session_id", "sid"].iter().find_map(|name| {
                    self.claims
                        .get(*name)
                        .and_then(serde_json::Value::as_str)
                        .filter(|s| !s.is_empty())
                });
                match session {
                    Some(id) => Some(format!("{BINDING_MARK}sid:{id}").into()),
                    None if self.subject.is_empty() || self.subject.starts_with(BINDING_MARK) => {
                        Some(format!("{BINDING_MARK}sub:{}", self.subject).into())
                    }
                    None => None,
                }
            })
            .as_deref()
            .unwrap_or(&self.subject)
    }

    /// Where the credential came from.
    pub fn source(&self) -> CredentialSource {
        self.source
    }

    /// Whether the credential was ambient (a cookie), so CSRF protection applies.
    pub fn is_ambient(&self) -> bool {
        self.source == CredentialSource::Cookie
    }

    /// A verified claim by name.
    pub fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.claims.get(name)
    }

    /// All verified claims.
    pub fn claims(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.claims
    }

    /// The `role` claim, when it is a string (Supabase: `"authenticated"`).
    ///
    /// ```
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let claims = serde_json::json!({"role": "authenticated"});
    /// let p = Principal::new("u1", CredentialSource::Header)
    ///     .with_claims(claims.as_object().unwrap().clone());
    /// assert_eq!(p.role(), Some("authenticated"));
    /// ```
    pub fn role(&self) -> Option<&str> {
        self.claims.get("role").and_then(serde_json::Value::as_str)
    }

    /// The `email` claim, when it is a non-empty string (Supabase gives anonymous users `""`).
    /// Who may change it (and whether it was confirmed) is the identity provider's business:
    /// key authorization on [`subject`](Self::subject), not on the address.
    ///
    /// ```
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let p = |v: serde_json::Value| Principal::new("u1", CredentialSource::Header)
    ///     .with_claims(v.as_object().unwrap().clone());
    /// assert_eq!(p(serde_json::json!({"email": "a@example.com"})).email(), Some("a@example.com"));
    /// assert_eq!(p(serde_json::json!({"email": ""})).email(), None);
    /// ```
    pub fn email(&self) -> Option<&str> {
        self.claims
            .get("email")
            .and_then(serde_json::Value::as_str)
            .filter(|e| !e.is_empty())
    }

    /// Whether the token says its user signed in anonymously (Supabase's `is_anonymous:
    /// true`). Only the boolean `true` counts.
    ///
    /// ```
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let claims = serde_json::json!({"is_anonymous": true});
    /// let p = Principal::new("u1", CredentialSource::Header);
    /// assert!(!p.is_anonymous());
    /// assert!(p.with_claims(claims.as_object().unwrap().clone()).is_anonymous());
    /// ```
    pub fn is_anonymous(&self) -> bool {
        self.claims.get("is_anonymous") == Some(&serde_json::Value::Bool(true))
    }

    /// The `app_metadata` claim, when it is an object: what the provider's server side sets
    /// (Supabase: `provider`, and roles your backend assigns). Unlike `user_metadata`, which
    /// the user can edit, it is fit for authorization decisions.
    ///
    /// ```
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let claims = serde_json::json!({"app_metadata": {"provider": "email"}});
    /// let p = Principal::new("u1", CredentialSource::Header)
    ///     .with_claims(claims.as_object().unwrap().clone());
    /// assert_eq!(p.app_metadata().unwrap()["provider"], "email");
    /// ```
    pub fn app_metadata(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.claims
            .get("app_metadata")
            .and_then(serde_json::Value::as_object)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Rejection::unauthorized("no authenticated principal on this route"))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

/// Why authentication failed. The reason is for the audit log, never for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential this authenticator understands.
    #[error("no credential")]
    Missing,
    /// A credential was present but did not verify; the reason is safe to log (it never
    /// contains the credential).
    #[error("invalid credential: {0}")]
    Invalid(&'static str),
    /// The authenticator could not decide (a key server is down): answered with 503.
    #[error("authenticator unavailable: {0}")]
    Unavailable(String),
}

/// Verifies a request's credentials.
///
/// Object safe, so one `Arc<dyn Authenticator>` serves every policy.
///
/// ```
/// use secure_routes::auth::{AuthError, Authenticator, BoxFuture, CredentialSource, Principal};
/// struct Everyone;
/// impl Everyone {
///     fn check(&self) -> Result<Principal, AuthError> {
///         Ok(Principal::new("anyone", CredentialSource::Header))
///     }
/// }
/// impl Authenticator for Everyone {
///     fn authenticate<'a>(&'a self, _: &'a http::request::Parts)
///         -> BoxFuture<'a, Result<Principal, AuthError>> {
///         let answer = self.check();
///         Box::pin(async move { answer })
///     }
///     // Decided without waiting: the pipeline needs no future for it.
///     fn authenticate_now(&self, _: &http::request::Parts) -> Option<Result<Principal, AuthError>> {
///         Some(self.check())
///     }
/// }
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates the request head.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>>;

    /// The answer [`authenticate`](Self::authenticate) would give, when it needs no waiting
    /// (a pinned key, an API key, a cache hit); `None` to have `authenticate` asked.
    ///
    /// The pipeline asks this first and, given an answer, decides the request without a
    /// future: no allocation and no state machine for the common case (issue 10 part 7).
    /// `None` must have no effect (nothing counted, nothing started), since `authenticate`
    /// is then asked for the same request. The default answers `None`, so an authenticator
    /// that implements only `authenticate` works as before.
    fn authenticate_now(&self, parts: &Parts) -> Option<Result<Principal, AuthError>> {
        let _ = parts;
        None
    }
}

/// Tries several authenticators in order; the first that finds a credential decides.
///
/// ```
/// use std::sync::Arc;
/// use secure_routes::auth::{AnyOf, api_key::ApiKeyAuthenticator};
/// let keys = ApiKeyAuthenticator::builder("x-api-key").key("ops", "0123456789abcdef").build();
/// let any = AnyOf::new(vec![Arc::new(keys.unwrap())]);
/// # let _ = any;
/// ```
pub struct AnyOf {
    inner: Vec<Arc<dyn Authenticator>>,
}

impl AnyOf {
    /// Tries `inner` in order.
    pub fn new(inner: Vec<Arc<dyn Authenticator>>) -> Self {
        Self { inner }
    }
}

impl Authenticator for AnyOf {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, Result<Principal, AuthError>> {
        Box::pin(async move {
            for a in &self.inner {
                match a.authenticate(parts).await {
                    Err(AuthError::Missing) => continue,
                    other => return other,
                }
            }
            Err(AuthError::Missing)
        })
    }

    fn authenticate_now(&self, parts: &Parts) -> Option<Result<Principal, AuthError>> {
        for a in &self.inner {
            match a.authenticate_now(parts)? {
                Err(AuthError::Missing) => continue,
                other => return Some(other),
            }
        }
        Some(Err(AuthError::Missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(subject: &str, claims: serde_json::Value) -> Principal {
        let claims = claims.as_object().cloned().unwrap_or_default();
        Principal::new(subject, CredentialSource::Cookie).with_claims(claims)
    }

    #[test]
    fn csrf_binding_prefers_the_session() {
        use serde_json::json;
        let cases = [
            ("alice", json!({}), "alice"),
            ("alice", json!({"sid": "s1"}), "\0sid:s1"),
            ("alice", json!({"session_id": "s2"}), "\0sid:s2"),
            (
                "alice",
                json!({"session_id": "s2", "sid": "s1"}),
                "\0sid:s2",
            ),
            // Not a usable session id: the next candidate, then the subject.
            ("alice", json!({"session_id": "", "sid": "s1"}), "\0sid:s1"),
            ("alice", json!({"session_id": 7, "sid": null}), "alice"),
            ("alice", json!({"sid": ["s1"]}), "alice"),
        ];
        for (sub, claims, want) in cases {
            assert_eq!(
                principal(sub, claims.clone()).csrf_binding(),
                want,
                "{claims}"
            );
        }
    }

    #[test]
    fn no_session_id_can_pass_for_a_subject() {
        use serde_json::json;
        // A subject spelled like a session binding, and the session it imitates.
        let forged = principal("\0sid:s1", json!({}));
        let real = principal("bob", json!({"sid": "s1"}));
        assert_ne!(forged.csrf_binding(), real.csrf_binding());
        assert_eq!(forged.csrf_binding(), "\0sub:\0sid:s1");
        // The anonymous binding is "": an empty subject does not get it.
        assert_eq!(principal("", json!({})).csrf_binding(), "\0sub:");
        // A session id that looks like a subject stays apart from that subject.
        let sid_alice = principal("bob", json!({"sid": "alice"}));
        assert_ne!(
            sid_alice.csrf_binding(),
            principal("alice", json!({})).csrf_binding()
        );
    }

    #[test]
    fn new_claims_recompute_the_binding() {
        let p = Principal::new("alice", CredentialSource::Cookie);
        assert_eq!(p.csrf_binding(), "alice");
        let claims = serde_json::json!({"sid": "s9"});
        let p = p.with_claims(claims.as_object().cloned().unwrap_or_default());
        assert_eq!(p.csrf_binding(), "\0sid:s9");
        assert_eq!(p.clone().csrf_binding(), "\0sid:s9");
    }
}
