//! The shared store conformance suite (`secure_routes::rate_limit::conformance`) against
//! `PostgresStore` on an injected fake clock.
//!
//! The suite wants a fresh, empty store per scenario; here every store shares one migrated
//! schema and gets a random salt XORed into its keys, so scenarios never see each other's
//! rows (distinct keys stay distinct under the same salt).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::{
    BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore, StoreError, conformance,
};
use secure_routes_postgres::PostgresStore;

struct Salted {
    inner: PostgresStore,
    salt: [u8; 16],
}

impl Salted {
    fn new(db: &TestDb, clock: FakeClock) -> Self {
        Self {
            inner: PostgresStore::with_clock(db.pool.clone(), Arc::new(clock)),
            salt: rand::random(),
        }
    }

    fn salted(&self, key: &RateLimitKey) -> RateLimitKey {
        let mut bytes = *key.as_bytes();
        for (b, s) in bytes.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        RateLimitKey::from_bytes(bytes)
    }

    /// Rows held for `key` (both algorithms).
    async fn rows(&self, key: &RateLimitKey) -> i64 {
        let client = self.inner.pool().get().await.unwrap();
        let salted = self.salted(key);
        let k: &[u8] = salted.as_bytes();
        client
            .query_one("SELECT count(*) FROM rate_limits WHERE key = $1", &[&k])
            .await
            .unwrap()
            .get(0)
    }
}

impl RateLimitStore for Salted {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let key = self.salted(key);
        Box::pin(async move { self.inner.check(&key, quota, cost).await })
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_conformance_suite() {
    let Some(db) = TestDb::migrated("postgres_store_passes_the_conformance_suite", 16).await else {
        return;
    };
    let db = Arc::new(db);
    let make = {
        let db = Arc::clone(&db);
        move |clock: FakeClock| {
            let store = Salted::new(&db, clock);
            async move { store }
        }
    };
    conformance::run_all(&make).await;

    // Bounded state: the key's row lives exactly as long as its state matters, then the
    // sweeper deletes it; refusals and zero costs of unknown keys store nothing.
    conformance::state_is_bounded(
        &make,
        |store: Arc<Salted>, clock: FakeClock, key: RateLimitKey, lifetime: Duration| async move {
            if lifetime.is_zero() {
                assert_eq!(store.rows(&key).await, 0, "stored state for nothing");
                return;
            }
            assert_eq!(store.rows(&key).await, 1);
            clock.advance(lifetime - Duration::from_nanos(1));
            store.inner.sweep().await.unwrap();
            assert_eq!(store.rows(&key).await, 1, "swept before its lifetime ended");
            clock.advance(Duration::from_nanos(1));
            store.inner.sweep().await.unwrap();
            assert_eq!(
                store.rows(&key).await,
                0,
                "not swept at the end of its lifetime"
            );
        },
    )
    .await;

    if let Ok(db) = Arc::try_unwrap(db) {
        db.drop().await;
    }
}
