//! The assertion as an upstream sees it: verified with jsonwebtoken (an implementation apart
//! from the signer's) using only the JWK Set the gateway serves, with audience and issuer
//! checked.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secure_routes::auth::{CredentialSource, Principal};
use secure_routes::clock::{Clock, FakeClock, SystemClock};
use secure_routes_gateway::identity::{Assertion, AssertionSigner, ISSUER};
use serde_json::{Value, json};

const UPSTREAM: &str = "http://127.0.0.1:3000";

/// What an upstream does: key from the served JWKS by `kid`, ES256 only, `aud` and `iss`
/// required and checked, no leeway (so "expired" means expired).
fn verify(jwks: &[u8], token: &str, audience: &str) -> Result<Value, ErrorKind> {
    let set: JwkSet = serde_json::from_slice(jwks).expect("the served JWKS parses");
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.into_kind())?;
    let jwk = header
        .kid
        .as_deref()
        .and_then(|kid| set.find(kid))
        .ok_or(ErrorKind::InvalidKeyFormat)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.into_kind())?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
    validation.validate_nbf = true;
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.into_kind())
}

/// A signer whose clock is `offset` away from the system clock jsonwebtoken validates with.
fn signer_at(offset_secs: i64) -> AssertionSigner {
    let now = SystemClock.now();
    let at = if offset_secs < 0 {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    } else {
        now + Duration::from_secs(offset_secs.unsigned_abs())
    };
    AssertionSigner::generate()
        .expect("key")
        .with_clock(Arc::new(FakeClock::new(at)))
}

fn alice() -> Principal {
    let claims = json!({
        "role": "authenticated",
        "roles": ["editor"],
        "app_metadata": {"roles": ["admin", "editor"]},
        "user_metadata": {"role": "owner"},
    });
    Principal::new("alice", CredentialSource::Cookie)
        .with_claims(claims.as_object().cloned().unwrap_or_default())
}

fn assertion<'a>(principal: Option<&'a Principal>) -> Assertion<'a> {
    Assertion {
        audience: UPSTREAM,
        principal,
        request_id: "req-42",
    }
}

#[test]
fn verifies_with_only_the_served_jwks() {
    let clock = FakeClock::new(SystemClock.now());
    let signer = AssertionSigner::generate()
        .expect("key")
        .with_clock(Arc::new(clock.clone()));
    let p = alice();
    let token = signer.sign(&assertion(Some(&p))).expect("sign");

    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert_eq!(header.kid.as_deref(), Some(signer.kid()));

    let claims = verify(&signer.jwks_json(), &token, UPSTREAM).expect("verifies");
    let now = clock.now().as_secs();
    assert_eq!(claims["iss"], "secure-routes");
    assert_eq!(claims["aud"], UPSTREAM);
    assert_eq!(claims["sub"], "alice");
    // Roles as authz reads them, each once; never user_metadata.
    assert_eq!(claims["roles"], json!(["authenticated", "editor", "admin"]));
    assert_eq!(claims["rid"], "req-42");
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["exp"], now + 60);
    let jti = claims["jti"].as_str().expect("jti");
    let again = verify(
        &signer.jwks_json(),
        &signer.sign(&assertion(Some(&p))).expect("sign"),
        UPSTREAM,
    )
    .expect("verifies");
    assert_ne!(
        again["jti"].as_str(),
        Some(jti),
        "jti is fresh per assertion"
    );
}

#[test]
fn anonymous_has_no_subject_and_no_roles() {
    let signer = signer_at(0);
    let token = signer.sign(&assertion(None)).expect("sign");
    let claims = verify(&signer.jwks_json(), &token, UPSTREAM).expect("verifies");
    assert!(claims.get("sub").is_none(), "{claims}");
    assert_eq!(claims["roles"], json!([]));
    assert_eq!(claims["rid"], "req-42");
}

#[test]
fn wrong_audience_fails() {
    let signer = signer_at(0);
    let token = signer.sign(&assertion(None)).expect("sign");
    assert_eq!(
        verify(&signer.jwks_json(), &token, "http://127.0.0.1:4000"),
        Err(ErrorKind::InvalidAudience)
    );
}

#[test]
fn expired_after_sixty_seconds() {
    // Signed 61 s ago: exp is one second in the past.
    let signer = signer_at(-61);
    let token = signer.sign(&assertion(None)).expect("sign");
    assert_eq!(
        verify(&signer.jwks_json(), &token, UPSTREAM),
        Err(ErrorKind::ExpiredSignature)
    );
    // Signed 59 s ago it still holds: the lifetime is 60 s, not less.
    let signer = signer_at(-59);
    let token = signer.sign(&assertion(None)).expect("sign");
    assert!(verify(&signer.jwks_json(), &token, UPSTREAM).is_ok());
}

#[test]
fn not_valid_before_it_was_signed() {
    let signer = signer_at(120);
    let token = signer.sign(&assertion(None)).expect("sign");
    assert_eq!(
        verify(&signer.jwks_json(), &token, UPSTREAM),
        Err(ErrorKind::ImmatureSignature)
    );
}

#[test]
fn tampered_assertions_fail() {
    let signer = signer_at(0);
    let p = Principal::new("alice", CredentialSource::Header);
    let token = signer.sign(&assertion(Some(&p))).expect("sign");
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    // The payload rewritten to another subject, signature kept.
    let forged_claims = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = json!("admin");
        b64.encode(claims.to_string())
    };
    let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    assert_eq!(
        verify(&signer.jwks_json(), &forged, UPSTREAM),
        Err(ErrorKind::InvalidSignature)
    );

    // One signature character changed.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[10] = if sig[10] == 'A' { 'B' } else { 'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.iter().collect::<String>()
    );
    assert!(verify(&signer.jwks_json(), &flipped, UPSTREAM).is_err());

    // Signed by another gateway's key: its kid is not in this JWKS.
    let other = signer_at(0).sign(&assertion(Some(&p))).expect("sign");
    assert_eq!(
        verify(&signer.jwks_json(), &other, UPSTREAM),
        Err(ErrorKind::InvalidKeyFormat)
    );
}

#[test]
fn two_signers_have_different_kids() {
    let (a, b) = (signer_at(0), signer_at(0));
    assert_ne!(a.kid(), b.kid());
    assert_ne!(a.jwks_json(), b.jwks_json());
}

#[test]
fn pem_round_trip_keeps_the_key() {
    let original = signer_at(0);
    let pem = original.to_pkcs8_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
    let loaded = AssertionSigner::from_pem(&pem).expect("loads");
    assert_eq!(loaded.kid(), original.kid());
    assert_eq!(loaded.jwks_json(), original.jwks_json());
    // What the loaded key signs verifies against the original's JWKS: instances sharing a key
    // are interchangeable behind a load balancer.
    let token = loaded.sign(&assertion(None)).expect("sign");
    assert!(verify(&original.jwks_json(), &token, UPSTREAM).is_ok());
}

/// The testkit's P-256 key as `openssl genpkey` writes it (PKCS#8) and as `openssl ec` writes
/// it (SEC1) load to one kid, the RFC 7638 thumbprint of its public key as jsonwebtoken computes
/// it from the public PEM; a P-384 key is refused without its bytes in the error.
#[test]
fn loads_openssl_keys() {
    let pkcs8 = AssertionSigner::from_pem(secure_routes_testkit::keys::EC_PRIVATE).expect("pkcs8");
    let sec1 = AssertionSigner::from_pem(include_str!("data/testkit-ec-sec1.pem")).expect("sec1");
    assert_eq!(pkcs8.kid(), sec1.kid());
    let public = DecodingKey::from_ec_pem(secure_routes_testkit::keys::EC_PUBLIC.as_bytes())
        .expect("public pem");
    let jwk =
        jsonwebtoken::jwk::Jwk::from_decoding_key(&public, Some(Algorithm::ES256)).expect("jwk");
    let thumbprint = jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .expect("thumbprint");
    assert_eq!(pkcs8.kid(), thumbprint);

    let err = AssertionSigner::from_pem(include_str!("data/p384-private.pem"))
        .expect_err("P-384 is not ES256");
    assert!(err.to_string().contains("P-256"), "{err}");
    assert!(!err.to_string().contains("MI"), "{err}");
}
