//! What identity to the upstream costs per proxied request: signing one assertion, and the
//! header work around it, and jsonwebtoken's `encode` as the baseline for signing.
//! `cargo bench -p secure-routes-gateway --bench assertion`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use secure_routes::auth::{CredentialSource, Principal};
use secure_routes_gateway::identity::{
    Assertion, AssertionSigner, CookieNames, set_identity, strip_credentials, strip_incoming,
};

fn principal() -> Principal {
    let claims = serde_json::json!({
        "role": "authenticated",
        "app_metadata": {"roles": ["admin"]},
        "email": "alice@example.com",
    });
    Principal::new(
        "8f14e45f-ceea-467f-a0e6-7c0d2b5a0b1e",
        CredentialSource::Header,
    )
    .with_claims(claims.as_object().cloned().unwrap_or_default())
}

fn browser_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        ),
        ("accept", "application/json"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
        ("cookie", "theme=dark; sr-session=eyJ.x.y; csrf=abc"),
        ("x-secure-routes-subject", "forged"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let signer = AssertionSigner::generate().expect("key");
    let p = principal();
    let assertion = Assertion {
        audience: "http://127.0.0.1:3000",
        principal: Some(&p),
        request_id: "0192f0c1-7a51-7c3e-9f2a-1b2c3d4e5f60",
    };
    c.bench_function("assertion_sign", |b| {
        b.iter(|| signer.sign(black_box(&assertion)).expect("sign"))
    });
    // Baseline for the choice to keep the parsed key pair: jsonwebtoken::encode with the same
    // key and claims re-parses (and checks) the PKCS#8 key on every call.
    let pem = signer.to_pkcs8_pem();
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).expect("pem");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(signer.kid().to_owned());
    let claims = serde_json::json!({
        "iss": "secure-routes", "aud": assertion.audience, "sub": p.subject(),
        "roles": ["authenticated", "admin"], "rid": assertion.request_id,
        "iat": 1_800_000_000u64, "nbf": 1_800_000_000u64, "exp": 1_800_000_060u64,
        "jti": "0192f0c1-7a51-7c3e-9f2a-1b2c3d4e5f61",
    });
    c.bench_function("jsonwebtoken_encode_baseline", |b| {
        b.iter(|| jsonwebtoken::encode(&header, black_box(&claims), &key).expect("encode"))
    });
    let names = CookieNames::new(["sr-session"]);
    let jwt = signer.sign(&assertion).expect("sign");
    c.bench_function("identity_headers", |b| {
        b.iter_batched_ref(
            browser_headers,
            |h| {
                strip_incoming(h);
                strip_credentials(h, &names);
                set_identity(h, Some(&p), assertion.request_id, &jwt);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
