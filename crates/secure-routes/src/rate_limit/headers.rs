//! Rate-limit headers and the 429 answer: the formatting, kept apart from the rate-limit step
//! (`guard::rate_limit`) so both the step and the response decoration use one definition.
//!
//! Every limited response, allowed or refused, carries the IETF httpapi draft headers
//! (`RateLimit-Policy: "name";q=60;w=60`, `RateLimit: "name";r=0;t=17`, Structured Fields)
//! and the widespread `X-RateLimit-Limit` / `-Remaining` / `-Reset` (Unix seconds). A 429
//! adds `Retry-After` in whole seconds, rounded up so a client that waits that long is not
//! refused again for the same reason.
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use secure_routes::{Quota, rate_limit::Decision, rate_limit::headers::apply_headers};
//! let d = Decision { allowed: true, limit: 60, remaining: 59,
//!     reset_after: Duration::from_secs(60), retry_after: None };
//! let mut h = HeaderMap::new();
//! apply_headers(&mut h, "public", Quota::per_minute(60), &d, Duration::from_secs(1_000));
//! assert_eq!(h["ratelimit-policy"], "\"public\";q=60;w=60");
//! assert_eq!(h["ratelimit"], "\"public\";r=59;t=60");
//! assert_eq!(h["x-ratelimit-reset"], "1060");
//! ```

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::Reason;
use crate::rate_limit::{Decision, Quota, ceil_secs};
use crate::response::problem::{Rejection, RejectionKind};

pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The headers whose values change with each decision, in the order they are written.
pub(crate) const VARYING: [HeaderName; 3] = [RATELIMIT, X_REMAINING, X_RESET];

/// Adds the rate-limit headers for `decision` to `headers`; `now` is the Unix time.
/// `name` must be a valid policy name (letters, digits, `-_.`), as [`crate::Policy`] ensures.
pub fn apply_headers(
    headers: &mut HeaderMap,
    name: &str,
    quota: Quota,
    decision: &Decision,
    now: Duration,
) {
    LimitHeaders::new(name, quota).apply(headers, decision, now);
}

/// The per-policy part of the rate-limit headers, formatted once when a layer is built, so a
/// request formats only its own numbers.
#[derive(Debug)]
pub(crate) struct LimitHeaders {
    /// `RateLimit-Policy`, constant for the policy.
    policy: Option<HeaderValue>,
    /// `X-RateLimit-Limit` for the quota's limit: every decision of the built-in stores
    /// (`Decision::from_store`) carries it; a store that reports another limit gets its own.
    limit: HeaderValue,
    quota_limit: u32,
    /// `"name";r=`, the start of `RateLimit`.
    ratelimit_prefix: Box<str>,
}

impl LimitHeaders {
    pub(crate) fn new(name: &str, quota: Quota) -> Self {
        let policy = format!(
            "\"{name}\";q={};w={}",
            quota.limit(),
            ceil_secs(quota.window())
        );
        Self {
            policy: HeaderValue::from_str(&policy).ok(),
            limit: HeaderValue::from(quota.limit()),
            quota_limit: quota.limit(),
            ratelimit_prefix: format!("\"{name}\";r=").into(),
        }
    }

    /// Every rate-limit header for `decision`.
    pub(crate) fn apply(&self, headers: &mut HeaderMap, decision: &Decision, now: Duration) {
        self.apply_constant(headers);
        self.apply_varying(headers, decision, now);
    }

    /// The headers that are the same for every decision: `RateLimit-Policy` and
    /// `X-RateLimit-Limit` (the quota's).
    pub(crate) fn apply_constant(&self, headers: &mut HeaderMap) {
        if let Some(p) = &self.policy {
            headers.insert(RATELIMIT_POLICY, p.clone());
        }
        headers.insert(X_LIMIT, self.limit.clone());
    }

    /// Whether `name` is one of the headers [`apply_constant`](Self::apply_constant) sets.
    pub(crate) fn is_constant(name: &HeaderName) -> bool {
        *name == RATELIMIT_POLICY || *name == X_LIMIT
    }

    /// Whether `name` is one of the rate-limit headers step 10 writes (constant or not).
    pub(crate) fn is_limit_header(name: &HeaderName) -> bool {
        Self::is_constant(name) || VARYING.contains(name)
    }

    /// The headers of this decision: `RateLimit`, `X-RateLimit-Remaining` and `-Reset`,
    /// `Retry-After` on a refusal, and `X-RateLimit-Limit` when the store reported a limit
    /// other than the quota's.
    pub(crate) fn apply_varying(
        &self,
        headers: &mut HeaderMap,
        decision: &Decision,
        now: Duration,
    ) {
        if decision.limit != self.quota_limit {
            headers.insert(X_LIMIT, HeaderValue::from(decision.limit));
        }
        for (name, value) in VARYING.into_iter().zip(self.varying_values(decision, now)) {
            if let Some(v) = value {
                headers.insert(name, v);
            }
        }
        self.retry_after(headers, decision);
    }

    /// Whether [`varying_values`](Self::varying_values) are all the headers `decision`
    /// needs beyond the constant ones: an admission (no `Retry-After`) under the quota's own
    /// limit.
    pub(crate) fn varying_only(&self, decision: &Decision) -> bool {
        decision.limit == self.quota_limit && decision.retry_after.is_none()
    }

    /// The values of [`VARYING`] for `decision`, in that order; `None` for a value that is
    /// not a valid header value (a `RateLimit` whose prefix is not, which a valid policy name
    /// never makes). Integers are written with `itoa`, not `fmt`.
    pub(crate) fn varying_values(
        &self,
        decision: &Decision,
        now: Duration,
    ) -> [Option<HeaderValue>; 3] {
        let reset = decision.reset_after_secs();
        let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (r.format(decision.remaining), t.format(reset));
        let reset_at = Some(reset_at_value(now.as_secs().saturating_add(reset)));
        // The two values that change with every decision in one allocation shared by two
        // `HeaderValue`s (one allocation instead of two per answer; issue 10 part 7).
        let ratelimit = [
            self.ratelimit_prefix.as_bytes(),
            r.as_bytes(),
            b";t=",
            t.as_bytes(),
        ];
        let mut buf = Varying::new();
        let ranges = (buf.push(&ratelimit), buf.push(&[r.as_bytes()]));
        let (Some(ratelimit_range), Some(_)) = ranges else {
            // Only a prefix longer than a policy name allows gets here.
            return [
                HeaderValue::from_bytes(&ratelimit.concat()).ok(),
                Some(HeaderValue::from(decision.remaining)),
                reset_at,
            ];
        };
        // The values lie side by side from the start: the first is split off and the rest is
        // the second. One reference count is taken (where a slice of each took two and the
        // whole's drop a third): each is an atomic instruction (issue 10 part 7).
        debug_assert_eq!(ratelimit_range.start, 0);
        let mut remaining = bytes::Bytes::from_owner(buf);
        let ratelimit = remaining.split_to(ratelimit_range.end);
        [
            HeaderValue::from_maybe_shared(ratelimit).ok(),
            HeaderValue::from_maybe_shared(remaining).ok(),
            reset_at,
        ]
    }

    /// `Retry-After` on a refusal.
    fn retry_after(&self, headers: &mut HeaderMap, decision: &Decision) {
        if let Some(retry) = decision.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry));
        }
    }
}

thread_local! {
    /// The `X-RateLimit-Reset` value this thread wrote last, with its Unix second.
    static LAST_RESET_AT: std::cell::RefCell<Option<(u64, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `X-RateLimit-Reset` for the Unix second `at`: the value this thread made for the same
/// second, if it was the last one asked for, else a new one.
///
/// Why: unlike the remaining count, the reset time is the same for every answer in a second
/// (a window's end, or now plus the seconds until the bucket is full), so a thread that
/// answers many requests formats, checks and allocates it about once a second instead of
/// once per answer; a clone is a reference count (issue 10 part 7). The value is a function
/// of `at` alone, so a stale cache can only miss, never answer wrong.
fn reset_at_value(at: u64) -> HeaderValue {
    let cached = LAST_RESET_AT.try_with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((second, value)) if *second == at => value.clone(),
            _ => {
                let value = HeaderValue::from(at);
                *last = Some((at, value.clone()));
                value
            }
        }
    });
    // `try_with` fails only while the thread is exiting.
    cached.unwrap_or_else(|_| HeaderValue::from(at))
}

/// Room for the two per-decision values: `"name";r=<u32>;t=<u64>` (a policy name is at
/// most 64 bytes) and `<u32>`.
const VARYING_CAP: usize = 128;

/// The per-decision header values written side by side, owned by one [`bytes::Bytes`].
struct Varying {
    buf: [u8; VARYING_CAP],
    len: usize,
}

impl Varying {
    fn new() -> Self {
        Self {
            buf: [0; VARYING_CAP],
            len: 0,
        }
    }

    /// Appends the pieces as one value and returns its range, or `None` when they do not fit.
    fn push(&mut self, pieces: &[&[u8]]) -> Option<std::ops::Range<usize>> {
        let start = self.len;
        let end = start + pieces.iter().map(|p| p.len()).sum::<usize>();
        let dest = self.buf.get_mut(start..end)?;
        let mut at = 0;
        for p in pieces {
            dest[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.len = end;
        Some(start..end)
    }
}

impl AsRef<[u8]> for Varying {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The 429 answer for a refused decision: problem body with `retryAfter` (seconds) and
/// `resetAt` (RFC 3339: when a request will next be admitted), plus all the headers.
pub(crate) fn too_many_requests(
    name: &str,
    quota: Quota,
    decision: &Decision,
    now: Duration,
) -> Rejection {
    let retry = decision.retry_after_secs().unwrap_or(1).max(1);
    let reset_at = OffsetDateTime::from_unix_timestamp(
        i64::try_from(now.as_secs().saturating_add(retry)).unwrap_or(i64::MAX),
    )
    .ok()
    .and_then(|t| t.format(&Rfc3339).ok());
    let mut r = Rejection::new(RejectionKind::RateLimited, Reason::QuotaExhausted)
        .with_detail(format!(
            "Too many requests. Please try again in {retry} seconds."
        ))
        .with_member("retryAfter", json!(retry))
        .with_member("resetAt", json!(reset_at));
    let mut d = *decision;
    d.retry_after = Some(Duration::from_secs(retry));
    apply_headers(r.headers_mut(), name, quota, &d, now);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    #[test]
    fn per_decision_values_are_the_same_from_the_shared_buffer_and_without_it() {
        let d = Decision {
            allowed: true,
            limit: 60,
            remaining: u32::MAX,
            reset_after: Duration::from_millis(59_001),
            retry_after: None,
        };
        let now = Duration::from_secs(u64::MAX - 1);
        // 64 bytes (the longest policy name) fits the shared buffer; 200 does not.
        for len in [1, 64, 200] {
            let name = "n".repeat(len);
            let mut h = HeaderMap::new();
            apply_headers(&mut h, &name, Quota::per_minute(60), &d, now);
            assert_eq!(
                h["ratelimit"],
                format!("\"{name}\";r=4294967295;t=60"),
                "{len}"
            );
            assert_eq!(h["x-ratelimit-remaining"], "4294967295", "{len}");
            assert_eq!(h["x-ratelimit-reset"], u64::MAX.to_string(), "{len}");
            assert_eq!(h["x-ratelimit-limit"], "60", "{len}");
            assert!(!h.contains_key(header::RETRY_AFTER), "{len}");
        }
    }

    #[test]
    fn the_reset_value_kept_for_a_second_is_only_used_for_that_second() {
        for (at, expected) in [
            (5, "5"),
            (5, "5"),
            (6, "6"),
            (5, "5"),
            (u64::MAX, "18446744073709551615"),
        ] {
            assert_eq!(reset_at_value(at), expected);
        }
        // Through the headers: two decisions in one second, then the next second.
        let limit = LimitHeaders::new("p", Quota::per_minute(60));
        let d = |secs| Decision {
            allowed: true,
            limit: 60,
            remaining: 1,
            reset_after: Duration::from_secs(secs),
            retry_after: None,
        };
        let reset =
            |decision, now| limit.varying_values(&decision, Duration::from_secs(now))[2].clone();
        assert_eq!(reset(d(10), 100).unwrap(), "110");
        assert_eq!(reset(d(9), 101).unwrap(), "110");
        assert_eq!(reset(d(10), 101).unwrap(), "111");
    }

    #[tokio::test]
    async fn refusal_has_retry_after_rounded_up_and_body_fields() {
        let d = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset_after: Duration::from_millis(59_001),
            retry_after: Some(Duration::from_millis(16_001)),
        };
        let res = too_many_requests(
            "strict",
            Quota::per_minute(10),
            &d,
            Duration::from_secs(100),
        )
        .into_response();
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "17");
        assert_eq!(res.headers()["ratelimit"], "\"strict\";r=0;t=60");
        assert_eq!(res.headers()["x-ratelimit-reset"], "160");
        let body = axum::body::to_bytes(res.into_body(), 4096).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["retryAfter"], 17);
        assert_eq!(v["resetAt"], "1970-01-01T00:01:57Z");
        assert_eq!(v["error"], "Rate limit exceeded");
    }
}
