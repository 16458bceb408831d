//! Server for `bench/http_cpu.sh`: the demo's `/api/public-data` handler twice, once behind
//! the PUBLIC policy (quota raised so the load generator measures the pipeline, not 429s)
//! and once unprotected at `/plain`. One tokio worker, so CPU per request is comparable.
//!
//! Usage: `bench_server 127.0.0.1:3999`

use std::net::SocketAddr;

use axum::{Json, Router, routing::get};
use secure_routes::rate_limit::Algorithm;
use secure_routes::{Policy, Quota, Security};
use serde_json::{Value, json};

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
        let security = Security::builder().csrf_secret([9u8; 32]).build()?;
        // PUBLIC, with a quota no load test reaches: every request still runs the whole
        // pipeline including the store call and the rate-limit headers.
        let policy = Policy::public()
            .to_builder()
            .rate_limit(Quota::per_second(100_000_000).with_algorithm(Algorithm::Gcra))
            .build()?;
        let app = Router::new()
            .route(
                "/api/public-data",
                get(public_data).layer(security.layer(policy)?),
            )
            .route("/plain", get(public_data));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("ready on {}", listener.local_addr()?);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await?;
        Ok(())
    })
}
