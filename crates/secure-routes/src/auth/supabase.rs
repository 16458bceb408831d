//! Supabase sessions: the cookies Supabase's server-side helpers (`@supabase/ssr`) set.
//!
//! The session lives in the cookie `sb-<project-ref>-auth-token`. Its value is the session
//! JSON (`{"access_token": "...", "refresh_token": "...", ...}`), either as it is or as
//! `base64-` followed by the JSON in base64url; older helpers stored a JSON array whose first
//! element is the access token. A session too large for one cookie is split into
//! `sb-<ref>-auth-token.0`, `.1`, ... whose values are concatenated in order (the unsplit name
//! wins when both are present, as in the helpers).
//!
//! Only the access token is used, and only after the authenticator has verified it; the
//! refresh token is never read. A cookie is an ambient credential: the browser sends it on
//! cross-site requests too, so a principal from it must pass CSRF protection.
//!
//! Parsing never panics and is bounded: at most [`MAX_CHUNKS`] chunks and
//! [`MAX_SESSION_BYTES`] of cookie value are read; anything malformed is
//! [`AuthError::Invalid`] with the reason `bad_session_cookie`.
//!
//! ```
//! use base64::Engine as _;
//! use http::HeaderMap;
//! use secure_routes::auth::supabase::{access_token, session_cookie_name};
//!
//! let name = session_cookie_name("abcdefghijklmnop");
//! assert_eq!(name, "sb-abcdefghijklmnop-auth-token");
//! let json = r#"{"access_token":"eyJ.a.b","refresh_token":"r"}"#;
//! let value = format!("base64-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json));
//! let (first, second) = value.split_at(10);
//! let mut headers = HeaderMap::new();
//! headers.insert("cookie", format!("{name}.0={first}; {name}.1={second}").parse().unwrap());
//! assert_eq!(access_token(&headers, &name).unwrap(), "eyJ.a.b");
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::HeaderMap;
use serde_json::Value;

use super::AuthError;
use crate::guard::csrf::{CookieLookup, single_cookie};

/// Most cookie chunks read for one session.
pub const MAX_CHUNKS: usize = 16;
/// Most bytes of cookie value read for one session (all chunks together).
pub const MAX_SESSION_BYTES: usize = 32 * 1024;

const BAD: AuthError = AuthError::Invalid("bad_session_cookie");

/// The session cookie's name for a project: `sb-<project_ref>-auth-token`.
///
/// ```
/// assert_eq!(secure_routes::auth::supabase::session_cookie_name("xyz"), "sb-xyz-auth-token");
/// ```
pub fn session_cookie_name(project_ref: &str) -> String {
    format!("sb-{project_ref}-auth-token")
}

/// The project reference the helpers name cookies after: the first label of the project
/// URL's host (`https://abcd.supabase.co` → `abcd`; a local `http://127.0.0.1:54321` →
/// `127`). `None` for something that is not an `http(s)` URL with a host.
///
/// ```
/// use secure_routes::auth::supabase::project_ref;
/// assert_eq!(project_ref("https://abcd.supabase.co").as_deref(), Some("abcd"));
/// assert_eq!(project_ref("https://abcd.supabase.co/").as_deref(), Some("abcd"));
/// assert_eq!(project_ref("http://127.0.0.1:54321").as_deref(), Some("127"));
/// assert_eq!(project_ref("abcd.supabase.co"), None);
/// ```
pub fn project_ref(project_url: &str) -> Option<String> {
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
/// [`AuthError::Missing`] when there is no such cookie; [`AuthError::Invalid`]
/// (`bad_session_cookie`) when it is malformed, oversized, or present twice with different
/// values (a cookie planted for another path or domain).
///
/// ```
/// use http::HeaderMap;
/// use secure_routes::auth::{AuthError, supabase::access_token};
/// let mut h = HeaderMap::new();
/// assert!(matches!(access_token(&h, "sb-x-auth-token"), Err(AuthError::Missing)));
/// h.insert("cookie", "sb-x-auth-token=not-json".parse().unwrap());
/// assert!(matches!(access_token(&h, "sb-x-auth-token"), Err(AuthError::Invalid(_))));
/// ```
pub fn access_token(headers: &HeaderMap, name: &str) -> Result<String, AuthError> {
    let value = match single_cookie(headers, name) {
        CookieLookup::One(v) => v,
        CookieLookup::Conflicting => return Err(BAD),
        CookieLookup::Absent => combined_chunks(headers, name)?,
    };
    parse_session(&value)
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

/// The access token in a session cookie value.
///
/// ```
/// use secure_routes::auth::supabase::parse_session;
/// assert_eq!(parse_session(r#"{"access_token":"t"}"#).unwrap(), "t");
/// assert_eq!(parse_session(r#"["t","refresh",null]"#).unwrap(), "t");
/// assert!(parse_session("base64-!!!").is_err());
/// ```
pub fn parse_session(value: &str) -> Result<String, AuthError> {
    if value.len() > MAX_SESSION_BYTES {
        return Err(BAD);
    }
    let json: Vec<u8> = match value.strip_prefix("base64-") {
        // The helpers write base64url without padding; accept the standard alphabet and
        // padding too, since some server code re-encodes it.
        Some(b64) => {
            let trimmed = b64.trim_end_matches('=');
            URL_SAFE_NO_PAD
                .decode(trimmed)
                .or_else(|_| STANDARD.decode(b64))
                .map_err(|_| BAD)?
        }
        None => value.as_bytes().to_vec(),
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
        // The unsplit cookie wins over chunks.
        let h = headers(&[format!(
            "{NAME}={}; {NAME}.0=garbage",
            b64(r#"{"access_token":"one"}"#)
        )]);
        assert_eq!(access_token(&h, NAME).unwrap(), "one");
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
    fn project_refs_are_host_labels_only() {
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
