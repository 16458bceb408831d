//! CORS, on tower-http's [`CorsLayer`], with the configuration validated first
//! (`CorsLayer` panics on some invalid combinations, such as credentials with a wildcard
//! origin; this module never builds those).
//!
//! Only explicitly listed origins are allowed, always with credentials; the answer carries
//! `Vary: Origin` so a shared cache never serves one origin's CORS answer to another.
//! `localhost` origins are only added in development mode.
//!
//! Internal: users configure origins through
//! [`SecurityBuilder::allowed_origins`](crate::SecurityBuilder::allowed_origins), which
//! reports a bad origin as a [`ConfigError`](crate::ConfigError).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Origins added in development mode only (the original allowed these in production too).
pub(crate) const DEV_ORIGINS: [&str; 2] = ["http://localhost:3000", "http://localhost:3001"];

/// Parses and normalizes one allowed origin: `scheme://host[:port]`, http or https, no path,
/// query, fragment or user info, no wildcard, no `null`.
pub(crate) fn parse_origin(origin: &str) -> Result<HeaderValue, String> {
    let o = origin.trim().trim_end_matches('/');
    let bad = |why: &str| Err(format!("allowed origin {origin:?}: {why}"));
    let Some((scheme, rest)) = o.split_once("://") else {
        return bad("expected scheme://host[:port]");
    };
    if scheme != "http" && scheme != "https" {
        return bad("scheme must be http or https");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*', ' ']) || !rest.is_ascii() {
        return bad("expected only a host and optional port (ASCII, punycode for IDNs)");
    }
    let uri: http::Uri = match o.parse() {
        Ok(u) => u,
        Err(e) => return bad(&e.to_string()),
    };
    if uri.host().is_none_or(str::is_empty) {
        return bad("missing host");
    }
    HeaderValue::from_str(&o.to_ascii_lowercase()).or_else(|e| bad(&e.to_string()))
}

/// Builds the CORS layer for a policy's methods. With no origins, preflights are still
/// answered (204) but no `Access-Control-Allow-Origin` is ever sent.
pub(crate) fn layer(origins: &[HeaderValue], methods: Option<&[Method]>) -> CorsLayer {
    let methods: Vec<Method> = match methods {
        Some(m) => m.to_vec(),
        None => vec![
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ],
    };
    CorsLayer::new()
        // A predicate over a shared list rather than `AllowOrigin::list`: the service clones
        // its CORS layer on every request (tower's ready-service swap), and a list is a `Vec`
        // copied each time; the `Arc` is one count. The same origins match either way.
        .allow_origin({
            let allowed: Arc<[HeaderValue]> = origins.into();
            AllowOrigin::predicate(move |origin, _| allowed.contains(origin))
        })
        .allow_credentials(true)
        .allow_methods(methods)
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-csrf-token"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("ratelimit"),
            HeaderName::from_static("ratelimit-policy"),
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderName::from_static("x-ratelimit-reset"),
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(Duration::from_secs(600))
}

/// Merges CORS headers into a response the way tower-http does: `Vary` appended to what the
/// handler set, every other name replaced.
pub(crate) fn merge_cors(target: &mut HeaderMap, cors: &HeaderMap) {
    // Without `Access-Control-Allow-Origin` (tower-http's, or the handler's own for an origin
    // it grants itself) the browser's CORS check fails before it reads any other
    // `Access-Control-*` header (Fetch standard, "CORS check"): tower-http's grants are
    // inert then, and a request without `Origin` is not a CORS request at all. Only `Vary`
    // is added, so a cache never serves this answer to another origin; the rest cost 171
    // bytes on every PUBLIC answer (issue 10 part 7).
    let granted = cors.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        || target.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    // `iter` yields each name's values one after another, so the first of a name is where
    // the name changes (one pass, no lookup per name in `cors`).
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in cors {
        if !granted && *name != header::VARY {
            continue;
        }
        if *name != header::VARY && previous != Some(name) {
            target.insert(name.clone(), value.clone());
        } else {
            target.append(name.clone(), value.clone());
        }
        previous = Some(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_rules() {
        for ok in [
            "https://app.example.com",
            "http://localhost:3000",
            "https://EXAMPLE.com/",
            "https://a.b:8443",
        ] {
            assert!(parse_origin(ok).is_ok(), "{ok}");
        }
        for bad in [
            "null",
            "*",
            "example.com",
            "ftp://x",
            "https://",
            "https://u@x.com",
            "https://x.com?q",
            "https://*.x.com",
            "https://bücher.de",
            "https://app.example.com/path",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_origin("https://EXAMPLE.com/").unwrap(),
            "https://example.com"
        );
    }

    /// tower-http's merge, written the plain way: per name, `Vary` appended, others replaced
    /// by the first value and the rest appended.
    fn reference(target: &mut HeaderMap, cors: &HeaderMap) {
        for name in cors.keys() {
            let mut values = cors.get_all(name).iter();
            if *name != header::VARY
                && let Some(first) = values.next()
            {
                target.insert(name.clone(), first.clone());
            }
            for value in values {
                target.append(name.clone(), value.clone());
            }
        }
    }

    /// No `Access-Control-Allow-Origin` on either side: `Vary` alone. The handler's own grant
    /// (an origin it allows itself): tower-http's other headers come along as before.
    #[test]
    fn merge_cors_adds_only_vary_without_a_grant() {
        let v = HeaderValue::from_static;
        let mut cors = HeaderMap::new();
        cors.append(header::VARY, v("origin"));
        cors.append(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, v("true"));
        cors.append(header::ACCESS_CONTROL_EXPOSE_HEADERS, v("x-request-id"));
        let mut plain = HeaderMap::from_iter([(header::CONTENT_TYPE, v("text/plain"))]);
        merge_cors(&mut plain, &cors);
        let names: Vec<_> = plain.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-type", "vary"]);

        let mut granted = HeaderMap::from_iter([(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            v("https://partner.example"),
        )]);
        let mut want = granted.clone();
        merge_cors(&mut granted, &cors);
        reference(&mut want, &cors);
        assert_eq!(granted, want);
    }

    #[test]
    fn merge_cors_appends_vary_and_replaces_the_rest_as_the_plain_merge_does() {
        let v = HeaderValue::from_static;
        let mut cors = HeaderMap::new();
        cors.append(header::VARY, v("origin"));
        cors.append(header::ACCESS_CONTROL_ALLOW_ORIGIN, v("https://a.example"));
        cors.append(header::VARY, v("access-control-request-method"));
        cors.append(header::ACCESS_CONTROL_EXPOSE_HEADERS, v("x-one"));
        cors.append(header::ACCESS_CONTROL_EXPOSE_HEADERS, v("x-two"));
        cors.append(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, v("true"));
        for target in [
            HeaderMap::new(),
            HeaderMap::from_iter([
                (header::VARY, v("accept-encoding")),
                (header::ACCESS_CONTROL_EXPOSE_HEADERS, v("x-handler")),
                (header::CONTENT_TYPE, v("text/plain")),
            ]),
        ] {
            let (mut got, mut want) = (target.clone(), target);
            merge_cors(&mut got, &cors);
            reference(&mut want, &cors);
            let pairs = |m: &HeaderMap| -> Vec<(String, String)> {
                m.iter()
                    .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                    .collect()
            };
            assert_eq!(pairs(&got), pairs(&want));
        }
    }
}
