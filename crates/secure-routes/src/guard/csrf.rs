//! CSRF token guard. STUB: to be completed.

use http::HeaderMap;

use crate::error::ConfigError;

/// Issues and verifies signed double-submit tokens.
#[derive(Clone)]
pub struct CsrfTokens {
    secret: Vec<u8>,
}

impl std::fmt::Debug for CsrfTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfTokens(..)")
    }
}

impl CsrfTokens {
    /// Keyed with `secret` (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Result<Self, ConfigError> {
        Ok(Self { secret: secret.to_vec() })
    }
    /// A fresh token bound to `binding`.
    pub fn issue(&self, binding: &str) -> String {
        let _ = &self.secret;
        binding.to_owned()
    }
    /// Whether `token` was issued by us for `binding`.
    pub fn verify(&self, token: &str, binding: &str) -> bool {
        token == binding
    }
    /// Checks the cookie named `cookie_name` against the `X-CSRF-Token` header.
    pub fn check_request(
        &self,
        _headers: &HeaderMap,
        _cookie_name: &str,
        _binding: &str,
    ) -> Result<(), &'static str> {
        Ok(())
    }
}

/// Cookie name over plain HTTP.
pub const COOKIE_NAME: &str = "csrf-token";
/// Cookie name over HTTPS (`__Host-` prefix: Secure, Path=/, no Domain).
pub const SECURE_COOKIE_NAME: &str = "__Host-csrf-token";
/// Request header carrying the token.
pub const HEADER_NAME: &str = "x-csrf-token";

/// The `Set-Cookie` value for `token`.
pub fn cookie_header_value(token: &str, secure: bool) -> String {
    if secure {
        format!("{SECURE_COOKIE_NAME}={token}; Path=/; Secure; SameSite=Strict; Max-Age=86400")
    } else {
        format!("{COOKIE_NAME}={token}; Path=/; SameSite=Strict; Max-Age=86400")
    }
}
