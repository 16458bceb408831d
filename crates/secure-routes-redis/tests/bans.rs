//! `RedisStore` as a ban store: the shared ban conformance suite (three connections on one
//! server for the concurrent case), and key hygiene (one hash tag, every state key expires).
//!
//! Needs `REDIS_URL`; skipped with a message when it is unset, unless
//! `SECURE_ROUTES_REQUIRE_SERVICES=1` (then it fails).

#[allow(dead_code)]
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use secure_routes::bans::{BanKey, BanPolicy, BanStore, conformance};
use secure_routes_redis::{RedisStore, ban_index_name, ban_key_name};

use common::{manager, random_prefix, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_passes_the_ban_conformance_suite() {
    let Some(url) = redis_url("redis_store_passes_the_ban_conformance_suite") else {
        return;
    };
    let conn = manager(&url).await;
    conformance::run_all(
        || {
            let store = RedisStore::new(conn.clone())
                .with_prefix(random_prefix())
                .unwrap();
            async move { store }
        },
        || {
            let url = url.clone();
            async move {
                let prefix = random_prefix();
                let mut handles = Vec::new();
                for _ in 0..3 {
                    // Three connections: three instances sharing one server.
                    let store = RedisStore::new(manager(&url).await)
                        .with_prefix(prefix.clone())
                        .unwrap();
                    handles.push(Box::new(store));
                }
                handles
            }
        },
    )
    .await;
}

#[tokio::test]
async fn redis_ban_state_expires_and_shares_one_slot() {
    let Some(url) = redis_url("redis_ban_state_expires_and_shares_one_slot") else {
        return;
    };
    let conn = manager(&url).await;
    let prefix = random_prefix();
    let store = RedisStore::new(conn.clone())
        .with_prefix(prefix.clone())
        .unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let key = BanKey::subject("ttl");
    store
        .strike(&key, 50, &BanPolicy::default(), now)
        .await
        .unwrap();
    let name = ban_key_name(&prefix, &key);
    assert!(name.contains("{bans}") && ban_index_name(&prefix).contains("{bans}"));
    let mut c = store.connection();
    let ttl: i64 = c.pttl(&name).await.unwrap();
    // Kept for the history period (7 days) after the ban, never without an expiry.
    let week = 7 * 86_400_000;
    assert!((week - 5_000..=week).contains(&ttl), "ttl {ttl}");
    let _: () = c.del(ban_index_name(&prefix)).await.unwrap();
    let _: () = c.del(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_honour_each_others_bans() {
    let Some(url) = redis_url("three_instances_on_one_redis_honour_each_others_bans") else {
        return;
    };
    let prefix = random_prefix();
    let mut handles: Vec<std::sync::Arc<dyn BanStore>> = Vec::new();
    for _ in 0..3 {
        // Three connections: three instances sharing one server, one fresh prefix.
        let store = RedisStore::new(manager(&url).await)
            .with_prefix(prefix.clone())
            .unwrap();
        handles.push(std::sync::Arc::new(store));
    }
    conformance::three_instances(handles).await;
}
