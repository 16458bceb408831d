//! Helpers for the Redis tests: find the server, or skip.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use secure_routes::clock::FakeClock;
use secure_routes_redis::RedisStore;

/// `REDIS_URL`, or `None` (with a skip message) when it is unset. With
/// `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI) a missing URL is a failure, not a skip.
pub(crate) fn redis_url(test: &str) -> Option<String> {
    secure_routes_testkit::services::service_url("REDIS_URL", test)
}

/// A fresh connection manager to `url`.
pub(crate) async fn manager(url: &str) -> ConnectionManager {
    let client = redis::Client::open(url).expect("REDIS_URL is a valid redis URL");
    ConnectionManager::new(client)
        .await
        .expect("Redis at REDIS_URL is reachable")
}

/// A key prefix no other test run uses, so parallel runs and tests never share keys.
pub(crate) fn random_prefix() -> String {
    format!("srtest-{:016x}", rand::random::<u64>())
}

/// A store with a fresh random prefix on `conn`, on the fake clock.
pub(crate) fn fake_clock_store(conn: &ConnectionManager, clock: FakeClock) -> RedisStore {
    RedisStore::new(conn.clone())
        .with_prefix(random_prefix())
        .expect("a valid prefix")
        .with_clock(Arc::new(clock))
}
