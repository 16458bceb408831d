//! `PostgresStore`: same decisions as the memory store, exact under concurrency, bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use secure_routes::StoreError;
use secure_routes::clock::{Clock, FakeClock};
use secure_routes::rate_limit::{
    Algorithm, KeyHasher, MemoryStore, Quota, RateLimitKey, RateLimitStore, Subject,
};
use secure_routes_postgres::PostgresStore;

fn key(name: &str) -> RateLimitKey {
    KeyHasher::new(b"postgres-store-tests").key("bucket", &Subject::Custom(name.into()))
}

/// A small deterministic generator (xorshift), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Plays one scripted sequence (times, costs, keys, a clock that sometimes steps back) against
/// the Postgres store and the memory store on the same fake clock; every decision must match.
async fn equivalent(db: &TestDb, quota: Quota, seed: u64, steps: usize) {
    let clock = FakeClock::new(Duration::from_secs(1_700_000_000));
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let pg = PostgresStore::with_clock(db.pool.clone(), shared.clone());
    let mem = MemoryStore::with_clock(shared);
    // Keys of their own per sequence: the fake clock restarts, the table remembers.
    let keys = [0, 1, 2].map(|i| key(&format!("{seed:x}-{i}")));
    let window_ns = u64::try_from(quota.window().as_nanos()).unwrap();
    let step_ns = (window_ns / u64::from(quota.limit())).max(1);
    let mut rng = Rng(seed);
    let (mut admitted, mut refused) = (0, 0);
    for i in 0..steps {
        match rng.below(10) {
            // Sometimes the clock steps back (NTP, failover), up to a window.
            0 => {
                let back = Duration::from_nanos(rng.below(window_ns));
                clock.set(clock.now().saturating_sub(back));
            }
            // Sometimes a long idle period.
            1 => clock.advance(Duration::from_nanos(window_ns + rng.below(window_ns))),
            _ => clock.advance(Duration::from_nanos(rng.below(step_ns * 2))),
        }
        let k = &keys[usize::try_from(rng.below(3)).unwrap()];
        let cost = match rng.below(12) {
            0 => 0,
            1 => quota.limit() + 1,
            2 => 2,
            _ => 1,
        };
        let want = mem.acquire(k, quota, cost).await.unwrap();
        let got = pg.acquire(k, quota, cost).await.unwrap();
        assert_eq!(
            got,
            want,
            "step {i}: {quota:?} cost {cost} at {:?}",
            clock.now()
        );
        if got.allowed {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    // The script exercised both answers.
    assert!(
        admitted > steps / 4 && refused > steps / 10,
        "{admitted} / {refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_decisions_equal_the_core() {
    let Some(db) = TestDb::migrated("sliding_window_decisions_equal_the_core", 2).await else {
        return;
    };
    equivalent(
        &db,
        Quota::new(5, Duration::from_secs(10)),
        0x9e37_79b9,
        300,
    )
    .await;
    // Odd numbers: a window that does not divide by the limit, millisecond scale.
    equivalent(
        &db,
        Quota::new(3, Duration::from_millis(1_000)),
        0xdead_beef,
        200,
    )
    .await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_decisions_equal_the_core() {
    let Some(db) = TestDb::migrated("gcra_decisions_equal_the_core", 2).await else {
        return;
    };
    let gcra = |q: Quota| q.with_algorithm(Algorithm::Gcra);
    equivalent(
        &db,
        gcra(Quota::new(5, Duration::from_secs(10))),
        0x1234_5678,
        300,
    )
    .await;
    // T = 333 333 334 ns: the interval rounds up.
    equivalent(
        &db,
        gcra(Quota::new(3, Duration::from_millis(1_000))),
        0x0bad_cafe,
        200,
    )
    .await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_keeps_a_state_per_algorithm() {
    let Some(db) = TestDb::migrated("one_key_keeps_a_state_per_algorithm", 2).await else {
        return;
    };
    let clock = FakeClock::new(Duration::from_secs(1_000));
    let store = PostgresStore::with_clock(db.pool.clone(), Arc::new(clock.clone()));
    let k = key("both");
    let sw = Quota::per_minute(1);
    let gcra = sw.with_algorithm(Algorithm::Gcra);
    assert!(store.acquire(&k, sw, 1).await.unwrap().allowed);
    assert!(store.acquire(&k, gcra, 1).await.unwrap().allowed);
    assert!(!store.acquire(&k, sw, 1).await.unwrap().allowed);
    assert!(!store.acquire(&k, gcra, 1).await.unwrap().allowed);
    assert_eq!(store.len().await.unwrap(), 2);
    db.drop().await;
}

/// 200 concurrent checks on one key, limit 50, from 16 connections: exactly 50 admitted.
async fn exact_under_concurrency(db: &TestDb, quota: Quota) {
    let store = PostgresStore::new(db.pool.clone()); // the database's clock
    let k = key(&format!("hot-{:?}", quota.algorithm()));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.acquire(&k, quota, 1).await })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let d = t.await.unwrap().unwrap();
        if d.allowed {
            admitted += 1;
        } else {
            assert!(d.retry_after.unwrap() > Duration::ZERO);
        }
    }
    assert_eq!(admitted, 50, "{quota:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_under_concurrency_sliding_window() {
    let Some(db) = TestDb::migrated("exact_under_concurrency_sliding_window", 16).await else {
        return;
    };
    exact_under_concurrency(&db, Quota::per_hour(50)).await;
    // One row, holding exactly the 50 admissions.
    assert_eq!(db.scalar_i64("SELECT count(*) FROM rate_limits").await, 1);
    assert_eq!(
        db.scalar_i64("SELECT cardinality(stamps)::bigint FROM rate_limits")
            .await,
        50
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_under_concurrency_gcra() {
    let Some(db) = TestDb::migrated("exact_under_concurrency_gcra", 16).await else {
        return;
    };
    // Burst of 50, then one per 72 s: the test finishes long before a token comes back.
    exact_under_concurrency(&db, Quota::per_hour(50).with_algorithm(Algorithm::Gcra)).await;
    assert_eq!(db.scalar_i64("SELECT count(*) FROM rate_limits").await, 1);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_checks_of_a_new_key_do_not_collide() {
    let Some(db) = TestDb::migrated("concurrent_first_checks_of_a_new_key", 16).await else {
        return;
    };
    // Many keys, each first seen by several checks at once: the insert race is resolved by
    // deciding again on the winner's row, never by an error or a double count.
    let store = PostgresStore::new(db.pool.clone());
    let quota = Quota::per_hour(3);
    let tasks: Vec<_> = (0..20)
        .flat_map(|k| (0..5).map(move |_| k))
        .map(|k| {
            let store = store.clone();
            tokio::spawn(async move { (k, store.acquire(&key(&format!("k{k}")), quota, 1).await) })
        })
        .collect();
    let mut admitted = [0u32; 20];
    for t in tasks {
        let (k, d) = t.await.unwrap();
        if d.unwrap().allowed {
            admitted[k] += 1;
        }
    }
    assert_eq!(admitted, [3; 20]);
    assert_eq!(store.len().await.unwrap(), 20);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_bounded_and_swept() {
    let Some(db) = TestDb::migrated("state_is_bounded_and_swept", 2).await else {
        return;
    };
    let clock = FakeClock::new(Duration::from_secs(2_000));
    let store = PostgresStore::with_clock(db.pool.clone(), Arc::new(clock.clone()));
    let quota = Quota::per_minute(10);
    for name in ["a", "b", "c"] {
        for _ in 0..100 {
            store.acquire(&key(name), quota, 1).await.unwrap();
        }
    }
    store
        .acquire(&key("a"), quota.with_algorithm(Algorithm::Gcra), 1)
        .await
        .unwrap();
    // A refused or zero-cost check of an unknown key stores nothing.
    store.acquire(&key("x"), quota, 11).await.unwrap();
    store.acquire(&key("y"), quota, 0).await.unwrap();
    store
        .acquire(&key("z"), quota.with_algorithm(Algorithm::Gcra), 0)
        .await
        .unwrap();
    // One row per key and algorithm, never a row per request; at most `limit` stamps.
    assert_eq!(store.len().await.unwrap(), 4);
    assert_eq!(
        db.scalar_i64("SELECT max(cardinality(stamps))::bigint FROM rate_limits")
            .await,
        10
    );
    // Nothing has expired yet.
    assert_eq!(store.sweep().await.unwrap(), 0);
    // GCRA's row expires at its TAT, 6 s (one interval) after its one admission.
    clock.advance(Duration::from_secs(6));
    assert_eq!(store.sweep().await.unwrap(), 1);
    // The logs expire a window after their newest stamp, not a nanosecond earlier.
    clock.advance(Duration::from_secs(54) - Duration::from_nanos(1));
    assert_eq!(store.sweep().await.unwrap(), 0);
    clock.advance(Duration::from_nanos(1));
    assert_eq!(store.sweep().await.unwrap(), 3);
    assert!(store.is_empty().await.unwrap());
    // A swept key starts afresh.
    assert_eq!(
        store.acquire(&key("a"), quota, 1).await.unwrap().remaining,
        9
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_with_the_database_clock_keeps_live_rows() {
    let Some(db) = TestDb::migrated("sweep_with_the_database_clock", 2).await else {
        return;
    };
    let store = PostgresStore::new(db.pool.clone());
    store
        .acquire(&key("live"), Quota::per_hour(5), 1)
        .await
        .unwrap();
    // A row written by an instance whose clock is far behind: long expired by now().
    let old = PostgresStore::with_clock(
        db.pool.clone(),
        Arc::new(FakeClock::new(Duration::from_secs(1_000_000))),
    );
    old.acquire(&key("stale"), Quota::per_hour(5), 1)
        .await
        .unwrap();
    assert_eq!(store.len().await.unwrap(), 2);
    assert_eq!(store.sweep().await.unwrap(), 1);
    assert_eq!(store.len().await.unwrap(), 1);
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweeper_removes_expired_rows() {
    let Some(db) = TestDb::migrated("the_background_sweeper", 2).await else {
        return;
    };
    let clock = FakeClock::new(Duration::from_secs(3_000));
    let store = PostgresStore::with_clock(db.pool.clone(), Arc::new(clock.clone()));
    for name in ["a", "b"] {
        store
            .acquire(&key(name), Quota::per_second(5), 1)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(1));
    let sweeper = store.spawn_sweeper(Duration::from_millis(5)).unwrap();
    assert!(sweeper.is_running());
    // Wait for the condition, not for a time: the generous bound only stops a hang.
    tokio::time::timeout(Duration::from_secs(30), async {
        while !store.is_empty().await.unwrap() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the sweeper never emptied the table");
    sweeper.stop();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_store_errors_not_refusals() {
    // Unreachable server.
    let pool = secure_routes_postgres::connect("postgres://postgres@127.0.0.1:1/none", 1).unwrap();
    let err = PostgresStore::new(pool)
        .acquire(&key("a"), Quota::per_minute(1), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    // Reachable, but the schema was never migrated.
    let Some(db) = TestDb::new("failures_are_store_errors", 1).await else {
        return;
    };
    let err = PostgresStore::new(db.pool.clone())
        .acquire(&key("a"), Quota::per_minute(1), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Protocol(_)), "{err:?}");
    db.drop().await;
}
