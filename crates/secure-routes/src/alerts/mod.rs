//! Alerts (feature `alerts`): rules over the audit trail that POST a signed webhook when a key
//! (client IP, subject or route) reaches a count of some action within a window.
//!
//! An [`AlertEngine`] is an [`AuditObserver`]: put it in [`AuditConfig::observers`] and it
//! sees every event the [`AuditWriter`] records, before folding (so a flood folded into one
//! row still counts one by one, at once). Per rule and key it keeps a sliding window of the
//! last `count` occurrence times (bounded: see [`AlertEngineBuilder::max_keys`]), read from an
//! injected [`Clock`]. When the `count`-th occurrence within `within` arrives the rule fires:
//!
//! * an `alert_triggered` audit event is recorded through the same writer, its reason the
//!   rule's name, its metadata the rule, key, count and window (and, as the client IP,
//!   subject or route, the key itself, so audit queries find it);
//! * a JSON body is queued for the rule's webhook: a Slack-compatible `text`
//!   (`secure-routes: rule auth-failures fired for ip 203.0.113.7: 5 unauthorized_access in
//!   1m`) and the fields `id`, `rule`, `action`, `outcome`, `per`, `key`, `count`,
//!   `within_seconds`, `fired_at`, signed as [below](#the-signature-stripes-scheme) describes;
//! * the key stays quiet for the rule's `cooldown`: one attack sends one alert, not thousands.
//!
//! Delivery runs in a background task, never on the request path: a bounded queue (full: the
//! alert is dropped, counted and logged, and the pipeline never waits), up to
//! [`max_attempts`](AlertEngineBuilder::max_attempts) tries with exponential backoff on
//! connection errors, timeouts and 5xx (a 4xx is the receiver refusing this request, so it is
//! not retried). Metrics, each labelled by rule name only (a bounded set):
//! `secure_routes_alerts_fired_total{rule}`, `secure_routes_webhook_deliveries_total{rule}`
//! (accepted with a 2xx), `secure_routes_webhook_failures_total{rule}` (alerts not delivered
//! after every attempt), `secure_routes_alerts_dropped_total{rule}` (queue full or engine
//! stopped), `secure_routes_alerts_suppressed_total{rule}` (alerts the cooldown held back:
//! once per `count` occurrences within the window while the key was quiet).
//!
//! The rules can be replaced while running ([`AlertEngine::set_rules`], the gateway's SIGHUP):
//! a rule kept under the same name, action, outcome, key kind and window keeps its counts and
//! cooldowns, so a reload neither forgets an attack in progress nor re-sends its alert.
//!
//! The engine never counts `alert_triggered` events (its own), and a rule cannot watch them:
//! no loops. The library never reads the environment: the caller passes the signing secret
//! (the gateway reads `SECURE_ROUTES_WEBHOOK_SECRET`).
//!
//! [`AuditConfig::observers`]: crate::audit::AuditConfig::observers
//! [`AuditWriter`]: crate::audit::AuditWriter
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use secure_routes::alerts::{AlertEngine, AlertRule, Per};
//! use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditWriter, sinks::TracingSink};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! let rule = AlertRule::builder("auth-failures")
//!     .action(AuditAction::UnauthorizedAccess)
//!     .count(5)
//!     .within(Duration::from_secs(60))
//!     .per(Per::Ip)
//!     .webhook("http://127.0.0.1:9/hook")
//!     .cooldown(Duration::from_secs(600))
//!     .build()
//!     .unwrap();
//! let engine = AlertEngine::builder()
//!     .rule(rule)
//!     .secret("a-webhook-secret-of-32-bytes-or-more")
//!     .spawn()
//!     .unwrap();
//! let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig {
//!     observers: vec![Arc::new(engine.clone())],
//!     spill_path: dir.path().join("spill.jsonl"),
//!     ..AuditConfig::default()
//! });
//! let refusal = AuditEvent::new(AuditAction::UnauthorizedAccess).with_status(401).with_client_ip("203.0.113.7");
//! for _ in 0..4 {
//!     writer.record(refusal.clone()).await;
//! }
//! assert_eq!(engine.stats().fired, 0);
//! writer.record(refusal).await;
//! assert_eq!(engine.stats().fired, 1);
//! writer.shutdown().await;
//! # });
//! ```
//!
//! ## The signature (Stripe's scheme)
//!
//! Each POST carries `X-Secure-Routes-Signature: t=<unix seconds>,v1=<hex>`, where `v1` is
//! HMAC-SHA256 keyed by the shared secret over the bytes `t` + `"."` + the raw body. The
//! timestamp is inside the MAC, so a receiver that refuses old timestamps also refuses a
//! captured request replayed later (a body alone, signed without time, could be replayed
//! forever). A receiver:
//!
//! 1. reads `t` and every `v1` from the header (more than one `v1` may come during a secret
//!    rotation; unknown keys are ignored);
//! 2. refuses a `t` more than a tolerance (5 minutes is usual) away from its own clock;
//! 3. computes HMAC-SHA256(secret, `t` + "." + raw body) over the body bytes exactly as
//!    received (before any JSON parsing, which would change them);
//! 4. compares it with each `v1` in constant time (a `==` on strings leaks, by its timing, how
//!    many leading bytes matched).
//!
//! [`verify_signature`] does all four for a Rust receiver. Retries are signed again with their
//! own time; the body's `id` stays the same, so a receiver can drop duplicates (delivery is
//! at-least-once: a timed-out POST may still have arrived).

mod webhook;
mod window;

pub use webhook::{SIGNATURE_HEADER, SignatureError, sign, verify_signature};

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, watch};

use crate::audit::{AuditAction, AuditEvent, AuditObserver, Emitted, Outcome};
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;
use webhook::{Counters, Delivery, Job, host_of, metric};
use window::{Hit, Limits, Windows};

/// The largest `count` a rule may have: each key's log holds up to `count` times, so this
/// bounds a rule's memory at `max_keys * count * 8` bytes (80 MB at the defaults' worst).
pub const MAX_COUNT: u32 = 1_000;
/// The longest `within` and `cooldown`.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default cooldown: ten minutes.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(600);
/// The shortest signing secret accepted, in bytes (as the CSRF secret).
pub const MIN_SECRET_LEN: usize = 32;

/// What a rule counts by.
///
/// ```
/// use secure_routes::alerts::Per;
/// assert_eq!(Per::parse("subject"), Some(Per::Subject));
/// assert_eq!(Per::Ip.as_str(), "ip");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Per {
    /// The client address as audited (after trusted-proxy resolution, never a spoofable
    /// header; truncated if the audit truncates addresses).
    #[default]
    Ip,
    /// The authenticated subject (events without one are not counted).
    Subject,
    /// The route (matched template or bucket).
    Route,
}

impl Per {
    /// Every value, for parsers.
    pub const ALL: &'static [Per] = &[Per::Ip, Per::Subject, Per::Route];

    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Per::Ip => "ip",
            Per::Subject => "subject",
            Per::Route => "route",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<Per> {
        Self::ALL.iter().copied().find(|p| p.as_str() == s)
    }

    /// The key of `event` (`None`: the event has none and is not counted).
    fn key(self, event: &AuditEvent) -> Option<&str> {
        let key = match self {
            Per::Ip => event.client_ip.as_deref()?,
            Per::Subject => event.subject.as_deref()?,
            Per::Route => event.route.as_str(),
        };
        (!key.is_empty()).then_some(key)
    }
}

impl fmt::Display for Per {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert rule; build it with [`AlertRule::builder`].
///
/// Its `Debug` output shows the webhook's scheme and host only: a webhook URL often carries
/// its secret in the path.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::alerts::{AlertRule, Per};
/// use secure_routes::audit::AuditAction;
/// let rule = AlertRule::builder("csrf-probes")
///     .action(AuditAction::CsrfValidationFailed)
///     .count(20)
///     .within(Duration::from_secs(300))
///     .per(Per::Route)
///     .webhook("https://hooks.example.com/services/T000/B000/XXXX")
///     .build()
///     .unwrap();
/// assert_eq!(rule.cooldown(), Duration::from_secs(600));
/// assert!(!format!("{rule:?}").contains("XXXX"));
/// ```
#[derive(Clone)]
pub struct AlertRule {
    name: Arc<str>,
    action: AuditAction,
    outcome: Option<Outcome>,
    count: u32,
    within: Duration,
    per: Per,
    webhook: http::Uri,
    cooldown: Duration,
}

impl fmt::Debug for AlertRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertRule")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("outcome", &self.outcome)
            .field("count", &self.count)
            .field("within", &self.within)
            .field("per", &self.per)
            .field("webhook", &host_of(&self.webhook))
            .field("cooldown", &self.cooldown)
            .finish()
    }
}

impl AlertRule {
    /// A builder for a rule named `name` (letters, digits, `-`, `_`, `.`; at most 64: it is a
    /// metric label and part of the alert text).
    pub fn builder(name: impl Into<String>) -> AlertRuleBuilder {
        AlertRuleBuilder {
            name: name.into(),
            action: None,
            outcome: None,
            count: None,
            within: None,
            per: Per::Ip,
            webhook: None,
            cooldown: DEFAULT_COOLDOWN,
        }
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The audit action counted.
    pub fn action(&self) -> AuditAction {
        self.action
    }
    /// Only events with this outcome count (`None`: any).
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }
    /// How many occurrences fire the rule.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// The sliding window they must fall in.
    pub fn within(&self) -> Duration {
        self.within
    }
    /// What occurrences are counted by.
    pub fn per(&self) -> Per {
        self.per
    }
    /// Where the alert is POSTed.
    pub fn webhook(&self) -> &http::Uri {
        &self.webhook
    }
    /// How long a key stays quiet after firing.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    fn matches(&self, event: &AuditEvent) -> bool {
        self.action == event.action && self.outcome.is_none_or(|o| o == event.outcome)
    }

    fn limits(&self) -> Limits {
        Limits {
            count: self.count,
            within_ms: millis(self.within),
            cooldown_ms: millis(self.cooldown),
        }
    }
}

/// Builds an [`AlertRule`]; [`build`](Self::build) checks everything at once.
///
/// ```
/// use secure_routes::alerts::AlertRule;
/// use secure_routes::audit::AuditAction;
/// let err = AlertRule::builder("bad name!")
///     .action(AuditAction::AlertTriggered)
///     .count(0)
///     .webhook("ftp://example.com/")
///     .build()
///     .unwrap_err();
/// let fields: Vec<_> = err.problems().iter().map(|p| p.split(':').next().unwrap()).collect();
/// assert_eq!(fields, ["name", "action", "count", "within", "webhook"]);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct AlertRuleBuilder {
    name: String,
    action: Option<AuditAction>,
    outcome: Option<Outcome>,
    count: Option<u32>,
    within: Option<Duration>,
    per: Per,
    webhook: Option<String>,
    cooldown: Duration,
}

impl AlertRuleBuilder {
    /// The audit action to count (required; not `alert_triggered`).
    pub fn action(mut self, action: AuditAction) -> Self {
        self.action = Some(action);
        self
    }
    /// Count only events with this outcome (default: any).
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }
    /// How many occurrences within the window fire the rule (required, 1 to [`MAX_COUNT`]).
    pub fn count(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }
    /// The sliding window (required, 1 s to [`MAX_WINDOW`]).
    pub fn within(mut self, within: Duration) -> Self {
        self.within = Some(within);
        self
    }
    /// What to count by (default [`Per::Ip`]).
    pub fn per(mut self, per: Per) -> Self {
        self.per = per;
        self
    }
    /// The webhook URL (required): `http://` or `https://`, with a host, without
    /// `user:password@` (hyper would not send it; put a token in the path or query instead).
    pub fn webhook(mut self, url: impl Into<String>) -> Self {
        self.webhook = Some(url.into());
        self
    }
    /// How long a key stays quiet after firing (default [`DEFAULT_COOLDOWN`], at most
    /// [`MAX_WINDOW`]; zero: fire again after every further `count` occurrences).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Checks the rule, reporting every problem at once. Each problem starts with the
    /// field's name and a colon (`count: ...`), so a config file reader can point at the key.
    pub fn build(self) -> Result<AlertRule, ConfigError> {
        let mut problems = Vec::new();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            problems.push(format!(
                "name: {:?} must be 1 to 64 letters, digits, '-', '_' or '.'",
                crate::audit::sanitize(&self.name, 80)
            ));
        }
        match self.action {
            None => problems.push("action: required".to_owned()),
            Some(AuditAction::AlertTriggered) => problems.push(
                "action: alert_triggered is the alerts' own event and cannot be watched (it would \
                 loop)"
                    .to_owned(),
            ),
            Some(_) => {}
        }
        match self.count {
            Some(c) if (1..=MAX_COUNT).contains(&c) => {}
            Some(c) => problems.push(format!("count: {c} is not between 1 and {MAX_COUNT}")),
            None => problems.push("count: required".to_owned()),
        }
        match self.within {
            Some(w) if w >= Duration::from_secs(1) && w <= MAX_WINDOW => {}
            Some(w) => problems.push(format!("within: {w:?} is not between 1s and 7d")),
            None => problems.push("within: required".to_owned()),
        }
        if self.cooldown > MAX_WINDOW {
            problems.push(format!("cooldown: {:?} is longer than 7d", self.cooldown));
        }
        let webhook = match self.webhook.as_deref().map(parse_webhook) {
            Some(Ok(uri)) => Some(uri),
            Some(Err(e)) => {
                problems.push(format!("webhook: {e}"));
                None
            }
            None => {
                problems.push("webhook: required".to_owned());
                None
            }
        };
        let (Some(action), Some(count), Some(within), Some(webhook), true) = (
            self.action,
            self.count,
            self.within,
            webhook,
            problems.is_empty(),
        ) else {
            return Err(ConfigError::check(problems, ())
                .err()
                .unwrap_or_else(|| ConfigError::new("invalid alert rule")));
        };
        Ok(AlertRule {
            name: self.name.into(),
            action,
            outcome: self.outcome,
            count,
            within,
            per: self.per,
            webhook,
            cooldown: self.cooldown,
        })
    }
}

/// Parses a webhook URL; the message never repeats the URL (it may hold a secret).
fn parse_webhook(url: &str) -> Result<http::Uri, String> {
    if url.len() > 2048 {
        return Err("longer than 2048 bytes".to_owned());
    }
    let uri: http::Uri = url.parse().map_err(|_| "not a valid URL".to_owned())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host".to_owned());
    };
    if authority.as_str().contains('@') {
        return Err(
            "must not hold user:password@ (not sent; put a token in the path or query)".to_owned(),
        );
    }
    if authority.host().is_empty() {
        return Err("has no host".to_owned());
    }
    Ok(uri)
}

/// Counters, a snapshot taken by [`AlertEngine::stats`].
///
/// ```
/// let s = secure_routes::alerts::AlertStats::default();
/// assert_eq!(s.fired, s.delivered + s.failed + s.dropped);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// Rules fired (each recorded an `alert_triggered` event).
    pub fired: u64,
    /// Alerts a webhook accepted (2xx).
    pub delivered: u64,
    /// Alerts not delivered after every attempt (or refused with a 4xx).
    pub failed: u64,
    /// Retries after a failed attempt.
    pub retries: u64,
    /// Alerts dropped before delivery: the queue was full or the engine stopped.
    pub dropped: u64,
    /// Alerts held back by a cooldown (not in `fired`): once per `count` occurrences within
    /// the window while the key was quiet.
    pub suppressed: u64,
}

struct RuleState {
    rule: AlertRule,
    limits: Limits,
    /// Shared with the next rule set when a replacement keeps this rule's counting.
    windows: Arc<Mutex<Windows>>,
}

impl RuleState {
    fn new(rule: AlertRule, max_keys: usize) -> Self {
        Self {
            limits: rule.limits(),
            windows: Arc::new(Mutex::new(Windows::new(max_keys))),
            rule,
        }
    }

    /// Whether `other` counts the same occurrences under the same keys up to the same count
    /// in the same window, so its logs and cooldowns carry over (its webhook and cooldown
    /// length may differ: they are read at each hit). A different `count` starts afresh: a
    /// key's log is bounded by the count it was built with.
    fn counts_like(&self, other: &AlertRule) -> bool {
        let r = &self.rule;
        r.name == other.name
            && r.action == other.action
            && r.outcome == other.outcome
            && r.per == other.per
            && r.count == other.count
            && r.within == other.within
    }
}

struct Inner {
    /// Swapped whole by [`AlertEngine::set_rules`]; read (briefly) by every observed event.
    rules: RwLock<Arc<[RuleState]>>,
    max_keys: usize,
    clock: Arc<dyn Clock>,
    /// `None` once [`AlertEngine::shutdown`] started.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    counters: Arc<Counters>,
    done: watch::Receiver<bool>,
}

/// Counts audit events against [`AlertRule`]s and delivers the alerts (see the
/// [module docs](self)). Cheap to clone; clones share everything. Register it with
/// `AuditConfig { observers: vec![Arc::new(engine.clone())], .. }`.
///
/// ```
/// use secure_routes::alerts::AlertEngine;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let engine = AlertEngine::builder().secret([7u8; 32]).spawn().unwrap();
/// assert_eq!(engine.stats().fired, 0);
/// engine.shutdown().await;
/// # });
/// ```
#[derive(Clone)]
pub struct AlertEngine {
    inner: Arc<Inner>,
}

impl fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("AlertEngine")
            .field("rules", &self.rules())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Builds an [`AlertEngine`]; [`spawn`](Self::spawn) checks everything and starts the
/// delivery task.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::alerts::AlertEngine;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let engine = AlertEngine::builder()
///     .secret(vec![1u8; 32])
///     .max_attempts(5)
///     .backoff(Duration::from_millis(500), Duration::from_secs(10))
///     .spawn()
///     .unwrap();
/// # let _ = engine;
/// assert!(AlertEngine::builder().secret("short").spawn().is_err());
/// # });
/// ```
#[must_use]
pub struct AlertEngineBuilder {
    rules: Vec<AlertRule>,
    secret: Option<Vec<u8>>,
    clock: Arc<dyn Clock>,
    max_keys: usize,
    queue_capacity: usize,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    timeout: Duration,
}

impl fmt::Debug for AlertEngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertEngineBuilder")
            .field("rules", &self.rules)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("max_keys", &self.max_keys)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl AlertEngine {
    /// A builder with the defaults: no rules, [`SystemClock`], 10 000 keys per rule, a queue
    /// of 1 024 alerts, 3 attempts, backoff 1 s doubling up to 30 s, 5 s per attempt.
    pub fn builder() -> AlertEngineBuilder {
        AlertEngineBuilder {
            rules: Vec::new(),
            secret: None,
            clock: Arc::new(SystemClock),
            max_keys: 10_000,
            queue_capacity: 1_024,
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }

    /// The rules now, in order.
    ///
    /// ```
    /// use secure_routes::alerts::AlertEngine;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let engine = AlertEngine::builder().secret([7u8; 32]).spawn().unwrap();
    /// assert!(engine.rules().is_empty());
    /// # });
    /// ```
    pub fn rules(&self) -> Vec<AlertRule> {
        self.current().iter().map(|r| r.rule.clone()).collect()
    }

    /// Replaces the rules (a configuration reload). A rule with the same name, action,
    /// outcome, `per`, `count` and `within` as a running one keeps that rule's counts and
    /// cooldowns (so a reload during an attack neither loses it nor sends its alert again);
    /// any other rule starts empty. Refused, with the running rules kept, when two rules share
    /// a name. Alerts already queued are delivered as they were built.
    ///
    /// ```
    /// use std::time::Duration;
    /// use secure_routes::alerts::{AlertEngine, AlertRule};
    /// use secure_routes::audit::AuditAction;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let engine = AlertEngine::builder().secret([7u8; 32]).spawn().unwrap();
    /// let rule = AlertRule::builder("auth-failures")
    ///     .action(AuditAction::UnauthorizedAccess)
    ///     .count(5)
    ///     .within(Duration::from_secs(60))
    ///     .webhook("http://127.0.0.1:9/hook")
    ///     .build()
    ///     .unwrap();
    /// engine.set_rules(vec![rule.clone()]).unwrap();
    /// assert_eq!(engine.rules()[0].name(), "auth-failures");
    /// assert!(engine.set_rules(vec![rule.clone(), rule]).is_err());
    /// assert_eq!(engine.rules().len(), 1);
    /// # });
    /// ```
    pub fn set_rules(&self, rules: Vec<AlertRule>) -> Result<(), ConfigError> {
        let problems = duplicate_names(&rules);
        if !problems.is_empty() {
            return Err(ConfigError::check(problems, ())
                .err()
                .unwrap_or_else(|| ConfigError::new("invalid alert rules")));
        }
        let mut current = self
            .inner
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let next: Arc<[RuleState]> = rules
            .into_iter()
            .map(|rule| match current.iter().find(|s| s.counts_like(&rule)) {
                Some(kept) => RuleState {
                    limits: rule.limits(),
                    windows: Arc::clone(&kept.windows),
                    rule,
                },
                None => RuleState::new(rule, self.inner.max_keys),
            })
            .collect();
        *current = next;
        Ok(())
    }

    /// The rule set now (a cheap clone: the set is replaced whole, never changed in place).
    fn current(&self) -> Arc<[RuleState]> {
        Arc::clone(
            &self
                .inner
                .rules
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// The counters now.
    pub fn stats(&self) -> AlertStats {
        let c = &self.inner.counters;
        AlertStats {
            fired: c.fired.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            suppressed: c.suppressed.load(Ordering::Relaxed),
        }
    }

    /// Stops taking alerts and waits until the queued ones are delivered or given up (each
    /// bounded by its attempts, timeouts and backoff). Rules firing afterwards still record
    /// their `alert_triggered` event; their webhook is dropped and counted.
    pub async fn shutdown(&self) {
        drop(
            self.inner
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    fn fire(
        &self,
        state: &RuleState,
        key: &str,
        trigger: &AuditEvent,
        now: Duration,
        emit: &mut Emitted,
    ) {
        let rule = &state.rule;
        let c = &self.inner.counters;
        c.fired.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::FIRED, "rule" => rule.name.to_string()).increment(1);
        let fired_at = i128::try_from(now.as_nanos())
            .ok()
            .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        let within = human(rule.within);
        let mut event = AuditEvent::new(AuditAction::AlertTriggered)
            .with_outcome(trigger.outcome)
            .with_reason(&rule.name);
        event = match rule.per {
            Per::Ip => event.with_client_ip(key),
            Per::Subject => event.with_subject(key),
            Per::Route => event.with_request("", key, ""),
        };
        event = event.with_metadata(serde_json::json!({
            "rule": &*rule.name,
            "action": rule.action.as_str(),
            "outcome": rule.outcome.map(|o| o.as_str()),
            "per": rule.per.as_str(),
            "key": key,
            "count": rule.count,
            "within_seconds": rule.within.as_secs(),
            "cooldown_seconds": rule.cooldown.as_secs(),
            "fired_at": fired_at,
            "webhook": host_of(&rule.webhook),
            "last_request_id": trigger.request_id,
        }));
        let text = format!(
            "secure-routes: rule {} fired for {} {}: {} {} in {within}",
            rule.name,
            rule.per,
            slack_escape(key),
            rule.count,
            rule.action
        );
        let body = serde_json::json!({
            "text": text,
            "id": event.id,
            "rule": &*rule.name,
            "action": rule.action.as_str(),
            "outcome": trigger.outcome.as_str(),
            "per": rule.per.as_str(),
            "key": key,
            "count": rule.count,
            "within_seconds": rule.within.as_secs(),
            "fired_at": fired_at,
        });
        emit.push(event);
        let job = Job {
            rule: Arc::clone(&rule.name),
            url: rule.webhook.clone(),
            body: Bytes::from(body.to_string()),
        };
        let sent = match &*self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(tx) => tx.try_send(job).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "the webhook queue is full",
                mpsc::error::TrySendError::Closed(_) => "the alert engine has stopped",
            }),
            None => Err("the alert engine has stopped"),
        };
        if let Err(why) = sent {
            c.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::DROPPED, "rule" => rule.name.to_string()).increment(1);
            tracing::warn!(
                target: "secure_routes::alerts",
                rule = %rule.name,
                why,
                "alert webhook dropped (the alert_triggered audit event was recorded)"
            );
        }
    }
}

impl AuditObserver for AlertEngine {
    fn observe(&self, event: &AuditEvent, emit: &mut Emitted) {
        // Our own events are never counted: an alert can never trigger an alert.
        if event.action == AuditAction::AlertTriggered {
            return;
        }
        let mut now = None;
        let rules = self.current();
        for state in rules.iter() {
            if !state.rule.matches(event) {
                continue;
            }
            let Some(key) = state.rule.per.key(event) else {
                continue;
            };
            let t = *now.get_or_insert_with(|| self.inner.clock.now());
            let hit = state
                .windows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .hit(key, event.count, millis(t), state.limits);
            match hit {
                Hit::Fired => self.fire(state, key, event, t, emit),
                Hit::Suppressed => {
                    self.inner
                        .counters
                        .suppressed
                        .fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(metric::SUPPRESSED, "rule" => state.rule.name.to_string())
                        .increment(1);
                }
                Hit::Counted => {}
            }
        }
    }
}

impl AlertEngineBuilder {
    /// Adds a rule.
    pub fn rule(mut self, rule: AlertRule) -> Self {
        self.rules.push(rule);
        self
    }
    /// Adds rules.
    pub fn rules(mut self, rules: impl IntoIterator<Item = AlertRule>) -> Self {
        self.rules.extend(rules);
        self
    }
    /// The webhook signing secret (required, at least [`MIN_SECRET_LEN`] bytes; the gateway
    /// reads it from `SECURE_ROUTES_WEBHOOK_SECRET`).
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(secret.as_ref().to_vec());
        self
    }
    /// The clock windows, cooldowns, `fired_at` and signature times are read from (tests
    /// inject a [`FakeClock`](crate::clock::FakeClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// Most keys tracked per rule (default 10 000); beyond it the least recently seen key is
    /// forgotten (its count and its cooldown).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }
    /// Alerts waiting for delivery at most (default 1 024); more are dropped and counted.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }
    /// Tries per alert, the first included (default 3).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }
    /// The wait before the first retry, doubled before each further one up to `max`
    /// (default 1 s and 30 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }
    /// How long one attempt may take, connecting included (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the settings (every problem at once) and starts the delivery task on the
    /// current tokio runtime.
    pub fn spawn(self) -> Result<AlertEngine, ConfigError> {
        let mut problems = Vec::new();
        match &self.secret {
            None => problems.push("alerts: a webhook signing secret is required".to_owned()),
            Some(s) if s.len() < MIN_SECRET_LEN => problems.push(format!(
                "alerts: the webhook secret must be at least {MIN_SECRET_LEN} bytes (got {})",
                s.len()
            )),
            Some(_) => {}
        }
        problems.extend(duplicate_names(&self.rules));
        for (what, zero) in [
            ("max_keys", self.max_keys == 0),
            ("queue_capacity", self.queue_capacity == 0),
            ("max_attempts", self.max_attempts == 0),
            ("timeout", self.timeout.is_zero()),
        ] {
            if zero {
                problems.push(format!("alerts: {what} must be above zero"));
            }
        }
        let runtime = tokio::runtime::Handle::try_current();
        if runtime.is_err() {
            problems.push("alerts: the engine needs a running tokio runtime".to_owned());
        }
        let client = match crate::http_client::http_client(self.timeout, false) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("alerts: the HTTP client could not be built: {e}"));
                None
            }
        };
        let (Ok(runtime), Some(client), Some(secret), true) =
            (runtime, client, self.secret, problems.is_empty())
        else {
            return Err(ConfigError::check(problems, ())
                .err()
                .unwrap_or_else(|| ConfigError::new("invalid alert settings")));
        };
        let counters = Arc::new(Counters::default());
        let delivery = Arc::new(Delivery {
            client,
            secret,
            clock: Arc::clone(&self.clock),
            max_attempts: self.max_attempts,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max.max(self.backoff_base),
            timeout: self.timeout,
            counters: Arc::clone(&counters),
        });
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let (done_tx, done_rx) = watch::channel(false);
        runtime.spawn(webhook::run(rx, delivery, done_tx));
        let max_keys = self.max_keys;
        Ok(AlertEngine {
            inner: Arc::new(Inner {
                rules: RwLock::new(
                    self.rules
                        .into_iter()
                        .map(|rule| RuleState::new(rule, max_keys))
                        .collect(),
                ),
                max_keys,
                clock: self.clock,
                queue: Mutex::new(Some(tx)),
                counters,
                done: done_rx,
            }),
        })
    }
}

/// A problem for each rule named like an earlier one (names label metrics and audit rows).
fn duplicate_names(rules: &[AlertRule]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if rules[..i].iter().any(|r| r.name == rule.name) {
            problems.push(format!("alerts: two rules are named {:?}", &*rule.name));
        }
    }
    problems
}

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A duration as the config writes it: `1m`, `90s`, `2h`, `1d` (the largest whole unit).
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// Escapes what Slack's message format treats as markup (`&`, `<`, `>`): a key such as a
/// subject must not become `<!channel>` (a mention of everyone) or a disguised link.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(60)), "1m");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(86_400)), "1d");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn slack_markup_is_escaped() {
        assert_eq!(slack_escape("<!channel> & co"), "&lt;!channel&gt; &amp; co");
    }

    #[test]
    fn webhook_urls() {
        assert!(parse_webhook("http://127.0.0.1:9000/hook").is_ok());
        assert!(parse_webhook("https://hooks.slack.com/services/T/B/x?y=1").is_ok());
        for bad in [
            "",
            "127.0.0.1:9000/hook",
            "ftp://example.com/",
            "http:///hook",
            "https://user:pw@example.com/",
            "/relative",
        ] {
            let e = parse_webhook(bad);
            assert!(e.is_err(), "{bad}");
            assert!(!e.unwrap_err().contains("pw"));
        }
    }
}
