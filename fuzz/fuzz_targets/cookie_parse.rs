//! Arbitrary `Cookie` header lines through the crate's cookie lookup, as the CSRF check
//! (`CsrfTokens::check_request`), the JWT session cookie and the Supabase session cookie
//! (`auth::supabase`) use it, and arbitrary strings through `CsrfTokens::verify`.
//!
//! Input layout: cookie lines separated by `\n`, then `\0`, the `X-CSRF-Token` value, `\0`,
//! the binding (subject). Nothing may panic, and a request passes the CSRF check only with a
//! token this secret issued for this binding.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::{Authenticator, CredentialSource};
use secure_routes::clock::FakeClock;
use secure_routes::guard::csrf::{
    COOKIE_NAME, CsrfTokens, HEADER_NAME, SECURE_COOKIE_NAME, TOKEN_LEN,
};

/// The valid CSRF tokens in `fuzz/seeds/cookie_parse` were issued with this secret...
const CSRF_SECRET: &[u8] = b"fuzz-csrf-secret-fuzz-csrf-secret!!";
/// ...at this time (2023-11-14T22:13:20Z), which the target's clock stands still at, so the
/// seeds stay valid (tokens expire 12 h after issue) and every run decides the same way.
const CSRF_NOW: Duration = Duration::from_secs(1_700_000_000);
/// The valid JWTs there are HS256 tokens signed with this one.
const JWT_SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";

static TOKENS: LazyLock<CsrfTokens> = LazyLock::new(|| {
    CsrfTokens::new(CSRF_SECRET)
        .expect("32+ byte secret")
        .with_clock(Arc::new(FakeClock::new(CSRF_NOW)))
});

static JWT: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::builder()
        .hs256(JWT_SECRET)
        .cookie("sr-session")
        .build()
        .expect("valid HS256 configuration")
});

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(3, |&b| b == 0);
    let cookies = fields.next().unwrap_or_default();
    let header = fields.next();
    let binding = String::from_utf8_lossy(fields.next().unwrap_or_default());

    let mut headers = HeaderMap::new();
    for line in cookies.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, v);
        }
    }
    if let Some(v) = header.and_then(|h| HeaderValue::from_bytes(h).ok()) {
        headers.append(HEADER_NAME, v);
    }

    for name in [COOKIE_NAME, SECURE_COOKIE_NAME, "sr-session", ""] {
        if TOKENS.check_request(&headers, name, &binding).is_ok() {
            // Passing means: the header holds one of our tokens for this binding.
            let sent = headers
                .get(HEADER_NAME)
                .expect("a passing request has the header")
                .as_bytes()
                .trim_ascii();
            let sent = std::str::from_utf8(sent).expect("equal to a cookie value, so text");
            assert!(TOKENS.verify(sent, &binding));
        }
    }

    // The raw input as a token.
    let raw = String::from_utf8_lossy(cookies);
    if TOKENS.verify(&raw, &binding) {
        assert_eq!(raw.len(), TOKEN_LEN);
    }

    // Supabase session cookies (chunked, base64-): never a panic, and a token found is
    // never empty.
    for name in ["sb-ref-auth-token", "sr-session"] {
        if let Ok(token) = secure_routes::fuzzing::supabase_access_token(&headers, name) {
            assert!(!token.is_empty());
        }
    }
    let _ = secure_routes::fuzzing::supabase_parse_session(&raw);

    // The JWT session cookie: the same lookup, then the token parser.
    let mut req = Request::new(());
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    let mut fut = pin!(JWT.authenticate(&parts));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(p)) => assert_eq!(p.source(), CredentialSource::Cookie),
        Poll::Ready(Err(_)) => {}
        Poll::Pending => panic!("the JWT authenticator never waits"),
    }
});
