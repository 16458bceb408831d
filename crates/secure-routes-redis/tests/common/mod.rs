//! Helpers for the Redis tests: find the server, or skip.

use std::sync::Arc;

use redis::aio::ConnectionManager;
use secure_routes::clock::FakeClock;
use secure_routes_redis::RedisStore;

/// `REDIS_URL`, or `None` (with a skip message) when it is unset. With
/// `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI) a missing URL is a failure, not a skip.
pub(crate) fn redis_url(test: &str) -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let required = std::env::var("SECURE_ROUTES_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{test}: REDIS_URL is unset but SECURE_ROUTES_REQUIRE_SERVICES=1: Redis tests must run"
            );
            announce_skip(test, "REDIS_URL is not set (e.g. redis://127.0.0.1:6379)");
            None
        }
    }
}

/// Says that `test` did not run, where `cargo test` shows it. libtest captures `eprintln!`
/// of a passing test (the line would only appear with `--nocapture`), so a skip would look
/// exactly like a pass; writing to the process's stderr handle directly is not captured.
fn announce_skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
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
