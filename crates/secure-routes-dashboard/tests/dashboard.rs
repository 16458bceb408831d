//! The dashboard over loopback: auth (bearer, login cookie, lockout, logout), CSRF on changes,
//! the JSON API's filters and errors, the live tail, and what the page promises about
//! escaping. The browser tests (tests/browser) drive the same contract in Chromium.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use secure_routes::audit::{
    ActionCount, AuditAction, AuditConfig, AuditError, AuditEvent, AuditObserver, AuditQuery,
    AuditReader, AuditWriter, BoxFuture, Emitted, MemoryAuditReader, Outcome, TopBy, TopEntry,
};
use secure_routes::bans::{BanKey, BanPolicy, BanStore, Bans, MemoryBans};
use secure_routes::clock::{Clock, FakeClock};
use secure_routes_dashboard::{DashboardState, router};

const TOKEN: &str = "test-admin-token-0123456789";
const NOW: Duration = Duration::from_secs(1_800_000_000);

/// A reader over events a test can add to, remembering the last query it was asked.
#[derive(Default)]
struct TestReader {
    events: RwLock<Vec<AuditEvent>>,
    last: Mutex<Option<AuditQuery>>,
}

impl TestReader {
    fn push(&self, e: AuditEvent) {
        self.events.write().unwrap().push(e);
    }
    fn memory(&self, q: &AuditQuery) -> MemoryAuditReader {
        *self.last.lock().unwrap() = Some(q.clone());
        MemoryAuditReader::new(self.events.read().unwrap().clone())
    }
    fn last(&self) -> AuditQuery {
        self.last
            .lock()
            .unwrap()
            .clone()
            .expect("the reader was asked")
    }
}

impl AuditReader for TestReader {
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        let m = self.memory(q);
        Box::pin(async move { m.events(q).await })
    }
    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>> {
        let m = self.memory(q);
        Box::pin(async move { m.counts(q, bucket).await })
    }
    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>> {
        let m = self.memory(q);
        Box::pin(async move { m.top(q, by, n).await })
    }
    fn name(&self) -> &'static str {
        "test"
    }
}

/// Collects what the dashboard records.
#[derive(Debug, Default)]
struct Recorded(Mutex<Vec<AuditEvent>>);

impl AuditObserver for Recorded {
    fn observe(&self, event: &AuditEvent, _: &mut Emitted) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Recorded {
    fn actions(&self) -> Vec<(AuditAction, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.action, e.reason.clone()))
            .collect()
    }
}

struct Sink;
impl secure_routes::audit::AuditSink for Sink {
    fn write_batch<'a>(&'a self, _: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async { Ok(()) })
    }
    fn name(&self) -> &'static str {
        "discard"
    }
}

struct Dash {
    base: String,
    origin: String,
    reader: Arc<TestReader>,
    bans: Arc<MemoryBans>,
    recorded: Arc<Recorded>,
    http: reqwest::Client,
}

async fn start_with(https: bool) -> Dash {
    let reader = Arc::new(TestReader::default());
    let bans = Arc::new(MemoryBans::new());
    let recorded = Arc::new(Recorded::default());
    let dir = std::env::temp_dir().join(format!("sr-dash-{}", uuid_like()));
    let writer = AuditWriter::spawn(
        Arc::new(Sink),
        AuditConfig {
            spill_path: dir.join("spill.jsonl"),
            observers: vec![recorded.clone() as Arc<dyn AuditObserver>],
            fold_window: Duration::ZERO,
            ..AuditConfig::default()
        },
    );
    let clock: Arc<dyn Clock> = Arc::new(FakeClock::new(NOW));
    let state = DashboardState::new(reader.clone() as Arc<dyn AuditReader>, TOKEN)
        .with_bans(Bans::new(
            bans.clone() as Arc<dyn BanStore>,
            BanPolicy::default(),
        ))
        .with_audit(writer)
        .with_https(https)
        .with_clock(clock)
        .with_tail_interval(Duration::from_millis(20));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router(state).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Dash {
        base: format!("http://{addr}/_secure-routes/"),
        origin: format!("http://{addr}"),
        reader,
        bans,
        recorded,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

async fn start() -> Dash {
    start_with(false).await
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

impl Dash {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn login_with(&self, token: &str, site: &str) -> reqwest::Response {
        self.http
            .post(self.url("login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap()
    }

    /// Logs in; the cookie header value to send back and the page's CSRF token.
    async fn login(&self) -> (String, String) {
        let res = self.login_with(TOKEN, "same-origin").await;
        assert_eq!(res.status(), 303);
        let set = res.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        let page = self
            .http
            .get(self.url(""))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = page
            .split("<meta name=\"csrf-token\" content=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_owned();
        assert!(!csrf.is_empty());
        (cookie, csrf)
    }

    async fn bearer_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_the_page_has_csp_and_a_csrf_token() {
    let d = start().await;
    // The login page first, with the DOM contract's ids.
    let res = d.http.get(d.url("")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    for id in [
        "id=\"login\"",
        "id=\"token\"",
        "id=\"login-submit\"",
        "id=\"login-error\"",
    ] {
        assert!(page.contains(id), "{id}");
    }
    assert!(page.contains("type=\"password\"") && page.contains("name=\"token\""));

    let res = d.login_with(TOKEN, "same-origin").await;
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/_secure-routes/");
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("sr-admin="), "{cookie}");
    for attr in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/_secure-routes/",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attr), "{attr} missing in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");

    let (cookie, _) = d.login().await;
    let res = d
        .http
        .get(d.url(""))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        csp.contains("style-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let page = res.text().await.unwrap();
    for id in [
        "form id=\"filters\"",
        "select id=\"f-action\"",
        "select id=\"f-outcome\"",
        "input id=\"f-ip\"",
        "input id=\"f-subject\"",
        "input id=\"f-route\"",
        "input id=\"f-fingerprint\"",
        "input id=\"f-since\"",
        "input id=\"f-until\"",
        "button id=\"apply\"",
        "table id=\"events\"",
        "button id=\"next-page\"",
        "id=\"events-empty\"",
        "svg id=\"chart\"",
        "id=\"chart-legend\"",
        "ol id=\"top-ips\"",
        "ol id=\"top-subjects\"",
        "table id=\"bans\"",
        "id=\"bans-empty\"",
        "table id=\"alerts\"",
        "ol id=\"tail\"",
        "button id=\"logout\"",
        "id=\"status\"",
        "<meta name=\"csrf-token\"",
    ] {
        assert!(page.contains(id), "{id} missing");
    }
    // No inline script: the only script is the embedded app.js.
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains("<script src=\"/_secure-routes/assets/app.js\""));

    // Over https the cookie is Secure.
    let d = start_with(true).await;
    let res = d
        .http
        .post(d.url("login"))
        .header("sec-fetch-site", "same-origin")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
}

#[tokio::test]
async fn bearer_works_and_missing_or_wrong_credentials_are_401() {
    let d = start().await;
    let res = d.bearer_get("api/events").await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["events"], serde_json::json!([]));
    // The page too, for a bearer.
    assert!(
        d.bearer_get("")
            .await
            .text()
            .await
            .unwrap()
            .contains("table id=\"events\"")
    );

    for path in [
        "api/events",
        "api/counts",
        "api/top",
        "api/bans",
        "api/tail",
    ] {
        let res = d.http.get(d.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let res = d
            .http
            .get(d.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{path}");
    }
    // A forged cookie is no session.
    let res = d
        .http
        .get(d.url("api/events"))
        .header("cookie", "sr-admin=v1.9999999999.AAAA.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A wrong login token: 401 page with the error shown, audited.
    let res = d.login_with("nope", "same-origin").await;
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("set-cookie").is_none());
    let page = res.text().await.unwrap();
    assert!(
        page.contains("<p id=\"login-error\" class=\"error\" role=\"alert\">Wrong token."),
        "{page}"
    );
    assert!(d.recorded.actions().contains(&(
        AuditAction::UnauthorizedAccess,
        "invalid_admin_token".into()
    )));
}

#[tokio::test]
async fn failed_logins_lock_the_address_out_even_for_the_right_token() {
    let d = start().await;
    for _ in 0..secure_routes_dashboard::auth::MAX_FAILURES {
        assert_eq!(d.login_with("guess", "same-origin").await.status(), 401);
    }
    let res = d.login_with(TOKEN, "same-origin").await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(d.bearer_get("api/events").await.status(), 429);
}

#[tokio::test]
async fn cross_site_login_and_lift_are_403() {
    let d = start().await;
    let res = d.login_with(TOKEN, "cross-site").await;
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("set-cookie").is_none());
    assert_eq!(d.login_with(TOKEN, "same-site").await.status(), 403);
    // Origin decides when there is no fetch metadata.
    let res = d
        .http
        .post(d.url("login"))
        .header("origin", "http://evil.example")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = d
        .http
        .post(d.url("login"))
        .header("origin", &d.origin)
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);

    let (cookie, csrf) = d.login().await;
    let key = BanKey::parse("198.51.100.7").unwrap();
    d.bans
        .add(&key, NOW + Duration::from_secs(3600), "manual", NOW)
        .await
        .unwrap();
    // Even with the token, a cross-site request cannot lift.
    let res = d
        .http
        .delete(d.url("api/bans/ip%3A198.51.100.7"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(d.bans.check(&key, NOW).await.unwrap().is_some());
    assert!(
        d.recorded
            .actions()
            .contains(&(AuditAction::CsrfValidationFailed, "cross_origin".into()))
    );
}

#[tokio::test]
async fn lift_needs_the_csrf_header_then_removes_the_ban_and_is_audited() {
    let d = start().await;
    let (cookie, csrf) = d.login().await;
    let v4 = BanKey::parse("203.0.113.9").unwrap();
    let v6 = BanKey::parse("2001:db8:1:2::5").unwrap();
    for k in [&v4, &v6] {
        d.bans
            .add(k, NOW + Duration::from_secs(600), "threshold", NOW)
            .await
            .unwrap();
    }
    let body: serde_json::Value = d.bearer_get("api/bans").await.json().await.unwrap();
    let keys: Vec<&str> = body["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ip:2001:db8:1:2::/64", "ip:203.0.113.9"]);
    assert_eq!(body["bans"][0]["until"], "2027-01-15T08:10:00Z");

    let lift = |path: &str, csrf: Option<&str>| {
        let mut r = d
            .http
            .delete(d.url(path))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "same-origin");
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    assert_eq!(
        lift("api/bans/ip%3A203.0.113.9", None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        lift("api/bans/ip%3A203.0.113.9", Some("AAAA"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert!(d.bans.check(&v4, NOW).await.unwrap().is_some());
    assert_eq!(
        lift("api/bans/ip%3A203.0.113.9", Some(&csrf))
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(d.bans.check(&v4, NOW).await.unwrap().is_none());
    assert_eq!(
        lift("api/bans/ip%3A203.0.113.9", Some(&csrf))
            .await
            .unwrap()
            .status(),
        404
    );
    // An IPv6 /64 key with its '/' raw (as the page sends it) and by bearer.
    let res = d
        .http
        .delete(d.url("api/bans/ip%3A2001%3Adb8%3A1%3A2%3A%3A/64"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(d.bans.list(NOW).await.unwrap().is_empty());
    let res = d
        .http
        .delete(d.url("api/bans/not%20a%20key"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let lifted: Vec<AuditEvent> = d
        .recorded
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.action == AuditAction::BanLifted)
        .cloned()
        .collect();
    assert_eq!(lifted.len(), 2);
    assert_eq!(lifted[0].client_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(lifted[0].metadata["key"], "ip:203.0.113.9");
    assert_eq!(lifted[1].client_ip.as_deref(), Some("2001:db8:1:2::/64"));
}

#[tokio::test]
async fn every_filter_reaches_the_audit_query() {
    let d = start().await;
    let id = "0193a6f0-0000-7000-8000-000000000001";
    let res = d
        .bearer_get(&format!(
            "api/events?action=rate_limit_exceeded&outcome=would_deny&ip=203.0.113.7\
             &subject=alice%40example.com&route=%2Fapi%2F%7Bid%7D&fingerprint=ge11nn05_abc\
             &since=2026-12-01T10:00:00Z&until=2026-12-01T11:00:00%2B01:00&before={id}&limit=42"
        ))
        .await;
    assert_eq!(res.status(), 200);
    let q = d.reader.last();
    assert_eq!(
        q,
        AuditQuery {
            action: Some(AuditAction::RateLimitExceeded),
            outcome: Some(Outcome::WouldDeny),
            client_ip: Some("203.0.113.7".into()),
            subject: Some("alice@example.com".into()),
            route: Some("/api/{id}".into()),
            fingerprint: Some("ge11nn05_abc".into()),
            since: Some(time::macros::datetime!(2026-12-01 10:00 UTC)),
            until: Some(time::macros::datetime!(2026-12-01 10:00 UTC)),
            before: Some(id.parse().unwrap()),
            limit: 42,
        }
    );
    // Empty values are no filter; the limit is capped.
    d.bearer_get("api/events?action=&ip=&limit=100000").await;
    assert_eq!(
        d.reader.last(),
        AuditQuery {
            limit: 500,
            ..AuditQuery::default()
        }
    );
    // counts and top take the same filters.
    d.bearer_get(
        "api/counts?bucket=300&subject=bob&since=2026-12-01T10:00:00Z&until=2026-12-02T10:00:00Z",
    )
    .await;
    let q = d.reader.last();
    assert_eq!(
        (q.subject.as_deref(), q.since.is_some()),
        (Some("bob"), true)
    );
    d.bearer_get("api/top?by=subject&n=3&outcome=denied").await;
    assert_eq!(d.reader.last().outcome, Some(Outcome::Denied));
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let d = start().await;
    for (path, param) in [
        ("api/events?limit=abc", "limit"),
        ("api/events?limit=0", "limit"),
        ("api/events?since=yesterday", "since"),
        ("api/events?until=2026-12-01", "until"),
        ("api/events?action=hacked", "action"),
        ("api/events?outcome=maybe", "outcome"),
        ("api/events?before=42", "before"),
        ("api/events?colour=red", "colour"),
        ("api/events?ip=a&ip=b", "ip"),
        ("api/counts?bucket=-5", "bucket"),
        // More than 10 000 buckets: a day in seconds.
        (
            "api/counts?bucket=1&since=2026-12-01T00:00:00Z&until=2026-12-02T00:00:00Z",
            "bucket",
        ),
        ("api/top?by=route", "by"),
        ("api/top?n=x", "n"),
    ] {
        let res = d.bearer_get(path).await;
        assert_eq!(res.status(), 400, "{path}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["parameter"], param, "{path}: {body}");
    }
}

#[tokio::test]
async fn events_page_backwards_and_counts_and_top_answer() {
    let d = start().await;
    let t0 = time::macros::datetime!(2026-12-01 10:00 UTC);
    for i in 0..5i64 {
        let mut e = AuditEvent::new(AuditAction::UnauthorizedAccess)
            .with_client_ip(if i < 3 { "203.0.113.1" } else { "203.0.113.2" })
            .with_count(2);
        e.timestamp = t0 + time::Duration::seconds(i * 30);
        d.reader.push(e);
    }
    let page1: serde_json::Value = d
        .bearer_get("api/events?limit=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page1["events"].as_array().unwrap().len(), 3);
    let next = page1["next"].as_str().unwrap();
    let page2: serde_json::Value = d
        .bearer_get(&format!("api/events?limit=3&before={next}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page2["events"].as_array().unwrap().len(), 2);
    assert!(page2["next"].is_null());

    let counts: serde_json::Value = d
        .bearer_get("api/counts?bucket=60&since=2026-12-01T00:00:00Z&until=2026-12-02T00:00:00Z")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(counts["bucket"], 60);
    assert_eq!(counts["counts"][0]["count"], 4);
    assert_eq!(counts["counts"][0]["action"], "unauthorized_access");
    let top: serde_json::Value = d
        .bearer_get("api/top?by=ip&n=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        top["top"],
        serde_json::json!([{"key": "203.0.113.1", "count": 6}])
    );
}

#[tokio::test]
async fn the_live_tail_delivers_an_event_added_after_it_opened() {
    let d = start().await;
    let old = AuditEvent::new(AuditAction::InvalidInput).with_reason("before-the-tail");
    d.reader.push(old);
    let mut res = d.bearer_get("api/tail").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let new = AuditEvent::new(AuditAction::RateLimitExceeded).with_reason("after-the-tail");
    let id = new.id.to_string();
    d.reader.push(new);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while !text.contains("after-the-tail") {
            let chunk = res.chunk().await.unwrap().expect("the stream ended");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    })
    .await
    .expect("the tail delivered the event");
    assert!(
        got.contains(&format!("event: audit\nid: {id}\ndata: {{")),
        "{got}"
    );
    assert!(!got.contains("before-the-tail"), "{got}");
}

#[tokio::test]
async fn a_tail_that_falls_behind_says_so_instead_of_dropping_silently() {
    let d = start().await;
    let mut res = d.bearer_get("api/tail").await;
    assert_eq!(res.status(), 200);
    // More events than one poll reads (200), added between two polls (this test's runtime has
    // one thread: the server cannot poll while the loop runs).
    for i in 0..250 {
        d.reader
            .push(AuditEvent::new(AuditAction::InvalidInput).with_reason(&format!("flood-{i}")));
    }
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        let mut text = String::new();
        while !(text.contains("event: gap") && text.contains("flood-249")) {
            let chunk = res.chunk().await.unwrap().expect("the stream ended");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    })
    .await
    .expect("the tail reported the gap");
    assert!(got.contains("event: gap\ndata: {\"limit\":200}"), "{got}");
    assert!(
        !got.contains("flood-0\""),
        "the oldest were not sent: {got}"
    );
}

#[tokio::test]
async fn live_tails_are_bounded() {
    let d = start().await;
    let mut open = Vec::new();
    for _ in 0..secure_routes_dashboard::MAX_TAIL_STREAMS {
        let res = d.bearer_get("api/tail").await;
        assert_eq!(res.status(), 200);
        open.push(res);
    }
    assert_eq!(d.bearer_get("api/tail").await.status(), 503);
    drop(open.pop());
    // The slot comes back once the server sees the stream closed (its next poll).
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let res = d.bearer_get("api/tail").await;
            if res.status() == 200 {
                break res;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a slot was freed");
    drop(again);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let d = start().await;
    let (cookie, csrf) = d.login().await;
    let res = d
        .http
        .post(d.url("logout"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "logout without the CSRF token");
    let res = d
        .http
        .post(d.url("logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let res = d
        .http
        .get(d.url("api/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

/// A live tail opened with a session ends when that session is logged out, not at its
/// expiry 12 hours later: a copied cookie's stream must die with the logout.
#[tokio::test]
async fn logout_ends_the_sessions_live_tail() {
    let d = start().await;
    let (cookie, csrf) = d.login().await;
    let mut tail = d
        .http
        .get(d.url("api/tail"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 200);
    let res = d
        .http
        .post(d.url("logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    // A liveness bound, not a speed goal: the stream ends at its next poll (20 ms here).
    tokio::time::timeout(Duration::from_secs(10), async {
        while tail.chunk().await.unwrap().is_some() {}
    })
    .await
    .expect("the tail ended with the logout");
}

/// A hostile user agent is data: the API returns it verbatim as a JSON string, and the page's
/// script only ever inserts text (no HTML sinks), under a CSP without inline script. The
/// browser test checks the rendered table in Chromium.
#[tokio::test]
async fn a_script_in_a_user_agent_is_shown_as_text() {
    let d = start().await;
    let ua = "<img src=x onerror=alert(1)>";
    d.reader
        .push(AuditEvent::new(AuditAction::UnauthorizedAccess).with_user_agent(ua));
    let body: serde_json::Value = d.bearer_get("api/events").await.json().await.unwrap();
    assert_eq!(body["events"][0]["user_agent"], ua);

    let res = d.http.get(d.url("assets/app.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = res.text().await.unwrap();
    let code: String = js
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setAttribute('on",
        "setAttribute(\"on",
        "createContextualFragment",
        "DOMParser",
    ] {
        assert!(!code.contains(sink), "app.js uses {sink}");
    }
    // The user agent cell is filled with textContent.
    assert!(code.contains("td.textContent = text(value)"));
    assert!(code.contains("cell(tr, 'ua', e.user_agent)"));
    // Every audit action is offered in the action filter.
    for a in AuditAction::ALL {
        assert!(
            code.contains(&format!("'{}'", a.as_str())),
            "{a} missing in app.js"
        );
    }
}
