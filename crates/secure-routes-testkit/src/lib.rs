//! Fixtures the secure-routes crates' tests and benches share, so each exists once:
//!
//! * [`keys`]: the throwaway PEM keys the JWT tests sign with;
//! * [`jwks`]: signing keys with their JWKs, and a fake key server on loopback that stands in
//!   for a JWKS endpoint or a Supabase project (swappable key set, request counts, outages on
//!   demand);
//! * [`services`]: the rule for tests that need PostgreSQL or Redis: skip visibly when the URL
//!   is not set, fail under `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI);
//! * [`http1`]: a raw HTTP/1.1 client that writes its whole body before reading (the
//!   early-refusal tests);
//! * [`percentile`]: the latency percentile the store benches print.
//!
//! Dev-only (`publish = false`), and free of `secure-routes` types on purpose: the core crate
//! dev-depends on this crate, and a dependency back would build a second, incompatible copy
//! of the core.

pub mod http1;
pub mod jwks;
pub mod keys;
pub mod services;

use std::time::Duration;

/// The `p`-quantile (`0.0..=1.0`) of `sorted` latencies by the nearest-rank rule (index
/// rounded), or zero for an empty slice.
///
/// ```
/// use std::time::Duration;
/// use secure_routes_testkit::percentile;
/// let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
/// assert_eq!(percentile(&ms, 0.50), Duration::from_millis(51));
/// assert_eq!(percentile(&ms, 0.99), Duration::from_millis(99));
/// assert_eq!(percentile(&[], 0.5), Duration::ZERO);
/// ```
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Bench figures only: the float rounding is the intended nearest-rank index.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}
