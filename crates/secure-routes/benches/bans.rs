//! Cost of one ban check in process (issue 12 part 7's budget: 100 ns per request with nothing
//! banned), for the memory store.
//!
//! Run: `cargo bench -p secure-routes --bench bans -- --warm-up-time 1 --measurement-time 3`
//!
//! * `check_not_banned/empty`: a key never struck, in an empty table (the common case).
//! * `check_not_banned/10k_keys`: the same among 10 000 keys with points but no ban.
//! * `check_banned`: a banned key (the refusal path: the ban is cloned out).
//! * `key_from_ip`: building the `BanKey` from the resolved address (a `format!`).
//! * `bans_check/*`: [`Bans::check`], the pipeline's step 2 (the local snapshot), with nothing
//!   banned and with 1 000 other addresses banned.
//! * `pipeline_bans/*`: the PUBLIC route (the handler of `pipeline.rs`), with bans off, with
//!   bans on and nothing banned, and with bans on and 1 000 other addresses banned, in one
//!   group so one run measures them side by side (issue 12 part 7: at most 100 ns added).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use secure_routes::bans::{BanKey, BanPolicy, Bans, MemoryBans};
use secure_routes::rate_limit::Algorithm;
use secure_routes::{Policy, Quota, Security};
use tower::ServiceExt as _;

fn bench(c: &mut Criterion) {
    let now = Duration::from_secs(1_700_000_000);
    let policy = BanPolicy::default();
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let key = BanKey::ip(ip);

    let empty = MemoryBans::new();
    let mut g = c.benchmark_group("check_not_banned");
    g.bench_function("empty", |b| {
        b.iter(|| black_box(empty.check_now(black_box(&key), now)))
    });
    let busy = MemoryBans::new();
    for i in 0..10_000u32 {
        let k = BanKey::ip(IpAddr::from(i.to_be_bytes()));
        busy.strike_now(&k, 1, &policy, now);
    }
    g.bench_function("10k_keys", |b| {
        b.iter(|| black_box(busy.check_now(black_box(&key), now)))
    });
    g.finish();

    let banned = MemoryBans::new();
    banned.strike_now(&key, 50, &policy, now);
    c.bench_function("check_banned", |b| {
        b.iter(|| black_box(banned.check_now(black_box(&key), now)))
    });
    c.bench_function("key_from_ip", |b| {
        b.iter(|| black_box(BanKey::ip(black_box(ip))))
    });
    pipeline(c);
}

async fn handler() -> &'static str {
    "{\"data\":[1,2,3]}"
}

/// Bans with `others` addresses (none of them the bench's client) banned for a day.
fn bans_with(others: u32, rt: &tokio::runtime::Runtime) -> Bans {
    let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default());
    let now = secure_routes::clock::Clock::now(&secure_routes::clock::SystemClock);
    rt.block_on(async {
        for i in 0..others {
            let key = BanKey::ip(IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
            bans.add(&key, now + Duration::from_secs(86_400), "bench", now)
                .await
                .expect("add");
        }
    });
    bans
}

/// PUBLIC (rate limit raised so every iteration runs the whole pipeline) around the handler.
fn public_app(bans: Option<Bans>) -> Router {
    let mut security = Security::builder().csrf_secret([3u8; 32]);
    if let Some(b) = bans {
        security = security.bans(b);
    }
    let security = security.build().expect("security");
    let policy = Policy::public()
        .to_builder()
        .rate_limit(Quota::per_second(1_000_000_000).with_algorithm(Algorithm::Gcra))
        .build()
        .expect("policy");
    Router::new()
        .route(
            "/public",
            get(handler).layer(security.layer(policy).expect("layer")),
        )
        .with_state(())
}

fn request() -> Request<Body> {
    let mut req = Request::get("/public")
        .body(Body::empty())
        .expect("request");
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 1],
            40000,
        ))));
    req
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    let now = Duration::from_secs(1_700_000_000);
    let mut g = c.benchmark_group("bans_check");
    let none = bans_with(0, &rt);
    let some = bans_with(1_000, &rt);
    // Inside the runtime, as in the pipeline (the first check starts the background task).
    rt.block_on(async {
        assert!(none.check(client, None, now).is_none());
        assert!(some.check(client, None, now).is_none());
    });
    g.bench_function("nothing_banned", |b| {
        b.iter(|| black_box(none.check(black_box(client), None, now)))
    });
    g.bench_function("1k_others_banned", |b| {
        b.iter(|| black_box(some.check(black_box(client), None, now)))
    });
    g.finish();

    let apps = [
        ("bans_off", public_app(None)),
        (
            "bans_on_nothing_banned",
            public_app(Some(bans_with(0, &rt))),
        ),
        (
            "bans_on_1k_others_banned",
            public_app(Some(bans_with(1_000, &rt))),
        ),
    ];
    let mut g = c.benchmark_group("pipeline_bans");
    for (name, app) in &apps {
        // Sanity: every iteration is a 200, not a refusal.
        let status = rt
            .block_on(app.clone().oneshot(request()))
            .unwrap()
            .status();
        assert_eq!(status, 200, "{name}");
        g.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| app.clone().oneshot(request()));
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
