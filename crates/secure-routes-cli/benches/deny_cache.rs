//! Store calls per 1,000 refused requests, with the deny cache and without (issue 9 part 5),
//! on the stores the demo ships: Redis and Postgres when `REDIS_URL` / `DATABASE_URL` are set.
//!
//! Per store and mode: one user spends a STRICT-like quota (10 per minute) through the real
//! pipeline (a `Security` layer on an axum router, in process), then sends 1,000 more requests
//! one after another, all refused with 429. A counting wrapper around the store records every
//! call. Printed: store calls made by the 1,000 refusals, and the time per refused request.
//! The two modes are interleaved in rounds (the machine is noisy), each round with a fresh
//! user so no state carries over. The goal is at most 10 calls per 1,000 refusals.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 DATABASE_URL=postgres://postgres@127.0.0.1/test
//! cargo bench -p secure-routes-cli --bench deny_cache`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::post;
use http::{Request, StatusCode};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::rate_limit::{Decision, Quota, RateLimitKey, RateLimitStore, StoreError};
use secure_routes::{AuthMode, Policy, Security};
use tower::ServiceExt;

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";
const REFUSED: u64 = 1_000;
const ROUNDS: usize = 3;

/// Counts the calls it forwards.
struct Counting {
    inner: Arc<dyn RateLimitStore>,
    calls: Arc<AtomicU64>,
}

impl RateLimitStore for Counting {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> secure_routes::rate_limit::BoxFuture<'a, Result<Decision, StoreError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.acquire(key, quota, cost)
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
}

/// The router, and a bearer credential for a fresh user.
fn app(
    store: Arc<dyn RateLimitStore>,
    calls: Arc<AtomicU64>,
    deny_cache: bool,
) -> (Router, String) {
    let jwt = JwtAuthenticator::builder().hs256(SECRET).build().unwrap();
    let user = format!("bench-{:016x}", rand::random::<u64>());
    let bearer = format!(
        "Bearer {}",
        jwt.mint(&user, Duration::from_secs(3600)).unwrap()
    );
    let security = Security::builder()
        .authenticator(jwt)
        .csrf_secret(SECRET)
        .shared_rate_limit_store(Arc::new(Counting {
            inner: store,
            calls,
        }))
        .deny_cache(deny_cache)
        .build()
        .unwrap();
    let policy = Policy::builder("strict")
        .auth(AuthMode::Required)
        .rate_limit(Quota::per_minute(10))
        .store_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let router = Router::new().route(
        "/api/strict",
        post(|| async { "ok" }).layer(security.layer(policy).unwrap()),
    );
    (router, bearer)
}

async fn send(app: &Router, bearer: &str) -> StatusCode {
    let mut req = Request::post("/api/strict")
        .header("authorization", bearer)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 40000))));
    app.clone().oneshot(req).await.unwrap().status()
}

/// Store calls made by the refusals, and the mean time per refused request.
async fn run(store: Arc<dyn RateLimitStore>, deny_cache: bool) -> (u64, Duration) {
    let calls = Arc::new(AtomicU64::new(0));
    let (app, bearer) = app(store, calls.clone(), deny_cache);
    for _ in 0..10 {
        assert_eq!(send(&app, &bearer).await, StatusCode::OK);
    }
    let before = calls.load(Ordering::Relaxed);
    let start = Instant::now();
    for _ in 0..REFUSED {
        assert_eq!(send(&app, &bearer).await, StatusCode::TOO_MANY_REQUESTS);
    }
    let elapsed = start.elapsed();
    (
        calls.load(Ordering::Relaxed) - before,
        elapsed / u32::try_from(REFUSED).unwrap(),
    )
}

async fn report(name: &str, store: Arc<dyn RateLimitStore>) {
    for round in 1..=ROUNDS {
        for deny_cache in [true, false] {
            let (calls, per) = run(store.clone(), deny_cache).await;
            println!(
                "{name:<9} round {round}  deny cache {:<3}  store calls per {REFUSED} refused: {calls:>5}  time per refused request: {:>8.1} us",
                if deny_cache { "on" } else { "off" },
                per.as_secs_f64() * 1e6
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut any = false;
        if let Ok(url) = std::env::var("REDIS_URL") {
            let store = secure_routes_redis::RedisStore::connect(&url)
                .await
                .unwrap();
            report("redis", Arc::new(store)).await;
            any = true;
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let pool = secure_routes_postgres::connect(&url, 4).unwrap();
            secure_routes_postgres::migrate(&pool).await.unwrap();
            let store = secure_routes_postgres::PostgresStore::new(pool);
            store.warm_up().await.unwrap();
            report("postgres", Arc::new(store)).await;
            any = true;
        }
        if !any {
            eprintln!("set REDIS_URL and/or DATABASE_URL to measure the shared stores");
        }
    });
}
