//! Whole-pipeline cost per request, in process: the same handler bare, behind PUBLIC, behind
//! the stack a user would assemble from tower_governor and tower-http layers, behind
//! AUTHENTICATED with an HS256 bearer token, and behind that assembled stack plus a
//! `jsonwebtoken` bearer check (the routes are built in `stacks/mod.rs`). One run measures
//! all five, so "PUBLIC adds at most 1.5 µs, AUTHENTICATED HS256 uncached at most 4 µs over
//! the bare handler" and the ratios to the assembled stacks come from the same run. Quotas are
//! raised far beyond what the bench reaches, so every iteration runs the full pipeline
//! including the store call and the rate-limit headers, rather than short-circuiting on 429.
//!
//! Run: `cargo bench -p secure-routes --bench pipeline`

mod stacks;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::ServiceExt;

async fn handler() -> &'static str {
    "{\"data\":[1,2,3]}"
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = stacks::app(handler);
    let token = stacks::token();

    let mut g = c.benchmark_group("pipeline");
    for (name, path, bearer) in stacks::ROUTES {
        let bearer = bearer.then_some(token.as_str());
        // Sanity: every iteration is a 200, not a refusal.
        let status = rt
            .block_on(app.clone().oneshot(stacks::request(path, bearer)))
            .unwrap()
            .status();
        assert_eq!(status, 200, "{name}");
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| app.clone().oneshot(stacks::request(path, bearer)));
        });
    }
    // PUBLIC again with a browser's twelve headers (the cases above send none). The request
    // fingerprint, which reads every header, is not computed here: this bench records no
    // events (no audit writer, no bans) and its key has no fingerprint part (DESIGN, "Request
    // fingerprint"); its own cost is the `fingerprint` bench's.
    let public = stacks::ROUTES
        .iter()
        .find(|(name, _, _)| *name == "public")
        .map(|(_, path, _)| *path)
        .expect("a public route");
    let status = rt
        .block_on(app.clone().oneshot(stacks::browser_request(public)))
        .unwrap()
        .status();
    assert_eq!(status, 200, "public with browser headers");
    g.bench_function("public-browser-headers", |b| {
        b.to_async(&rt)
            .iter(|| app.clone().oneshot(stacks::browser_request(public)));
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
