//! Arbitrary bytes as a JWT, through `JwtAuthenticator` on a built request head: as the bearer
//! token, as the whole `Authorization` value and as the session cookie's value, and through
//! `verify` directly, for an HMAC and an ECDSA authenticator.
//!
//! Nothing may panic. The header path may only accept what `verify` accepts (it adds syntax
//! checks, never leniency), and a principal's source says where its token came from.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};

/// The valid tokens in `fuzz/seeds/jwt_verify` are HS256 tokens signed with this secret.
const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-secret!";
const EC_PUBLIC: &str = include_str!("../../crates/secure-routes-testkit/keys/ec-public.pem");

static HS: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::builder()
        .hs256(SECRET)
        .cookie("sr-session")
        .build()
        .expect("valid HS256 configuration")
});

static ES: LazyLock<JwtAuthenticator> = LazyLock::new(|| {
    JwtAuthenticator::builder()
        .es256_pem(EC_PUBLIC)
        .cookie("sr-session")
        .build()
        .expect("valid ES256 configuration")
});

/// Authenticates a request whose only header is `name: value` (`None` if `http` refuses it).
fn run(a: &JwtAuthenticator, name: &str, value: &[u8]) -> Option<Result<Principal, AuthError>> {
    let value = HeaderValue::from_bytes(value).ok()?;
    let (parts, ()) = Request::builder()
        .header(name, value)
        .body(())
        .ok()?
        .into_parts();
    let mut fut = pin!(a.authenticate(&parts));
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => panic!("the JWT authenticator never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    for a in [&*HS, &*ES] {
        if let Some(t) = text
            && let Ok(claims) = a.verify(t)
        {
            assert!(claims["sub"].as_str().is_some_and(|s| !s.is_empty()));
        }

        let bearer = [b"Bearer ".as_slice(), data].concat();
        if let Some(Ok(p)) = run(a, "authorization", &bearer) {
            assert_eq!(p.source(), CredentialSource::Header);
            // Only surrounding whitespace (the header field's) is taken off the token.
            let token = text.expect("an accepted bearer token is text").trim();
            let claims = a
                .verify(token)
                .expect("the header path is never more lenient");
            assert_eq!(claims["sub"].as_str(), Some(p.subject()));
        }

        if let Some(Ok(p)) = run(a, "authorization", data) {
            assert_eq!(p.source(), CredentialSource::Header);
        }

        let cookie = [b"sr-session=".as_slice(), data].concat();
        if let Some(Ok(p)) = run(a, "cookie", &cookie) {
            assert_eq!(p.source(), CredentialSource::Cookie);
        }
        if let Some(Ok(p)) = run(a, "cookie", data) {
            assert_eq!(p.source(), CredentialSource::Cookie);
        }
    }
});
