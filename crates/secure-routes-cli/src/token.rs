//! `secure-routes token`: an HS256 JWT for the demo, signed with `SECURE_ROUTES_JWT_SECRET`
//! (the same secret the demo verifies with).
//!
//! ```
//! use std::time::Duration;
//! let t = secure_routes_cli::token::mint(b"a-secret-of-at-least-32-bytes!!!!", "alice", Duration::from_secs(60)).unwrap();
//! assert_eq!(t.split('.').count(), 3);
//! assert!(secure_routes_cli::token::mint(b"short", "alice", Duration::from_secs(60)).is_err());
//! ```

use std::time::Duration;

/// Mints a token for `sub` valid for `ttl` (the secret must be 32+ bytes).
pub fn mint(secret: &[u8], sub: &str, ttl: Duration) -> anyhow::Result<String> {
    anyhow::ensure!(!sub.is_empty(), "--sub must not be empty");
    Ok(secure_routes::auth::jwt::mint_hs256(secret, sub, ttl)?)
}
