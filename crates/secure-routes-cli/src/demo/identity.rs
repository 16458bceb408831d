//! [`Identity`]: whose tokens the demo accepts (its HS256 secret, a JWKS, a Supabase
//! project), and the authenticator built for it with the key prefetch to run at start.

use std::sync::Arc;

use secure_routes::auth::Authenticator;
use secure_routes::auth::jwks::{JwksAuthenticator, JwksError};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::supabase::SupabaseAuthenticator;

use super::{SESSION_COOKIE, Wiring};
use crate::config::Config;
use crate::stores::redact;

/// Verified tokens the demo's JWKS and Supabase authenticators remember.
///
/// ```
/// assert_eq!(secure_routes_cli::demo::TOKEN_CACHE, 10_000);
/// ```
pub const TOKEN_CACHE: usize = 10_000;

/// Whose tokens the demo accepts (`secure-routes demo` flags). One identity provider per run:
/// each authenticator pins its own keys, and one answer per credential keeps the audit
/// reason exact.
///
/// ```
/// use secure_routes_cli::demo::Identity;
/// let s = Identity::Supabase {
///     url: "https://abcd.supabase.co".into(),
///     jwt_secret: Some(b"super-secret-jwt-token".to_vec()),
/// };
/// let debug = format!("{s:?}");
/// assert!(debug.contains("<redacted>"));
/// assert!(!debug.contains("super-secret") && !debug.contains("115, 117"));
/// assert_eq!(Identity::default().to_string(), "demo HS256 secret");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Identity {
    /// HS256 tokens signed with `SECURE_ROUTES_JWT_SECRET` (`secure-routes token`), from the
    /// `Authorization` header or the [`SESSION_COOKIE`].
    #[default]
    DemoSecret,
    /// Tokens signed by the keys of a JWKS (`--jwks`), with an optional expected issuer and
    /// audience (`--jwt-issuer`, `--jwt-audience`), from the `Authorization` header or the
    /// [`SESSION_COOKIE`].
    Jwks {
        /// The key set URL (`https`, or `http` on loopback).
        url: String,
        /// Required `iss`.
        issuer: Option<String>,
        /// Required `aud`.
        audience: Option<String>,
    },
    /// A Supabase project's users (`--supabase-url`, `SUPABASE_JWT_SECRET`), from the
    /// `Authorization` header or the SSR session cookie.
    Supabase {
        /// The project URL.
        url: String,
        /// The legacy HS256 secret, if the project still signs with it.
        jwt_secret: Option<Vec<u8>>,
    },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DemoSecret => f.write_str("DemoSecret"),
            Self::Jwks {
                url,
                issuer,
                audience,
            } => f
                .debug_struct("Jwks")
                .field("url", &redact(url))
                .field("issuer", issuer)
                .field("audience", audience)
                .finish(),
            // Never the secret, only whether there is one.
            Self::Supabase { url, jwt_secret } => f
                .debug_struct("Supabase")
                .field("url", &redact(url))
                .field("jwt_secret", &jwt_secret.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DemoSecret => f.write_str("demo HS256 secret"),
            Self::Jwks { url, .. } => write!(f, "JWKS {}", redact(url)),
            Self::Supabase { url, jwt_secret } => write!(
                f,
                "Supabase project {}{}",
                redact(url),
                if jwt_secret.is_some() {
                    " (+ legacy JWT secret)"
                } else {
                    ""
                }
            ),
        }
    }
}

impl Identity {
    /// Checks the configuration (URLs, secrets) without any request, so a bad flag is reported
    /// before the demo announces itself.
    ///
    /// ```
    /// # use secure_routes_cli::{config::Config, demo::Identity};
    /// let config = Config { jwt_secret: vec![1; 32], csrf_secret: vec![2; 32],
    ///     trusted_proxies: vec![], allowed_origins: vec![], client_ip_header: Default::default(), production: false };
    /// let bad = Identity::Supabase { url: "https://abcd.supabase.co/rest/v1".into(), jwt_secret: None };
    /// assert!(bad.check(&config).is_err());
    /// assert!(Identity::DemoSecret.check(&config).is_ok());
    /// ```
    pub fn check(&self, config: &Config) -> anyhow::Result<()> {
        let wiring = Wiring {
            identity: self.clone(),
            ..Wiring::default()
        };
        authenticator(config, &wiring).map(drop)
    }
}

/// A JWKS-backed authenticator's key refresh, run once at start so a wrong URL shows at once.
pub(super) enum Prefetch {
    Jwks(JwksAuthenticator),
    Supabase(SupabaseAuthenticator),
}

impl Prefetch {
    pub(super) async fn run(self) {
        let (what, result): (&str, Result<usize, JwksError>) = match &self {
            Self::Jwks(a) => ("JWKS", a.refresh().await),
            Self::Supabase(a) => ("Supabase", a.refresh().await),
        };
        match result {
            Ok(n) => tracing::info!(keys = n, "{what} signing keys fetched"),
            // Not fatal: the provider may come up later (tokens are refused meanwhile, never
            // admitted), and a legacy-only Supabase project publishes no usable key.
            Err(e) => tracing::warn!(error = %e, "{what} signing keys not fetched yet"),
        }
    }
}

/// The authenticator for `identity`, and the key refresh to run at start, if any.
pub(super) fn authenticator(
    config: &Config,
    wiring: &Wiring,
) -> anyhow::Result<(Arc<dyn Authenticator>, Option<Prefetch>)> {
    let clock = wiring.clock.clone();
    Ok(match &wiring.identity {
        Identity::DemoSecret => {
            let mut b = JwtAuthenticator::builder()
                .hs256(&config.jwt_secret)
                .cookie(wiring.session_cookie.as_deref().unwrap_or(SESSION_COOKIE));
            if let Some(c) = clock {
                b = b.clock(c);
            }
            (Arc::new(b.build()?), None)
        }
        Identity::Jwks {
            url,
            issuer,
            audience,
        } => {
            let mut b = JwksAuthenticator::builder(url)
                .cookie(wiring.session_cookie.as_deref().unwrap_or(SESSION_COOKIE))
                .cache(TOKEN_CACHE);
            if let Some(i) = issuer {
                b = b.issuer(i);
            }
            if let Some(a) = audience {
                b = b.audience(a);
            }
            if let Some(c) = clock {
                b = b.clock(c);
            }
            let a = b.build()?;
            (Arc::new(a.clone()), Some(Prefetch::Jwks(a)))
        }
        Identity::Supabase { url, jwt_secret } => {
            let mut b = SupabaseAuthenticator::builder(url).cache(TOKEN_CACHE);
            if let Some(s) = jwt_secret {
                b = b.jwt_secret(s);
            }
            if let Some(c) = clock {
                b = b.clock(c);
            }
            let a = b.build()?;
            (Arc::new(a.clone()), Some(Prefetch::Supabase(a)))
        }
    })
}
