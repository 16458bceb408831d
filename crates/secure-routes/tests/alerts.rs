//! Alerts against a local webhook receiver (issue 12 part 2): fires once at the threshold and
//! not below it, retried after a 500, quiet in cooldown and firing again after it, separate
//! keys per ip / subject / route, signatures that verify with the secret only, and the
//! `alert_triggered` event in the audit trail. Time moves with a `FakeClock`; the tests wait
//! for the receiver with a bounded channel receive, never a sleep.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::{get, post};
use http::{HeaderMap, Request, StatusCode};
use secure_routes::alerts::{AlertEngine, AlertRule, Per, SIGNATURE_HEADER, verify_signature};
use secure_routes::audit::{
    AuditAction, AuditConfig, AuditError, AuditEvent, AuditSink, AuditWriter, BoxFuture, Outcome,
};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::clock::{Clock, FakeClock};
use secure_routes::{Policy, Security};
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;

const SECRET: &[u8] = b"test-webhook-secret-0123456789abcdef";
const START: Duration = Duration::from_secs(1_800_000_000);
/// How long a test waits for a delivery before failing (a bound, not a timing).
const WAIT: Duration = Duration::from_secs(20);

/// One POST the receiver saw.
#[derive(Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Clone)]
struct ReceiverState {
    seen: mpsc::Sender<Received>,
    /// Statuses to answer, in order; 200 once empty.
    statuses: Arc<Mutex<VecDeque<u16>>>,
    /// When set, each request waits for a permit before answering (after being reported).
    hold: Option<Arc<Semaphore>>,
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = s
        .statuses
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
        .unwrap_or(200);
    let _ = s.seen.send(Received { headers, body }).await;
    if let Some(hold) = &s.hold {
        let _permit = hold.acquire().await;
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

/// A webhook receiver on 127.0.0.1:0, recording what it is sent.
struct Receiver {
    url: String,
    seen: mpsc::Receiver<Received>,
}

impl Receiver {
    async fn start(statuses: &[u16], hold: Option<Arc<Semaphore>>) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let state = ReceiverState {
            seen: tx,
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            hold,
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            seen: rx,
        }
    }

    /// The next delivery, waited for at most `WAIT`.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.seen.recv())
            .await
            .expect("a delivery within the bound")
            .expect("the receiver is running")
    }

    /// Deliveries already seen and not taken: call after `AlertEngine::shutdown`, which waits
    /// for every queued alert.
    fn rest(&mut self) -> Vec<Received> {
        let mut rest = Vec::new();
        while let Ok(r) = self.seen.try_recv() {
            rest.push(r);
        }
        rest
    }
}

/// An audit sink keeping every row.
#[derive(Clone, Debug, Default)]
struct Collect(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for Collect {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(batch);
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &'static str {
        "collect"
    }
}

struct Setup {
    engine: AlertEngine,
    writer: AuditWriter,
    clock: FakeClock,
    rows: Collect,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(rules: Vec<AlertRule>) -> Self {
        let clock = FakeClock::new(START);
        let engine = AlertEngine::builder()
            .rules(rules)
            .secret(SECRET)
            .clock(Arc::new(clock.clone()))
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
            .timeout(Duration::from_secs(5))
            .spawn()
            .expect("valid alert settings");
        let dir = tempfile::tempdir().expect("a temp dir");
        let rows = Collect::default();
        let writer = AuditWriter::spawn(
            Arc::new(rows.clone()),
            AuditConfig {
                observers: vec![Arc::new(engine.clone())],
                spill_path: dir.path().join("spill.jsonl"),
                ..AuditConfig::default()
            },
        );
        Self {
            engine,
            writer,
            clock,
            rows,
            _dir: dir,
        }
    }

    async fn record(&self, event: AuditEvent) {
        self.writer.record(event).await;
    }

    /// Stops both, then every row the sink got.
    async fn finish(&self) -> Vec<AuditEvent> {
        self.engine.shutdown().await;
        self.writer.shutdown().await;
        self.rows
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn rule(name: &str, count: u32, per: Per, url: &str) -> AlertRule {
    AlertRule::builder(name)
        .action(AuditAction::UnauthorizedAccess)
        .count(count)
        .within(Duration::from_secs(60))
        .per(per)
        .webhook(url)
        .cooldown(Duration::from_secs(600))
        .build()
        .expect("a valid rule")
}

fn unauthorized(ip: &str) -> AuditEvent {
    AuditEvent::new(AuditAction::UnauthorizedAccess)
        .with_status(401)
        .with_reason("missing_credential")
        .with_request("GET", "/api/x", "/api/x")
        .with_client_ip(ip)
}

#[tokio::test]
async fn fires_once_at_the_threshold_not_below_it() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![rule("auth-failures", 5, Per::Ip, &receiver.url)]);
    for _ in 0..4 {
        s.record(unauthorized("203.0.113.7")).await;
    }
    assert_eq!(
        s.engine.stats().fired,
        0,
        "four of five: below the threshold"
    );
    s.record(unauthorized("203.0.113.7")).await;
    assert_eq!(s.engine.stats().fired, 1);

    let got = receiver.next().await;
    let body = got.json();
    assert_eq!(
        body["text"],
        "secure-routes: rule auth-failures fired for ip 203.0.113.7: 5 unauthorized_access in 1m"
    );
    assert_eq!(body["rule"], "auth-failures");
    assert_eq!(body["action"], "unauthorized_access");
    assert_eq!(body["per"], "ip");
    assert_eq!(body["key"], "203.0.113.7");
    assert_eq!(body["count"], 5);
    assert_eq!(body["within_seconds"], 60);
    assert_eq!(body["fired_at"], "2027-01-15T08:00:00Z");
    assert_eq!(got.headers["content-type"], "application/json");

    // Further occurrences inside the cooldown: no second alert.
    for _ in 0..20 {
        s.record(unauthorized("203.0.113.7")).await;
    }
    let rows = s.finish().await;
    assert!(receiver.rest().is_empty(), "one attack, one alert");
    let stats = s.engine.stats();
    assert_eq!((stats.fired, stats.delivered, stats.failed), (1, 1, 0));

    // The alert is in the audit trail, naming the rule, key, count and window, with the
    // same id as the webhook body (a receiver can look it up).
    let alerts: Vec<_> = rows
        .iter()
        .filter(|e| e.action == AuditAction::AlertTriggered)
        .collect();
    assert_eq!(alerts.len(), 1);
    let a = alerts[0];
    assert_eq!(a.reason, "auth-failures");
    assert_eq!(a.client_ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(a.outcome, Outcome::Denied);
    assert_eq!(a.metadata["rule"], "auth-failures");
    assert_eq!(a.metadata["key"], "203.0.113.7");
    assert_eq!(a.metadata["count"], 5);
    assert_eq!(a.metadata["within_seconds"], 60);
    assert_eq!(body["id"], a.id.to_string());
    // Every occurrence reached the trail too (folded rows carry their count).
    let refusals: u64 = rows
        .iter()
        .filter(|e| e.action == AuditAction::UnauthorizedAccess)
        .map(|e| e.count)
        .sum();
    assert_eq!(refusals, 25);
}

#[tokio::test]
async fn quiet_in_cooldown_then_fires_again_after_it() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![rule("auth-failures", 3, Per::Ip, &receiver.url)]);
    for _ in 0..3 {
        s.record(unauthorized("198.51.100.1")).await;
    }
    receiver.next().await;
    // Nine minutes on, still in the ten-minute cooldown: counted, never sent.
    s.clock.advance(Duration::from_secs(540));
    for _ in 0..10 {
        s.record(unauthorized("198.51.100.1")).await;
    }
    assert_eq!(s.engine.stats().fired, 1, "quiet in cooldown");
    // Past the cooldown and the window: a fresh attack fires again.
    s.clock.advance(Duration::from_secs(120));
    for _ in 0..2 {
        s.record(unauthorized("198.51.100.1")).await;
    }
    assert_eq!(s.engine.stats().fired, 1, "two of three after the cooldown");
    s.record(unauthorized("198.51.100.1")).await;
    assert_eq!(s.engine.stats().fired, 2);
    let second = receiver.next().await;
    assert_eq!(second.json()["key"], "198.51.100.1");
    s.finish().await;
    assert!(receiver.rest().is_empty());
}

#[tokio::test]
async fn occurrences_spread_wider_than_the_window_do_not_fire() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![rule("auth-failures", 3, Per::Ip, &receiver.url)]);
    for _ in 0..10 {
        s.record(unauthorized("198.51.100.2")).await;
        s.clock.advance(Duration::from_secs(31)); // never three within 60 s
    }
    s.finish().await;
    assert_eq!(s.engine.stats().fired, 0);
    assert!(receiver.rest().is_empty());
}

#[tokio::test]
async fn retried_after_a_500_and_delivered_once() {
    let mut receiver = Receiver::start(&[500], None).await;
    let s = Setup::new(vec![rule("auth-failures", 2, Per::Ip, &receiver.url)]);
    for _ in 0..2 {
        s.record(unauthorized("192.0.2.9")).await;
    }
    let first = receiver.next().await;
    let second = receiver.next().await;
    // The same alert (same id), signed again for the retry.
    assert_eq!(first.json()["id"], second.json()["id"]);
    s.finish().await;
    assert!(receiver.rest().is_empty());
    let stats = s.engine.stats();
    assert_eq!(
        (stats.fired, stats.delivered, stats.retries, stats.failed),
        (1, 1, 1, 0),
        "two deliveries seen, the second 2xx, one alert"
    );
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_5xx_only_up_to_the_attempts() {
    let mut receiver = Receiver::start(&[400, 503, 503, 503], None).await;
    let s = Setup::new(vec![rule("auth-failures", 1, Per::Ip, &receiver.url)]);
    s.record(unauthorized("192.0.2.10")).await;
    receiver.next().await; // 400: given up at once
    s.record(unauthorized("192.0.2.11")).await;
    for _ in 0..3 {
        receiver.next().await; // 503 three times: the default three attempts
    }
    s.finish().await;
    assert!(receiver.rest().is_empty());
    let stats = s.engine.stats();
    assert_eq!(
        (stats.fired, stats.delivered, stats.failed, stats.retries),
        (2, 0, 2, 2)
    );
}

#[tokio::test]
async fn an_unreachable_webhook_is_retried_then_counted_as_failed() {
    // A port nothing listens on: bound, then closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    drop(listener);
    let s = Setup::new(vec![rule("auth-failures", 1, Per::Ip, &url)]);
    s.record(unauthorized("192.0.2.12")).await;
    let rows = s.finish().await;
    let stats = s.engine.stats();
    assert_eq!((stats.failed, stats.retries), (1, 2));
    // The audit event is recorded whatever the webhook did.
    assert!(rows.iter().any(|e| e.action == AuditAction::AlertTriggered));
}

#[tokio::test]
async fn keys_per_ip_subject_and_route_are_separate() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![
        rule("by-ip", 2, Per::Ip, &receiver.url),
        rule("by-subject", 2, Per::Subject, &receiver.url),
        rule("by-route", 2, Per::Route, &receiver.url),
    ]);
    let event = |ip: &str, sub: &str, route: &str| {
        AuditEvent::new(AuditAction::UnauthorizedAccess)
            .with_status(401)
            .with_request("GET", route, route)
            .with_client_ip(ip)
            .with_subject(sub)
    };
    // Every event differs from the previous one in ip, subject and route at once, so no
    // key sees two until the last.
    s.record(event("10.0.0.1", "alice", "/a")).await;
    s.record(event("10.0.0.2", "bob", "/b")).await;
    s.record(event("10.0.0.3", "carol", "/c")).await;
    assert_eq!(s.engine.stats().fired, 0);
    // Same ip as the first only.
    s.record(event("10.0.0.1", "dave", "/d")).await;
    let got = receiver.next().await.json();
    assert_eq!(
        (got["rule"].as_str(), got["key"].as_str()),
        (Some("by-ip"), Some("10.0.0.1"))
    );
    // Same subject as the second only.
    s.record(event("10.0.0.5", "bob", "/e")).await;
    let got = receiver.next().await.json();
    assert_eq!(
        (got["rule"].as_str(), got["key"].as_str()),
        (Some("by-subject"), Some("bob"))
    );
    // Same route as the third only.
    s.record(event("10.0.0.6", "erin", "/c")).await;
    let got = receiver.next().await.json();
    assert_eq!(
        (got["rule"].as_str(), got["key"].as_str()),
        (Some("by-route"), Some("/c"))
    );
    assert!(
        got["text"]
            .as_str()
            .is_some_and(|t| t.contains("for route /c:"))
    );
    s.finish().await;
    assert!(receiver.rest().is_empty());
    assert_eq!(s.engine.stats().fired, 3);
}

#[tokio::test]
async fn only_the_rules_action_and_outcome_count() {
    let mut receiver = Receiver::start(&[], None).await;
    let dry = AlertRule::builder("dry-run-401")
        .action(AuditAction::UnauthorizedAccess)
        .outcome(Outcome::WouldDeny)
        .count(2)
        .within(Duration::from_secs(60))
        .webhook(&receiver.url)
        .build()
        .expect("a valid rule");
    let s = Setup::new(vec![dry]);
    for _ in 0..5 {
        s.record(unauthorized("10.1.1.1")).await; // denied, not would_deny
        s.record(
            AuditEvent::new(AuditAction::RateLimitExceeded)
                .with_outcome(Outcome::WouldDeny)
                .with_client_ip("10.1.1.1"),
        )
        .await;
    }
    assert_eq!(s.engine.stats().fired, 0);
    for _ in 0..2 {
        s.record(unauthorized("10.1.1.1").with_outcome(Outcome::WouldDeny))
            .await;
    }
    assert_eq!(receiver.next().await.json()["outcome"], "would_deny");
    s.finish().await;
}

#[tokio::test]
async fn the_signature_verifies_with_the_secret_and_fails_with_another() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![rule("auth-failures", 1, Per::Ip, &receiver.url)]);
    s.record(unauthorized("192.0.2.1")).await;
    let got = receiver.next().await;
    s.finish().await;
    let header = got.headers[SIGNATURE_HEADER]
        .to_str()
        .expect("an ASCII header");
    assert!(header.starts_with(&format!("t={},v1=", START.as_secs())));
    let now = s.clock.now();
    let tolerance = Duration::from_secs(300);
    verify_signature(SECRET, header, &got.body, now, tolerance).expect("verifies");
    assert!(
        verify_signature(
            b"another-secret-0123456789abcdefghij",
            header,
            &got.body,
            now,
            tolerance
        )
        .is_err()
    );
    let mut tampered = got.body.to_vec();
    tampered[2] ^= 1;
    assert!(verify_signature(SECRET, header, &tampered, now, tolerance).is_err());
    // Replayed an hour later: refused by the timestamp.
    assert!(
        verify_signature(
            SECRET,
            header,
            &got.body,
            now + Duration::from_secs(3600),
            tolerance
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    let hold = Arc::new(Semaphore::new(0));
    let mut receiver = Receiver::start(&[], Some(Arc::clone(&hold))).await;
    let clock = FakeClock::new(START);
    let engine = AlertEngine::builder()
        .rule(rule("auth-failures", 1, Per::Ip, &receiver.url))
        .secret(SECRET)
        .clock(Arc::new(clock))
        .queue_capacity(1)
        .spawn()
        .expect("valid");
    let observe = |ip: &str| {
        let mut emit = secure_routes::audit::Emitted::default();
        secure_routes::audit::AuditObserver::observe(&engine, &unauthorized(ip), &mut emit);
        emit.len()
    };
    assert_eq!(observe("10.9.0.1"), 1);
    receiver.next().await; // the task holds the first alert (the receiver waits)
    assert_eq!(observe("10.9.0.2"), 1); // queued
    assert_eq!(observe("10.9.0.3"), 1); // dropped: the audit event is still emitted
    assert_eq!(engine.stats().dropped, 1);
    hold.add_permits(10);
    receiver.next().await;
    engine.shutdown().await;
    assert!(receiver.rest().is_empty());
    let stats = engine.stats();
    assert_eq!((stats.fired, stats.delivered, stats.dropped), (3, 2, 1));
}

#[tokio::test]
async fn alert_events_are_never_counted() {
    let mut receiver = Receiver::start(&[], None).await;
    assert!(
        AlertRule::builder("loop")
            .action(AuditAction::AlertTriggered)
            .count(1)
            .within(Duration::from_secs(60))
            .webhook(&receiver.url)
            .build()
            .is_err()
    );
    // Per route: the alert event carries the route too, and would be a second occurrence.
    let per_route = AlertRule::builder("r")
        .action(AuditAction::UnauthorizedAccess)
        .count(1)
        .within(Duration::from_secs(60))
        .per(Per::Route)
        .cooldown(Duration::ZERO)
        .webhook(&receiver.url)
        .build()
        .expect("valid");
    let s = Setup::new(vec![per_route]);
    s.record(unauthorized("10.2.2.2")).await;
    receiver.next().await;
    let rows = s.finish().await;
    assert_eq!(s.engine.stats().fired, 1);
    assert_eq!(
        rows.iter()
            .filter(|e| e.action == AuditAction::AlertTriggered)
            .count(),
        1
    );
}

/// Through the pipeline: requests without a credential are refused (401), each refusal an
/// audit event seen by the engine before folding.
#[tokio::test]
async fn refused_requests_through_the_pipeline_fire_the_rule() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![rule("auth-failures", 5, Per::Ip, &receiver.url)]);
    let security = Security::builder()
        .csrf_secret(b"a-csrf-secret-of-at-least-32-bytes!")
        .authenticator(
            JwtAuthenticator::builder()
                .hs256(b"a-jwt-secret-of-at-least-32-bytes!!")
                .build()
                .expect("valid"),
        )
        .audit(s.writer.clone())
        .build()
        .expect("valid");
    let app: Router = Router::new().route(
        "/api/notes",
        get(|| async { "notes" }).layer(security.layer(Policy::authenticated()).expect("fits")),
    );
    let peer = axum::extract::ConnectInfo(std::net::SocketAddr::from(([203, 0, 113, 7], 4000)));
    for i in 0..5 {
        let res = app
            .clone()
            .oneshot(
                Request::get("/api/notes")
                    .extension(peer)
                    .body(Body::empty())
                    .expect("a request"),
            )
            .await
            .expect("infallible");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let want = u64::from(i == 4);
        assert_eq!(s.engine.stats().fired, want, "after request {}", i + 1);
    }
    let got = receiver.next().await.json();
    assert_eq!(got["key"], "203.0.113.7");
    let rows = s.finish().await;
    assert!(rows.iter().any(|e| e.action == AuditAction::AlertTriggered
        && e.client_ip.as_deref() == Some("203.0.113.7")));
}

#[tokio::test]
async fn the_cooldown_counts_what_it_held_back() {
    let mut receiver = Receiver::start(&[], None).await;
    let s = Setup::new(vec![rule("auth-failures", 3, Per::Ip, &receiver.url)]);
    for _ in 0..3 {
        s.record(unauthorized("198.51.100.9")).await;
    }
    receiver.next().await;
    // Seven more in the cooldown: two more alerts' worth (3 + 3), one short of a third.
    for _ in 0..7 {
        s.record(unauthorized("198.51.100.9")).await;
    }
    let stats = s.engine.stats();
    assert_eq!((stats.fired, stats.suppressed), (1, 2));
    s.finish().await;
    assert!(receiver.rest().is_empty());
}

#[tokio::test]
async fn replaced_rules_keep_the_counts_of_an_unchanged_rule_and_start_others_afresh() {
    let mut receiver = Receiver::start(&[], None).await;
    let url = receiver.url.clone();
    let s = Setup::new(vec![rule("kept", 3, Per::Ip, &url)]);
    s.record(unauthorized("192.0.2.1")).await;
    s.record(unauthorized("192.0.2.1")).await;
    // A reload with the same rule (a new cooldown, which does not change the counting) and a
    // new one: the kept rule still has its two occurrences.
    let kept = AlertRule::builder("kept")
        .action(AuditAction::UnauthorizedAccess)
        .count(3)
        .within(Duration::from_secs(60))
        .per(Per::Ip)
        .webhook(&url)
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    s.engine
        .set_rules(vec![kept, rule("new", 2, Per::Ip, &url)])
        .unwrap();
    assert_eq!(
        s.engine
            .rules()
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>(),
        ["kept", "new"]
    );
    s.record(unauthorized("192.0.2.1")).await;
    assert_eq!(s.engine.stats().fired, 1, "kept fired at its third");
    assert_eq!(receiver.next().await.json()["rule"], "kept");
    s.record(unauthorized("192.0.2.1")).await;
    assert_eq!(s.engine.stats().fired, 2, "new fired at its second");
    assert_eq!(receiver.next().await.json()["rule"], "new");
    // The new cooldown applies to the kept rule's key: a minute on, it fires again.
    s.clock.advance(Duration::from_secs(61));
    for _ in 0..3 {
        s.record(unauthorized("192.0.2.1")).await;
    }
    assert_eq!(
        s.engine.stats().fired,
        3,
        "kept again; new still in its cooldown"
    );
    // Two rules with one name are refused and the running rules stay.
    assert!(
        s.engine
            .set_rules(vec![
                rule("x", 1, Per::Ip, &url),
                rule("x", 2, Per::Ip, &url)
            ])
            .is_err()
    );
    assert_eq!(s.engine.rules().len(), 2);
    // An empty set stops counting.
    s.engine.set_rules(Vec::new()).unwrap();
    for _ in 0..10 {
        s.record(unauthorized("192.0.2.1")).await;
    }
    assert_eq!(s.engine.stats().fired, 3);
    s.finish().await;
}
