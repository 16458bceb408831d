//! `RedisStore` against a real Redis: the shared conformance suite (on a fake clock), the
//! server's own clock, concurrency across connections, key expiry and `NOSCRIPT` recovery.
//!
//! Needs `REDIS_URL`; skipped with a message when it is unset, unless
//! `SECURE_ROUTES_REQUIRE_SERVICES=1` (then it fails).

mod common;

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use secure_routes::StoreError;
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::{Algorithm, Quota, RateLimitKey, RateLimitStore, conformance};
use secure_routes_redis::RedisStore;

use common::{fake_clock_store, manager, random_prefix, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_passes_the_conformance_suite() {
    let Some(url) = redis_url("redis_store_passes_the_conformance_suite") else {
        return;
    };
    let conn = manager(&url).await;
    conformance::run_all(|clock| {
        let store = fake_clock_store(&conn, clock);
        async move { store }
    })
    .await;
}

#[tokio::test]
async fn redis_state_expires_with_the_window() {
    let Some(url) = redis_url("redis_state_expires_with_the_window") else {
        return;
    };
    let conn = manager(&url).await;
    conformance::state_is_bounded(
        |clock| {
            let store = fake_clock_store(&conn, clock);
            async move { store }
        },
        |store: Arc<RedisStore>, _clock: FakeClock, key: RateLimitKey, lifetime: Duration| async move {
            let mut conn = store.connection();
            let mut ttls = Vec::new();
            for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
                let name = store.key_name(&key, algorithm);
                // -2: no such key; -1: a key without expiry (never acceptable).
                let ttl: i64 = conn.pttl(&name).await.expect("PTTL");
                assert_ne!(ttl, -1, "{name} has no expiry");
                if ttl >= 0 {
                    ttls.push(ttl);
                }
            }
            if lifetime.is_zero() {
                assert!(ttls.is_empty(), "state stored for a refusal: {ttls:?}");
                return;
            }
            // Redis expires keys on its own clock, so the TTL runs from when the script ran:
            // allow for the (real) time the test took since, no more.
            let want = i64::try_from(lifetime.as_millis()).expect("small");
            assert_eq!(ttls.len(), 1, "one key per algorithm used");
            let ttl = ttls[0];
            assert!(
                ttl <= want && ttl > want - 2_000,
                "TTL {ttl} ms, expected just under {want} ms"
            );
        },
    )
    .await;
}

fn key(name: &str) -> RateLimitKey {
    conformance::key("route:/redis-tests", name)
}

/// Real time from Redis `TIME`, without sleeping: 10 concurrent calls at 3 per hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_time_admits_exactly_the_limit() {
    let Some(url) = redis_url("server_time_admits_exactly_the_limit") else {
        return;
    };
    let store = Arc::new(
        RedisStore::new(manager(&url).await)
            .with_prefix(random_prefix())
            .unwrap(),
    );
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let q = Quota::per_hour(3).with_algorithm(algorithm);
        let k = key("server-time");
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.acquire(&k, q, 1).await.unwrap() })
            })
            .collect();
        let mut decisions = Vec::new();
        for t in tasks {
            decisions.push(t.await.unwrap());
        }
        let admitted = decisions.iter().filter(|d| d.allowed).count();
        assert_eq!(admitted, 3, "{algorithm:?}: {decisions:?}");
        for d in decisions.iter().filter(|d| !d.allowed) {
            assert_eq!(d.remaining, 0);
            let retry = d.retry_after.expect("a refusal says when to retry");
            // Real time passes between the calls, but far less than a minute.
            let lower = match algorithm {
                Algorithm::SlidingWindow => Duration::from_secs(3_540),
                Algorithm::Gcra => Duration::from_secs(1_140),
            };
            assert!(
                retry > lower && retry <= Duration::from_secs(3_600),
                "{retry:?}"
            );
        }
        let mut conn = store.connection();
        let ttl: i64 = conn.pttl(store.key_name(&k, algorithm)).await.unwrap();
        assert!(
            ttl > 3_500_000 && ttl <= 3_600_000,
            "{algorithm:?}: PTTL {ttl}"
        );
    }
}

/// 200 concurrent checks over 4 separate connections, one key, limit 50: exactly 50 admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_across_connections_admit_exactly_the_limit() {
    let Some(url) = redis_url("concurrent_checks_across_connections_admit_exactly_the_limit")
    else {
        return;
    };
    let prefix = random_prefix();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(Arc::new(
            RedisStore::new(manager(&url).await)
                .with_prefix(prefix.clone())
                .unwrap(),
        ));
    }
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let q = Quota::per_hour(50).with_algorithm(algorithm);
        let k = key("race");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = Arc::clone(&stores[i % stores.len()]);
                tokio::spawn(async move { store.acquire(&k, q, 1).await.unwrap().allowed })
            })
            .collect();
        let mut admitted = 0;
        for t in tasks {
            admitted += usize::from(t.await.unwrap());
        }
        assert_eq!(admitted, 50, "{algorithm:?}");
    }
}

/// After `SCRIPT FLUSH` (as after a server restart) the next check reloads the script and
/// still sees the key's state.
#[tokio::test]
async fn noscript_is_recovered() {
    let Some(url) = redis_url("noscript_is_recovered") else {
        return;
    };
    let conn = manager(&url).await;
    let store = fake_clock_store(&conn, FakeClock::new(conformance::START));
    for algorithm in [Algorithm::SlidingWindow, Algorithm::Gcra] {
        let q = Quota::per_minute(2).with_algorithm(algorithm);
        let k = key("noscript");
        assert!(store.acquire(&k, q, 1).await.unwrap().allowed);
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query_async(&mut store.connection())
            .await
            .unwrap();
        let d = store.acquire(&k, q, 1).await.unwrap();
        assert!(d.allowed && d.remaining == 0, "{algorithm:?}: {d:?}");
        assert!(!store.acquire(&k, q, 1).await.unwrap().allowed);
    }
}

/// A server that cannot be reached is an error the policy handles, never a panic or a 429.
#[tokio::test]
async fn an_unreachable_server_is_a_store_error() {
    // Port 1 on loopback: nothing listens there.
    let err = RedisStore::connect("redis://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = RedisStore::connect("not a url").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(_) | StoreError::Protocol(_)),
        "{err:?}"
    );
}
