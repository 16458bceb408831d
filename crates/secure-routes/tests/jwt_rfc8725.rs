//! Adversarial JWT cases from RFC 8725 (JSON Web Token Best Current Practices), each with its
//! precise outcome: a `401` through the whole pipeline for a few representative attacks, and
//! the exact [`AuthError::Invalid`] reason at the authenticator for the rest. Nothing panics.
//!
//! `auth_props.rs` already covers the basic `alg: none` forms on HS256, the PEM-as-HMAC-secret
//! confusion on RS256, real tokens of one algorithm presented to another, simple claim checks
//! and random inputs; this file goes further:
//!
//! * `none` on every algorithm, with an empty, a garbage and a *valid* HMAC signature.
//! * Key confusion with every encoding of every public key (PEM, PEM without its newline, SPKI
//!   DER, PKCS#1 DER) and every HMAC size; signatures of one key family under another's `alg`.
//! * `kid`, `jwk`, `jku`, `x5u`, `x5c` never select a key: the key is pinned by configuration.
//! * `exp`/`nbf` of every JSON type and size; `iss`/`aud` of every type, configured or not.
//! * Duplicate members in the header and the claims (parser differentials).
//! * Segment encodings (padding, standard alphabet, whitespace, non-canonical trailing bits,
//!   bytes outside base64url), segment counts, size limits, nesting depth.
//! * `Authorization` header forms (RFC 9110 §11), non-UTF-8 bytes, cookies.
//! * `crit` (RFC 7515 §4.1.11) and `typ` (RFC 8725 §3.11).
//!
//! What happens with duplicate members, decided and asserted here: a duplicated registered claim
//! (`exp`, `nbf`, `sub`, `iss`, `aud`) or header member (`alg`, `kid`, ...) makes the token
//! `malformed`, because jsonwebtoken reads those into structs that refuse duplicate fields. A
//! duplicated private claim (say `role`) is read last-one-wins, consistently: the principal
//! exposes exactly one value, and only the key holder could have signed the token.
//!
//! (Four cases were first written as `#[ignore]`d known gaps; the verifier now refuses them.) Each says why and
//! what the fix is. The PEM keys are throwaway test keys (see `crates/secure-routes-testkit/keys/README.md`).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures_util::FutureExt as _;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, get_current_timestamp};
use secure_routes::auth::jwt::{JwtAuthenticator, MAX_TOKEN_BYTES};
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes::{AuthMode, Policy, Security};
use secure_routes_testkit::keys::{
    EC_PRIVATE, EC_PUBLIC, ED_PRIVATE, ED_PUBLIC, RSA_PRIVATE, RSA_PUBLIC,
};
use serde_json::json;
use tower::ServiceExt;

const SECRET: &[u8] = b"rfc8725-secret-rfc8725-secret-rfc8725!";

/// The attacker's own P-256 key (throwaway, generated for this test with `openssl genpkey`):
/// used to sign tokens that carry it in a `jwk` header or point at it with `jku`/`x5u`.
const ATTACKER_EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUzGf2FKdTGKB5Lvl
KTmG2sOI+iW2vx4ckBmbjlrv2+WhRANCAAQ6r/ru2t4awIbrThEimVHbtruDB27m
k702IVMFlYDrYgL3W+VVM3jvvsGwcYpyZP0E4oRVsnR/ZKZxxNcgfFst
-----END PRIVATE KEY-----
";
const ATTACKER_EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEOq/67treGsCG604RIplR27a7gwdu
5pO9NiFTBZWA62IC91vlVTN4777BsHGKcmT9BOKEVbJ0f2SmccTXIHxbLQ==
-----END PUBLIC KEY-----
";

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "authenticated";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn now() -> u64 {
    get_current_timestamp()
}

/// HS256 with `SECRET`, no issuer or audience, tokens also read from the `sr-session` cookie.
fn hs() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .hs256(SECRET)
        .cookie("sr-session")
        .build()
        .unwrap()
}

/// HS256 with `SECRET`, [`ISSUER`] and [`AUDIENCE`] required.
fn hs_iss_aud() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .hs256(SECRET)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .build()
        .unwrap()
}

fn rs() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .rs256_pem(RSA_PUBLIC)
        .build()
        .unwrap()
}

fn es() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .es256_pem(EC_PUBLIC)
        .build()
        .unwrap()
}

fn ed() -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .eddsa_pem(ED_PUBLIC)
        .build()
        .unwrap()
}

/// Every authenticator kind, by pinned algorithm name.
fn all_authenticators() -> [(&'static str, JwtAuthenticator); 4] {
    [
        ("HS256", hs()),
        ("RS256", rs()),
        ("ES256", es()),
        ("EdDSA", ed()),
    ]
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The DER bytes inside a PEM (its base64 body).
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// Signs `input` (`header.payload`) with `key` under `alg`; the base64url signature.
fn sig(alg: Algorithm, key: &EncodingKey, input: &str) -> String {
    // Building an authenticator installs the crypto provider jsonwebtoken signs with.
    let _ = hs();
    jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap()
}

/// An HMAC signature of `input` keyed with arbitrary bytes (the attacker's guess at a secret).
fn hmac(alg: Algorithm, key: &[u8], input: &str) -> String {
    sig(alg, &EncodingKey::from_secret(key), input)
}

/// `header.payload.signature` from raw JSON *texts* (so duplicate members, odd numbers and
/// escapes survive exactly as written), signed with `key` under `alg`.
fn token_with(alg: Algorithm, key: &EncodingKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let s = sig(alg, key, &input);
    format!("{input}.{s}")
}

/// Same, HS256 with the real `SECRET`: the signer is honest, so only parsing and claim
/// validation can refuse the token.
fn signed(header: &str, payload: &str) -> String {
    token_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET),
        header,
        payload,
    )
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// A valid claims set as JSON text, with `extra` members (raw JSON, leading comma included by
/// the caller's convention: pass `""` or `,"k":v`).
fn claims(extra: &str) -> String {
    format!(r#"{{"sub":"alice","exp":{}{extra}}}"#, now() + 300)
}

/// `Ok` or the expected [`AuthError::Invalid`] reason.
type Want = Result<(), &'static str>;

/// Request headers: name and value.
type Headers = Vec<(&'static str, String)>;

/// The authenticator's verdict on `token`, compared with `want` (`Ok` or the reason).
#[track_caller]
fn expect(a: &JwtAuthenticator, token: &str, want: Want, what: &str) {
    let got = a.verify(token).map(|_| ());
    assert_eq!(got, want.map_err(AuthError::Invalid), "{what}");
}

/// A request head with `headers` (raw bytes; the test builds only values `http` accepts).
fn parts(headers: &[(&str, &[u8])]) -> Parts {
    let mut req = Request::new(());
    for (k, v) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_bytes(v).unwrap(),
        );
    }
    req.into_parts().0
}

/// `authenticate` on a request with `headers` (the JWT authenticator's future is always ready).
fn run(a: &dyn Authenticator, headers: &[(&str, &[u8])]) -> Result<Principal, AuthError> {
    let p = parts(headers);
    a.authenticate(&p).now_or_never().expect("ready")
}

// ---------------------------------------------------------------------------------------------
// RFC 8725 §2.1, §3.1: algorithm verification
// ---------------------------------------------------------------------------------------------

#[test]
fn alg_none_in_every_casing_is_refused_by_every_authenticator() {
    let payload = b64(claims(""));
    for (name, a) in all_authenticators() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
            let input = format!("{header}.{payload}");
            // Empty (the RFC 7519 §6 unsecured form), garbage, and a genuine HMAC under the
            // real secret: `none` is never an algorithm, whatever follows.
            let valid_hmac = hmac(Algorithm::HS256, SECRET, &input);
            for signature in ["", "AAAA", "e30", valid_hmac.as_str()] {
                expect(
                    &a,
                    &format!("{input}.{signature}"),
                    Err("wrong_algorithm"),
                    &format!("{name}: alg {alg:?}, signature {signature:?}"),
                );
            }
            // Without the signature segment at all.
            expect(
                &a,
                &input,
                Err("malformed"),
                &format!("{name}: {alg:?}, 2 segments"),
            );
        }
    }
}

#[test]
fn only_the_exact_pinned_algorithm_name_passes_the_header_check() {
    let payload = b64(claims(""));
    let names = [
        "HS256",
        "HS384",
        "HS512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "ES256K",
        "EdDSA",
        "Ed25519",
        "ED25519",
        "eddsa",
        "rs256",
        "hs256",
        "RS256 ",
        " RS256",
        "RS256\u{0}",
        "HS256\u{200b}",
        "",
    ];
    for (pinned, a) in all_authenticators() {
        for alg in names {
            let t = format!("{}.{payload}.AAAA", b64(json!({"alg": alg}).to_string()));
            // The right name with a garbage signature gets as far as the signature check.
            let want = if alg == pinned {
                Err("bad_signature")
            } else {
                Err("wrong_algorithm")
            };
            expect(&a, &t, want, &format!("{alg:?} on {pinned}"));
        }
        // `alg` of another JSON type, or absent.
        for header in [
            json!({"alg": null}),
            json!({"alg": 256}),
            json!({"alg": [pinned]}),
            json!({"alg": {"name": pinned}}),
            json!({"typ": "JWT"}),
        ] {
            let t = format!("{}.{payload}.AAAA", b64(header.to_string()));
            expect(
                &a,
                &t,
                Err("wrong_algorithm"),
                &format!("{header} on {pinned}"),
            );
        }
    }
}

/// The public key is public: an attacker can HMAC with it (RFC 8725 §2.1). Every encoding an
/// HMAC verifier might be handed, every HMAC size, every asymmetric authenticator.
#[test]
fn public_key_as_hmac_secret_is_refused_in_every_encoding() {
    let rsa_spki = pem_der(RSA_PUBLIC);
    // SubjectPublicKeyInfo of a 2048-bit key: 24 bytes of algorithm and BIT STRING framing,
    // then the PKCS#1 RSAPublicKey (a SEQUENCE).
    assert_eq!(rsa_spki[24], 0x30, "PKCS#1 RSAPublicKey starts at byte 24");
    let rsa_pkcs1 = rsa_spki[24..].to_vec();
    let cases: [(&str, JwtAuthenticator, Vec<Vec<u8>>); 3] = [
        (
            "RS256",
            rs(),
            vec![
                RSA_PUBLIC.as_bytes().to_vec(),
                RSA_PUBLIC.trim_end().as_bytes().to_vec(),
                rsa_spki.clone(),
                rsa_pkcs1,
            ],
        ),
        (
            "ES256",
            es(),
            vec![
                EC_PUBLIC.as_bytes().to_vec(),
                EC_PUBLIC.trim_end().as_bytes().to_vec(),
                pem_der(EC_PUBLIC),
            ],
        ),
        (
            "EdDSA",
            ed(),
            vec![
                ED_PUBLIC.as_bytes().to_vec(),
                ED_PUBLIC.trim_end().as_bytes().to_vec(),
                pem_der(ED_PUBLIC),
            ],
        ),
    ];
    let payload = b64(claims(""));
    for (pinned, a, secrets) in cases {
        for (i, secret) in secrets.iter().enumerate() {
            for (hs, name) in [
                (Algorithm::HS256, "HS256"),
                (Algorithm::HS384, "HS384"),
                (Algorithm::HS512, "HS512"),
            ] {
                // Honest about being HMAC: the pinned algorithm refuses it before any key use.
                let header = b64(json!({"alg": name, "typ": "JWT"}).to_string());
                let input = format!("{header}.{payload}");
                let t = format!("{input}.{}", hmac(hs, secret, &input));
                expect(
                    &a,
                    &t,
                    Err("wrong_algorithm"),
                    &format!("{pinned}: {name}, key #{i}"),
                );

                // Claiming the pinned algorithm with an HMAC value: the real verifier fails.
                let header = b64(json!({"alg": pinned, "typ": "JWT"}).to_string());
                let input = format!("{header}.{payload}");
                let t = format!("{input}.{}", hmac(hs, secret, &input));
                expect(
                    &a,
                    &t,
                    Err("bad_signature"),
                    &format!("{pinned} header with {name} MAC, key #{i}"),
                );
            }
        }
    }
}

/// A header naming the pinned algorithm over a signature made by another key family (same
/// length where possible: ES256 and Ed25519 signatures are both 64 bytes).
#[test]
fn signature_of_another_key_family_under_the_pinned_alg_is_bad_signature() {
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let edk = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let hmac_key = EncodingKey::from_secret(SECRET);
    let payload = b64(claims(""));
    let signers: [(&str, Algorithm, &EncodingKey); 4] = [
        ("RS256", Algorithm::RS256, &rsa),
        ("ES256", Algorithm::ES256, &ec),
        ("EdDSA", Algorithm::EdDSA, &edk),
        ("HS256", Algorithm::HS256, &hmac_key),
    ];
    for (pinned, a) in all_authenticators() {
        let input = format!("{}.{payload}", b64(json!({"alg": pinned}).to_string()));
        for (signer, alg, key) in signers {
            let t = format!("{input}.{}", sig(alg, key, &input));
            let want = if signer == pinned {
                Ok(())
            } else {
                Err("bad_signature")
            };
            expect(&a, &t, want, &format!("{signer} signature under {pinned}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 8725 §3.10 / issue 4: a kid (or an embedded or remote key) never chooses the key
// ---------------------------------------------------------------------------------------------

#[test]
fn kid_does_not_change_the_key() {
    let a = hs();
    let es = es();
    let payload = claims("");
    // The EC key's identifier, as a JWKS would publish it (an RFC 7638 thumbprint or a name).
    let ec_kid = "ec-p256-2024";
    for kid in [
        ec_kid,
        "",
        "0",
        "../../../../dev/null",
        "' OR '1'='1",
        "\u{0}",
        "kid\r\n",
    ] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid}).to_string();
        // The honest key: the kid is ignored, the pinned secret verifies.
        expect(
            &a,
            &signed(&header, &payload),
            Ok(()),
            &format!("kid {kid:?}, right key"),
        );
        // The legacy-HS256-with-an-EC-kid attack: HMAC keyed with the EC public key, the
        // empty key (`/dev/null`), or the kid itself.
        for key in [
            EC_PUBLIC.as_bytes(),
            &pem_der(EC_PUBLIC),
            b"",
            kid.as_bytes(),
        ] {
            let t = token_with(
                Algorithm::HS256,
                &EncodingKey::from_secret(key),
                &header,
                &payload,
            );
            expect(
                &a,
                &t,
                Err("bad_signature"),
                &format!("kid {kid:?} on HS256"),
            );
            expect(
                &es,
                &t,
                Err("wrong_algorithm"),
                &format!("kid {kid:?} on ES256"),
            );
        }
    }
    // A kid that is not a string cannot even be read.
    let t = signed(r#"{"alg":"HS256","kid":42}"#, &payload);
    expect(&a, &t, Err("malformed"), "numeric kid");
}

#[test]
fn embedded_or_remote_keys_in_the_header_are_ignored() {
    let es = es();
    let attacker = EncodingKey::from_ec_pem(ATTACKER_EC_PRIVATE.as_bytes()).unwrap();
    // The attacker's public point (the last 64 bytes of the SPKI: x ‖ y).
    let spki = pem_der(ATTACKER_EC_PUBLIC);
    let (x, y) = spki[spki.len() - 64..].split_at(32);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y), "alg": "ES256"});
    let payload = claims("");
    for header in [
        json!({"alg": "ES256"}),
        json!({"alg": "ES256", "jwk": jwk}),
        json!({"alg": "ES256", "jku": "https://attacker.example/jwks.json", "kid": "k1"}),
        json!({"alg": "ES256", "x5u": "https://attacker.example/cert.pem"}),
        json!({"alg": "ES256", "x5c": [b64(&spki)]}),
    ] {
        let t = token_with(Algorithm::ES256, &attacker, &header.to_string(), &payload);
        expect(&es, &t, Err("bad_signature"), &header.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 7519 §4.1.4, §4.1.5: exp and nbf (NumericDate) of every JSON type and size
// ---------------------------------------------------------------------------------------------

#[test]
fn exp_of_every_type_and_size() {
    let a = hs();
    let n = now();
    // `exp` is required, and jsonwebtoken checks presence first: an `exp` it cannot read as a
    // NumericDate (a non-negative number below 2^64) counts as missing.
    let cases: Vec<(String, Want)> = vec![
        // Strings, even numeric ones, are not NumericDates.
        (r#""9999999999""#.into(), Err("missing_exp")),
        (format!(r#""{}""#, n + 300), Err("missing_exp")),
        ("null".into(), Err("missing_exp")),
        ("-1".into(), Err("missing_exp")),
        ("-9223372036854775808".into(), Err("missing_exp")),
        ("-1.5".into(), Err("missing_exp")),
        ("0".into(), Err("expired")),
        ("-0.0".into(), Err("expired")),
        ("1e308".into(), Err("missing_exp")),
        // 2^64: not representable as u64.
        ("18446744073709551616".into(), Err("missing_exp")),
        ("1e19999".into(), Err("malformed")), // not even a finite JSON number for serde_json
        // RFC 7519 §2: a NumericDate may be non-integer.
        (format!("{}.5", n + 300), Ok(())),
        (format!("{}.25", n - 3600), Err("expired")),
        (format!("{}e0", n + 300), Ok(())),
        ("[]".into(), Err("missing_exp")),
        ("{}".into(), Err("missing_exp")),
        // A non-empty array or object: jsonwebtoken's claim reader gives up inside it and the
        // rest of the payload no longer parses.
        (format!("[{}]", n + 300), Err("malformed")),
        (format!(r#"{{"$gt":{n}}}"#), Err("malformed")),
        ("true".into(), Err("missing_exp")),
    ];
    for (exp, want) in cases {
        let payload = format!(r#"{{"sub":"alice","exp":{exp}}}"#);
        expect(&a, &signed(HS256, &payload), want, &format!("exp {exp}"));
    }
}

#[test]
fn nbf_of_every_type_and_size() {
    let a = hs();
    let n = now();
    let cases: Vec<(String, Want)> = vec![
        (r#""0""#.into(), Err("bad_claim")),
        // Optional, but when present it must be a NumericDate: null is not one.
        ("null".into(), Err("bad_claim")),
        ("-1".into(), Err("bad_claim")),
        // Past year 9999: a forged date, malformed rather than merely in the future.
        ("18446744073709551615".into(), Err("bad_claim")), // u64::MAX
        ("9223372036854775808".into(), Err("bad_claim")),  // 2^63
        ("1e308".into(), Err("bad_claim")),
        ("0".into(), Ok(())),
        (format!("{}.5", n - 60), Ok(())),
        (format!("{}.5", n + 3600), Err("not_yet_valid")),
        ("[]".into(), Err("bad_claim")),
        ("{}".into(), Err("bad_claim")),
        ("[0]".into(), Err("malformed")),
        ("false".into(), Err("bad_claim")),
    ];
    for (nbf, want) in cases {
        let payload = format!(r#"{{"sub":"alice","exp":{},"nbf":{nbf}}}"#, n + 300);
        expect(&a, &signed(HS256, &payload), want, &format!("nbf {nbf}"));
    }
}

/// An `exp` millennia away is a token that never expires, and a time no date type can hold:
/// RFC 3339 (the audit log's format) ends at 9999-12-31T23:59:59Z, and the verified-token
/// cache of issue 4 part 3 keys entries "until exp", where `Instant + Duration` overflow panics.
#[test]
fn absurdly_distant_exp_is_refused() {
    let a = hs();
    for exp in [
        "18446744073709551615", // u64::MAX
        "9223372036854775808",  // 2^63
        "1.7e19",
        "253402300800", // 10000-01-01T00:00:00Z
    ] {
        let payload = format!(r#"{{"sub":"alice","exp":{exp}}}"#);
        expect(
            &a,
            &signed(HS256, &payload),
            Err("bad_claim"),
            &format!("exp {exp}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 8725 §3.8, §3.9: issuer and audience
// ---------------------------------------------------------------------------------------------

#[test]
fn issuer_of_every_shape_when_configured() {
    let a = hs_iss_aud();
    for (iss, want) in [
        (json!(ISSUER), Ok(())),
        (json!("https://evil.example"), Err("bad_issuer")),
        (json!("HTTPS://ISSUER.EXAMPLE"), Err("bad_issuer")),
        (json!(format!("{ISSUER}/")), Err("bad_issuer")),
        (json!(format!("{ISSUER}\u{0}")), Err("bad_issuer")),
        (json!(format!(" {ISSUER}")), Err("bad_issuer")),
        (json!(""), Err("bad_issuer")),
        (json!(["https://evil.example"]), Err("bad_issuer")),
        (json!([]), Err("bad_issuer")),
        // Not a string (nor an array of strings): unreadable, so counted as missing.
        (json!(42), Err("missing_iss")),
        (json!({"iss": ISSUER}), Err("missing_iss")),
        (json!([ISSUER, 1]), Err("missing_iss")),
        (json!(null), Err("missing_iss")),
    ] {
        let payload = json!({"sub": "alice", "exp": now() + 300, "iss": iss, "aud": AUDIENCE});
        expect(
            &a,
            &signed(HS256, &payload.to_string()),
            want,
            &format!("iss {iss}"),
        );
    }
    // Absent.
    let payload = json!({"sub": "alice", "exp": now() + 300, "aud": AUDIENCE});
    expect(
        &a,
        &signed(HS256, &payload.to_string()),
        Err("missing_iss"),
        "no iss",
    );
}

#[test]
fn audience_of_every_shape_when_configured() {
    let a = hs_iss_aud();
    for (aud, want) in [
        (json!(AUDIENCE), Ok(())),
        (json!([AUDIENCE]), Ok(())),
        (json!(["anon", AUDIENCE]), Ok(())),
        (json!([AUDIENCE, AUDIENCE]), Ok(())),
        (json!(["anon"]), Err("bad_audience")),
        (json!(["anon", "service_role"]), Err("bad_audience")),
        (json!("Authenticated"), Err("bad_audience")),
        (json!(format!("{AUDIENCE} ")), Err("bad_audience")),
        (json!(""), Err("bad_audience")),
        (json!([]), Err("bad_audience")),
        (json!(42), Err("missing_aud")),
        (json!([42]), Err("missing_aud")),
        (json!([[AUDIENCE]]), Err("missing_aud")),
        (json!({"aud": AUDIENCE}), Err("missing_aud")),
        (json!(null), Err("missing_aud")),
    ] {
        let payload = json!({"sub": "alice", "exp": now() + 300, "iss": ISSUER, "aud": aud});
        expect(
            &a,
            &signed(HS256, &payload.to_string()),
            want,
            &format!("aud {aud}"),
        );
    }
    let payload = json!({"sub": "alice", "exp": now() + 300, "iss": ISSUER});
    expect(
        &a,
        &signed(HS256, &payload.to_string()),
        Err("missing_aud"),
        "no aud",
    );
}

/// RFC 7519 §4.1.3: a recipient that does not identify itself with the audience must reject a
/// token that has one. Without a configured issuer, any issuer passes (none is asked for).
#[test]
fn audience_present_when_none_is_configured() {
    let a = hs();
    for (aud, want) in [
        (json!("someone"), Err("bad_audience")),
        (json!(["someone"]), Err("bad_audience")),
        (json!(["a", "b"]), Err("bad_audience")),
        (json!([]), Err("bad_audience")),
        (json!(null), Ok(())),
    ] {
        let payload = json!({"sub": "alice", "exp": now() + 300, "aud": aud});
        expect(
            &a,
            &signed(HS256, &payload.to_string()),
            want,
            &format!("aud {aud}"),
        );
    }
    let payload = json!({"sub": "alice", "exp": now() + 300, "iss": "anyone"});
    expect(
        &a,
        &signed(HS256, &payload.to_string()),
        Ok(()),
        "unconfigured iss",
    );
}

/// jsonwebtoken only looks at an `aud` it can read as a string or an array of strings: one of
/// another type slips past the "aud present but none configured" rule.
#[test]
fn audience_of_another_type_is_refused_when_none_is_configured() {
    let a = hs();
    for aud in [json!(42), json!({"x": 1}), json!([1]), json!(true)] {
        let payload = json!({"sub": "alice", "exp": now() + 300, "aud": aud});
        expect(
            &a,
            &signed(HS256, &payload.to_string()),
            Err("bad_audience"),
            &format!("aud {aud}"),
        );
    }
}

/// RFC 7519 §4.1.1: `iss` is a single StringOrURI. jsonwebtoken also reads an array and accepts
/// it when any element matches, so a token can name the real issuer alongside another.
#[test]
fn issuer_array_is_refused() {
    let a = hs_iss_aud();
    for iss in [json!([ISSUER]), json!(["https://evil.example", ISSUER])] {
        let payload = json!({"sub": "alice", "exp": now() + 300, "iss": iss, "aud": AUDIENCE});
        expect(
            &a,
            &signed(HS256, &payload.to_string()),
            Err("bad_issuer"),
            &format!("iss {iss}"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Duplicate members (RFC 7515 §4: a parser must reject them or use the last; RFC 8725 §2.6)
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_registered_claims_are_malformed() {
    let a = hs_iss_aud();
    let e = now() + 300;
    let ok = format!(r#""iss":"{ISSUER}","aud":"{AUDIENCE}""#);
    for payload in [
        format!(r#"{{"sub":"alice","sub":"mallory","exp":{e},{ok}}}"#),
        format!(r#"{{"sub":"alice","exp":{e},"exp":1,{ok}}}"#),
        format!(r#"{{"sub":"alice","exp":1,"exp":{e},{ok}}}"#),
        format!(r#"{{"sub":"alice","exp":{e},"nbf":0,"nbf":0,{ok}}}"#),
        format!(r#"{{"sub":"alice","exp":{e},"iss":"https://evil.example",{ok}}}"#),
        format!(r#"{{"sub":"alice","exp":{e},{ok},"aud":"anon"}}"#),
        // The same key spelled with an escape is the same member after decoding.
        format!(r#"{{"s\u0075b":"mallory","sub":"alice","exp":{e},{ok}}}"#),
    ] {
        expect(&a, &signed(HS256, &payload), Err("malformed"), &payload);
    }
}

#[test]
fn duplicate_private_claims_resolve_to_the_last_value_consistently() {
    let a = hs();
    let payload = format!(
        r#"{{"sub":"alice","exp":{},"role":"user","role":"admin"}}"#,
        now() + 300
    );
    let t = signed(HS256, &payload);
    let claims = a.verify(&t).unwrap();
    assert_eq!(claims["role"], "admin");
    // The principal the handlers see carries the same single value.
    let p = run(&a, &[("authorization", format!("Bearer {t}").as_bytes())]).unwrap();
    assert_eq!(p.claim("role"), Some(&json!("admin")));
    assert_eq!(p.claims().len(), 3);
}

#[test]
fn duplicate_header_members_never_let_the_attacker_pick() {
    let a = hs();
    let payload = claims("");
    for (header, want) in [
        // Our pinned-algorithm check reads the last `alg` (HS256), jsonwebtoken refuses the
        // duplicate: either way not accepted.
        (r#"{"alg":"none","alg":"HS256"}"#, "malformed"),
        (r#"{"alg":"HS256","alg":"none"}"#, "wrong_algorithm"),
        (r#"{"alg":"HS256","alg":"HS256"}"#, "malformed"),
        (r#"{"\u0061lg":"none","alg":"HS256"}"#, "malformed"),
        (r#"{"alg":"HS256","kid":"a","kid":"b"}"#, "malformed"),
        (r#"{"alg":"HS256","typ":"JWT","typ":"JWT"}"#, "malformed"),
        (
            r#"{"alg":"HS256","crit":["x"],"crit":[]}"#,
            "unsupported_header",
        ),
    ] {
        expect(&a, &signed(header, &payload), Err(want), header);
    }
}

// ---------------------------------------------------------------------------------------------
// Segment encoding (RFC 7515 §2: base64url without padding) and structure
// ---------------------------------------------------------------------------------------------

/// A valid HS256 token whose signature contains `-` or `_` (so the standard alphabet spells it
/// differently).
fn token_with_url_safe_signature() -> String {
    (0..1000)
        .map(|i| signed(HS256, &claims(&format!(r#","n":{i}"#))))
        .find(|t| t.rsplit('.').next().is_some_and(|s| s.contains(['-', '_'])))
        .expect("some signature has one")
}

/// A JSON object text (`json` with an extra `"q":"???..."` member) whose base64 encoding under
/// `engine` contains one of `marks` (`?` is 0x3F: three of them encode as `Pz8/`).
fn encoded_with(engine: &impl base64::Engine, json: &str, marks: &[char]) -> String {
    let open = json.strip_suffix('}').unwrap();
    (0..64)
        .map(|n| engine.encode(format!(r#"{open},"q":"{}"}}"#, "?".repeat(n))))
        .find(|e| e.contains(marks))
        .expect("some length shows the mark")
}

/// `h.p.signature` over exactly these (possibly non-canonical) segment texts, with the real
/// secret: the signer is honest but its encoder is sloppy, so only the parser can refuse.
fn signed_segments(h: &str, p: &str) -> String {
    let input = format!("{h}.{p}");
    format!("{input}.{}", hmac(Algorithm::HS256, SECRET, &input))
}

/// RFC 7515 §2: base64url *without* padding, and nothing else. Tokens signed over a
/// non-canonical encoding are refused by the parser (`malformed`); a valid token altered
/// afterwards is refused by the signature when the alteration is in the signed part.
#[test]
fn non_canonical_segment_encodings_are_refused() {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE};
    let a = hs();
    let t = token_with_url_safe_signature();
    expect(&a, &t, Ok(()), "the token itself");
    let [h, p, s]: [&str; 3] = t.split('.').collect::<Vec<_>>().try_into().unwrap();
    let payload = claims("");
    let padded_h = encoded_with(&URL_SAFE, HS256, &['=']);
    let padded_p = encoded_with(&URL_SAFE, &payload, &['=']);
    let std_p = encoded_with(&STANDARD_NO_PAD, &payload, &['+', '/']);
    let std_s = s.replace('-', "+").replace('_', "/");
    // Non-canonical trailing bits: a 32-byte MAC is 43 characters whose last one carries 4 bits
    // and 2 zero bits. Setting those spells the same bytes a second way: refused, so a token
    // has exactly one valid form (and one cache key).
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = ALPHABET
        .iter()
        .position(|&c| c == s.as_bytes()[s.len() - 1])
        .unwrap();
    assert_eq!(last & 0b11, 0, "canonical encodings end in zero bits");
    let twin = format!("{}{}", &s[..s.len() - 1], char::from(ALPHABET[last | 1]));
    let bp = b64(&payload);

    // (token, verify's reason, the reason through `Authorization: Bearer <token>`; `None`
    // where `http` refuses the header value).
    let cases: Vec<(String, &str, Option<Want>)> = vec![
        // Honest signature over a sloppy encoding: the parser refuses.
        (
            signed_segments(&padded_h, &bp),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            signed_segments(&b64(HS256), &padded_p),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            signed_segments(&b64(HS256), &std_p),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            signed_segments(&b64(HS256), &format!("{bp}~")),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            signed_segments(&b64(HS256), &format!("{bp}!")),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            signed_segments(&b64(HS256), &format!(" {bp}")),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            signed_segments(&format!("{} ", b64(HS256)), &bp),
            "malformed",
            Some(Err("malformed")),
        ),
        (format!("{h}.{p}.{s}="), "malformed", Some(Err("malformed"))),
        (
            format!("{h}.{p}.{std_s}"),
            "malformed",
            Some(Err("malformed")),
        ),
        (
            format!("{h}.{p}.{twin}"),
            "malformed",
            Some(Err("malformed")),
        ),
        // Altered after signing.
        (format!("{h}=.{p}.{s}"), "malformed", Some(Err("malformed"))),
        (
            format!("{h}.{p}=.{s}"),
            "bad_signature",
            Some(Err("malformed")),
        ),
        (
            format!("{h}.{p}~.{s}"),
            "bad_signature",
            Some(Err("bad_signature")),
        ),
        (format!("{h}.{p}\n.{s}"), "bad_signature", None),
        (
            format!("{h}.{p}.\t{s}"),
            "malformed",
            Some(Err("malformed")),
        ),
        (format!("{h}.{p}.%{s}"), "malformed", Some(Err("malformed"))),
        (format!("{h}.{p}.{s}é"), "malformed", Some(Err("malformed"))),
        (
            format!("{h}.{p}.{}", &s[..40]),
            "bad_signature",
            Some(Err("bad_signature")),
        ),
        // Whitespace around the token is the header field's (RFC 9110 §5.5), not the token's.
        (format!(" {t}"), "malformed", Some(Ok(()))),
        (format!("{t} "), "malformed", Some(Ok(()))),
    ];
    for (token, want, bearer) in &cases {
        expect(&a, token, Err(want), &format!("{token:?}"));
        let value = format!("Bearer {token}");
        assert_eq!(
            HeaderValue::from_str(&value).is_ok(),
            bearer.is_some(),
            "{token:?}"
        );
        if let Some(bearer) = bearer {
            let got = run(&a, &[("authorization", value.as_bytes())]).map(|_| ());
            assert_eq!(got, bearer.map_err(AuthError::Invalid), "bearer {token:?}");
        }
    }
}

#[test]
fn payload_that_is_not_a_json_object_is_malformed() {
    let a = hs();
    for payload in [
        "",
        "[]",
        r#""alice""#,
        "null",
        "42",
        r#"{"sub":"alice","exp":9999999999"#,
        r#"{"sub":"alice","exp":9999999999} trailing"#,
        // An unpaired surrogate escape is not a Unicode string.
        r#"{"sub":"\ud800","exp":9999999999}"#,
        r#"{"sub":"alice","exp":9999999999,}"#,
    ] {
        expect(&a, &signed(HS256, payload), Err("malformed"), payload);
    }
    // Bytes that are not UTF-8 inside a JSON string.
    let input = format!(
        "{}.{}",
        b64(HS256),
        b64(b"{\"sub\":\"\xff\xfe\",\"exp\":9999999999}")
    );
    let t = format!("{input}.{}", hmac(Algorithm::HS256, SECRET, &input));
    expect(&a, &t, Err("malformed"), "non-UTF-8 payload");
    // The same for the header.
    let input = format!("{}.{}", b64(b"{\"alg\":\"HS256\xff\"}"), b64(claims("")));
    let t = format!("{input}.{}", hmac(Algorithm::HS256, SECRET, &input));
    expect(&a, &t, Err("malformed"), "non-UTF-8 header");
}

#[test]
fn segment_counts_and_empty_segments() {
    let a = hs();
    let t = signed(HS256, &claims(""));
    let [h, p, s]: [&str; 3] = t.split('.').collect::<Vec<_>>().try_into().unwrap();
    let empty_payload = signed(HS256, "");
    for (token, want) in [
        (String::new(), "malformed"),
        (".".into(), "malformed"),
        ("..".into(), "malformed"),
        ("...".into(), "malformed"),
        (h.to_owned(), "malformed"),
        (format!("{h}.{p}"), "malformed"),
        (format!("{h}.{p}."), "bad_signature"),
        (format!("{t}."), "malformed"),
        (format!("{t}.{s}"), "malformed"),
        // The JWE compact form has five segments.
        (format!("{h}.{p}.{s}.{p}.{s}"), "malformed"),
        (format!(".{p}.{s}"), "malformed"),
        (format!("{h}..{s}"), "bad_signature"),
        (empty_payload, "malformed"),
        (format!("{h}.{p}.{s}.."), "malformed"),
    ] {
        expect(&a, &token, Err(want), &format!("{token:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Size and depth limits
// ---------------------------------------------------------------------------------------------

/// A validly signed token of exactly `len` bytes (varying a padding claim and the header).
fn signed_of_len(len: usize) -> String {
    for header in [HS256, r#"{"alg":"HS256"}"#] {
        for pad in 0..len {
            let t = signed(header, &claims(&format!(r#","pad":"{}""#, "p".repeat(pad))));
            match t.len().cmp(&len) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => return t,
                std::cmp::Ordering::Greater => break,
            }
        }
    }
    panic!("no token of {len} bytes");
}

#[test]
fn token_size_limit_is_exact() {
    let a = hs();
    let at = signed_of_len(MAX_TOKEN_BYTES);
    let over = signed_of_len(MAX_TOKEN_BYTES + 1);
    expect(&a, &at, Ok(()), "at the limit");
    expect(&a, &over, Err("oversized"), "one byte over");
    for (name, value) in [
        ("authorization", format!("Bearer {over}")),
        ("authorization", format!("Bearer {}", "A".repeat(1 << 20))),
        ("cookie", format!("sr-session={over}")),
        ("cookie", format!("sr-session={}", "A".repeat(1 << 20))),
    ] {
        assert_eq!(
            run(&a, &[(name, value.as_bytes())]).unwrap_err(),
            AuthError::Invalid("oversized"),
            "{name} of {} bytes",
            value.len()
        );
    }
    let p = run(&a, &[("authorization", format!("Bearer {at}").as_bytes())]).unwrap();
    assert_eq!(p.subject(), "alice");
}

#[test]
fn huge_headers_within_the_limit_cost_nothing_special() {
    let a = hs();
    let payload = claims("");
    // Many KB in one member, and hundreds of members: unknown header members are ignored
    // (RFC 7515 §4), so an honest signature still verifies and a forged one does not.
    let long = json!({"alg": "HS256", "x-pad": "x".repeat(5000)}).to_string();
    let mut many = serde_json::Map::new();
    many.insert("alg".into(), json!("HS256"));
    for i in 0..400 {
        many.insert(format!("h{i}"), json!(i));
    }
    let many = serde_json::Value::Object(many).to_string();
    for header in [long, many] {
        assert!(header.len() > 4000, "{} bytes", header.len());
        let t = signed(&header, &payload);
        assert!(t.len() <= MAX_TOKEN_BYTES);
        expect(&a, &t, Ok(()), "honest signature");
        let forged = format!("{}.{}.AAAA", b64(&header), b64(&payload));
        expect(&a, &forged, Err("bad_signature"), "forged signature");
    }
}

#[test]
fn deeply_nested_json_is_malformed_not_a_stack_overflow() {
    let a = hs();
    let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // serde_json stops at 128 levels.
    let header = format!(r#"{{"alg":"HS256","x":{}}}"#, nest(3000));
    expect(
        &a,
        &signed(&header, &claims("")),
        Err("malformed"),
        "deep header",
    );
    let payload = claims(&format!(r#","x":{}"#, nest(3000)));
    expect(
        &a,
        &signed(HS256, &payload),
        Err("malformed"),
        "deep payload",
    );
    // Moderate nesting is an ordinary private claim.
    let payload = claims(&format!(r#","x":{}"#, nest(100)));
    expect(&a, &signed(HS256, &payload), Ok(()), "100 levels");
}

// ---------------------------------------------------------------------------------------------
// The Authorization header and the cookie (RFC 9110 §11, RFC 6750 §2.1, RFC 6265)
// ---------------------------------------------------------------------------------------------

#[test]
fn authorization_header_forms() {
    let a = hs();
    let t = signed(HS256, &claims(""));
    let ok = || Ok(CredentialSource::Header);
    let bad = |r| Err(AuthError::Invalid(r));
    let cases: Vec<(Vec<u8>, Result<CredentialSource, AuthError>)> = vec![
        (format!("Bearer {t}").into(), ok()),
        // The scheme is case-insensitive (RFC 9110 §11.1).
        (format!("bearer {t}").into(), ok()),
        (format!("BEARER {t}").into(), ok()),
        (format!("bEaReR {t}").into(), ok()),
        // 1*SP between scheme and credentials (RFC 9110 §11.4); OWS around the field value.
        (format!("Bearer   {t}").into(), ok()),
        (format!("Bearer {t}  ").into(), ok()),
        (format!(" Bearer {t}").into(), ok()),
        (format!("Bearer\t{t}").into(), bad("malformed")),
        (format!("Bearer {t} extra").into(), bad("malformed")),
        (format!("Bearer {t},Bearer {t}").into(), bad("malformed")),
        (format!("Bearer: {t}").into(), bad("malformed")),
        (format!("Bearer={t}").into(), bad("malformed")),
        // No scheme: the token itself is a valid scheme name, of another authenticator.
        (t.clone().into(), Err(AuthError::Missing)),
        (b"Bearer".to_vec(), bad("malformed")),
        (b"Bearer ".to_vec(), bad("malformed")),
        (b"Bearer =".to_vec(), bad("malformed")),
        // Non-UTF-8 (obs-text) bytes, which `http` lets through.
        (b"Bearer \xff\xfe".to_vec(), bad("malformed")),
        (
            [format!("Bearer {t}").as_bytes(), b"\x80"].concat(),
            bad("malformed"),
        ),
        ([b"B\xe9arer ", t.as_bytes()].concat(), bad("malformed")),
        // Another scheme is another authenticator's business.
        (format!("Basic {t}").into(), Err(AuthError::Missing)),
        (format!("Bearers {t}").into(), Err(AuthError::Missing)),
        (format!("DPoP {t}").into(), Err(AuthError::Missing)),
    ];
    for (value, want) in cases {
        let got = run(&a, &[("authorization", &value)]).map(|p| p.source());
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&value));
    }
    // Two Authorization lines: which one is meant? Refused even if both are valid.
    let line = format!("Bearer {t}");
    assert_eq!(
        run(
            &a,
            &[
                ("authorization", line.as_bytes()),
                ("authorization", line.as_bytes())
            ]
        )
        .unwrap_err(),
        AuthError::Invalid("multiple_credentials")
    );
}

#[test]
fn bearer_decides_and_cookies_are_parsed_strictly() {
    let a = hs();
    let t = signed(HS256, &claims(""));
    let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(claims("")));
    let cookie = |v: &str| format!("sr-session={v}");
    let cases: Vec<(Headers, Result<CredentialSource, AuthError>)> = vec![
        (vec![("cookie", cookie(&t))], Ok(CredentialSource::Cookie)),
        // A bad bearer is not rescued by a good cookie, nor the reverse.
        (
            vec![
                ("authorization", format!("Bearer {none}")),
                ("cookie", cookie(&t)),
            ],
            Err(AuthError::Invalid("wrong_algorithm")),
        ),
        (
            vec![
                ("authorization", format!("Bearer {t}")),
                ("cookie", cookie(&none)),
            ],
            Ok(CredentialSource::Header),
        ),
        (
            vec![("cookie", cookie(&none))],
            Err(AuthError::Invalid("wrong_algorithm")),
        ),
        // Cookie tossing: two different session cookies.
        (
            vec![("cookie", format!("{}; {}", cookie(&t), cookie(&none)))],
            Err(AuthError::Invalid("ambiguous_cookie")),
        ),
        (
            vec![("cookie", cookie(&t)), ("cookie", cookie(&none))],
            Err(AuthError::Invalid("ambiguous_cookie")),
        ),
        // Quotes are kept verbatim (no unquoting): not a token.
        (
            vec![("cookie", cookie(&format!("\"{t}\"")))],
            Err(AuthError::Invalid("malformed")),
        ),
        (
            vec![("cookie", cookie(&format!("{t}%2E")))],
            Err(AuthError::Invalid("malformed")),
        ),
        (vec![("cookie", cookie(""))], Err(AuthError::Missing)),
        (
            vec![("cookie", format!("SR-SESSION={t}"))],
            Err(AuthError::Missing),
        ),
        (
            vec![("cookie", format!("sr-session2={t}"))],
            Err(AuthError::Missing),
        ),
    ];
    for (headers, want) in cases {
        let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        let got = run(&a, &raw).map(|p| p.source());
        assert_eq!(got, want, "{headers:?}");
    }
    // A cookie line with non-UTF-8 bytes: replaced, so the token no longer parses.
    let line = [cookie(&t).as_bytes(), b"\xff"].concat();
    assert_eq!(
        run(&a, &[("cookie", &line)]).unwrap_err(),
        AuthError::Invalid("malformed")
    );
}

// ---------------------------------------------------------------------------------------------
// Header parameters: crit (RFC 7515 §4.1.11) and typ (RFC 8725 §3.11)
// ---------------------------------------------------------------------------------------------

#[test]
fn crit_is_refused_whatever_it_lists() {
    let payload = claims("");
    for crit in [
        json!(["b64"]),
        json!(["exp"]),
        json!(["kid"]),
        json!(["urn:example:unknown"]),
        json!([]),
        json!("b64"),
        json!(null),
    ] {
        let header = json!({"alg": "HS256", "b64": false, "crit": crit}).to_string();
        // Honestly signed, by every authenticator's own key where we hold it.
        expect(
            &hs(),
            &signed(&header, &payload),
            Err("unsupported_header"),
            &header,
        );
        for (pinned, a) in all_authenticators() {
            let header = json!({"alg": pinned, "crit": crit}).to_string();
            let t = format!("{}.{}.AAAA", b64(&header), b64(&payload));
            expect(&a, &t, Err("unsupported_header"), &header);
        }
    }
}

#[test]
fn typ_values() {
    let a = hs();
    let payload = claims("");
    // `typ` is not required and access-token spellings pass (RFC 7519 §5.1, RFC 9068 §2.1).
    for typ in [
        json!("JWT"),
        json!("jwt"),
        json!("at+jwt"),
        json!("application/at+jwt"),
        json!(null),
    ] {
        let header = json!({"alg": "HS256", "typ": typ}).to_string();
        expect(&a, &signed(&header, &payload), Ok(()), &header);
    }
    expect(
        &a,
        &signed(r#"{"alg":"HS256"}"#, &payload),
        Ok(()),
        "no typ",
    );
    // Not a string: the header cannot be read.
    for typ in [json!(1), json!(["JWT"]), json!({"t": "JWT"})] {
        let header = json!({"alg": "HS256", "typ": typ}).to_string();
        expect(&a, &signed(&header, &payload), Err("malformed"), &header);
    }
}

/// RFC 8725 §3.11 (explicit typing) and §2.8 (cross-JWT confusion): a JWT the same issuer signs
/// for another purpose (a security event, a logout token) must not pass as an access token.
#[test]
fn explicitly_typed_jwts_of_another_kind_are_refused() {
    let a = hs();
    let payload = claims("");
    for typ in [
        "secevent+jwt",
        "logout+jwt",
        "dpop+jwt",
        "JOSE",
        "application/jwt-foo",
    ] {
        let header = json!({"alg": "HS256", "typ": typ}).to_string();
        expect(&a, &signed(&header, &payload), Err("wrong_type"), &header);
    }
}

// ---------------------------------------------------------------------------------------------
// Representative attacks through the whole pipeline: 401, WWW-Authenticate, nothing echoed
// ---------------------------------------------------------------------------------------------

async fn whoami(p: Principal) -> String {
    format!("hello {}", p.subject())
}

fn app(jwt: JwtAuthenticator) -> Router {
    let security = Security::builder()
        .authenticator(jwt)
        .csrf_secret([7u8; 32])
        .build()
        .unwrap();
    // No rate limit: every request below is judged by authentication alone.
    let policy = Policy::builder("rfc8725")
        .auth(AuthMode::Required)
        .build()
        .unwrap();
    Router::new().route("/me", get(whoami).layer(security.layer(policy).unwrap()))
}

async fn call(app: &Router, header: &str, value: &[u8]) -> (StatusCode, String, String) {
    let req = Request::get("/me")
        .header(header, HeaderValue::from_bytes(value).unwrap())
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 1],
            4000,
        ))))
        .body(Body::empty())
        .unwrap();
    let res = app
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {});
    let status = res.status();
    let www = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, www, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn representative_attacks_are_401_through_the_pipeline() {
    let hs_app = app(hs());
    let rs_app = app(rs());
    let good = signed(HS256, &claims(""));
    let payload = b64(claims(""));

    // Controls: the honest token passes, from the header and from the cookie.
    let (status, _, body) = call(
        &hs_app,
        "authorization",
        format!("bearer  {good}").as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello alice"));
    let (status, _, _) = call(&hs_app, "cookie", format!("sr-session={good}").as_bytes()).await;
    assert_eq!(status, StatusCode::OK);

    let none = format!("{}.{payload}.", b64(r#"{"alg":"nOnE"}"#));
    let rs_header = b64(r#"{"alg":"HS256","typ":"JWT"}"#);
    let confusion_input = format!("{rs_header}.{payload}");
    let confusion = format!(
        "{confusion_input}.{}",
        hmac(Algorithm::HS256, RSA_PUBLIC.as_bytes(), &confusion_input)
    );
    let crit = signed(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, &claims(""));
    let dup = signed(
        HS256,
        &format!(r#"{{"sub":"mallory","sub":"alice","exp":{}}}"#, now() + 300),
    );
    let exp_string = signed(HS256, r#"{"sub":"alice","exp":"9999999999"}"#);
    let (h, p, s) = {
        let v: Vec<&str> = good.split('.').collect();
        (v[0].to_owned(), v[1].to_owned(), v[2].to_owned())
    };
    let four = format!("{h}.{p}.{s}.{s}");
    let padded = format!("{h}=.{p}.{s}");
    let oversized = signed_of_len(MAX_TOKEN_BYTES + 1);

    let cases: Vec<(&Router, &str, Vec<u8>, &str)> = vec![
        (
            &hs_app,
            "authorization",
            format!("Bearer {none}").into(),
            "alg nOnE",
        ),
        (
            &hs_app,
            "cookie",
            format!("sr-session={none}").into(),
            "alg nOnE cookie",
        ),
        (
            &rs_app,
            "authorization",
            format!("Bearer {confusion}").into(),
            "HS/RS confusion",
        ),
        (
            &hs_app,
            "authorization",
            format!("Bearer {crit}").into(),
            "crit",
        ),
        (
            &hs_app,
            "authorization",
            format!("Bearer {dup}").into(),
            "duplicate sub",
        ),
        (
            &hs_app,
            "authorization",
            format!("Bearer {exp_string}").into(),
            "exp string",
        ),
        (
            &hs_app,
            "authorization",
            format!("Bearer {four}").into(),
            "4 segments",
        ),
        (
            &hs_app,
            "authorization",
            format!("Bearer {padded}").into(),
            "padded",
        ),
        (
            &hs_app,
            "authorization",
            format!("Bearer {oversized}").into(),
            "oversized",
        ),
        (
            &hs_app,
            "authorization",
            b"Bearer \xff\xfe\xfd".to_vec(),
            "non-UTF-8",
        ),
    ];
    for (app, header, value, what) in cases {
        let (status, www, body) = call(app, header, &value).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert!(
            www.starts_with("Bearer"),
            "{what}: WWW-Authenticate {www:?}"
        );
        // The body never echoes the credential (its first 40 characters, after the scheme or
        // the cookie name).
        let shown = String::from_utf8_lossy(&value);
        let credential = shown.split_once([' ', '=']).map_or(&*shown, |(_, t)| t);
        let head: String = credential.chars().take(40).collect();
        assert!(!body.contains(&head), "{what}: credential echoed in {body}");
    }
}

/// Minting is still fine after all of the above: the authenticator's own tokens pass (a
/// control for the helpers in this file).
#[test]
fn minted_tokens_pass_the_same_authenticator() {
    let a = hs_iss_aud();
    let t = a.mint("alice", Duration::from_secs(60)).unwrap();
    expect(&a, &t, Ok(()), "minted");
}
