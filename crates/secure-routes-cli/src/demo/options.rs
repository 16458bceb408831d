//! [`DemoOptions`]: where the demo keeps its state and how it serves, as the
//! `secure-routes demo` flags set it, and the skewed clock that `--clock-skew-ms` asks for.

use std::time::Duration;

use secure_routes::alerts::AlertEngine;
use secure_routes::bans::BanPolicy;
use secure_routes::clock::{Clock, SystemClock};
use secure_routes::serve::ServeConfig;

use super::Identity;
use crate::stores::{AuditLocation, LimitsLocation};

/// Where the demo keeps its state and how it serves (`secure-routes demo` flags).
///
/// ```
/// use secure_routes_cli::demo::DemoOptions;
/// let o = DemoOptions::default();
/// assert_eq!(o.limits.to_string(), "memory");
/// assert_eq!(o.audit.to_string(), "sqlite:./secure-routes.db");
/// assert_eq!(o.bans.unwrap().threshold(), 50);
/// ```
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Rate-limit store location.
    pub limits: LimitsLocation,
    /// Audit store location.
    pub audit: AuditLocation,
    /// `__Host-` CSRF cookie with `Secure`, and HSTS.
    pub secure_cookies: bool,
    /// Longest wait for one rate-limit store call (none: the policies' 50 ms).
    pub store_timeout: Option<Duration>,
    /// Milliseconds added to this instance's clock (negative: behind). For tests that run
    /// several instances whose clocks disagree; shared stores take time from the server, so
    /// this must not change what they admit.
    pub clock_skew_ms: i64,
    /// Whose tokens are accepted.
    pub identity: Identity,
    /// Escalating bans: the policy (none: off, `--bans off`). On by default with
    /// [`BanPolicy::default`]; `--ban-threshold N` changes the threshold. Kept in the limits
    /// store, so instances sharing `--limits` share bans.
    pub bans: Option<BanPolicy>,
    /// Connection limits and shutdown grace (`--header-read-timeout`, `--idle-timeout`,
    /// `--max-connections`, `--max-connections-per-ip`, `--shutdown-grace`).
    pub serve: ServeConfig,
    /// The alert engine every audit event is shown to (`--alert-webhook`, `--alerts`; built
    /// with [`crate::alerts::engine`] before the banner, so a missing secret stops the start).
    /// [`run`](super::run) gives its queued webhooks a bounded time to go out on stop.
    pub alerts: Option<AlertEngine>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            limits: LimitsLocation::Memory,
            audit: AuditLocation::Sqlite("./secure-routes.db".into()),
            secure_cookies: false,
            store_timeout: None,
            clock_skew_ms: 0,
            identity: Identity::DemoSecret,
            bans: Some(BanPolicy::default()),
            serve: ServeConfig::default(),
            alerts: None,
        }
    }
}

/// The system clock shifted by a fixed amount (see [`DemoOptions::clock_skew_ms`]).
#[derive(Debug)]
pub(super) struct SkewedClock(pub(super) i64);

impl Clock for SkewedClock {
    fn now(&self) -> Duration {
        let now = SystemClock.now();
        let skew = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            now.saturating_add(skew)
        } else {
            now.saturating_sub(skew)
        }
    }
}
