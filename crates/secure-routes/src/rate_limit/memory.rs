//! In-memory rate-limit store. STUB: to be completed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::sliding_window::{self, SlidingLog};
use super::{BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore, StoreError};
use crate::clock::{Clock, SystemClock};

/// In-memory store for one process.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    map: Mutex<HashMap<RateLimitKey, SlidingLog>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }
    /// A store on the given clock.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl RateLimitStore for MemoryStore {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let now = self.clock.now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let d = sliding_window::acquire(map.entry(*key).or_default(), now, quota, cost);
        Box::pin(async move { Ok(d) })
    }
    fn name(&self) -> &'static str {
        "memory"
    }
}
