//! The verified-token cache: uncached RS256, ES256 and EdDSA (and HS256, for reference)
//! verification next to a cache hit of the same token, in the same run, through
//! `Authenticator::authenticate` (finding the bearer token included). Also a JWKS
//! authenticator, keys fetched once from a local server, uncached and cached.
//!
//! Tokens carry a Supabase-like payload (about 700 bytes), so hashing the token for the cache
//! key costs what it would in production.
//!
//! Run: `cargo bench -p secure-routes --bench token_cache --features jwks -- --warm-up-time 1
//! --measurement-time 3`

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use http::Request;
use http::request::Parts;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use secure_routes::auth::Authenticator;
use secure_routes::auth::jwks::JwksAuthenticator;
use secure_routes::auth::jwt::{JwtAuthenticator, JwtAuthenticatorBuilder};
use secure_routes_testkit::jwks::{KeyServer, TestKey};
use secure_routes_testkit::keys::{
    EC_PRIVATE, EC_PUBLIC, ED_PRIVATE, ED_PUBLIC, RSA_PRIVATE, RSA_PUBLIC,
};
use serde_json::{Value, json};

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";
const ISS: &str = "https://abcdefghijklmnop.supabase.co/auth/v1";

fn claims() -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "iss": ISS,
        "sub": "0b1f6c4e-3d2a-4c8b-9e7f-5a6b7c8d9e0f",
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "alice@example.com",
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"email_verified": true, "name": "Alice"},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": "7d3f1a2b-9c8e-4f6d-a5b4-c3d2e1f0a9b8",
        "is_anonymous": false
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, &claims(), key).unwrap()
}

fn parts(token: &str) -> Parts {
    Request::get("/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// Times one authenticated request: the future is ready at once (no key fetch).
fn bench_auth(c: &mut Criterion, name: &str, a: &dyn Authenticator, parts: &Parts) {
    let run = || {
        a.authenticate(black_box(parts))
            .now_or_never()
            .expect("ready")
            .expect("valid token")
    };
    // Fills the cache (when there is one) and checks the token is good.
    run();
    c.bench_function(name, |b| b.iter(run));
}

fn pinned(c: &mut Criterion) {
    let cases: [(&str, JwtAuthenticatorBuilder, String); 4] = [
        (
            "RS256",
            JwtAuthenticator::builder().rs256_pem(RSA_PUBLIC),
            sign(
                Algorithm::RS256,
                None,
                &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            ),
        ),
        (
            "ES256",
            JwtAuthenticator::builder().es256_pem(EC_PUBLIC),
            sign(
                Algorithm::ES256,
                None,
                &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            ),
        ),
        (
            "EdDSA",
            JwtAuthenticator::builder().eddsa_pem(ED_PUBLIC),
            sign(
                Algorithm::EdDSA,
                None,
                &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            ),
        ),
        (
            "HS256",
            JwtAuthenticator::builder().hs256(SECRET),
            sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET)),
        ),
    ];
    for (alg, builder, token) in cases {
        let builder = builder.issuer(ISS).audience("authenticated");
        let plain = builder.clone().build().unwrap();
        let cached = builder.cache(10_000).build().unwrap();
        let parts = parts(&token);
        bench_auth(c, &format!("token_cache/{alg}/uncached"), &plain, &parts);
        bench_auth(c, &format!("token_cache/{alg}/cached"), &cached, &parts);
        assert_eq!(cached.cached_tokens(), 1);
    }
}

fn jwks(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let published = TestKey::rsa("bench-1");
    let key = published.enc.clone();
    let url = rt.block_on(async { KeyServer::start(&[&published]).await.url() });
    let builder = JwksAuthenticator::builder(url)
        .issuer(ISS)
        .audience("authenticated");
    let plain = builder.clone().build().unwrap();
    let cached = builder.cache(10_000).build().unwrap();
    for a in [&plain, &cached] {
        assert_eq!(rt.block_on(a.refresh()), Ok(1));
    }
    let parts = parts(&sign(Algorithm::RS256, Some("bench-1"), &key));
    bench_auth(c, "token_cache/jwks-RS256/uncached", &plain, &parts);
    bench_auth(c, "token_cache/jwks-RS256/cached", &cached, &parts);
}

criterion_group!(benches, pinned, jwks);
criterion_main!(benches);
