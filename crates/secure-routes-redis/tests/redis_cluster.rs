//! `RedisStore` on a Redis Cluster: the conformance suite and exact concurrency, with every
//! key's slot chosen by its hash tag.
//!
//! Needs `REDIS_CLUSTER_URLS` (comma-separated node URLs, e.g.
//! `redis://127.0.0.1:7000,redis://127.0.0.1:7001`); skipped with a message when it is unset,
//! unless `SECURE_ROUTES_REQUIRE_CLUSTER=1` (then it fails).

use std::sync::Arc;

use redis::AsyncCommands;
use secure_routes::rate_limit::{Algorithm, Quota, RateLimitStore, conformance};
use secure_routes_redis::RedisStore;

fn cluster_urls() -> Option<Vec<String>> {
    match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(urls) if !urls.trim().is_empty() => {
            Some(urls.split(',').map(|u| u.trim().to_owned()).collect())
        }
        _ => {
            let required = std::env::var("SECURE_ROUTES_REQUIRE_CLUSTER").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "REDIS_CLUSTER_URLS is unset but SECURE_ROUTES_REQUIRE_CLUSTER=1"
            );
            secure_routes_testkit::services::announce_skip(
                "the Redis Cluster tests",
                "REDIS_CLUSTER_URLS is not set (e.g. redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002)",
            );
            None
        }
    }
}

fn prefix() -> String {
    format!("srtest-{:016x}", rand::random::<u64>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_store_passes_the_conformance_suite_and_races() {
    let Some(urls) = cluster_urls() else {
        return;
    };
    let store = RedisStore::connect_cluster(urls.clone())
        .await
        .expect("cluster reachable");
    conformance::run_all(|clock| {
        let s = store
            .clone()
            .with_prefix(prefix())
            .expect("valid prefix")
            .with_clock(Arc::new(clock));
        async move { s }
    })
    .await;

    // Server time, many keys (so several slots and nodes), 4 connections, exact admissions.
    let prefix = prefix();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(
            RedisStore::connect_cluster(urls.clone())
                .await
                .expect("cluster reachable")
                .with_prefix(prefix.clone())
                .expect("valid prefix"),
        ));
    }
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let q = Quota::per_hour(5).with_algorithm(algorithm);
        let tasks: Vec<_> = (0..400)
            .map(|i| {
                let store = Arc::clone(&stores[i % 4]);
                let k = conformance::key("route:/cluster", &format!("user-{}", i % 16));
                tokio::spawn(async move { store.acquire(&k, q, 1).await.unwrap().allowed })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 16 * 5, "{algorithm:?}");
        let k = conformance::key("route:/cluster", "user-0");
        let mut conn = stores[0].connection();
        let ttl: i64 = conn.pttl(stores[0].key_name(&k, algorithm)).await.unwrap();
        assert!(ttl > 0, "{algorithm:?}: PTTL {ttl}");
    }
}
