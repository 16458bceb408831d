//! The JWKS authenticator against a local key server (axum on 127.0.0.1:0) that counts its
//! requests, swaps its key set and fails on demand. Time is a `FakeClock`: cooldowns and key
//! set lifetimes pass by `advance`, never by sleeping.
//!
//! * rotation: a new `kid` causes one refetch, then verifies;
//! * outage (500, redirect, garbage, empty set, oversized, hanging server): the last good set
//!   keeps verifying, with one attempt per cooldown; a never-fetched set refuses everything;
//! * a hanging refetch holds up only the request that made it, which gives up at the fetch
//!   timeout (the server holds the fetch until the test lets go: nothing races a clock);
//! * kid flood: 1000 concurrent tokens with random unknown `kid`s cost at most one fetch per
//!   cooldown;
//! * a key removed from the set stops verifying once the set's lifetime has passed, also for
//!   tokens in the verified-token cache;
//! * the algorithm comes from the key; `oct` keys are ignored; `jku`, `x5u`, `jwk` and `x5c`
//!   are never used or fetched; a `kid` is only a bounded map lookup;
//! * a legacy HS256 secret beside the JWKS never meets an asymmetric key.
//!
//! Needs the `jwks` feature, which the crate's dev-dependency on itself turns on.
#![cfg(feature = "jwks")]

use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use secure_routes::auth::jwks::{JwksAuthenticator, JwksAuthenticatorBuilder, JwksError};
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes::clock::FakeClock;
use secure_routes_testkit::jwks::{KeyServer, Mode, TestKey, jwk_set};
use secure_routes_testkit::keys::EC_PUBLIC;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const T0: u64 = 1_800_000_000;
const ISS: &str = "https://idp.test/auth/v1";
const SECRET: &[u8] = b"legacy-hs256-secret-legacy-hs256-secret";
const COOLDOWN: Duration = Duration::from_secs(30);
const MAX_AGE: Duration = Duration::from_secs(600);
/// Bound on a wait that ends in milliseconds when the code is right (real time: these tests
/// talk to a real socket). Reaching it means the wait would never have ended.
const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` after [`WAIT_LIMIT`].
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("gave up after {WAIT_LIMIT:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------------------------
// The key server (`secure_routes_testkit::jwks::KeyServer`) and its keys, as this suite uses them.

trait ServerExt {
    /// A builder for this server's set, on `clock`, with the test's cooldown and max age.
    fn builder(&self, clock: &FakeClock) -> JwksAuthenticatorBuilder;
}

impl ServerExt for KeyServer {
    fn builder(&self, clock: &FakeClock) -> JwksAuthenticatorBuilder {
        JwksAuthenticator::builder(self.url())
            .issuer(ISS)
            .audience("authenticated")
            .cookie("sr-session")
            .cooldown(COOLDOWN)
            .max_age(MAX_AGE)
            .clock(Arc::new(clock.clone()))
    }
}

trait TokenExt {
    /// A token for the usual claims, with the key's own algorithm.
    fn token(&self) -> String;
    /// A token signed by this key, with `alg` in the header.
    fn token_as(&self, alg: Algorithm, claims: &Value) -> String;
}

impl TokenExt for TestKey {
    fn token(&self) -> String {
        self.sign(&claims())
    }
    fn token_as(&self, alg: Algorithm, claims: &Value) -> String {
        self.sign_as(alg, claims)
    }
}

/// A token with `alg` and `kid` in the header, signed by `key`, with the usual claims.
fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, &claims(), key).unwrap()
}

fn set(keys: &[&TestKey]) -> String {
    jwk_set(keys)
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": ISS, "aud": "authenticated", "exp": T0 + 86_400, "role": "user"})
}

fn clock() -> FakeClock {
    FakeClock::new(Duration::from_secs(T0))
}

async fn bearer(a: &dyn Authenticator, token: &str) -> Result<Principal, AuthError> {
    let (parts, ()) = Request::get("/")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .unwrap()
        .into_parts();
    a.authenticate(&parts).await
}

async fn cookie(a: &dyn Authenticator, token: &str) -> Result<Principal, AuthError> {
    let (parts, ()) = Request::get("/")
        .header(header::COOKIE, format!("sr-session={token}"))
        .body(())
        .unwrap()
        .into_parts();
    a.authenticate(&parts).await
}

fn invalid(reason: &'static str) -> Result<(), AuthError> {
    Err(AuthError::Invalid(reason))
}

async fn check(a: &dyn Authenticator, token: &str) -> Result<(), AuthError> {
    bearer(a, token)
        .await
        .map(|p| assert_eq!(p.subject(), "alice"))
}

// ---------------------------------------------------------------------------------------------
// Fetching, caching and rotation.

#[tokio::test]
async fn build_is_offline_and_the_first_token_fetches_once() {
    let rsa = TestKey::rsa("rsa-1");
    let server = KeyServer::start(&[&rsa]).await;
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();
    assert_eq!(server.hits(), 0, "building makes no request");

    let p = bearer(&a, &rsa.token()).await.unwrap();
    assert_eq!(p.subject(), "alice");
    assert_eq!(p.source(), CredentialSource::Header);
    assert_eq!(p.claim("role"), Some(&json!("user")));
    assert_eq!(server.hits(), 1);

    let p = cookie(&a, &rsa.token()).await.unwrap();
    assert!(p.is_ambient());
    for _ in 0..20 {
        check(&a, &rsa.token()).await.unwrap();
    }
    assert_eq!(server.hits(), 1, "the set is cached");

    // The claim rules apply as for pinned keys.
    let mut wrong_aud = claims();
    wrong_aud["aud"] = json!("someone-else");
    assert_eq!(
        check(&a, &rsa.token_as(Algorithm::RS256, &wrong_aud)).await,
        invalid("bad_audience")
    );
    let mut expired = claims();
    expired["exp"] = json!(T0 - 120);
    assert_eq!(
        check(&a, &rsa.token_as(Algorithm::RS256, &expired)).await,
        invalid("expired")
    );
}

#[tokio::test]
async fn refresh_fetches_on_demand() {
    let (rsa, ec, ed) = (TestKey::rsa("r"), TestKey::ec("e"), TestKey::ed("d"));
    let server = KeyServer::start(&[&rsa, &ec, &ed]).await;
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();
    assert_eq!(a.refresh().await, Ok(3));
    // An explicit refresh ignores the cooldown.
    assert_eq!(a.refresh().await, Ok(3));
    assert_eq!(server.hits(), 2);
    for k in [&rsa, &ec, &ed] {
        check(&a, &k.token()).await.unwrap();
    }
    assert_eq!(server.hits(), 2);
    assert!(format!("{a:?}").contains("keys: 3"));
}

#[tokio::test]
async fn a_rotated_in_key_is_fetched_once_and_verifies() {
    let old = TestKey::ec("2024-01");
    let new = TestKey::fresh_ec("2024-07");
    let server = KeyServer::start(&[&old]).await;
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();
    check(&a, &old.token()).await.unwrap();
    assert_eq!(server.hits(), 1);

    // The provider publishes the new key and starts signing with it.
    server.serve(&[&old, &new]);
    // Inside the cooldown of the first fetch, an unknown kid is refused without a fetch.
    assert_eq!(check(&a, &new.token()).await, invalid("unknown_kid"));
    assert_eq!(server.hits(), 1);

    clock.advance(COOLDOWN);
    check(&a, &new.token()).await.unwrap();
    assert_eq!(server.hits(), 2, "one refetch for the new kid");
    for _ in 0..10 {
        check(&a, &new.token()).await.unwrap();
        check(&a, &old.token()).await.unwrap();
    }
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_never_fetched_set_refuses_every_token() {
    let ec = TestKey::ec("e");
    let server = KeyServer::start(&[&ec]).await;
    server.set_mode(Mode::Status(500));
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();

    assert_eq!(check(&a, &ec.token()).await, invalid("jwks_unavailable"));
    assert_eq!(server.hits(), 1);
    for _ in 0..10 {
        assert_eq!(check(&a, &ec.token()).await, invalid("jwks_unavailable"));
    }
    assert_eq!(server.hits(), 1, "one attempt per cooldown");
    assert_eq!(a.refresh().await, Err(JwksError::Status(500)));

    server.serve(&[&ec]);
    clock.advance(COOLDOWN);
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn an_outage_keeps_the_last_good_set() {
    let huge = format!(
        "{{\"keys\": [], \"pad\": \"{}\"}}",
        "x".repeat(secure_routes::auth::jwks::MAX_JWKS_BYTES)
    );
    let failures = [
        (Mode::Status(500), JwksError::Status(500)),
        (Mode::Status(404), JwksError::Status(404)),
        // A redirect is not followed (the attacker endpoint is never asked).
        (Mode::Status(302), JwksError::Status(302)),
        (Mode::Body("<html>oops</html>".into()), JwksError::Malformed),
        (
            Mode::Body(r#"{"keys": []}"#.into()),
            JwksError::NoUsableKeys,
        ),
        (Mode::Body(huge), JwksError::TooLarge),
        (Mode::Hang, JwksError::Timeout),
    ];
    for (mode, error) in failures {
        let rsa = TestKey::rsa("rsa-1");
        let server = KeyServer::start(&[&rsa]).await;
        let clock = clock();
        let a = server
            .builder(&clock)
            .fetch_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        check(&a, &rsa.token()).await.unwrap();

        server.set_mode(mode);
        clock.advance(MAX_AGE);
        // The set is stale: one refetch attempt, which fails; the old keys still verify.
        check(&a, &rsa.token()).await.unwrap();
        assert_eq!(server.hits(), 2, "{error}");
        for _ in 0..5 {
            check(&a, &rsa.token()).await.unwrap();
        }
        assert_eq!(server.hits(), 2, "no retry inside the cooldown: {error}");
        clock.advance(COOLDOWN);
        check(&a, &rsa.token()).await.unwrap();
        assert_eq!(server.hits(), 3, "{error}");
        assert_eq!(a.refresh().await, Err(error.clone()));
        assert_eq!(server.attacker_hits(), 0);

        // Back up: the next attempt after the cooldown succeeds.
        server.serve(&[&rsa]);
        clock.advance(COOLDOWN);
        check(&a, &rsa.token()).await.unwrap();
        assert_eq!(server.hits(), 5, "{error}");
    }
}

/// Nothing here races a clock. While the refetch hangs, the server holds it until the test
/// lets go (the fetch timeout is the longest allowed, 60 s, and never reached), so "still
/// waiting" is a fact, not a bet on the machine's speed. That the request which made the fetch
/// gives up at the fetch timeout is then asserted as an outcome, against a server that never
/// answers, with a short timeout and a generous bound on the whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_refetch_holds_up_only_the_request_that_made_it() {
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&ec]).await;
    let clock = clock();
    let a = Arc::new(
        server
            .builder(&clock)
            .fetch_timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    check(&*a, &ec.token()).await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    server.set_mode(Mode::Held(Arc::clone(&gate)));
    clock.advance(MAX_AGE);

    let first = {
        let (a, t) = (Arc::clone(&a), ec.token());
        tokio::spawn(async move { bearer(&*a, &t).await.map(|_| ()) })
    };
    bounded("the refetch to reach the server", async {
        while server.hits() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // The refetch hangs; other requests use the last good set meanwhile, without waiting.
    bounded("requests beside the hanging refetch", async {
        for _ in 0..10 {
            check(&*a, &ec.token()).await.unwrap();
        }
    })
    .await;
    assert!(!first.is_finished(), "the first request is still waiting");
    assert_eq!(server.hits(), 2, "one fetch in flight, no second");
    // The fetch ends (503): the first request verifies with the last good set too.
    gate.add_permits(1);
    assert_eq!(bounded("the first request", first).await.unwrap(), Ok(()));
    assert_eq!(server.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refetch_that_never_answers_gives_up_at_the_fetch_timeout() {
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&ec]).await;
    let clock = clock();
    let a = Arc::new(
        server
            .builder(&clock)
            .fetch_timeout(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    check(&*a, &ec.token()).await.unwrap();
    server.set_mode(Mode::Hang);
    clock.advance(MAX_AGE);

    // The request that refetches (whichever starts first) gets no answer, gives up at the
    // fetch timeout and verifies with the last good set; so do the others.
    let first = {
        let (a, t) = (Arc::clone(&a), ec.token());
        tokio::spawn(async move { bearer(&*a, &t).await.map(|_| ()) })
    };
    for _ in 0..10 {
        bounded("a request beside the refetch", check(&*a, &ec.token()))
            .await
            .unwrap();
    }
    assert_eq!(bounded("the first request", first).await.unwrap(), Ok(()));
    assert_eq!(server.hits(), 2);
    // Why it gave up: the fetch timed out.
    assert_eq!(
        bounded("a forced refresh", a.refresh()).await,
        Err(JwksError::Timeout)
    );
    assert_eq!(server.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kid_flood_costs_one_fetch_per_cooldown() {
    let rsa = TestKey::rsa("rsa-1");
    let server = KeyServer::start(&[&rsa]).await;
    let clock = clock();
    let a = Arc::new(server.builder(&clock).build().unwrap());
    check(&*a, &rsa.token()).await.unwrap();
    assert_eq!(server.hits(), 1);

    // Tokens with random kids, signed by a key the server never heard of.
    let attacker = TestKey::fresh_ec("x");
    let flood = |a: Arc<JwksAuthenticator>| {
        let tokens: Vec<String> = (0..1000)
            .map(|_| {
                let kid = format!("{:016x}", rand::random::<u64>());
                signed(Algorithm::ES256, Some(&kid), &attacker.enc)
            })
            .collect();
        async move {
            let tasks: Vec<_> = tokens
                .into_iter()
                .map(|t| {
                    let a = Arc::clone(&a);
                    tokio::spawn(async move { bearer(&*a, &t).await.map(|_| ()) })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap(), invalid("unknown_kid"));
            }
        }
    };

    clock.advance(COOLDOWN);
    flood(Arc::clone(&a)).await;
    assert_eq!(server.hits(), 2, "1000 unknown kids, one fetch");
    flood(Arc::clone(&a)).await;
    assert_eq!(server.hits(), 2, "still inside the cooldown");
    clock.advance(COOLDOWN);
    flood(Arc::clone(&a)).await;
    assert_eq!(server.hits(), 3);
    // The real key was never disturbed.
    check(&*a, &rsa.token()).await.unwrap();
}

#[tokio::test]
async fn a_removed_key_stops_verifying_after_max_age() {
    let ec = TestKey::ec("ec-1");
    let ed = TestKey::ed("ed-1");
    let server = KeyServer::start(&[&ec, &ed]).await;
    let clock = clock();
    let a = server.builder(&clock).cache(100).build().unwrap();
    check(&a, &ed.token()).await.unwrap();
    assert_eq!(a.cached_tokens(), 1);

    // The provider retires ed-1.
    server.serve(&[&ec]);
    clock.advance(MAX_AGE - Duration::from_secs(1));
    check(&a, &ed.token()).await.unwrap();
    assert_eq!(server.hits(), 1, "the set is still fresh");

    clock.advance(Duration::from_secs(1));
    assert_eq!(check(&a, &ed.token()).await, invalid("unknown_kid"));
    assert_eq!(server.hits(), 2);
    check(&a, &ec.token()).await.unwrap();
}

#[tokio::test]
async fn cached_tokens_die_with_their_key() {
    let ec = TestKey::ec("ec-1");
    let ed = TestKey::ed("ed-1");
    let next = TestKey::fresh_ec("ec-2");
    let server = KeyServer::start(&[&ec, &ed]).await;
    let clock = clock();
    let a = server.builder(&clock).cache(100).build().unwrap();
    let token = ed.token();
    check(&a, &token).await.unwrap();
    check(&a, &token).await.unwrap();
    assert_eq!(a.cached_tokens(), 1);

    // A rotation removes ed-1; a token for the new key makes the authenticator refetch well
    // before max age. The cached verification of the ed-1 token must not outlive its key.
    server.serve(&[&ec, &next]);
    clock.advance(COOLDOWN);
    check(&a, &next.token()).await.unwrap();
    assert_eq!(server.hits(), 2);
    assert_eq!(check(&a, &token).await, invalid("unknown_kid"));

    // Dropped from the cache, not merely shadowed: only the ec-2 token's entry is left.
    assert_eq!(a.cached_tokens(), 1);
}

// ---------------------------------------------------------------------------------------------
// The token cannot choose its key or algorithm.

#[tokio::test]
async fn the_algorithm_comes_from_the_key() {
    let rsa = TestKey::rsa("rsa-1");
    let rsa_no_alg = rsa.without_alg("rsa-plain");
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&rsa, &rsa_no_alg, &ec]).await;
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();
    check(&a, &rsa.token()).await.unwrap();
    // Without `alg`, an RSA key means RS256.
    check(&a, &rsa_no_alg.token()).await.unwrap();

    let c = claims();
    let cases = [
        // Same RSA key, another RSA algorithm than the JWK says.
        (rsa.token_as(Algorithm::RS384, &c), "wrong_algorithm"),
        (rsa.token_as(Algorithm::PS256, &c), "wrong_algorithm"),
        (rsa_no_alg.token_as(Algorithm::PS256, &c), "wrong_algorithm"),
        // An EC-signed token naming the RSA key.
        (
            signed(Algorithm::ES256, Some("rsa-1"), &ec.enc),
            "wrong_algorithm",
        ),
        // HS256 with the EC public key as the HMAC secret (key confusion), naming the EC key.
        (
            signed(
                Algorithm::HS256,
                Some("ec-1"),
                &EncodingKey::from_secret(EC_PUBLIC.as_bytes()),
            ),
            "wrong_algorithm",
        ),
        // Algorithms off the allow-list.
        (rsa.token_as(Algorithm::PS512, &c), "wrong_algorithm"),
    ];
    for (token, reason) in cases {
        assert_eq!(check(&a, &token).await, invalid(reason), "{token}");
    }
    for alg in ["none", "None", "NONE", "HS256", "ES512", ""] {
        let h = base64_json(&json!({"alg": alg, "kid": "rsa-1"}));
        let t = format!("{h}.{}.", base64_json(&c));
        assert_eq!(check(&a, &t).await, invalid("wrong_algorithm"), "{alg}");
    }
    // A header without `alg`.
    let t = format!(
        "{}.{}.AAAA",
        base64_json(&json!({"kid": "rsa-1"})),
        base64_json(&c)
    );
    assert_eq!(check(&a, &t).await, invalid("wrong_algorithm"));
    assert_eq!(server.hits(), 1, "none of these caused a fetch");
}

fn base64_json(v: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn oct_keys_in_the_set_are_ignored() {
    use base64::Engine as _;
    let rsa = TestKey::rsa("rsa-1");
    let oct = json!({
        "kty": "oct", "kid": "hmac-1", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET),
    });
    let server = KeyServer::start(&[&rsa]).await;
    server.set_mode(Mode::Keys(
        json!({ "keys": [oct, rsa.jwk.clone()] }).to_string(),
        None,
    ));
    let clock = clock();
    let hs = |kid: &str| {
        signed(
            Algorithm::HS256,
            Some(kid),
            &EncodingKey::from_secret(SECRET),
        )
    };

    let a = server.builder(&clock).build().unwrap();
    assert_eq!(a.refresh().await, Ok(1), "only the RSA key is usable");
    assert_eq!(check(&a, &hs("hmac-1")).await, invalid("wrong_algorithm"));
    // Even with an HS256 secret configured, the JWKS secret is not it.
    let b = server
        .builder(&clock)
        .hs256(b"another-secret-another-secret-another")
        .build()
        .unwrap();
    assert_eq!(check(&b, &hs("hmac-1")).await, invalid("bad_signature"));
    // Claiming an asymmetric algorithm for the oct kid finds no key.
    let t = signed(Algorithm::RS256, Some("hmac-1"), &rsa.enc);
    clock.advance(COOLDOWN);
    assert_eq!(check(&a, &t).await, invalid("unknown_kid"));
}

#[tokio::test]
async fn embedded_and_remote_key_headers_are_ignored() {
    let ec = TestKey::ec("ec-1");
    let attacker = TestKey::fresh_ec("evil");
    let server = KeyServer::start(&[&ec]).await;
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();
    let attacker_url = format!("{}/attacker.json", server.base());
    let with_headers = |kid: &str, signer: &TestKey| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        h.jku = Some(attacker_url.clone());
        h.x5u = Some(attacker_url.clone());
        h.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
        h.x5c = Some(vec!["MIIBkTCB+wIJAKHHIG".into()]);
        encode(&h, &claims(), &signer.enc).unwrap()
    };

    // The attacker's key, embedded (`jwk`) and pointed to (`jku`, `x5u`), under the real kid.
    assert_eq!(
        check(&a, &with_headers("ec-1", &attacker)).await,
        invalid("bad_signature")
    );
    // Under its own kid: unknown, and only the configured URL is asked.
    clock.advance(COOLDOWN);
    assert_eq!(
        check(&a, &with_headers("evil", &attacker)).await,
        invalid("unknown_kid")
    );
    // A genuine token carrying the same headers verifies: they are ignored, not honoured.
    check(&a, &with_headers("ec-1", &ec)).await.unwrap();
    assert_eq!(server.attacker_hits(), 0, "jku/x5u never fetched");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn a_kid_is_only_a_bounded_lookup() {
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&ec]).await;
    let clock = clock();
    let a = server.builder(&clock).build().unwrap();
    check(&a, &ec.token()).await.unwrap();
    let with_kid = |kid: Option<String>| signed(Algorithm::ES256, kid.as_deref(), &ec.enc);
    assert_eq!(check(&a, &with_kid(None)).await, invalid("missing_kid"));
    assert_eq!(
        check(&a, &with_kid(Some(String::new()))).await,
        invalid("bad_kid")
    );
    let long = "k".repeat(secure_routes::auth::jwks::MAX_KID_BYTES + 1);
    assert_eq!(check(&a, &with_kid(Some(long))).await, invalid("bad_kid"));
    clock.advance(COOLDOWN);
    for kid in [
        "../../../etc/passwd",
        "https://evil.test/jwks.json",
        "ec-1/../x",
    ] {
        assert_eq!(
            check(&a, &with_kid(Some(kid.into()))).await,
            invalid("unknown_kid"),
            "{kid}"
        );
    }
    // One refetch for the unknown kids, to the configured URL only.
    assert_eq!(server.hits(), 2);
    assert_eq!(server.attacker_hits(), 0);
}

#[tokio::test]
async fn a_legacy_hs256_secret_never_meets_an_asymmetric_key() {
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&ec]).await;
    let clock = clock();
    let a = server.builder(&clock).hs256(SECRET).build().unwrap();
    let hs = |kid: Option<&str>, secret: &[u8], alg: Algorithm| {
        signed(alg, kid, &EncodingKey::from_secret(secret))
    };

    // HS256 tokens need no key set at all.
    check(&a, &hs(None, SECRET, Algorithm::HS256))
        .await
        .unwrap();
    check(&a, &hs(Some("ec-1"), SECRET, Algorithm::HS256))
        .await
        .unwrap();
    assert_eq!(server.hits(), 0);
    // A legacy-looking token carrying the EC key's kid, MACed with the EC public key.
    assert_eq!(
        check(
            &a,
            &hs(Some("ec-1"), EC_PUBLIC.as_bytes(), Algorithm::HS256)
        )
        .await,
        invalid("bad_signature")
    );
    assert_eq!(
        check(&a, &hs(None, SECRET, Algorithm::HS384)).await,
        invalid("wrong_algorithm")
    );
    // Asymmetric tokens go to the JWKS.
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn cache_control_sets_the_lifetime_within_bounds() {
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&ec]).await;
    server.set_mode(Mode::Keys(set(&[&ec]), Some("public, max-age=5")));
    let clock = clock();
    let a = server
        .builder(&clock)
        .cache_control(Duration::from_secs(60), Duration::from_secs(3600))
        .build()
        .unwrap();
    check(&a, &ec.token()).await.unwrap();
    // max-age=5 is raised to the 60 s floor.
    clock.advance(Duration::from_secs(59));
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 1);
    clock.advance(Duration::from_secs(1));
    server.set_mode(Mode::Keys(set(&[&ec]), Some("max-age=31536000")));
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 2);
    // A year is cut to the one-hour ceiling.
    clock.advance(Duration::from_secs(3599));
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 2);
    clock.advance(Duration::from_secs(1));
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 3);
    // Without the header, max_age applies.
    server.serve(&[&ec]);
    clock.advance(Duration::from_secs(3600));
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 4);
    clock.advance(MAX_AGE - Duration::from_secs(1));
    check(&a, &ec.token()).await.unwrap();
    assert_eq!(server.hits(), 4);
}

#[tokio::test]
async fn https_goes_through_rustls_and_fails_closed() {
    let ec = TestKey::ec("ec-1");
    let server = KeyServer::start(&[&ec]).await;
    let clock = clock();
    // The server speaks plain HTTP: the TLS handshake fails, nothing is trusted.
    let url = server.url().replace("http://", "https://");
    let a = JwksAuthenticator::builder(url)
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    assert!(matches!(a.refresh().await, Err(JwksError::Transport(_))));
    assert_eq!(check(&a, &ec.token()).await, invalid("jwks_unavailable"));
}

#[tokio::test]
async fn configuration_is_validated_without_network() {
    let server = KeyServer::start(&[]).await;
    let clock = clock();
    let err = server
        .builder(&clock)
        .cooldown(Duration::ZERO)
        .max_age(Duration::from_secs(365 * 86_400))
        .fetch_timeout(Duration::ZERO)
        .cache_control(Duration::from_secs(10), Duration::from_secs(5))
        .leeway(Duration::from_secs(3600))
        .cache(0)
        .hs256(b"short")
        .issuer("")
        .build()
        .unwrap_err();
    assert_eq!(err.problems().len(), 8, "{err}");
    assert!(!err.to_string().contains("short"), "no secret in errors");
    for (url, ok) in [
        ("https://idp.example/jwks.json", true),
        ("http://idp.example/jwks.json", false),
        ("not a url", false),
        ("https://u:p@idp.example/jwks.json", false),
    ] {
        assert_eq!(JwksAuthenticator::builder(url).build().is_ok(), ok, "{url}");
    }
    assert!(
        JwksAuthenticator::builder("https://idp.example/jwks.json")
            .hs256(SECRET)
            .hs256(SECRET)
            .build()
            .is_err()
    );
    assert_eq!(server.hits(), 0);
}
