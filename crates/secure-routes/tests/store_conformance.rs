//! The shared store conformance suite against the memory store (always run).
//!
//! Needs the `conformance` feature: `cargo test -p secure-routes --features conformance --test
//! store_conformance`. Without it this file compiles to nothing.
#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::{MemoryStore, RateLimitKey, conformance};

async fn memory(clock: FakeClock) -> MemoryStore {
    MemoryStore::with_clock(Arc::new(clock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run_all(memory).await;
}

/// The memory store's own view of its state: advance the clock to just before the state's
/// lifetime ends (it must still be held after a sweep), then to the end (a sweep empties it).
async fn memory_state(
    store: Arc<MemoryStore>,
    clock: FakeClock,
    _key: RateLimitKey,
    lifetime: Duration,
) {
    if lifetime.is_zero() {
        assert!(store.is_empty(), "held {} entries", store.len());
        return;
    }
    assert_eq!(store.len(), 1);
    clock.advance(lifetime - Duration::from_nanos(1));
    store.sweep();
    assert_eq!(store.len(), 1, "state dropped before its lifetime ended");
    clock.advance(Duration::from_nanos(1));
    assert_eq!(store.sweep(), 1);
    assert!(store.is_empty());
}

#[tokio::test]
async fn memory_store_state_is_bounded() {
    conformance::state_is_bounded(memory, memory_state).await;
}

/// The suite must catch a store that gets a decision wrong: a store that admits everything
/// fails it.
#[tokio::test]
#[should_panic(expected = "differs from the algorithm")]
async fn a_store_that_admits_too_much_fails_the_suite() {
    use secure_routes::rate_limit::{BoxFuture, Decision, Quota, RateLimitStore, StoreError};
    struct Lenient(MemoryStore);
    impl RateLimitStore for Lenient {
        fn acquire<'a>(
            &'a self,
            key: &'a RateLimitKey,
            quota: Quota,
            cost: u32,
        ) -> BoxFuture<'a, Result<Decision, StoreError>> {
            let d = self.0.acquire_now(key, quota, cost);
            Box::pin(std::future::ready(Ok(Decision { allowed: true, ..d })))
        }
        fn name(&self) -> &'static str {
            "lenient"
        }
    }
    conformance::sliding_window_matches_the_algorithm(&|clock: FakeClock| async move {
        Lenient(MemoryStore::with_clock(Arc::new(clock)))
    })
    .await;
}
