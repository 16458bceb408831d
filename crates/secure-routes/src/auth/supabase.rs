//! Supabase: the [`SupabaseAuthenticator`] profile (with the `jwks` feature) and the session
//! cookies Supabase's server-side helpers (`@supabase/ssr`) set.
//!
//! # The profile
//!
//! [`SupabaseAuthenticator::builder`] takes the project URL and derives everything else the way
//! Supabase Auth issues tokens: keys from `{url}/auth/v1/.well-known/jwks.json` (rotating
//! asymmetric keys, through [`JwksAuthenticator`](super::jwks::JwksAuthenticator)), issuer
//! `{url}/auth/v1`, audience `authenticated`, and the session cookie below. A project still on
//! the legacy shared JWT secret adds it with
//! [`jwt_secret`](SupabaseAuthenticatorBuilder::jwt_secret); HS256 tokens are then checked
//! against that secret and nothing else. The project's API keys are refused as bearer tokens
//! with their own audit reason, `supabase_api_key` (also in the session cookie, and also on routes
//! that allow anonymous callers: a signed-out supabase-js client sends the anon key as its bearer
//! token, so call such routes without it): the legacy `anon` and `service_role` JWTs
//! (signed with the project secret, so they would otherwise get as far as the issuer check) and
//! the newer opaque `sb_publishable_...` / `sb_secret_...` keys. An API key identifies the
//! *app*, never a user; a `service_role` key used as a session would be a full bypass of row
//! level security in the caller's hands.
//!
//! The [`Principal`](super::Principal) carries every claim, with typed accessors for the ones
//! Supabase sets: [`subject`](super::Principal::subject) (`sub`, the user id),
//! [`role`](super::Principal::role), [`email`](super::Principal::email),
//! [`is_anonymous`](super::Principal::is_anonymous) and
//! [`app_metadata`](super::Principal::app_metadata).
//!
//! # The session cookie
//!
//! The session lives in the cookie `sb-<project-ref>-auth-token`. Its value is the session
//! JSON (`{"access_token": "...", "refresh_token": "...", ...}`), either as it is or as
//! `base64-` followed by the JSON in base64url; older helpers stored a JSON array whose first
//! element is the access token; values may be percent-encoded (the `cookie` serializer's
//! `encodeURIComponent`). A session too large for one cookie is split into
//! `sb-<ref>-auth-token.0`, `.1`, ... whose values are concatenated in order. The helpers never
//! leave both the unsplit cookie and chunks behind, so both present is refused: one of them was
//! planted (cookie tossing from a sibling subdomain, which would sign the user in as the
//! attacker).
//!
//! Only the access token is used, and only after the authenticator has verified it; the
//! refresh token is never read. A cookie is an ambient credential: the browser sends it on
//! cross-site requests too, so a principal from it must pass CSRF protection.
//!
//! Parsing never panics and is bounded: at most `MAX_CHUNKS` (16) chunks and
//! `MAX_SESSION_BYTES` (32 KiB) of cookie value are read; anything malformed is
//! [`AuthError::Invalid`] with the reason `bad_session_cookie`. The cookie helpers are
//! crate-private: the profile applies them (as verifier hooks, `HOOKS`), and an application
//! never needs to read the session itself.
//!
//! ```
//! # #[cfg(feature = "jwks")] {
//! use secure_routes::auth::supabase::SupabaseAuthenticator;
//! let a = SupabaseAuthenticator::builder("https://abcdefghijklmnop.supabase.co").build().unwrap();
//! assert_eq!(a.cookie_name(), "sb-abcdefghijklmnop-auth-token");
//! # }
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderMap;
use serde_json::Value;

use super::AuthError;
use super::verify::{Hooks, MAX_TOKEN_BYTES};
use crate::cookies::{CookieLookup, single_cookie};

/// Most cookie chunks read for one session; a `.16` chunk makes the session malformed.
pub(crate) const MAX_CHUNKS: usize = 16;
/// Most bytes of cookie value read for one session (all chunks together).
pub(crate) const MAX_SESSION_BYTES: usize = 32 * 1024;

const BAD: AuthError = AuthError::Invalid("bad_session_cookie");
const API_KEY: AuthError = AuthError::Invalid("supabase_api_key");

/// The Supabase profile's rules, plugged into the shared verifier: the token comes out of the
/// session cookie ([`access_token`]), and the project's API keys are refused wherever they are
/// presented ([`refuse_api_key`]).
#[cfg_attr(not(feature = "jwks"), allow(dead_code))]
pub(crate) const HOOKS: Hooks = Hooks {
    cookie_token: access_token,
    precheck: refuse_api_key,
};

/// The session cookie's name for a project: `sb-<project_ref>-auth-token`.
#[cfg_attr(not(feature = "jwks"), allow(dead_code))]
pub(crate) fn session_cookie_name(project_ref: &str) -> String {
    format!("sb-{project_ref}-auth-token")
}

/// The project reference the helpers name cookies after: the first label of the project
/// URL's host (`https://abcd.supabase.co` → `abcd`; a local `http://127.0.0.1:54321` →
/// `127`). `None` for something that is not an `http(s)` URL with a host.
#[cfg_attr(not(feature = "jwks"), allow(dead_code))]
pub(crate) fn project_ref(project_url: &str) -> Option<String> {
    let rest = project_url
        .strip_prefix("https://")
        .or_else(|| project_url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    // No userinfo in a project URL; refuse rather than guess.
    if authority.contains('@') {
        return None;
    }
    let host = authority.split(':').next()?;
    let label = host.split('.').next()?;
    let valid = !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then(|| label.to_ascii_lowercase())
}

/// Reads the session's access token from the cookies `name` (or `name.0`, `name.1`, ...).
///
/// # Errors
///
/// [`AuthError::Missing`] when there is no such cookie (or it was emptied by a sign-out);
/// [`AuthError::Invalid`] (`bad_session_cookie`) when it is malformed, oversized, present twice
/// with different values, or present both whole and in chunks (a cookie planted for another
/// path or from a sibling domain).
pub(crate) fn access_token(headers: &HeaderMap, name: &str) -> Result<String, AuthError> {
    let value = match single_cookie(headers, name) {
        CookieLookup::Conflicting => return Err(BAD),
        CookieLookup::One(v) if !v.is_empty() => {
            // Whole and chunked at once: the helpers never leave both, so one was planted
            // (cookie tossing from a sibling subdomain signs the victim in as the attacker).
            match single_cookie(headers, &format!("{name}.0")) {
                CookieLookup::Absent => {}
                CookieLookup::One(c) if c.is_empty() => {}
                CookieLookup::One(_) | CookieLookup::Conflicting => return Err(BAD),
            }
            v
        }
        // The helpers sign out by emptying the cookie; a browser may still send it once.
        CookieLookup::One(_) | CookieLookup::Absent => combined_chunks(headers, name)?,
    };
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    parse_session(&value)
}

/// Refuses the project's API keys presented as a user's token: the opaque `sb_publishable_`
/// and `sb_secret_` keys, and the legacy `anon` / `service_role` JWTs. Runs before any key is
/// chosen, on the unverified payload: it can only refuse, never admit, so reading a claim the
/// signature has not vouched for yet is safe here.
#[cfg_attr(not(feature = "jwks"), allow(dead_code))]
pub(crate) fn refuse_api_key(token: &str) -> Result<(), AuthError> {
    if token.starts_with("sb_publishable_") || token.starts_with("sb_secret_") {
        return Err(API_KEY);
    }
    // Oversized or malformed tokens are left to the verifier, which refuses them with its own
    // reason.
    let Some(payload) = token.split('.').nth(1) else {
        return Ok(());
    };
    if payload.len() > MAX_TOKEN_BYTES {
        return Ok(());
    }
    let Ok(json) = URL_SAFE_NO_PAD.decode(payload) else {
        return Ok(());
    };
    // Read as the verifier reads claims (a map: of a repeated `role`, the last one counts), so
    // this check and the principal can never disagree about the role.
    let claims = serde_json::from_slice::<serde_json::Map<String, Value>>(&json);
    match claims.as_ref().ok().and_then(|c| c.get("role")) {
        Some(Value::String(role)) if role == "anon" || role == "service_role" => Err(API_KEY),
        _ => Ok(()),
    }
}

/// `%XX` escapes decoded (RFC 3986). A `%` not followed by two hex digits is malformed: the
/// `percent-encoding` crate would pass it through as it is, and a session value we cannot read
/// exactly is refused rather than guessed at.
fn percent_decode(value: &str) -> Result<Vec<u8>, AuthError> {
    let escapes_ok = value.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Err(BAD);
    }
    Ok(percent_encoding::percent_decode_str(value).collect())
}

/// Concatenates `name.0`, `name.1`, ... up to the first missing index.
fn combined_chunks(headers: &HeaderMap, name: &str) -> Result<String, AuthError> {
    let mut value = String::new();
    for i in 0..=MAX_CHUNKS {
        match single_cookie(headers, &format!("{name}.{i}")) {
            CookieLookup::Absent if i == 0 => return Err(AuthError::Missing),
            CookieLookup::Absent => return Ok(value),
            CookieLookup::Conflicting => return Err(BAD),
            CookieLookup::One(_) if i == MAX_CHUNKS => return Err(BAD),
            CookieLookup::One(chunk) => {
                if value.len() + chunk.len() > MAX_SESSION_BYTES {
                    return Err(BAD);
                }
                value.push_str(&chunk);
            }
        }
    }
    Err(BAD)
}

/// The access token in a session cookie value (percent-encoded or not).
pub(crate) fn parse_session(value: &str) -> Result<String, AuthError> {
    if value.len() > MAX_SESSION_BYTES {
        return Err(BAD);
    }
    let decoded = percent_decode(value)?;
    let json: Vec<u8> = match decoded.strip_prefix(b"base64-") {
        // The helpers write base64url without padding; accept the standard alphabet and
        // padding too, since some server code re-encodes it.
        Some(b64) => {
            let end = b64.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
            URL_SAFE_NO_PAD
                .decode(&b64[..end])
                .or_else(|_| STANDARD.decode(b64))
                .map_err(|_| BAD)?
        }
        None => decoded,
    };
    let session: Value = serde_json::from_slice(&json).map_err(|_| BAD)?;
    let token = match &session {
        Value::Object(m) => m.get("access_token"),
        Value::Array(a) => a.first(),
        _ => None,
    };
    match token.and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(t.to_owned()),
        _ => Err(BAD),
    }
}

#[cfg(feature = "jwks")]
pub use profile::{SupabaseAuthenticator, SupabaseAuthenticatorBuilder};

#[cfg(feature = "jwks")]
mod profile {
    use std::fmt;
    use std::sync::Arc;
    use std::time::Duration;

    use http::request::Parts;

    use super::{HOOKS, project_ref, session_cookie_name};
    use crate::auth::claims::Claims;
    use crate::auth::jwks::{JwksAuthenticator, JwksAuthenticatorBuilder, JwksError};
    use crate::auth::{AuthError, Authenticator, BoxFuture, Principal};
    use crate::clock::Clock;
    use crate::error::ConfigError;

    /// The audience Supabase Auth puts in a signed-in user's token.
    const AUDIENCE: &str = "authenticated";

    /// Configures a [`SupabaseAuthenticator`]; see [`SupabaseAuthenticator::builder`].
    ///
    /// ```
    /// use secure_routes::auth::supabase::SupabaseAuthenticator;
    /// let err = SupabaseAuthenticator::builder("http://abcd.supabase.co")
    ///     .jwt_secret("too-short")
    ///     .build()
    ///     .unwrap_err();
    /// // Plain http to a remote host, and a secret under 32 bytes.
    /// assert_eq!(err.problems().len(), 2);
    /// ```
    #[derive(Clone)]
    pub struct SupabaseAuthenticatorBuilder {
        base: String,
        cookie: Option<String>,
        jwks: JwksAuthenticatorBuilder,
    }

    impl fmt::Debug for SupabaseAuthenticatorBuilder {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // The JWKS builder's Debug never shows the secret.
            f.debug_struct("SupabaseAuthenticatorBuilder")
                .field("base", &self.base)
                .field("cookie", &self.cookie)
                .field("jwks", &self.jwks)
                .finish()
        }
    }

    impl SupabaseAuthenticatorBuilder {
        /// Also accepts the project's legacy HS256 tokens, signed with its JWT secret (the
        /// dashboard's "JWT Secret", used as its UTF-8 bytes; at least 32). Without it, HS256
        /// tokens are refused (`wrong_algorithm`).
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co")
        ///     .jwt_secret("super-secret-jwt-token-with-at-least-32-characters-long")
        ///     .build()
        ///     .unwrap();
        /// # let _ = a;
        /// ```
        pub fn jwt_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
            self.jwks = self.jwks.hs256(secret);
            self
        }

        /// Reads the session from the cookie `name` (and its `.0`, `.1`, ... chunks) instead of
        /// `sb-<first label of the project URL's host>-auth-token`: for helpers configured with
        /// another `cookieOptions.name`, or a browser client created with another URL than the
        /// one given here (the helpers name the cookie after the client's URL).
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// // The server reaches the project through an internal name; browsers use `api.example.com`.
        /// let a = SupabaseAuthenticator::builder("https://supabase-kong.internal")
        ///     .session_cookie("sb-api-auth-token")
        ///     .build()
        ///     .unwrap();
        /// assert_eq!(a.cookie_name(), "sb-api-auth-token");
        /// ```
        pub fn session_cookie(mut self, name: impl Into<String>) -> Self {
            self.cookie = Some(name.into());
            self
        }

        /// The time source for `exp`/`nbf`, the key set's lifetime and the token cache (the
        /// system clock by default).
        ///
        /// ```
        /// # use std::{sync::Arc, time::Duration};
        /// # use secure_routes::{auth::supabase::SupabaseAuthenticator, clock::FakeClock};
        /// let clock = Arc::new(FakeClock::new(Duration::from_secs(1_800_000_000)));
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").clock(clock).build();
        /// assert!(a.is_ok());
        /// ```
        pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
            self.jwks = self.jwks.clock(clock);
            self
        }

        /// Caches up to `capacity` verified tokens (see
        /// [`JwksAuthenticatorBuilder::cache`]).
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").cache(10_000).build();
        /// assert_eq!(a.unwrap().cached_tokens(), 0);
        /// ```
        pub fn cache(mut self, capacity: usize) -> Self {
            self.jwks = self.jwks.cache(capacity);
            self
        }

        /// Clock-skew allowance for `exp` and `nbf` (see [`JwksAuthenticatorBuilder::leeway`]).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let b = SupabaseAuthenticator::builder("https://abcd.supabase.co");
        /// assert!(b.leeway(Duration::from_secs(10)).build().is_ok());
        /// ```
        pub fn leeway(mut self, leeway: Duration) -> Self {
            self.jwks = self.jwks.leeway(leeway);
            self
        }

        /// Least time between two key set fetches (see
        /// [`JwksAuthenticatorBuilder::cooldown`]).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let b = SupabaseAuthenticator::builder("https://abcd.supabase.co");
        /// assert!(b.cooldown(Duration::from_secs(60)).build().is_ok());
        /// ```
        pub fn cooldown(mut self, cooldown: Duration) -> Self {
            self.jwks = self.jwks.cooldown(cooldown);
            self
        }

        /// How long a fetched key set is used (see [`JwksAuthenticatorBuilder::max_age`]).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let b = SupabaseAuthenticator::builder("https://abcd.supabase.co");
        /// assert!(b.max_age(Duration::from_secs(300)).build().is_ok());
        /// ```
        pub fn max_age(mut self, max_age: Duration) -> Self {
            self.jwks = self.jwks.max_age(max_age);
            self
        }

        /// Bound on one key set fetch (see [`JwksAuthenticatorBuilder::fetch_timeout`]).
        ///
        /// ```
        /// # use std::time::Duration;
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let b = SupabaseAuthenticator::builder("https://abcd.supabase.co");
        /// assert!(b.fetch_timeout(Duration::from_secs(2)).build().is_ok());
        /// ```
        pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
            self.jwks = self.jwks.fetch_timeout(timeout);
            self
        }

        /// Validates everything and reports every problem at once; makes no request.
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let err = SupabaseAuthenticator::builder("https://abcd.supabase.co/rest/v1").build();
        /// assert!(err.unwrap_err().problems()[0].contains("project URL"));
        /// ```
        pub fn build(self) -> Result<SupabaseAuthenticator, ConfigError> {
            let mut problems = Vec::new();
            // The URL must be an origin: the issuer and the key set's path are derived from
            // it, and a path would put them somewhere Supabase Auth does not.
            let origin = self
                .base
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.contains(['/', '?', '#']));
            if !origin {
                problems.push(
                    "supabase: the project URL must be an origin such as https://<ref>.supabase.co (no path)"
                        .to_owned(),
                );
            }
            let cookie = self
                .cookie
                .or_else(|| project_ref(&self.base).map(|r| session_cookie_name(&r)));
            if origin && cookie.is_none() {
                problems.push(
                    "supabase: cannot derive the project ref from the URL; set session_cookie"
                        .to_owned(),
                );
            }
            let mut jwks = self.jwks;
            if let Some(c) = &cookie {
                jwks = jwks.cookie(c.clone());
            }
            let built = jwks.build().map_err(|e| {
                let theirs = e.problems().iter();
                problems.extend(theirs.map(|p| p.replacen("jwks:", "supabase:", 1)));
            });
            ConfigError::check(problems, ())?;
            let (Ok(jwks), Some(cookie)) = (built, cookie) else {
                return Err(ConfigError::new("supabase: no usable configuration"));
            };
            Ok(SupabaseAuthenticator {
                issuer: issuer(&self.base).into(),
                cookie: cookie.into(),
                jwks,
            })
        }
    }

    /// The issuer Supabase Auth writes in its tokens for the project at `base`.
    fn issuer(base: &str) -> String {
        format!("{base}/auth/v1")
    }

    /// `url` without a trailing `/`, its scheme and host lowercased and a default port dropped:
    /// the form Supabase Auth writes in `iss`, so `HTTPS://ABCD.supabase.co:443` still matches.
    fn normalize_origin(url: &str) -> String {
        let url = url.strip_suffix('/').unwrap_or(url);
        let Some((scheme, rest)) = url.split_once("://") else {
            return url.to_owned();
        };
        let scheme = scheme.to_ascii_lowercase();
        // Only an origin is accepted (checked in `build`); a path keeps its case.
        let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
        let authority = authority.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => ":443",
            "http" => ":80",
            _ => "",
        };
        let authority = match authority.strip_suffix(default_port) {
            Some(a) if !default_port.is_empty() => a,
            _ => &authority,
        };
        format!("{scheme}://{authority}{path}")
    }

    /// Verifies a Supabase project's access tokens, from `Authorization: Bearer` or from the
    /// session cookie the SSR helpers set (an ambient credential: CSRF protection applies).
    /// See the [module documentation](super) for what it derives and refuses.
    ///
    /// ```
    /// use secure_routes::auth::supabase::SupabaseAuthenticator;
    /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").build().unwrap();
    /// assert_eq!(a.issuer(), "https://abcd.supabase.co/auth/v1");
    /// assert_eq!(a.cookie_name(), "sb-abcd-auth-token");
    /// ```
    #[derive(Clone)]
    pub struct SupabaseAuthenticator {
        issuer: Arc<str>,
        cookie: Arc<str>,
        jwks: JwksAuthenticator,
    }

    impl fmt::Debug for SupabaseAuthenticator {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("SupabaseAuthenticator")
                .field("issuer", &self.issuer)
                .field("cookie", &self.cookie)
                .finish_non_exhaustive()
        }
    }

    impl SupabaseAuthenticator {
        /// Starts a configuration for the project at `project_url` (`https://<ref>.supabase.co`,
        /// or the local stack's `http://127.0.0.1:54321`; plain `http` only for loopback).
        ///
        /// ```
        /// use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let a = SupabaseAuthenticator::builder("http://127.0.0.1:54321").build().unwrap();
        /// assert_eq!(a.cookie_name(), "sb-127-auth-token");
        /// ```
        pub fn builder(project_url: impl Into<String>) -> SupabaseAuthenticatorBuilder {
            let base = normalize_origin(&project_url.into());
            let jwks = JwksAuthenticator::builder(format!("{base}/auth/v1/.well-known/jwks.json"))
                .issuer(issuer(&base))
                .audience(AUDIENCE)
                .hooks(HOOKS);
            SupabaseAuthenticatorBuilder {
                base,
                cookie: None,
                jwks,
            }
        }

        /// The issuer tokens must carry: `{project_url}/auth/v1`.
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let a = SupabaseAuthenticator::builder("HTTPS://ABCD.supabase.co:443/").build().unwrap();
        /// assert_eq!(a.issuer(), "https://abcd.supabase.co/auth/v1");
        /// ```
        pub fn issuer(&self) -> &str {
            &self.issuer
        }

        /// The session cookie's name (its chunks add `.0`, `.1`, ...).
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").build().unwrap();
        /// assert_eq!(a.cookie_name(), "sb-abcd-auth-token");
        /// ```
        pub fn cookie_name(&self) -> &str {
            &self.cookie
        }

        /// Fetches the project's key set now (see [`JwksAuthenticator::refresh`]). A project
        /// that only signs with the legacy secret publishes no usable key: then this fails and
        /// HS256 tokens still verify against [`jwt_secret`](SupabaseAuthenticatorBuilder::jwt_secret).
        ///
        /// ```no_run
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").build()?;
        /// println!("{} signing keys", a.refresh().await?);
        /// # Ok(()) }
        /// ```
        pub async fn refresh(&self) -> Result<usize, JwksError> {
            self.jwks.refresh().await
        }

        /// Verifies `token` and returns its claims (always checks the signature).
        ///
        /// ```
        /// # use secure_routes::auth::{AuthError, supabase::SupabaseAuthenticator};
        /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").build().unwrap();
        /// // A publishable API key is not a user's session.
        /// let err = a.verify("sb_publishable_abc").await.unwrap_err();
        /// assert_eq!(err, AuthError::Invalid("supabase_api_key"));
        /// # });
        /// ```
        pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
            self.jwks.verify(token).await
        }

        /// How many verified tokens the cache holds now (0 without a cache).
        ///
        /// ```
        /// # use secure_routes::auth::supabase::SupabaseAuthenticator;
        /// let a = SupabaseAuthenticator::builder("https://abcd.supabase.co").build().unwrap();
        /// assert_eq!(a.cached_tokens(), 0);
        /// ```
        pub fn cached_tokens(&self) -> usize {
            self.jwks.cached_tokens()
        }
    }

    impl Authenticator for SupabaseAuthenticator {
        fn authenticate<'a>(
            &'a self,
            parts: &'a Parts,
        ) -> BoxFuture<'a, Result<Principal, AuthError>> {
            self.jwks.authenticate(parts)
        }

        fn authenticate_now(&self, parts: &Parts) -> Option<Result<Principal, AuthError>> {
            self.jwks.authenticate_now(parts)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[String]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, c.parse().unwrap());
        }
        h
    }

    const NAME: &str = "sb-ref-auth-token";

    fn b64(json: &str) -> String {
        format!("base64-{}", URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn reads_plain_base64_chunked_and_legacy_sessions() {
        let json = r#"{"access_token":"tok","refresh_token":"r","user":{"id":"u"}}"#;
        for value in [
            json.to_owned(),
            b64(json),
            format!("base64-{}", STANDARD.encode(json)),
        ] {
            let h = headers(&[format!("{NAME}={value}")]);
            assert_eq!(access_token(&h, NAME).unwrap(), "tok", "{value}");
        }
        let long = b64(json);
        let (a, rest) = long.split_at(7);
        let (b, c) = rest.split_at(5);
        // Chunks may arrive in any order and on separate Cookie lines (HTTP/2).
        let h = headers(&[
            format!("{NAME}.2={c}; other=1"),
            format!("{NAME}.0={a}; {NAME}.1={b}"),
        ]);
        assert_eq!(access_token(&h, NAME).unwrap(), "tok");
        // Percent-encoded as the `cookie` serializer writes raw JSON (encodeURIComponent).
        let encoded = "%7B%22access_token%22%3A%22tok%22%2C%22refresh_token%22%3A%22r%22%7D";
        let h = headers(&[format!("{NAME}={encoded}")]);
        assert_eq!(access_token(&h, NAME).unwrap(), "tok");
        let h = headers(&[format!("{NAME}=%5B%22tok%22%2C%22r%22%2Cnull%5D")]);
        assert_eq!(access_token(&h, NAME).unwrap(), "tok");
        // An emptied (signed-out) cookie beside chunks: the chunks are the session.
        let (a, b) = long.split_at(9);
        let h = headers(&[format!("{NAME}=; {NAME}.0={a}; {NAME}.1={b}")]);
        assert_eq!(access_token(&h, NAME).unwrap(), "tok");
    }

    #[test]
    fn a_whole_cookie_beside_chunks_is_refused() {
        // One of them was planted by a sibling subdomain: neither is trusted.
        let planted = b64(r#"{"access_token":"attacker"}"#);
        let (a, b) = planted.split_at(9);
        let h = headers(&[format!(
            "{NAME}={}; {NAME}.0={a}; {NAME}.1={b}",
            b64(r#"{"access_token":"victim"}"#)
        )]);
        assert_eq!(access_token(&h, NAME), Err(BAD));
    }

    #[test]
    fn refuses_malformed_conflicting_and_oversized_sessions() {
        let bad = [
            vec![format!("{NAME}=base64-%%%")],
            vec![format!("{NAME}={}", b64("[]"))],
            vec![format!("{NAME}={}", b64(r#"{"access_token":""}"#))],
            vec![format!("{NAME}={}", b64(r#"{"access_token":7}"#))],
            vec![format!("{NAME}={}", b64(r#""just a string""#))],
            vec![format!(
                "{NAME}={}; {NAME}={}",
                b64(r#"{"access_token":"a"}"#),
                b64(r#"{"access_token":"b"}"#)
            )],
            vec![format!("{NAME}.0=x"), format!("{NAME}.0=y")],
            vec![format!("{NAME}=%7B%2"), "x=1".to_owned()],
            vec![format!("{NAME}=%zz")],
            // A gap ends the chunks; what is left does not parse.
            vec![
                format!("{NAME}.0={{\"access_token\":"),
                format!("{NAME}.2=\"t\"}}"),
            ],
        ];
        for cookies in bad {
            let h = headers(&cookies);
            assert!(
                matches!(
                    access_token(&h, NAME),
                    Err(AuthError::Invalid("bad_session_cookie"))
                ),
                "{cookies:?}"
            );
        }
        let too_many: Vec<String> = (0..=MAX_CHUNKS).map(|i| format!("{NAME}.{i}=a")).collect();
        assert!(matches!(
            access_token(&headers(&[too_many.join("; ")]), NAME),
            Err(AuthError::Invalid(_))
        ));
        let big = "a".repeat(3000);
        let huge: Vec<String> = (0..12).map(|i| format!("{NAME}.{i}={big}")).collect();
        assert!(matches!(
            access_token(&headers(&[huge.join("; ")]), NAME),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            access_token(&headers(&["other=1".to_owned()]), NAME),
            Err(AuthError::Missing)
        ));
    }

    #[test]
    fn api_keys_are_recognised_by_prefix_or_role_only() {
        let jwt = |payload: &str| {
            format!(
                "eyJhbGciOiJIUzI1NiJ9.{}.sig",
                URL_SAFE_NO_PAD.encode(payload)
            )
        };
        for refused in [
            "sb_publishable_x".to_owned(),
            "sb_secret_x".to_owned(),
            jwt(r#"{"role":"anon"}"#),
            jwt(r#"{"iss":"supabase","role":"service_role"}"#),
            // A repeated claim: the last one counts, for this check as for the verifier.
            jwt(r#"{"role":"authenticated","role":"anon"}"#),
        ] {
            assert_eq!(refuse_api_key(&refused), Err(API_KEY), "{refused}");
        }
        // Left to the verifier: users, odd shapes and garbage (it refuses what is bad).
        for passed in [
            jwt(r#"{"role":"authenticated"}"#),
            jwt(r#"{"role":"anon","role":"authenticated"}"#),
            jwt(r#"{"role":["anon"]}"#),
            jwt(r#"{"user_metadata":{"role":"anon"}}"#),
            jwt("not json"),
            "no-dots".to_owned(),
            "a.%%%.c".to_owned(),
            String::new(),
        ] {
            assert_eq!(refuse_api_key(&passed), Ok(()), "{passed}");
        }
    }

    #[test]
    fn names_refs_and_session_values() {
        let name = session_cookie_name("abcdefghijklmnop");
        assert_eq!(name, "sb-abcdefghijklmnop-auth-token");
        assert_eq!(session_cookie_name("xyz"), "sb-xyz-auth-token");
        let value = b64(r#"{"access_token":"eyJ.a.b","refresh_token":"r"}"#);
        let (first, second) = value.split_at(10);
        let h = headers(&[format!("{name}.0={first}; {name}.1={second}")]);
        assert_eq!(access_token(&h, &name).unwrap(), "eyJ.a.b");

        assert_eq!(
            access_token(&HeaderMap::new(), "sb-x-auth-token"),
            Err(AuthError::Missing)
        );
        let h = headers(&["sb-x-auth-token=not-json".to_owned()]);
        assert!(matches!(
            access_token(&h, "sb-x-auth-token"),
            Err(AuthError::Invalid(_))
        ));

        assert_eq!(parse_session(r#"{"access_token":"t"}"#).unwrap(), "t");
        assert_eq!(parse_session(r#"["t","refresh",null]"#).unwrap(), "t");
        assert_eq!(
            parse_session("%7B%22access_token%22%3A%22t%22%7D").unwrap(),
            "t"
        );
        assert!(parse_session("base64-!!!").is_err());
        let huge = format!(r#"{{"access_token":"{}"}}"#, "a".repeat(MAX_SESSION_BYTES));
        assert!(parse_session(&huge).is_err());
    }

    #[test]
    fn percent_escapes_must_be_complete() {
        assert_eq!(percent_decode("a%41%7e").unwrap(), b"aA~");
        assert_eq!(percent_decode("").unwrap(), b"");
        // A bare or short `%` is refused, not passed through.
        for bad in ["%", "a%4", "%zz", "%%41", "a%g1", "%4%41"] {
            assert_eq!(percent_decode(bad), Err(BAD), "{bad}");
        }
    }

    #[test]
    fn project_refs_are_host_labels_only() {
        assert_eq!(
            project_ref("https://abcd.supabase.co").as_deref(),
            Some("abcd")
        );
        assert_eq!(
            project_ref("https://abcd.supabase.co/").as_deref(),
            Some("abcd")
        );
        assert_eq!(
            project_ref("http://127.0.0.1:54321").as_deref(),
            Some("127")
        );
        assert_eq!(project_ref("abcd.supabase.co"), None);
        assert_eq!(
            project_ref("https://ABCD.supabase.co").as_deref(),
            Some("abcd")
        );
        assert_eq!(project_ref("https://user@abcd.supabase.co"), None);
        assert_eq!(project_ref("https://"), None);
        assert_eq!(project_ref("ftp://abcd.supabase.co"), None);
        assert_eq!(project_ref("https://a_b.example"), None);
    }
}
