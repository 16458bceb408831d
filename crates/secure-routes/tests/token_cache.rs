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
//! Hits are counted through the clock (see [`CountingClock`]), not inferred from the number of
//! entries: a cache that stored tokens but never answered from them would keep every entry
//! count right.
//!
//! The JWKS side (cached tokens die with their key) is in `tests/jwks.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes::clock::{Clock, FakeClock};
use secure_routes_testkit::keys::{
    EC_PRIVATE, EC_PUBLIC, ED_PRIVATE, ED_PUBLIC, RSA_PRIVATE, RSA_PUBLIC,
};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000;
const SECRET: &[u8] = b"token-cache-secret-token-cache-secret";

/// A [`FakeClock`] that counts its readings: the test's window on whether an answer came
/// from the cache. A hit reads the clock once (the entry's `exp`); a successful verification
/// reads it at least twice (the cache lookup, then the token's `exp`/`nbf` once the signature
/// has checked out), so a successful answer with a single reading skipped the signature check.
/// Every test also asserts that its first request (necessarily a miss) is *not* counted as a
/// hit, so a change to that premise fails loudly instead of making every answer look cached.
#[derive(Clone, Debug)]
struct CountingClock {
    time: FakeClock,
    reads: Arc<AtomicUsize>,
}

impl CountingClock {
    fn advance(&self, by: Duration) {
        self.time.advance(by);
    }

    /// Runs one authentication and says whether the cache answered it.
    fn cached<T>(&self, f: impl FnOnce() -> Result<T, AuthError>) -> (Result<T, AuthError>, bool) {
        let before = self.reads.load(Ordering::SeqCst);
        let result = f();
        let reads = self.reads.load(Ordering::SeqCst) - before;
        let hit = result.is_ok() && reads == 1;
        (result, hit)
    }

    /// One authentication that must succeed from the cache.
    #[track_caller]
    fn hit<T>(&self, f: impl FnOnce() -> Result<T, AuthError>) -> T {
        let (result, hit) = self.cached(f);
        let value = result.unwrap_or_else(|e| panic!("refused: {e:?}"));
        assert!(hit, "verified again instead of answered from the cache");
        value
    }

    /// One authentication that must succeed by verifying the token (not from the cache).
    #[track_caller]
    fn miss<T>(&self, f: impl FnOnce() -> Result<T, AuthError>) -> T {
        let (result, hit) = self.cached(f);
        let value = result.unwrap_or_else(|e| panic!("refused: {e:?}"));
        assert!(!hit, "answered from the cache instead of verified");
        value
    }
}

impl Clock for CountingClock {
    fn now(&self) -> Duration {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.time.now()
    }
}

fn clock() -> CountingClock {
    CountingClock {
        time: FakeClock::new(Duration::from_secs(T0)),
        reads: Arc::default(),
    }
}

fn es256(clock: &CountingClock, cache: Option<usize>) -> JwtAuthenticator {
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
    assert_eq!(clock.miss(|| bearer(&a, &token)).subject(), "alice");
    assert_eq!(a.cached_tokens(), 1);
    for _ in 0..5 {
        assert_eq!(clock.hit(|| bearer(&a, &token)).subject(), "alice");
    }
    assert_eq!(a.cached_tokens(), 1, "repeats hit the same entry");

    clock.advance(Duration::from_secs(59));
    clock.hit(|| bearer(&a, &token));
    // At `exp` the entry is dead; the token is verified again and, inside the 30 s leeway,
    // still accepted (as without a cache), but not cached again.
    clock.advance(Duration::from_secs(1));
    clock.miss(|| bearer(&a, &token));
    assert_eq!(a.cached_tokens(), 0);
    clock.miss(|| bearer(&a, &token));
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
    clock.miss(|| bearer(&strict, &token));
    assert_eq!(strict.cached_tokens(), 1);
    clock.advance(Duration::from_secs(9));
    clock.hit(|| bearer(&strict, &token));
    clock.advance(Duration::from_secs(2));
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
    clock.miss(|| bearer(&a, &bad[2].0));
    assert_eq!(a.cached_tokens(), 1);
    clock.hit(|| bearer(&a, &bad[2].0));
    clock.miss(|| bearer(&a, &good));
    assert_eq!(a.cached_tokens(), 2);
    clock.hit(|| bearer(&a, &good));
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
        clock.miss(|| bearer(&a, &token)).source(),
        CredentialSource::Header
    );
    // Same token, now as a cookie: a cache hit, and ambient (CSRF applies).
    let p = clock.hit(|| cookie(&a, &token));
    assert_eq!(p.source(), CredentialSource::Cookie);
    assert!(p.is_ambient());
    assert_eq!(a.cached_tokens(), 1);
    assert_eq!(
        clock.hit(|| bearer(&a, &token)).source(),
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
        tokens.push((sign_es256(&claims(exp)), exp));
        let mut c = claims(exp);
        c["nbf"] = json!(T0 + 50);
        tokens.push((sign_es256(&c), exp));
        c["aud"] = json!(["x", "authenticated"]);
        c["role"] = json!("admin");
        tokens.push((sign_es256(&c), exp));
    }
    // More tokens than capacity, repeated at every step from before nbf to past every exp.
    let mut hits = 0;
    for _ in 0..150 {
        for (t, exp) in &tokens {
            let sources: [Run; 2] = [bearer, cookie];
            let mut accepted = false;
            for source in sources {
                let want = source(&plain, t);
                let (got, hit) = clock.cached(|| source(&cached, t));
                let ok = got.is_ok();
                match (&want, &got) {
                    (Ok(w), Ok(g)) => {
                        assert_eq!(w.subject(), g.subject());
                        assert_eq!(w.source(), g.source());
                        assert_eq!(w.claims(), g.claims());
                    }
                    _ => assert_eq!(want.map(|_| ()), got.map(|_| ()), "at {:?}", clock),
                }
                // Right after an accepted token, the same token comes from the cache while
                // the clock is before its `exp`: the comparison above is not vacuous.
                if accepted {
                    assert_eq!(hit, clock.time.now().as_secs() < *exp, "at {:?}", clock);
                }
                accepted = ok;
                hits += usize::from(hit);
            }
        }
        clock.advance(Duration::from_secs(9));
    }
    assert!(hits > 150, "{hits} answers from the cache");
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
        clock.miss(|| bearer(&a, &token));
        clock.hit(|| bearer(&a, &token));
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
