//! `secure-routes token`: an HS256 JWT for the demo, signed with `SECURE_ROUTES_JWT_SECRET`.
//!
//! ```
//! use std::time::Duration;
//! let t = secure_routes_cli::token::mint(b"a-secret-of-at-least-32-bytes!!!!", "alice", Duration::from_secs(60)).unwrap();
//! assert_eq!(t.split('.').count(), 3);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Mints a token for `sub` valid for `ttl`.
pub fn mint(secret: &[u8], sub: &str, ttl: Duration) -> anyhow::Result<String> {
    anyhow::ensure!(!sub.is_empty(), "--sub must not be empty");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    Ok(encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}
