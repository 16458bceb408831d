//! Instruction-count driver for `bench/callgrind.sh`: serves a fixed number of in-process
//! requests to one of the routes of `stacks/mod.rs` and exits. Run under
//! `valgrind --tool=callgrind` twice with different counts, the difference divided by the
//! difference in requests is the cost of one request with setup and warm-up subtracted.
//! Instruction counts do not move with other processes' load, unlike wall-clock figures.
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
    rt.block_on(async {
        for (name, path, bearer) in routes {
            let bearer = bearer.then_some(token.as_str());
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
    });
}
