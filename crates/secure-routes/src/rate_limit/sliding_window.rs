//! Exact sliding window (sliding log). STUB: to be completed.

use std::time::Duration;

use super::{Decision, Quota};

/// The admission times (nanoseconds since the epoch) still inside the window.
#[derive(Clone, Debug, Default)]
pub struct SlidingLog {
    stamps: std::collections::VecDeque<u64>,
}

/// Admits `cost` units at `now` if they fit in `quota`, recording them.
pub fn acquire(log: &mut SlidingLog, now: Duration, quota: Quota, cost: u32) -> Decision {
    let now = crate::clock::duration_to_nanos(now);
    let window = crate::clock::duration_to_nanos(quota.window());
    while log.stamps.front().is_some_and(|&t| t.saturating_add(window) <= now) {
        log.stamps.pop_front();
    }
    let used = log.stamps.len() as u32;
    let allowed = used.saturating_add(cost) <= quota.limit();
    if allowed {
        for _ in 0..cost {
            log.stamps.push_back(now);
        }
    }
    let remaining = quota.limit().saturating_sub(log.stamps.len() as u32);
    Decision {
        allowed,
        limit: quota.limit(),
        remaining,
        reset_after: Duration::from_nanos(
            log.stamps.back().map_or(0, |&t| t.saturating_add(window).saturating_sub(now)),
        ),
        retry_after: (!allowed).then(|| {
            Duration::from_nanos(
                log.stamps.front().map_or(0, |&t| t.saturating_add(window).saturating_sub(now)),
            )
        }),
    }
}
