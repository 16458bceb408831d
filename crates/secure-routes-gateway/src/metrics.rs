//! The gateway's metrics in the Prometheus text format (issue 11 part 6).
//!
//! Every crate records through the `metrics` facade; [`GatewayMetrics`] installs the
//! Prometheus recorder (metrics-exporter-prometheus, without its own HTTP listener) and
//! renders what was recorded, for the gateway to serve at `/_secure-routes/metrics` behind
//! [`admin_authorized`], or on the separate `metrics_listen` address. What is counted:
//!
//! * decisions, `secure_routes_decisions_total{policy,outcome,reason}`: refusals (and
//!   fail-open store failures, dry-run `would_deny`) by the core's audit step, requests that
//!   passed every check by [`allowed`];
//! * store calls, `secure_routes_store_call_seconds{store,outcome}`: a histogram recorded by
//!   [`TimedStore`] around the rate-limit store, so only the gateway pays for the clock reads;
//! * the audit writer's queue depth, spills and replays (recorded by the core);
//! * upstream answers, `secure_routes_upstream_responses_total{status}` and the
//!   `secure_routes_upstream_seconds` histogram, by [`upstream_response`];
//! * requests in flight, `secure_routes_in_flight_requests`, by [`InFlight`].
//!
//! Every label takes its values from a bounded set (policy names from the configuration,
//! outcomes and reasons from fixed lists, statuses grouped by class): never a client address,
//! a path or a subject, which would let any client create series at will and exhaust the
//! gateway's and the scraper's memory (a cardinality attack).
//!
//! ```
//! use std::time::Duration;
//! use secure_routes_gateway::metrics::{GatewayMetrics, upstream_response};
//!
//! // `install` sets the process-wide recorder; a local one keeps this example apart.
//! let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
//! metrics::with_local_recorder(&recorder, || {
//!     upstream_response(502, Duration::from_millis(3));
//! });
//! let text = metrics.render();
//! assert!(text.contains("secure_routes_upstream_responses_total{status=\"502\"} 1"));
//! assert!(text.contains("secure_routes_upstream_seconds_bucket{le=\"0.005\"} 1"));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use metrics::{Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use secure_routes::StoreError;
use secure_routes::rate_limit::{BoxFuture, Decision, Quota, RateLimitKey, RateLimitStore};

/// The `Content-Type` of [`GatewayMetrics::render`]'s text (the Prometheus text format 0.0.4).
///
/// ```
/// assert!(secure_routes_gateway::metrics::CONTENT_TYPE.starts_with("text/plain"));
/// ```
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The histogram buckets (upper bounds, in seconds) of every `*_seconds` metric: from 0.5 ms
/// (a memory store, a local upstream) to 30 s (the default upstream timeout).
///
/// ```
/// use secure_routes_gateway::metrics::LATENCY_BUCKETS;
/// assert_eq!(LATENCY_BUCKETS.first(), Some(&0.0005));
/// assert_eq!(LATENCY_BUCKETS.last(), Some(&30.0));
/// ```
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const DECISIONS: &str = "secure_routes_decisions_total";
const STORE_CALL: &str = "secure_routes_store_call_seconds";
const UPSTREAM_RESPONSES: &str = "secure_routes_upstream_responses_total";
const UPSTREAM_SECONDS: &str = "secure_routes_upstream_seconds";
const IN_FLIGHT: &str = "secure_routes_in_flight_requests";

/// What each metric is, for the `# HELP` lines (the core's too: it has no recorder).
const COUNTERS: &[(&str, &str)] = &[
    (
        DECISIONS,
        "Security decisions by policy, outcome (allowed, denied, would_deny, error) and reason.",
    ),
    (
        UPSTREAM_RESPONSES,
        "Upstream answers by status class (2xx..5xx), with 502 and 504 (the gateway's own) apart.",
    ),
    (
        "secure_routes_store_failures_total",
        "Rate-limit store calls that failed or timed out, by store.",
    ),
    (
        "secure_routes_audit_recorded_total",
        "Audit events handed to the writer.",
    ),
    (
        "secure_routes_audit_written_total",
        "Audit events stored by a sink, by sink.",
    ),
    (
        "secure_routes_audit_spilled_total",
        "Audit events written to the spill file because the sink could not keep up.",
    ),
    (
        "secure_routes_audit_replayed_total",
        "Spilled audit events replayed into the sink.",
    ),
    (
        "secure_routes_audit_lost_total",
        "Audit events lost (the spill file could not be written).",
    ),
    (
        "secure_routes_connections_refused_total",
        "Connections closed at accept, by reason (a cap was reached).",
    ),
    (
        "secure_routes_alerts_fired_total",
        "Alert rules fired (each an alert_triggered audit event), by rule.",
    ),
    (
        "secure_routes_webhook_failures_total",
        "Alerts whose webhook was not delivered after every attempt (or refused with a 4xx), by rule.",
    ),
    (
        "secure_routes_alerts_dropped_total",
        "Alerts dropped before delivery (webhook queue full, or the engine stopping), by rule.",
    ),
    (
        "secure_routes_webhook_deliveries_total",
        "Alerts a webhook accepted (2xx), by rule.",
    ),
    (
        "secure_routes_alerts_suppressed_total",
        "Alerts held back by a rule's cooldown (once per count occurrences within the window), by rule.",
    ),
];

/// The gateway's Prometheus recorder: installed once per process, rendered on each scrape.
///
/// Every `*_seconds` histogram is rendered with [`LATENCY_BUCKETS`]. Between scrapes the
/// recorder keeps each histogram sample until upkeep folds it into the buckets: run
/// [`spawn_upkeep`](Self::spawn_upkeep) (or call [`run_upkeep`](Self::run_upkeep) on a timer),
/// or an unscraped gateway grows by 8 bytes per sample.
///
/// ```
/// use secure_routes_gateway::metrics::{GatewayMetrics, MetricsError};
///
/// let metrics = GatewayMetrics::install().unwrap();
/// metrics::counter!("secure_routes_decisions_total", "policy" => "public",
///     "outcome" => "denied", "reason" => "quota_exhausted").increment(1);
/// assert!(metrics.render().contains(
///     "secure_routes_decisions_total{policy=\"public\",outcome=\"denied\",reason=\"quota_exhausted\"} 1"
/// ));
/// // A process has one global recorder: a second install is an error, not a panic.
/// assert!(matches!(GatewayMetrics::install(), Err(MetricsError::AlreadyInstalled)));
/// ```
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    handle: PrometheusHandle,
}

/// Why [`GatewayMetrics`] could not be set up.
///
/// ```
/// use secure_routes_gateway::metrics::MetricsError;
/// assert!(MetricsError::AlreadyInstalled.to_string().contains("already"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// This process already has a global metrics recorder (ours or another).
    #[error("a metrics recorder is already installed in this process")]
    AlreadyInstalled,
    /// The exporter refused its settings.
    #[error("metrics exporter: {0}")]
    Exporter(String),
}

impl GatewayMetrics {
    /// Installs the process-wide recorder and returns the handle that renders it.
    ///
    /// # Errors
    ///
    /// [`MetricsError::AlreadyInstalled`] when the process has a recorder already (a second
    /// call included).
    pub fn install() -> Result<GatewayMetrics, MetricsError> {
        let (metrics, recorder) = GatewayMetrics::unregistered()?;
        metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
        Ok(metrics)
    }

    /// A recorder that is not installed, and the handle that renders it: for
    /// `metrics::with_local_recorder` (tests, examples).
    ///
    /// ```
    /// use secure_routes_gateway::metrics::{GatewayMetrics, InFlight};
    ///
    /// let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
    /// let guard = metrics::with_local_recorder(&recorder, InFlight::enter);
    /// assert!(metrics.render().contains("secure_routes_in_flight_requests 1"));
    /// drop(guard);
    /// assert!(metrics.render().contains("secure_routes_in_flight_requests 0"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`MetricsError::Exporter`] if the exporter refuses the buckets (it cannot: they are a
    /// non-empty constant).
    pub fn unregistered() -> Result<(GatewayMetrics, PrometheusRecorder), MetricsError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map_err(|e| MetricsError::Exporter(e.to_string()))?
            .build_recorder();
        describe(&recorder);
        Ok((
            GatewayMetrics {
                handle: recorder.handle(),
            },
            recorder,
        ))
    }

    /// Everything recorded so far, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histogram samples recorded since the last upkeep into their buckets.
    ///
    /// ```
    /// let (metrics, _recorder) = secure_routes_gateway::metrics::GatewayMetrics::unregistered().unwrap();
    /// metrics.run_upkeep();
    /// ```
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs [`run_upkeep`](Self::run_upkeep) every `every` on the current tokio runtime, until
    /// the returned task is aborted (or the runtime stops). Five seconds is plenty.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let (metrics, _recorder) = secure_routes_gateway::metrics::GatewayMetrics::unregistered().unwrap();
    /// let upkeep = metrics.spawn_upkeep(std::time::Duration::from_secs(5));
    /// upkeep.abort();
    /// # });
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn` does).
    pub fn spawn_upkeep(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    }
}

/// The `# HELP` lines (and units) of the metrics the gateway and the core record.
fn describe(recorder: &PrometheusRecorder) {
    let text = |s: &'static str| SharedString::const_str(s);
    for &(name, help) in COUNTERS {
        recorder.describe_counter(name.into(), None, text(help));
    }
    recorder.describe_histogram(
        STORE_CALL.into(),
        Some(Unit::Seconds),
        text("Rate-limit store call latency by store and outcome (allowed, denied, timeout, unavailable, protocol, error, cancelled)."),
    );
    recorder.describe_histogram(
        UPSTREAM_SECONDS.into(),
        Some(Unit::Seconds),
        text("Time from forwarding a request to the upstream's response head."),
    );
    recorder.describe_gauge(
        IN_FLIGHT.into(),
        None,
        text("Requests the gateway is handling now."),
    );
    recorder.describe_gauge(
        "secure_routes_audit_queue_depth".into(),
        None,
        text("Audit events waiting for the writer."),
    );
}

/// Counts a request that passed every check of `policy` (and is forwarded):
/// `secure_routes_decisions_total{policy,outcome="allowed",reason="passed"}`.
///
/// Refusals are counted by the core when it audits them; a dry-run request that a check would
/// have refused is counted there as `would_deny`. A fail-open store failure is a decision of
/// its own (`outcome="allowed"` with the store's reason), so one such request counts twice:
/// the metric counts decisions, not requests.
///
/// ```
/// use secure_routes_gateway::metrics::{GatewayMetrics, allowed};
/// let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
/// metrics::with_local_recorder(&recorder, || allowed("api_user_rest"));
/// assert!(metrics.render().contains(
///     "secure_routes_decisions_total{policy=\"api_user_rest\",outcome=\"allowed\",reason=\"passed\"} 1"
/// ));
/// ```
pub fn allowed(policy: &str) {
    metrics::counter!(
        DECISIONS,
        "policy" => policy.to_owned(),
        "outcome" => "allowed",
        "reason" => "passed",
    )
    .increment(1);
}

/// Records one upstream answer: its status class and the time it took.
///
/// `status` is the status the client gets for the upstream's part: the upstream's own, or the
/// gateway's 502 (connect failure) or 504 (timeout). `elapsed` runs from forwarding to the
/// response head (a streamed body's time is the client's as much as the upstream's).
///
/// ```
/// use std::time::Duration;
/// use secure_routes_gateway::metrics::{GatewayMetrics, upstream_response};
/// let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
/// metrics::with_local_recorder(&recorder, || {
///     upstream_response(200, Duration::from_millis(2));
///     upstream_response(204, Duration::from_millis(2));
/// });
/// let text = metrics.render();
/// assert!(text.contains("secure_routes_upstream_responses_total{status=\"2xx\"} 2"));
/// assert!(text.contains("secure_routes_upstream_seconds_count 2"));
/// ```
pub fn upstream_response(status: u16, elapsed: Duration) {
    metrics::counter!(UPSTREAM_RESPONSES, "status" => status_class(status)).increment(1);
    metrics::histogram!(UPSTREAM_SECONDS).record(elapsed.as_secs_f64());
}

/// The `status` label of an upstream answer: its class (`2xx` ... `5xx`, `1xx` for an
/// upgrade), except 502 and 504, which the gateway itself gives when the upstream cannot be
/// reached or does not answer in time, kept apart. Anything outside 100-599 is `other`. A
/// handful of values, whatever the upstream sends.
///
/// ```
/// use secure_routes_gateway::metrics::status_class;
/// assert_eq!(status_class(201), "2xx");
/// assert_eq!(status_class(502), "502");
/// assert_eq!(status_class(503), "5xx");
/// assert_eq!(status_class(999), "other");
/// ```
pub fn status_class(status: u16) -> &'static str {
    match status {
        502 => "502",
        504 => "504",
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// One request in flight: `secure_routes_in_flight_requests` goes up on
/// [`enter`](Self::enter) and down when the guard is dropped, however the request ends (a
/// response, an error, or a client that went away and cancelled the future), so no path can
/// leak a count.
///
/// ```
/// use secure_routes_gateway::metrics::{GatewayMetrics, InFlight};
/// let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
/// let (a, b) = metrics::with_local_recorder(&recorder, || (InFlight::enter(), InFlight::enter()));
/// drop(a);
/// assert!(metrics.render().contains("secure_routes_in_flight_requests 1"));
/// drop(b);
/// ```
#[derive(Debug)]
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight {
    gauge: metrics::Gauge,
}

impl InFlight {
    /// Counts one more request in flight until the guard is dropped.
    pub fn enter() -> InFlight {
        let gauge = metrics::gauge!(IN_FLIGHT);
        gauge.increment(1.0);
        InFlight { gauge }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>` for the admin endpoints
/// (`/_secure-routes/metrics`).
///
/// `token` is `SECURE_ROUTES_ADMIN_TOKEN`, empty when it is unset: then nothing is authorized,
/// so the endpoint is never open by default. The scheme is matched case-insensitively (RFC
/// 9110 §11.1); two `Authorization` headers are refused rather than one picked. The tokens are
/// compared as SHA-256 digests in constant time, so neither the content nor the length of the
/// secret can be learnt from response timings.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
/// use secure_routes_gateway::metrics::admin_authorized;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret-admin-token"));
/// assert!(admin_authorized(&headers, "s3cret-admin-token"));
/// assert!(!admin_authorized(&headers, "another-token"));
/// assert!(!admin_authorized(&HeaderMap::new(), "s3cret-admin-token"));
/// ```
pub fn admin_authorized(headers: &HeaderMap, token: &str) -> bool {
    // One check for every admin endpoint (the dashboard's bearer is the same token).
    secure_routes_dashboard::auth::bearer_authorized(headers, token)
}

/// A [`RateLimitStore`] that records how long each call to the store it wraps takes, as
/// `secure_routes_store_call_seconds{store,outcome}`, and otherwise delegates.
///
/// The outcome is `allowed` or `denied` for a decision, `timeout`, `unavailable`, `protocol`
/// or `error` for a [`StoreError`], and `cancelled` when the call was dropped unfinished (the
/// policy's store timeout ran out first): the slow calls that matter most are recorded too.
/// The wrapper is the gateway's, so the library's hot path reads no extra clock.
///
/// ```
/// use std::sync::Arc;
/// use secure_routes::Quota;
/// use secure_routes::rate_limit::{KeyHasher, MemoryStore, RateLimitStore, Subject};
/// use secure_routes_gateway::metrics::{GatewayMetrics, TimedStore};
///
/// let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
/// let store = TimedStore::new(MemoryStore::new());
/// assert!(store.is_local());
/// let key = KeyHasher::new(b"secret").key("route", &Subject::Custom("client".into()));
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// metrics::with_local_recorder(&recorder, || {
///     rt.block_on(store.acquire(&key, Quota::per_minute(1), 1)).unwrap();
///     // The synchronous answer the pipeline asks for first is timed alike.
///     store.try_acquire_now(&key, Quota::per_minute(1), 1).unwrap().unwrap();
/// });
/// let text = metrics.render();
/// assert!(text.contains("secure_routes_store_call_seconds_count{store=\"memory\",outcome=\"allowed\"} 1"));
/// assert!(text.contains("secure_routes_store_call_seconds_count{store=\"memory\",outcome=\"denied\"} 1"));
/// ```
pub struct TimedStore<S: ?Sized = dyn RateLimitStore> {
    inner: Arc<S>,
}

impl<S: RateLimitStore + ?Sized> std::fmt::Debug for TimedStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedStore")
            .field("store", &self.inner.name())
            .finish()
    }
}

impl<S: RateLimitStore> TimedStore<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> TimedStore<S> {
        TimedStore {
            inner: Arc::new(store),
        }
    }
}

impl<S: RateLimitStore + ?Sized> TimedStore<S> {
    /// Wraps a store that is shared already (the one the configuration chose, for instance).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::rate_limit::{MemoryStore, RateLimitStore};
    /// use secure_routes_gateway::metrics::TimedStore;
    ///
    /// let chosen: Arc<dyn RateLimitStore> = Arc::new(MemoryStore::new());
    /// let store: TimedStore = TimedStore::from_arc(chosen);
    /// assert_eq!(store.name(), "memory");
    /// ```
    pub fn from_arc(store: Arc<S>) -> TimedStore<S> {
        TimedStore { inner: store }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }
}

impl<S: RateLimitStore + ?Sized> RateLimitStore for TimedStore<S> {
    fn acquire<'a>(
        &'a self,
        key: &'a RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(Timed {
            call: self.inner.acquire(key, quota, cost),
            store: self.inner.name(),
            started: None,
        })
    }

    fn try_acquire_now(
        &self,
        key: &RateLimitKey,
        quota: Quota,
        cost: u32,
    ) -> Option<Result<Decision, StoreError>> {
        // Timed like a call: the memory store answers here, so this is where its time goes.
        let started = Instant::now();
        let result = self.inner.try_acquire_now(key, quota, cost)?;
        record_store_call(self.inner.name(), store_outcome(&result), started.elapsed());
        Some(result)
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
}

/// A store call being timed: the clock starts at the first poll (when the call starts doing
/// anything) and stops when it answers, or when it is dropped unfinished.
struct Timed<'a> {
    call: BoxFuture<'a, Result<Decision, StoreError>>,
    store: &'static str,
    /// Set at the first poll, taken when recorded.
    started: Option<Instant>,
}

impl Future for Timed<'_> {
    type Output = Result<Decision, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let result = std::task::ready!(self.call.as_mut().poll(cx));
        self.started = None;
        record_store_call(self.store, store_outcome(&result), started.elapsed());
        Poll::Ready(result)
    }
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            record_store_call(self.store, "cancelled", started.elapsed());
        }
    }
}

fn record_store_call(store: &'static str, outcome: &'static str, elapsed: Duration) {
    metrics::histogram!(STORE_CALL, "store" => store, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

fn store_outcome(result: &Result<Decision, StoreError>) -> &'static str {
    match result {
        Ok(d) if d.allowed => "allowed",
        Ok(_) => "denied",
        Err(StoreError::Timeout) => "timeout",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::Protocol(_)) => "protocol",
        Err(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("valid header value"),
            );
        }
        headers
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_right_bearer_token_is_authorized_whatever_the_scheme_case() {
        for value in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER  {TOKEN}"),
        ] {
            assert!(admin_authorized(&auth(&[&value]), TOKEN), "{value}");
        }
    }

    #[test]
    fn a_wrong_missing_or_differently_sized_token_is_refused() {
        for value in [
            "Bearer 0123456789abcdef0123456789abcdeX".to_owned(),
            format!("Bearer {TOKEN}0"),
            format!("Bearer {}", &TOKEN[..31]),
            "Bearer ".to_owned(),
            "Bearer".to_owned(),
            TOKEN.to_owned(),
            format!("Token {TOKEN}"),
        ] {
            assert!(!admin_authorized(&auth(&[&value]), TOKEN), "{value}");
        }
        assert!(!admin_authorized(&HeaderMap::new(), TOKEN));
    }

    #[test]
    fn basic_credentials_holding_the_token_are_refused() {
        // `Basic` with the token as the whole credential, or as `user:token` encoded: the
        // admin token is a bearer token only, never another scheme's password.
        assert!(!admin_authorized(
            &auth(&[&format!("Basic {TOKEN}")]),
            TOKEN
        ));
        assert!(!admin_authorized(
            &auth(&["Basic YWRtaW46MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]),
            TOKEN
        ));
    }

    #[test]
    fn an_empty_token_authorizes_nothing() {
        // The variable unset (or set to nothing) must never open the endpoint, not even to a
        // request that sends an empty bearer token.
        for value in ["Bearer ", "Bearer", "Bearer x"] {
            assert!(!admin_authorized(&auth(&[value]), ""), "{value}");
        }
        assert!(!admin_authorized(&HeaderMap::new(), ""));
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let right = format!("Bearer {TOKEN}");
        assert!(!admin_authorized(&auth(&[&right, "Bearer wrong"]), TOKEN));
        assert!(!admin_authorized(&auth(&["Bearer wrong", &right]), TOKEN));
    }

    #[test]
    fn statuses_are_grouped_with_the_gateways_own_apart() {
        let cases = [
            (101, "1xx"),
            (200, "2xx"),
            (299, "2xx"),
            (304, "3xx"),
            (404, "4xx"),
            (429, "4xx"),
            (500, "5xx"),
            (502, "502"),
            (503, "5xx"),
            (504, "504"),
            (599, "5xx"),
            (0, "other"),
            (99, "other"),
            (600, "other"),
            (u16::MAX, "other"),
        ];
        for (status, class) in cases {
            assert_eq!(status_class(status), class, "{status}");
        }
    }

    fn in_flight(metrics: &GatewayMetrics) -> Option<String> {
        metrics
            .render()
            .lines()
            .find(|l| l.starts_with("secure_routes_in_flight_requests "))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
    }

    #[test]
    fn in_flight_goes_down_when_the_guard_drops() {
        let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
        let (a, b) =
            metrics::with_local_recorder(&recorder, || (InFlight::enter(), InFlight::enter()));
        assert_eq!(in_flight(&metrics).as_deref(), Some("2"));
        drop(a);
        assert_eq!(in_flight(&metrics).as_deref(), Some("1"));
        drop(b);
        assert_eq!(in_flight(&metrics).as_deref(), Some("0"));
    }

    #[test]
    fn a_cancelled_request_leaks_no_in_flight_count() {
        let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
        metrics::with_local_recorder(&recorder, || {
            // A request future that holds the guard and never finishes, polled once and then
            // dropped, as hyper drops a handler whose client went away.
            let mut request = Box::pin(async {
                let _guard = InFlight::enter();
                std::future::pending::<()>().await;
            });
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(request.as_mut().poll(&mut cx).is_pending());
            assert_eq!(in_flight(&metrics).as_deref(), Some("1"));
            drop(request);
        });
        assert_eq!(in_flight(&metrics).as_deref(), Some("0"));
    }

    /// A store whose call never answers.
    struct Hanging;

    impl RateLimitStore for Hanging {
        fn acquire<'a>(
            &'a self,
            _: &'a RateLimitKey,
            _: Quota,
            _: u32,
        ) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(std::future::pending())
        }
        fn name(&self) -> &'static str {
            "hanging"
        }
    }

    /// A store that always fails.
    struct Failing;

    impl RateLimitStore for Failing {
        fn acquire<'a>(
            &'a self,
            _: &'a RateLimitKey,
            _: Quota,
            _: u32,
        ) -> BoxFuture<'a, Result<Decision, StoreError>> {
            Box::pin(std::future::ready(Err(StoreError::Unavailable(
                "connection refused".into(),
            ))))
        }
        fn name(&self) -> &'static str {
            "failing"
        }
    }

    fn key() -> RateLimitKey {
        secure_routes::rate_limit::KeyHasher::new(b"k")
            .key("r", &secure_routes::rate_limit::Subject::Custom("c".into()))
    }

    #[test]
    fn a_store_call_dropped_unfinished_is_recorded_as_cancelled() {
        let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
        let store = TimedStore::new(Hanging);
        let key = key();
        metrics::with_local_recorder(&recorder, || {
            let mut call = store.acquire(&key, Quota::per_minute(1), 1);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            drop(call);
            // Never polled: it never started, so there is nothing to time.
            drop(store.acquire(&key, Quota::per_minute(1), 1));
        });
        let text = metrics.render();
        assert!(
            text.contains(
                "secure_routes_store_call_seconds_count{store=\"hanging\",outcome=\"cancelled\"} 1"
            ),
            "{text}"
        );
        assert!(!store.is_local());
    }

    #[test]
    fn a_store_error_is_recorded_under_its_kind() {
        let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
        let store = TimedStore::new(Failing);
        let key = key();
        metrics::with_local_recorder(&recorder, || {
            let mut call = store.acquire(&key, Quota::per_minute(1), 1);
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(matches!(
                call.as_mut().poll(&mut cx),
                Poll::Ready(Err(StoreError::Unavailable(_)))
            ));
        });
        let text = metrics.render();
        assert!(
            text.contains(
                "secure_routes_store_call_seconds_count{store=\"failing\",outcome=\"unavailable\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("outcome=\"cancelled\""), "{text}");
    }

    #[test]
    fn histograms_use_the_latency_buckets() {
        let (metrics, recorder) = GatewayMetrics::unregistered().unwrap();
        metrics::with_local_recorder(&recorder, || {
            upstream_response(200, Duration::from_micros(400));
            upstream_response(504, Duration::from_secs(31));
        });
        let text = metrics.render();
        for line in [
            "secure_routes_upstream_seconds_bucket{le=\"0.0005\"} 1",
            "secure_routes_upstream_seconds_bucket{le=\"30\"} 1",
            "secure_routes_upstream_seconds_bucket{le=\"+Inf\"} 2",
            "secure_routes_upstream_responses_total{status=\"504\"} 1",
            "# HELP secure_routes_upstream_seconds ",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
