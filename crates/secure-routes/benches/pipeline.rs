//! Whole-pipeline cost per request, in process: the same handler bare, behind PUBLIC, and
//! behind AUTHENTICATED with an HS256 bearer token. Quotas are raised (GCRA, far beyond what
//! the bench reaches) so every iteration runs the full pipeline including the store call and
//! the rate-limit headers, rather than short-circuiting on 429.
//!
//! Run: `cargo bench -p secure-routes --bench pipeline`

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::rate_limit::Algorithm;
use secure_routes::{Policy, Quota, Security};
use tower::ServiceExt;

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";

async fn handler() -> &'static str {
    "{\"data\":[1,2,3]}"
}

fn big_quota() -> Quota {
    Quota::per_second(1_000_000_000).with_algorithm(Algorithm::Gcra)
}

fn token() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn request(path: &str, bearer: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let mut req = b.body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let jwt = JwtAuthenticator::builder().hs256(SECRET).build().unwrap();
    let security = Security::builder()
        .authenticator(jwt)
        .csrf_secret([3u8; 32])
        .build()
        .unwrap();
    let public = Policy::public()
        .to_builder()
        .rate_limit(big_quota())
        .build()
        .unwrap();
    let authenticated = Policy::authenticated()
        .to_builder()
        .rate_limit(big_quota())
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/bare", get(handler))
        .route(
            "/public",
            get(handler).layer(security.layer(public).unwrap()),
        )
        .route(
            "/authenticated",
            get(handler).layer(security.layer(authenticated).unwrap()),
        )
        // What `axum::serve` does (`into_make_service` calls it): turns every route into its
        // final service once, instead of applying the layers again on each request.
        .with_state(());
    let token = token();

    let mut g = c.benchmark_group("pipeline");
    for (name, path, bearer) in [
        ("bare_handler", "/bare", None),
        ("public", "/public", None),
        (
            "authenticated_hs256",
            "/authenticated",
            Some(token.as_str()),
        ),
    ] {
        // Sanity: every iteration is a 200, not a refusal.
        let status = rt
            .block_on(app.clone().oneshot(request(path, bearer)))
            .unwrap()
            .status();
        assert_eq!(status, 200, "{name}");
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| app.clone().oneshot(request(path, bearer)));
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
