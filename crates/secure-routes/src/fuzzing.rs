//! Not part of the API (hidden from the docs, may change in any release): entry points the
//! fuzz targets in `fuzz/` need into crate-private parsers.
//!
//! Why: the parsers that read untrusted input are fuzzed directly, but keeping them out of the
//! public API keeps that API to what users call. These wrappers are the only door.

use http::HeaderMap;

use crate::auth::AuthError;

/// The Supabase session cookie's access token (the profile's cookie hook).
///
/// ```
/// let h = http::HeaderMap::new();
/// let missing = secure_routes::fuzzing::supabase_access_token(&h, "sb-x-auth-token");
/// assert_eq!(missing, Err(secure_routes::auth::AuthError::Missing));
/// ```
pub fn supabase_access_token(headers: &HeaderMap, name: &str) -> Result<String, AuthError> {
    crate::auth::supabase::access_token(headers, name)
}

/// The access token in one Supabase session cookie value.
///
/// ```
/// let t = secure_routes::fuzzing::supabase_parse_session(r#"{"access_token":"t"}"#);
/// assert_eq!(t.unwrap(), "t");
/// ```
pub fn supabase_parse_session(value: &str) -> Result<String, AuthError> {
    crate::auth::supabase::parse_session(value)
}
