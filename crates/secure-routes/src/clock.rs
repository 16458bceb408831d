//! Time source for every time-dependent decision.
//!
//! Rate limits, the deny cache, rate-limit headers, CSRF and credential expiry, and the audit
//! writer's fold windows read time through [`Clock`] so that tests drive time with
//! [`FakeClock::advance`] instead of sleeping, and so that a shared store can substitute its
//! own clock (Redis `TIME`, Postgres `now()`) where instance clocks would skew.
//!
//! One exception by default: a [`MemoryStore`](crate::rate_limit::MemoryStore) built without
//! an injected clock keeps its own monotonic time (the wall clock read once at build, then a
//! TSC counter), because reading the system clock on every check cost as much as the rest of
//! the hot-key check; its times never leave the process. Inject a `Clock` (as tests do) and it
//! reads that instead.
//!
//! Audit event timestamps (and their UUIDv7 ids) are not decisions: [`AuditEvent::new`]
//! stamps the system's UTC time, so the trail says when something happened even under a
//! test's fake clock.
//!
//! [`AuditEvent::new`]: crate::audit::AuditEvent::new
//!
//! ```
//! use std::time::Duration;
//! use secure_routes::clock::{Clock, FakeClock};
//!
//! let clock = FakeClock::new(Duration::from_secs(1_000));
//! clock.advance(Duration::from_secs(5));
//! assert_eq!(clock.now(), Duration::from_secs(1_005));
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, as a [`Duration`] since the Unix epoch.
///
/// ```
/// use secure_routes::clock::{Clock, SystemClock};
/// assert!(SystemClock.now().as_secs() > 1_600_000_000);
/// ```
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Time since the Unix epoch. Implementations never panic; a clock before the epoch reads 0.
    fn now(&self) -> Duration;
}

/// The operating system's wall clock.
///
/// ```
/// use secure_routes::clock::{Clock, SystemClock};
/// let a = SystemClock.now();
/// assert!(SystemClock.now() >= a || a - SystemClock.now() < std::time::Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that only moves when told to: for tests and simulations.
///
/// Cloning shares the same time.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::clock::{Clock, FakeClock};
/// let clock = FakeClock::new(Duration::from_secs(10));
/// let shared = clock.clone();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(shared.now(), Duration::from_millis(11_500));
/// ```
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock reading `start` since the epoch.
    pub fn new(start: Duration) -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(duration_to_nanos(start))),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos
            .fetch_add(duration_to_nanos(by), Ordering::SeqCst);
    }

    /// Sets the clock to `to` (which may move it backwards, to test skew).
    pub fn set(&self, to: Duration) {
        self.nanos.store(duration_to_nanos(to), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Saturating conversion of a duration to whole nanoseconds (u64 covers ~584 years).
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
