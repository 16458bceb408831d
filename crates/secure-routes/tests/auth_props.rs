//! Authentication: the JWT attack catalogue, every supported algorithm, and property tests.
//!
//! * `alg: none` in any casing, HS/RS algorithm confusion and cross-algorithm tokens are
//!   refused; so are expired, not-yet-valid, wrong-issuer, wrong-audience and exp-less tokens.
//! * Valid tokens are accepted from the `Authorization` header (not ambient) and from the
//!   session cookie (ambient: CSRF applies).
//! * Flipping any bit of any byte of a valid token (header, payload or signature) never yields
//!   a principal; arbitrary `Authorization` and `Cookie` values never panic and never pass.
//! * API keys: only the configured keys pass, whatever else is presented.
//!
//! The PEM keys (`secure_routes_testkit::keys`) are throwaway test keys.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use proptest::prelude::*;
use secure_routes::auth::api_key::ApiKeyAuthenticator;
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes_testkit::keys::{
    EC_PRIVATE, EC_PUBLIC, ED_PRIVATE, ED_PUBLIC, RSA_PRIVATE, RSA_PUBLIC,
};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &[u8] = b"auth-props-secret-auth-props-secret!";

fn now() -> u64 {
    get_current_timestamp()
}

fn hs256() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .hs256(SECRET)
        .cookie("sr-session")
        .build()
        .unwrap()
}

fn sign_hs256(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn valid_claims() -> Value {
    json!({"sub": "alice", "exp": now() + 300, "iat": now(), "role": "admin"})
}

fn parts(headers: &[(&str, &[u8])]) -> Option<Parts> {
    let mut req = Request::new(());
    for (k, v) in headers {
        let v = HeaderValue::from_bytes(v).ok()?;
        req.headers_mut()
            .append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v);
    }
    Some(req.into_parts().0)
}

/// Runs an authenticator on a request with `headers`; the futures are always ready.
fn run(a: &dyn Authenticator, headers: &[(&str, &[u8])]) -> Option<Result<Principal, AuthError>> {
    let p = parts(headers)?;
    Some(futures_util::FutureExt::now_or_never(a.authenticate(&p)).expect("ready"))
}

fn bearer(a: &dyn Authenticator, token: &str) -> Result<Principal, AuthError> {
    run(
        a,
        &[("authorization", format!("Bearer {token}").as_bytes())],
    )
    .unwrap()
}

fn cookie(a: &dyn Authenticator, token: &str) -> Result<Principal, AuthError> {
    run(a, &[("cookie", format!("sr-session={token}").as_bytes())]).unwrap()
}

/// A token with an arbitrary header, the given claims and an arbitrary signature segment.
fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[test]
fn valid_token_from_header_is_not_ambient() {
    let p = bearer(&hs256(), &sign_hs256(&valid_claims())).unwrap();
    assert_eq!(p.subject(), "alice");
    assert_eq!(p.source(), CredentialSource::Header);
    assert!(!p.is_ambient());
    assert_eq!(p.claim("role"), Some(&json!("admin")));
}

#[test]
fn valid_token_from_cookie_is_ambient() {
    let p = cookie(&hs256(), &sign_hs256(&valid_claims())).unwrap();
    assert_eq!(p.subject(), "alice");
    assert_eq!(p.source(), CredentialSource::Cookie);
    assert!(p.is_ambient());
}

#[test]
fn alg_none_is_refused_in_every_casing() {
    let a = hs256();
    for alg in ["none", "None", "NONE", "nOnE", "none ", ""] {
        for sig in ["", "e30", "AAAA"] {
            let t = forge(&json!({"alg": alg, "typ": "JWT"}), &valid_claims(), sig);
            assert_eq!(
                bearer(&a, &t).unwrap_err(),
                AuthError::Invalid("wrong_algorithm"),
                "{alg:?}"
            );
            assert_eq!(
                cookie(&a, &t).unwrap_err(),
                AuthError::Invalid("wrong_algorithm")
            );
        }
        // Without a signature segment at all.
        let two = forge(&json!({"alg": alg}), &valid_claims(), "");
        let two = two.trim_end_matches('.');
        assert_eq!(
            bearer(&a, two).unwrap_err(),
            AuthError::Invalid("malformed")
        );
    }
}

#[test]
fn hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion attack: the public key is public, so an attacker can HMAC with it.
    let rs = JwtAuthenticator::builder()
        .rs256_pem(RSA_PUBLIC)
        .build()
        .unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &valid_claims(),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        bearer(&rs, &forged).unwrap_err(),
        AuthError::Invalid("wrong_algorithm")
    );

    // Same HMAC, but the header claims RS256: the RSA verification fails.
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(valid_claims().to_string());
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(RSA_PUBLIC.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    assert_eq!(
        bearer(&rs, &format!("{header}.{payload}.{sig}")).unwrap_err(),
        AuthError::Invalid("bad_signature")
    );
}

#[test]
fn every_asymmetric_algorithm_round_trips_and_is_pinned() {
    let rs = JwtAuthenticator::builder()
        .rs256_pem(RSA_PUBLIC)
        .build()
        .unwrap();
    let es = JwtAuthenticator::builder()
        .es256_pem(EC_PUBLIC)
        .build()
        .unwrap();
    let ed = JwtAuthenticator::builder()
        .eddsa_pem(ED_PUBLIC)
        .build()
        .unwrap();
    let tokens = [
        (
            "RS256",
            sign_with(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
                &valid_claims(),
            ),
        ),
        (
            "ES256",
            sign_with(
                Algorithm::ES256,
                &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
                &valid_claims(),
            ),
        ),
        (
            "EdDSA",
            sign_with(
                Algorithm::EdDSA,
                &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
                &valid_claims(),
            ),
        ),
        ("HS256", sign_hs256(&valid_claims())),
    ];
    let hs = hs256();
    let auths: [(&str, &JwtAuthenticator); 4] = [
        ("RS256", &rs),
        ("ES256", &es),
        ("EdDSA", &ed),
        ("HS256", &hs),
    ];
    for (auth_alg, auth) in auths {
        assert_eq!(auth.algorithm(), auth_alg);
        for (token_alg, token) in &tokens {
            let got = bearer(auth, token);
            if auth_alg == *token_alg {
                assert_eq!(got.unwrap().subject(), "alice", "{auth_alg}");
            } else {
                assert_eq!(
                    got.unwrap_err(),
                    AuthError::Invalid("wrong_algorithm"),
                    "{token_alg} token on {auth_alg}"
                );
            }
        }
    }
    // A private key where the public one belongs is a configuration error.
    assert!(
        JwtAuthenticator::builder()
            .rs256_pem(RSA_PRIVATE)
            .build()
            .is_err()
    );
    // So is a key of the wrong type.
    assert!(
        JwtAuthenticator::builder()
            .rs256_pem(EC_PUBLIC)
            .build()
            .is_err()
    );
    // And minting needs an HMAC key.
    assert!(rs.mint("alice", Duration::from_secs(60)).is_err());
}

#[test]
fn claim_validation_through_the_header() {
    let a = JwtAuthenticator::builder()
        .hs256(SECRET)
        .issuer("https://issuer.example")
        .audience("authenticated")
        .leeway(Duration::from_secs(10))
        .build()
        .unwrap();
    let n = now();
    let base = |extra: Value| {
        let mut c = json!({"sub": "alice", "exp": n + 300, "iss": "https://issuer.example", "aud": "authenticated"});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        sign_hs256(&c)
    };
    let cases: &[(Value, Result<(), &str>)] = &[
        (json!({}), Ok(())),
        (json!({"exp": n - 3600}), Err("expired")),
        (json!({"exp": n - 11}), Err("expired")),
        (json!({"exp": n - 5}), Ok(())), // inside the 10 s leeway
        (json!({"exp": null}), Err("missing_exp")),
        (json!({"nbf": n + 3600}), Err("not_yet_valid")),
        (json!({"nbf": n + 5}), Ok(())),
        (json!({"nbf": n - 60}), Ok(())),
        (json!({"iss": "https://evil.example"}), Err("bad_issuer")),
        (json!({"iss": null}), Err("missing_iss")),
        (json!({"aud": "anon"}), Err("bad_audience")),
        (json!({"aud": ["x", "authenticated"]}), Ok(())),
        (json!({"aud": []}), Err("bad_audience")),
        (json!({"aud": null}), Err("missing_aud")),
        (json!({"sub": null}), Err("missing_sub")),
        (json!({"sub": ""}), Err("missing_sub")),
        // jsonwebtoken cannot even read the claims set then.
        (json!({"sub": {"id": 1}}), Err("malformed")),
    ];
    for (extra, want) in cases {
        let got = bearer(&a, &base(extra.clone())).map(|_| ());
        assert_eq!(got, want.map_err(AuthError::Invalid), "{extra}");
    }
}

#[test]
fn failure_reasons_never_contain_the_token() {
    let a = hs256();
    let t = sign_hs256(&json!({"sub": "alice", "exp": 1}));
    let err = bearer(&a, &t).unwrap_err();
    assert_eq!(err, AuthError::Invalid("expired"));
    assert!(!err.to_string().contains(&t[..20]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every bit of every byte: header, payload, dots and signature.
    #[test]
    fn any_flipped_bit_is_refused(pos_seed in any::<usize>(), bit in 0u8..8) {
        let a = hs256();
        let token = sign_hs256(&valid_claims());
        let mut bytes = token.into_bytes();
        let pos = pos_seed % bytes.len();
        bytes[pos] ^= 1 << bit;
        let text = String::from_utf8_lossy(&bytes);
        prop_assert!(a.verify(&text).is_err());
        let mut header = b"Bearer ".to_vec();
        header.extend_from_slice(&bytes);
        if let Some(r) = run(&a, &[("authorization", &header)]) {
            prop_assert!(r.is_err());
        }
        let mut c = b"sr-session=".to_vec();
        c.extend_from_slice(&bytes);
        if let Some(r) = run(&a, &[("cookie", &c)]) {
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn arbitrary_credentials_never_pass_or_panic(
        auth in proptest::collection::vec(any::<u8>(), 0..300),
        cookie in proptest::collection::vec(any::<u8>(), 0..300),
        scheme in prop_oneof![Just(&b""[..]), Just(&b"Bearer "[..]), Just(&b"bearer  "[..])],
    ) {
        let a = hs256();
        let mut header = scheme.to_vec();
        header.extend_from_slice(&auth);
        let mut c = b"sr-session=".to_vec();
        c.extend_from_slice(&cookie);
        for hs in [
            vec![("authorization", &header[..])],
            vec![("cookie", &c[..])],
            vec![("cookie", &cookie[..])],
            vec![("authorization", &header[..]), ("cookie", &c[..])],
        ] {
            if let Some(r) = run(&a, &hs) {
                prop_assert!(r.is_err());
            }
        }
        prop_assert!(a.verify(&String::from_utf8_lossy(&auth)).is_err());
    }

    /// Structurally plausible tokens with arbitrary segments (right alphabet, right shape).
    #[test]
    fn plausible_garbage_never_passes(
        h in "[A-Za-z0-9_-]{0,60}",
        p in "[A-Za-z0-9_-]{0,120}",
        s in "[A-Za-z0-9_-]{0,64}",
    ) {
        let a = hs256();
        let token = format!("{h}.{p}.{s}");
        prop_assert!(bearer(&a, &token).is_err());
        // A well-formed HS256 header with random payload and signature.
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let token = format!("{h}.{p}.{s}");
        prop_assert!(bearer(&a, &token).is_err());
    }

    /// Correctly signed, unexpired: accepted exactly when `sub` is a non-empty string, and the
    /// subject is `sub`, byte for byte.
    #[test]
    fn subject_is_sub_exactly(sub in any::<String>()) {
        let a = hs256();
        let t = sign_hs256(&json!({"sub": sub, "exp": now() + 300}));
        match bearer(&a, &t) {
            Ok(p) => prop_assert_eq!(p.subject(), sub.as_str()),
            Err(e) => {
                prop_assert!(sub.is_empty());
                prop_assert_eq!(e, AuthError::Invalid("missing_sub"));
            }
        }
    }

    #[test]
    fn only_configured_api_keys_pass(
        presented in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let keys = ApiKeyAuthenticator::builder("x-api-key")
            .key("one", "key-one-0123456789")
            .key("two", "key-two-0123456789")
            .build()
            .unwrap();
        if let Some(r) = run(&keys, &[("x-api-key", &presented)]) {
            let trimmed = presented.trim_ascii();
            match r {
                Ok(p) => {
                    prop_assert!(trimmed == b"key-one-0123456789" || trimmed == b"key-two-0123456789");
                    prop_assert_eq!(p.source(), CredentialSource::ApiKey);
                }
                Err(e) => prop_assert!(matches!(e, AuthError::Invalid(_))),
            }
        }
        // The real keys, with one byte changed, never pass.
        let mut k = b"key-one-0123456789".to_vec();
        if let Some(&b) = presented.first() {
            let i = usize::from(b) % k.len();
            k[i] ^= 1 | (b & 0x7e);
            if let Some(r) = run(&keys, &[("x-api-key", &k)]) {
                prop_assert!(r.is_err());
            }
        }
    }
}

#[test]
fn api_keys_work_and_are_not_ambient() {
    let keys = ApiKeyAuthenticator::builder("x-api-key")
        .key("one", "key-one-0123456789")
        .build()
        .unwrap();
    let p = run(&keys, &[("x-api-key", b"key-one-0123456789")])
        .unwrap()
        .unwrap();
    assert_eq!(p.subject(), "one");
    assert!(!p.is_ambient());
    assert_eq!(run(&keys, &[]).unwrap().unwrap_err(), AuthError::Missing);
}
