//! Instruction-count driver for `bench/callgrind.sh`: serves a fixed number of in-process
//! requests to one of the routes of `stacks/mod.rs` and exits. Run under
//! `valgrind --tool=callgrind` twice with different counts, counting only inside
//! `measured_requests` (after a warm-up), the difference divided by the difference in
//! requests is the cost of one request. Instruction counts do not move with other
//! processes' load, unlike wall-clock figures; what happens once (setup, calibration) is
//! outside the counted function, because some of it runs for a time, not a number of steps.
//!
//! Usage: `instructions ROUTE REQUESTS` (ROUTE: one of the names in `stacks::ROUTES`).
//! Without arguments (as `cargo bench` runs it) it serves 1,000 requests to each route and
//! checks every answer is a 200.

mod stacks;

use tower::ServiceExt;

async fn handler() -> &'static str {
    "{\"data\":[1,2,3]}"
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (routes, n): (Vec<_>, u64) = match args.as_slice() {
        [] => (stacks::ROUTES.to_vec(), 1_000),
        [name, n] => {
            let route = stacks::ROUTES
                .into_iter()
                .find(|(r, _, _)| r == name)
                .unwrap_or_else(|| panic!("unknown route {name}; one of {:?}", stacks::ROUTES));
            (vec![route], n.parse().expect("REQUESTS is a number"))
        }
        _ => panic!("usage: instructions [ROUTE REQUESTS]"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = stacks::app(handler);
    let token = stacks::token();
    for (name, path, bearer) in routes {
        let bearer = bearer.then_some(token.as_str());
        // Warm-up, not counted: the first requests build what later ones reuse (the CPU
        // counter's calibration behind the memory store's clock, which runs until enough
        // wall time has passed and so costs a different number of instructions every run).
        rt.block_on(serve(&app, name, path, bearer, WARM_UP));
        measured_requests(&rt, &app, name, path, bearer, n);
    }
}

/// Requests served before the counted ones.
const WARM_UP: u64 = 200;

/// The counted requests: `bench/callgrind.sh` collects only inside this function
/// (`--collect-atstart=no --toggle-collect=*measured_requests*`).
#[inline(never)]
fn measured_requests(
    rt: &tokio::runtime::Runtime,
    app: &axum::Router,
    name: &str,
    path: &str,
    bearer: Option<&str>,
    n: u64,
) {
    rt.block_on(serve(app, name, path, bearer, n));
}

async fn serve(app: &axum::Router, name: &str, path: &str, bearer: Option<&str>, n: u64) {
    for _ in 0..n {
        let res = app
            .clone()
            .oneshot(stacks::request(path, bearer))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{name}");
        // Read the body as a server would, so its cost is counted too.
        axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
    }
}
