//! The shared store conformance suite (`secure_routes::rate_limit::conformance`) against
//! `SqliteStore` on an injected fake clock. SQLite needs no service, so this always runs.
//!
//! Every scenario gets a fresh store on its own file in its own temporary directory, which
//! lives as long as the store.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::{
    BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore, StoreError, conformance,
};
use secure_routes_sqlite::SqliteStore;

/// A store and the directory its file lives in.
struct Fresh {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

impl Fresh {
    fn new(clock: FakeClock) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open_with_clock(dir.path().join("limits.db"), Arc::new(clock)).unwrap();
        Self { store, _dir: dir }
    }

    /// Rows held for `key` (both algorithms), read on a connection of its own.
    fn rows(&self, key: &RateLimitKey) -> i64 {
        let conn = Connection::open(self.store.path()).unwrap();
        let k: &[u8] = key.as_bytes();
        conn.query_row(
            "SELECT count(*) FROM rate_limits WHERE key = ?1",
            [k],
            |r| r.get(0),
        )
        .unwrap()
    }
}

impl RateLimitStore for Fresh {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.store.acquire(key, quota, cost)
    }

    fn name(&self) -> &'static str {
        self.store.name()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_conformance_suite() {
    let make = |clock: FakeClock| async move { Fresh::new(clock) };
    conformance::run_all(&make).await;

    // Bounded state: the key's row lives exactly as long as its state matters, then a sweep
    // deletes it; refusals and zero costs of unknown keys store nothing.
    conformance::state_is_bounded(
        &make,
        |store: Arc<Fresh>, clock: FakeClock, key: RateLimitKey, lifetime: Duration| async move {
            if lifetime.is_zero() {
                assert_eq!(store.rows(&key), 0, "stored state for nothing");
                assert!(store.store.is_empty().await.unwrap());
                return;
            }
            assert_eq!(store.rows(&key), 1);
            assert_eq!(store.store.len().await.unwrap(), 1);
            clock.advance(lifetime - Duration::from_nanos(1));
            assert_eq!(store.store.sweep().await.unwrap(), 0);
            assert_eq!(store.rows(&key), 1, "swept before its lifetime ended");
            clock.advance(Duration::from_nanos(1));
            assert_eq!(store.store.sweep().await.unwrap(), 1);
            assert_eq!(store.rows(&key), 0, "not swept at the end of its lifetime");
        },
    )
    .await;
}
