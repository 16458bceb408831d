//! Security response headers.
//!
//! The defaults are for JSON APIs: nothing on an API response should ever be framed, sniffed
//! or run as a document. `X-XSS-Protection` is `0`: the old filter (`1; mode=block`) is
//! deprecated and could be abused to selectively disable scripts in old browsers; CSP is the
//! real defence. A header the handler set itself is left alone.
//!
//! ```
//! use secure_routes::response::headers::SecurityHeaders;
//! let h = SecurityHeaders::default();
//! assert_eq!(h.get("x-xss-protection").unwrap(), "0");
//! assert!(h.get("strict-transport-security").is_none()); // only when serving HTTPS
//! ```

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The security headers added to every response of a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityHeaders {
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// `Strict-Transport-Security` value used when the deployment serves HTTPS: one year,
/// subdomains included (RFC 6797).
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

impl Default for SecurityHeaders {
    fn default() -> Self {
        let s = HeaderValue::from_static;
        Self {
            headers: vec![
                (header::X_CONTENT_TYPE_OPTIONS, s("nosniff")),
                (header::X_FRAME_OPTIONS, s("DENY")),
                (
                    header::REFERRER_POLICY,
                    s("strict-origin-when-cross-origin"),
                ),
                (
                    HeaderName::from_static("permissions-policy"),
                    s("camera=(), microphone=(), geolocation=()"),
                ),
                (
                    header::CONTENT_SECURITY_POLICY,
                    s("default-src 'none'; frame-ancestors 'none'"),
                ),
                (
                    HeaderName::from_static("cross-origin-opener-policy"),
                    s("same-origin"),
                ),
                (
                    HeaderName::from_static("cross-origin-resource-policy"),
                    s("same-origin"),
                ),
                (header::X_XSS_PROTECTION, s("0")),
            ],
        }
    }
}

impl SecurityHeaders {
    /// No headers at all.
    pub fn none() -> Self {
        Self {
            headers: Vec::new(),
        }
    }
    /// Sets or replaces a header.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(&name);
        self.headers.push((name, value));
    }
    /// Removes a header.
    pub fn remove(&mut self, name: &HeaderName) {
        self.headers.retain(|(n, _)| n != name);
    }
    /// The value of a header, if set.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    /// Adds the headers to `target`, leaving any the handler already set; adds HSTS when `https`.
    pub fn apply(&self, target: &mut HeaderMap, https: bool) {
        for (name, value) in &self.headers {
            target.entry(name).or_insert_with(|| value.clone());
        }
        if https {
            target
                .entry(header::STRICT_TRANSPORT_SECURITY)
                .or_insert(HeaderValue::from_static(HSTS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_headers_win_and_hsts_only_on_https() {
        let mut m = HeaderMap::new();
        m.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        SecurityHeaders::default().apply(&mut m, false);
        assert_eq!(m[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(m[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(m.get(header::STRICT_TRANSPORT_SECURITY).is_none());
        SecurityHeaders::default().apply(&mut m, true);
        assert_eq!(m[header::STRICT_TRANSPORT_SECURITY], HSTS);
    }
}
