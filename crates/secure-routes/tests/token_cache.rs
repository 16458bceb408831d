//! The verified-token cache (`cache(capacity)` on the JWT builders), with pinned PEM keys and a
//! `FakeClock`:
//!
//! * a cached token is refused once the clock passes its `exp` (plus the leeway, exactly as
//!   without a cache), and a token cached before its `nbf` takes effect changes nothing;
//! * failures are never cached; the cache stays within its capacity;
//! * the answer for every token at every time equals the uncached answer, including where the
//!   token came from (a token first seen in a header and then in a cookie is ambient the second
//!   time: the cache holds verifications, not principals).
//!
//! The JWKS side (cached tokens die with their key) is in `tests/jwks.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes::clock::FakeClock;
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000;
const SECRET: &[u8] = b"token-cache-secret-token-cache-secret";
const RSA_PRIVATE: &str = include_str!("keys/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("keys/rsa-public.pem");
const EC_PRIVATE: &str = include_str!("keys/ec-private.pem");
const EC_PUBLIC: &str = include_str!("keys/ec-public.pem");
const ED_PRIVATE: &str = include_str!("keys/ed25519-private.pem");
const ED_PUBLIC: &str = include_str!("keys/ed25519-public.pem");

fn clock() -> FakeClock {
    FakeClock::new(Duration::from_secs(T0))
}

fn es256(clock: &FakeClock, cache: Option<usize>) -> JwtAuthenticator {
    let b = JwtAuthenticator::builder()
        .es256_pem(EC_PUBLIC)
        .audience("authenticated")
        .cookie("sr-session")
        .clock(Arc::new(clock.clone()));
    match cache {
        Some(n) => b.cache(n),
        None => b,
    }
    .build()
    .unwrap()
}

fn sign_es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
}

fn claims(exp: u64) -> Value {
    json!({"sub": "alice", "aud": "authenticated", "exp": exp})
}

/// Runs the (always ready) authentication of a request with one header.
fn run(
    a: &JwtAuthenticator,
    name: header::HeaderName,
    value: String,
) -> Result<Principal, AuthError> {
    let (parts, ()) = Request::get("/")
        .header(name, value)
        .body(())
        .unwrap()
        .into_parts();
    futures_util::FutureExt::now_or_never(a.authenticate(&parts)).expect("ready")
}

type Run = fn(&JwtAuthenticator, &str) -> Result<Principal, AuthError>;

fn bearer(a: &JwtAuthenticator, token: &str) -> Result<Principal, AuthError> {
    run(a, header::AUTHORIZATION, format!("Bearer {token}"))
}

fn cookie(a: &JwtAuthenticator, token: &str) -> Result<Principal, AuthError> {
    run(a, header::COOKIE, format!("sr-session={token}"))
}

#[test]
fn a_cached_token_is_refused_after_exp() {
    let clock = clock();
    let a = es256(&clock, Some(16));
    let token = sign_es256(&claims(T0 + 60));
    assert_eq!(bearer(&a, &token).unwrap().subject(), "alice");
    assert_eq!(a.cached_tokens(), 1);
    for _ in 0..5 {
        assert_eq!(bearer(&a, &token).unwrap().subject(), "alice");
    }
    assert_eq!(a.cached_tokens(), 1, "repeats hit the same entry");

    clock.advance(Duration::from_secs(59));
    bearer(&a, &token).unwrap();
    // At `exp` the entry is dead; the token is verified again and, inside the 30 s leeway,
    // still accepted (as without a cache), but not cached again.
    clock.advance(Duration::from_secs(1));
    bearer(&a, &token).unwrap();
    assert_eq!(a.cached_tokens(), 0);
    clock.advance(Duration::from_secs(31));
    assert_eq!(
        bearer(&a, &token).unwrap_err(),
        AuthError::Invalid("expired")
    );

    // Without leeway the first second past `exp` refuses a token that was cached.
    let strict = JwtAuthenticator::builder()
        .es256_pem(EC_PUBLIC)
        .audience("authenticated")
        .leeway(Duration::ZERO)
        .clock(Arc::new(clock.clone()))
        .cache(16)
        .build()
        .unwrap();
    let now = T0 + 91;
    let token = sign_es256(&claims(now + 10));
    bearer(&strict, &token).unwrap();
    assert_eq!(strict.cached_tokens(), 1);
    clock.advance(Duration::from_secs(11));
    assert_eq!(
        bearer(&strict, &token).unwrap_err(),
        AuthError::Invalid("expired")
    );
}

#[test]
fn failures_are_never_cached() {
    let clock = clock();
    let a = es256(&clock, Some(16));
    let good = sign_es256(&claims(T0 + 600));
    let mut forged = good.clone();
    forged.truncate(good.len() - 4);
    forged.push_str("AAAA");
    let mut not_yet = claims(T0 + 600);
    not_yet["nbf"] = json!(T0 + 300);
    let other_key = {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::RS256), &claims(T0 + 600), &key).unwrap()
    };
    let mut wrong_aud = claims(T0 + 600);
    wrong_aud["aud"] = json!("other");
    let bad = [
        (forged, "bad_signature"),
        (sign_es256(&claims(T0 - 100)), "expired"),
        (sign_es256(&not_yet), "not_yet_valid"),
        (sign_es256(&wrong_aud), "bad_audience"),
        (other_key, "wrong_algorithm"),
        ("a.b.c".to_owned(), "malformed"),
    ];
    for _ in 0..3 {
        for (token, reason) in &bad {
            assert_eq!(
                bearer(&a, token).unwrap_err(),
                AuthError::Invalid(reason),
                "{reason}"
            );
        }
    }
    assert_eq!(a.cached_tokens(), 0);

    // The not-yet-valid token becomes valid with time, and only then is cached.
    clock.advance(Duration::from_secs(300));
    bearer(&a, &bad[2].0).unwrap();
    assert_eq!(a.cached_tokens(), 1);
    bearer(&a, &good).unwrap();
    assert_eq!(a.cached_tokens(), 2);
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let clock = clock();
    let a = es256(&clock, Some(8));
    for i in 0..50 {
        let mut c = claims(T0 + 600);
        c["sub"] = json!(format!("user-{i}"));
        let token = sign_es256(&c);
        assert_eq!(bearer(&a, &token).unwrap().subject(), format!("user-{i}"));
        assert!(a.cached_tokens() <= 8);
    }
    assert_eq!(a.cached_tokens(), 8);
}

#[test]
fn the_credential_source_belongs_to_the_request_not_the_cache() {
    let clock = clock();
    let a = es256(&clock, Some(8));
    let token = sign_es256(&claims(T0 + 600));
    assert_eq!(
        bearer(&a, &token).unwrap().source(),
        CredentialSource::Header
    );
    // Same token, now as a cookie: a cache hit, and ambient (CSRF applies).
    let p = cookie(&a, &token).unwrap();
    assert_eq!(p.source(), CredentialSource::Cookie);
    assert!(p.is_ambient());
    assert_eq!(a.cached_tokens(), 1);
    assert_eq!(
        bearer(&a, &token).unwrap().source(),
        CredentialSource::Header
    );
}

#[test]
fn cached_answers_equal_uncached_answers() {
    let clock = clock();
    let cached = es256(&clock, Some(4));
    let plain = es256(&clock, None);
    let mut tokens = Vec::new();
    for exp in [T0 + 5, T0 + 40, T0 + 100, T0 + 1_000] {
        tokens.push(sign_es256(&claims(exp)));
        let mut c = claims(exp);
        c["nbf"] = json!(T0 + 50);
        tokens.push(sign_es256(&c));
        c["aud"] = json!(["x", "authenticated"]);
        c["role"] = json!("admin");
        tokens.push(sign_es256(&c));
    }
    // More tokens than capacity, repeated at every step from before nbf to past every exp.
    for _ in 0..150 {
        for t in &tokens {
            let sources: [Run; 2] = [bearer, cookie];
            for source in sources {
                let want = source(&plain, t);
                let got = source(&cached, t);
                match (&want, &got) {
                    (Ok(w), Ok(g)) => {
                        assert_eq!(w.subject(), g.subject());
                        assert_eq!(w.source(), g.source());
                        assert_eq!(w.claims(), g.claims());
                    }
                    _ => assert_eq!(want.map(|_| ()), got.map(|_| ()), "at {:?}", clock),
                }
            }
        }
        clock.advance(Duration::from_secs(9));
    }
}

#[test]
fn every_algorithm_caches() {
    let clock = clock();
    let c = claims(T0 + 600);
    let cases = [
        (
            JwtAuthenticator::builder().rs256_pem(RSA_PUBLIC),
            encode(
                &Header::new(Algorithm::RS256),
                &c,
                &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        (
            JwtAuthenticator::builder().eddsa_pem(ED_PUBLIC),
            encode(
                &Header::new(Algorithm::EdDSA),
                &c,
                &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            )
            .unwrap(),
        ),
        (
            JwtAuthenticator::builder().hs256(SECRET),
            encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap(),
        ),
    ];
    for (builder, token) in cases {
        let a = builder
            .audience("authenticated")
            .clock(Arc::new(clock.clone()))
            .cache(4)
            .build()
            .unwrap();
        bearer(&a, &token).unwrap();
        bearer(&a, &token).unwrap();
        assert_eq!(a.cached_tokens(), 1, "{}", a.algorithm());
        // `verify` always checks the signature and leaves the cache alone.
        assert_eq!(a.verify(&token).unwrap()["sub"], "alice");
        assert_eq!(a.cached_tokens(), 1);
    }
}

#[test]
fn cache_capacity_is_validated() {
    for (n, ok) in [
        (0, false),
        (1, true),
        (10_000_000, true),
        (10_000_001, false),
    ] {
        let r = JwtAuthenticator::builder().hs256(SECRET).cache(n).build();
        assert_eq!(r.is_ok(), ok, "{n}");
    }
    let a = JwtAuthenticator::builder().hs256(SECRET).build().unwrap();
    assert_eq!(a.cached_tokens(), 0);
}
