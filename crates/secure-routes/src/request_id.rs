//! Request ids: the `x-request-id` every answer carries and every audit event records.
//!
//! Kept apart from the pipeline because two layers need the same rules: the pipeline (each
//! policy's answers) and the router-wide [`crate::fallback`] layer (answers no policy gave).
//! An incoming id is kept only from a trusted proxy, and only if it is short and plain: an
//! untrusted client could otherwise forge ids in the audit log.

use http::{HeaderName, HeaderValue};

/// The request-id header.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in the request extensions the handler sees: the `x-request-id` its
/// answer carries and its audit events record. A gateway forwards it; an application logs it.
///
/// ```
/// use axum::{Extension, Router, routing::get};
/// use secure_routes::RequestId;
/// async fn id(Extension(RequestId(id)): Extension<RequestId>) -> String {
///     id.to_str().unwrap_or_default().to_owned()
/// }
/// let _app: Router = Router::new().route("/id", get(id));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub HeaderValue);

/// Whether an incoming request id is short and plain enough to keep.
pub(crate) fn plain_request_id(v: &HeaderValue) -> bool {
    (1..=64).contains(&v.len())
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new UUIDv7 request id.
///
/// The 36 characters are owned by one [`bytes::Bytes`] allocation that every clone shares
/// (the request header, the audit context, the [`RequestId`] extension, the response header):
/// `HeaderValue::from_str` would copy them into a buffer whose first clone allocates again.
pub(crate) fn fresh_request_id() -> HeaderValue {
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(id))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_others_are_not() {
        for (id, keep) in [
            ("abc-123_x.y:z", true),
            ("", false),
            ("has space", false),
            ("a/b", false),
        ] {
            let v = HeaderValue::from_bytes(id.as_bytes()).unwrap();
            assert_eq!(plain_request_id(&v), keep, "{id:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(65)).unwrap();
        assert!(!plain_request_id(&long));
        assert!(plain_request_id(&fresh_request_id()));
    }

    #[test]
    fn fresh_ids_are_lower_case_hyphenated_uuid_v7_and_differ() {
        let (a, b) = (fresh_request_id(), fresh_request_id());
        assert_ne!(a, b);
        for v in [a, b] {
            let s = v.to_str().unwrap();
            assert_eq!(s.len(), 36, "{s}");
            assert_eq!(s, s.to_ascii_lowercase());
            let id = uuid::Uuid::parse_str(s).unwrap();
            assert_eq!(id.get_version_num(), 7, "{s}");
            assert_eq!(id.hyphenated().to_string(), s);
        }
    }
}
