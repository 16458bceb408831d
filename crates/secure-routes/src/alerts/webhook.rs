//! Webhook delivery: the signature, its verification, and the background task that POSTs.
//!
//! The signature scheme is described in the [`alerts` module docs](super), where users read it
//! (this module is private).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::Full;
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::http_client::{HttpClient, error_chain};

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "x-secure-routes-signature";

/// Longest signature header [`verify_signature`] reads, in bytes.
const MAX_HEADER_LEN: usize = 1024;
/// Most `v1` values read from one header.
const MAX_SIGNATURES: usize = 8;

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (RFC 2104 hashes long ones), so this never fails.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `X-Secure-Routes-Signature` value for `body` sent at `timestamp` (Unix seconds).
///
/// ```
/// use secure_routes::alerts::{sign, verify_signature};
/// use std::time::Duration;
/// let header = sign(b"a-webhook-secret-of-32-bytes-or-more", 1_700_000_000, b"{}");
/// assert!(header.starts_with("t=1700000000,v1="));
/// assert!(verify_signature(
///     b"a-webhook-secret-of-32-bytes-or-more", &header, b"{}",
///     Duration::from_secs(1_700_000_030), Duration::from_secs(300),
/// ).is_ok());
/// ```
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Why a signature was refused.
///
/// ```
/// use secure_routes::alerts::SignatureError;
/// assert_eq!(SignatureError::Mismatch.to_string(), "no signature matches the body");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<digits>,v1=<64 hex digits>[,...]`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance (a replay, or a skewed clock).
    #[error("signature timestamp outside the tolerance")]
    Expired,
    /// No `v1` is the HMAC of this body with this secret.
    #[error("no signature matches the body")]
    Mismatch,
}

/// Checks a webhook request as a receiver should (see the [module docs](super)): the header
/// parses, its timestamp is within `tolerance` of `now` (Unix time), and one of its `v1`
/// values is the HMAC of `t.body` under `secret`, compared in constant time. Never panics,
/// whatever the header holds.
///
/// ```
/// use secure_routes::alerts::{SignatureError, sign, verify_signature};
/// use std::time::Duration;
/// let secret = b"a-webhook-secret-of-32-bytes-or-more";
/// let header = sign(secret, 1_700_000_000, b"{\"rule\":\"x\"}");
/// let now = Duration::from_secs(1_700_000_010);
/// let tolerance = Duration::from_secs(300);
/// assert!(verify_signature(secret, &header, b"{\"rule\":\"x\"}", now, tolerance).is_ok());
/// assert_eq!(verify_signature(b"another-secret-of-32-bytes-or-more!!", &header, b"{\"rule\":\"x\"}", now, tolerance),
///            Err(SignatureError::Mismatch));
/// assert_eq!(verify_signature(secret, &header, b"{\"rule\":\"y\"}", now, tolerance),
///            Err(SignatureError::Mismatch));
/// assert_eq!(verify_signature(secret, &header, b"{\"rule\":\"x\"}", now + Duration::from_secs(3600), tolerance),
///            Err(SignatureError::Expired));
/// ```
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: Duration,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut tags = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                if timestamp.is_some()
                    || value.is_empty()
                    || value.len() > 19
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(SignatureError::Malformed);
                }
                timestamp = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| SignatureError::Malformed)?,
                );
            }
            "v1" => {
                let mut tag = [0u8; 32];
                hex::decode_to_slice(value, &mut tag).map_err(|_| SignatureError::Malformed)?;
                if tags.len() < MAX_SIGNATURES {
                    tags.push(tag);
                }
            }
            // Other schemes (a future `v2`) are skipped, as Stripe's receivers do.
            _ => {}
        }
    }
    let (Some(t), false) = (timestamp, tags.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    if now.as_secs().abs_diff(t) > tolerance.as_secs() {
        return Err(SignatureError::Expired);
    }
    let expected = mac(secret, t, body);
    // `verify_slice` compares in constant time (subtle); every v1 is tried.
    let mut matched = false;
    for tag in &tags {
        matched |= expected.clone().verify_slice(tag).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// One alert to deliver.
pub(crate) struct Job {
    pub(crate) rule: Arc<str>,
    pub(crate) url: http::Uri,
    pub(crate) body: Bytes,
}

/// Delivery counters, shared by the engine and its task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) fired: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) suppressed: AtomicU64,
}

/// Metric names.
pub(crate) mod metric {
    pub(crate) const FIRED: &str = "secure_routes_alerts_fired_total";
    pub(crate) const FAILURES: &str = "secure_routes_webhook_failures_total";
    pub(crate) const DROPPED: &str = "secure_routes_alerts_dropped_total";
    pub(crate) const DELIVERED: &str = "secure_routes_webhook_deliveries_total";
    pub(crate) const SUPPRESSED: &str = "secure_routes_alerts_suppressed_total";
}

/// What the delivery task needs.
pub(crate) struct Delivery {
    pub(crate) client: HttpClient<Full<Bytes>>,
    pub(crate) secret: Vec<u8>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) timeout: Duration,
    pub(crate) counters: Arc<Counters>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try: no connection, a timeout, a 5xx.
    Retry(String),
    /// Not worth another: a 4xx (the receiver refused this request; it will refuse it
    /// again) or anything else that is not a success.
    GiveUp(String),
}

/// The host of `url`, for logs: a webhook URL often holds its secret in the path (Slack's
/// do), so only the scheme and host are ever logged.
pub(crate) fn host_of(url: &http::Uri) -> String {
    format!(
        "{}://{}",
        url.scheme_str().unwrap_or("?"),
        url.host().unwrap_or("?")
    )
}

impl Delivery {
    /// The wait before retry number `retry` (1-based): `base * 2^(retry-1)`, capped.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }

    async fn attempt(&self, job: &Job) -> Attempt {
        // Signed per attempt, with the attempt's time: a retry minutes later still verifies
        // within the receiver's tolerance.
        let signature = sign(&self.secret, self.clock.now().as_secs(), &job.body);
        let request = http::Request::post(job.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("secure-routes/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(job.body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Attempt::GiveUp(e.to_string()),
        };
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                // The body is not read: nothing in it changes the outcome, and an endpoint
                // streaming forever must not hold the task.
                drop(response);
                if status.is_success() {
                    Attempt::Delivered
                } else if status.is_server_error() {
                    Attempt::Retry(format!("status {}", status.as_u16()))
                } else {
                    Attempt::GiveUp(format!("status {}", status.as_u16()))
                }
            }
            Ok(Err(e)) => Attempt::Retry(error_chain(&e)),
            Err(_) => Attempt::Retry(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Delivers one alert: up to `max_attempts` tries with exponential backoff between them.
    async fn deliver(&self, job: Job) {
        let mut attempt = 1;
        let error = loop {
            match self.attempt(&job).await {
                Attempt::Delivered => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(metric::DELIVERED, "rule" => job.rule.to_string())
                        .increment(1);
                    return;
                }
                Attempt::GiveUp(e) => break e,
                Attempt::Retry(e) if attempt >= self.max_attempts => break e,
                Attempt::Retry(e) => {
                    tracing::debug!(
                        target: "secure_routes::alerts",
                        rule = %job.rule,
                        webhook = %host_of(&job.url),
                        attempt,
                        error = %e,
                        "webhook attempt failed; retrying"
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                }
            }
        };
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::FAILURES, "rule" => job.rule.to_string()).increment(1);
        tracing::warn!(
            target: "secure_routes::alerts",
            rule = %job.rule,
            webhook = %host_of(&job.url),
            attempts = attempt,
            error = %crate::audit::sanitize(&error, 512),
            "alert webhook not delivered (the alert_triggered audit event was recorded)"
        );
    }
}

/// The delivery task: one alert at a time, until every sender is gone; then says it is done.
pub(crate) async fn run(
    mut rx: mpsc::Receiver<Job>,
    delivery: Arc<Delivery>,
    done: watch::Sender<bool>,
) {
    while let Some(job) = rx.recv().await {
        delivery.deliver(job).await;
    }
    let _ = done.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-webhook-secret-of-32-bytes-or-more";
    const NOW: Duration = Duration::from_secs(1_700_000_000);
    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn malformed_headers_are_refused_without_panicking() {
        let good = sign(SECRET, NOW.as_secs(), b"x");
        let v1 = good.split_once(",v1=").unwrap().1;
        for header in [
            String::new(),
            "t=".into(),
            "v1=".into(),
            format!("v1={v1}"),
            "t=1700000000".into(),
            format!("t=-1,v1={v1}"),
            format!("t=99999999999999999999999,v1={v1}"),
            format!("t=1700000000,v1={}", &v1[..62]),
            format!("t=1700000000,v1={v1}zz"),
            format!("t=1700000000,t=1700000000,v1={v1}"),
            format!("t=1700000000;v1={v1}"),
            format!("t=1700000000,v1={v1},{}", "x".repeat(2000)),
            "t=\u{0661}".into(),
        ] {
            assert_eq!(
                verify_signature(SECRET, &header, b"x", NOW, TOL),
                Err(SignatureError::Malformed),
                "{header:?}"
            );
        }
    }

    #[test]
    fn any_of_several_v1_may_match_and_unknown_schemes_are_skipped() {
        let good = sign(SECRET, NOW.as_secs(), b"x");
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t={},v0=abc,v1={},v1={v1}", NOW.as_secs(), "0".repeat(64));
        assert_eq!(verify_signature(SECRET, &header, b"x", NOW, TOL), Ok(()));
    }

    #[test]
    fn the_timestamp_is_signed() {
        let good = sign(SECRET, NOW.as_secs(), b"x");
        let moved = good.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            verify_signature(SECRET, &moved, b"x", NOW, TOL),
            Err(SignatureError::Mismatch)
        );
    }
}
