//! Method allow-list: `405 Method Not Allowed` with an `Allow` header listing what the route
//! accepts (RFC 9110 section 15.5.6 requires it).
//!
//! A pipeline step (4); see [`super`].

use http::{HeaderValue, Method, header};

use crate::audit::Reason;
use crate::response::problem::{Rejection, RejectionKind};

/// Passes when `method` is allowed (`None` allows every method).
pub(crate) fn check(allowed: Option<&[Method]>, method: &Method) -> Result<(), Rejection> {
    match allowed {
        None => Ok(()),
        Some(list) if list.contains(method) => Ok(()),
        Some(list) => {
            let allow = list
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut r = Rejection::new(RejectionKind::MethodNotAllowed, Reason::MethodNotAllowed);
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r = r.with_header(header::ALLOW, v);
            }
            Err(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn table() {
        let get_post = [Method::GET, Method::POST, Method::HEAD];
        let cases: &[(Option<&[Method]>, Method, bool)] = &[
            (Some(&get_post), Method::GET, true),
            (Some(&get_post), Method::HEAD, true),
            (Some(&get_post), Method::POST, true),
            (Some(&get_post), Method::PUT, false),
            (Some(&get_post), Method::OPTIONS, false),
            (Some(&[Method::POST]), Method::GET, false),
            (None, Method::TRACE, true),
            (None, Method::PATCH, true),
            (Some(&[Method::GET, Method::HEAD]), Method::GET, true),
            (Some(&[Method::POST]), Method::DELETE, false),
        ];
        for (allowed, m, ok) in cases {
            assert_eq!(check(*allowed, m).is_ok(), *ok, "{m} in {allowed:?}");
        }
        let res = check(Some(&get_post), &Method::DELETE)
            .unwrap_err()
            .into_response();
        assert_eq!(res.status(), 405);
        assert_eq!(res.headers()[header::ALLOW], "GET, POST, HEAD");
    }
}
