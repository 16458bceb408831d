//! Server for `bench/http_cpu.sh`: the demo's `/api/public-data` handler behind each route of
//! `secure-routes/benches/stacks/mod.rs` (included by path, so the HTTP, criterion and
//! instruction-count figures measure the same stacks): `/bare`, `/bare-wire` (the handler
//! with PUBLIC's header lines as constants), `/public` (PUBLIC),
//! `/assembled` (tower_governor and tower-http layers as a user would stack them),
//! `/authenticated` (AUTHENTICATED, HS256 bearer) and `/assembled-jwt` (the assembled stack
//! plus a `jsonwebtoken` bearer check). Quotas are raised so the load generator measures the
//! stacks, not 429s. One tokio worker, so CPU per request is comparable.
//!
//! Usage: `bench_server 127.0.0.1:3999`; prints `ready on ADDR token TOKEN` once every route
//! has answered a 200 in process, TOKEN being the bearer for the authenticated routes.

#[path = "../../secure-routes/benches/stacks/mod.rs"]
mod stacks;

use std::net::SocketAddr;

use axum::Json;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn public_data() -> Json<Value> {
    Json(json!({"data": [
        {"id": 1, "name": "alpha"},
        {"id": 2, "name": "beta"},
        {"id": 3, "name": "gamma"}
    ]}))
}

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3999".to_owned())
        .parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let app = stacks::app(public_data);
        let token = stacks::token();
        for (name, path, bearer) in stacks::ROUTES {
            let req = stacks::request(path, bearer.then_some(token.as_str()));
            let status = app.clone().oneshot(req).await?.status();
            anyhow::ensure!(status == 200, "{name} answered {status}");
        }
        // `/bare-wire` stands for PUBLIC's bytes on the wire: the same header names, and
        // values of the same length, or its figure means nothing.
        let mut lines = Vec::new();
        for path in ["/public", "/bare-wire"] {
            let res = app.clone().oneshot(stacks::request(path, None)).await?;
            let mut l: Vec<(String, usize)> = res
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.len()))
                .collect();
            l.sort();
            lines.push(l);
        }
        anyhow::ensure!(
            lines[0] == lines[1],
            "/bare-wire no longer answers with PUBLIC's header lines: {:?} against {:?}",
            lines[1],
            lines[0]
        );
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("ready on {} token {token}", listener.local_addr()?);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await?;
        Ok(())
    })
}
