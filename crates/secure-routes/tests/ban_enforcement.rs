//! Bans in the pipeline (issue 12 part 1, step 2): a loop of bad tokens ends in a 403 with
//! `Retry-After` that the clock ends; the check reads the resolved address, never a header;
//! a banned subject is refused from any address; allow-listed addresses are never banned;
//! dry-run only audits; refusals never wait for the ban store; three instances on one
//! memory-backed shared store (the store crates run the same scenario on SQLite, Redis and
//! Postgres).

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use http::Method;
use secure_routes::Policy;
use secure_routes::audit::{AuditAction, Outcome};
use secure_routes::bans::{
    Ban, BanKey, BanPolicy, BanStore, Bans, BoxFuture, MemoryBans, StoreError, StrikeOutcome,
    conformance,
};

use common::{PEER, START, harness, req, with_action};

const MIN: Duration = Duration::from_secs(60);

async fn ok() -> &'static str {
    "ok"
}

fn bans(threshold: u32) -> Bans {
    Bans::new(
        Arc::new(MemoryBans::new()),
        BanPolicy::builder()
            .threshold(threshold)
            .allow("192.0.2.0/24")
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn a_loop_of_bad_tokens_ends_in_a_ban_with_retry_after_that_the_clock_ends() {
    let b = bans(5);
    let h = harness(|s| s.bans(b.clone()));
    let app = h.app("/api/notes", Policy::authenticated(), get(ok));
    for i in 0..5 {
        let res = req(Method::GET, "/api/notes")
            .header("authorization", "Bearer nope")
            .send(&app)
            .await;
        assert_eq!(res.status, 401, "bad token {i}");
        b.flush().await;
    }
    // Banned: even a good credential is refused, before authentication.
    let res = req(Method::GET, "/api/notes")
        .bearer("alice")
        .send(&app)
        .await;
    let body = res.assert_problem(403, "Access temporarily blocked");
    assert_eq!(body["type"], "urn:secure-routes:problem:banned");
    assert_eq!(res.header("retry-after"), Some("900"));
    // Security headers and a request id like every refusal.
    assert!(res.header("x-request-id").is_some());
    h.clock.advance(10 * MIN);
    let res = req(Method::GET, "/api/notes")
        .bearer("alice")
        .send(&app)
        .await;
    assert_eq!(res.header("retry-after"), Some("300"));
    h.clock.advance(5 * MIN);
    let res = req(Method::GET, "/api/notes")
        .bearer("alice")
        .send(&app)
        .await;
    assert_eq!(res.status, 200, "the ban ended by the clock");

    let events = h.events().await;
    let banned = with_action(&events, AuditAction::IpBanned);
    let issued: Vec<_> = banned.iter().filter(|e| e.reason == "ban_issued").collect();
    assert_eq!(issued.len(), 1, "{banned:#?}");
    let meta = &issued[0].metadata;
    assert_eq!(meta["key"], format!("ip:{PEER}"));
    assert_eq!(meta["strikes"], 1);
    assert_eq!(meta["ban_reason"], "threshold");
    let until = u64::try_from((START + 15 * MIN).as_millis()).unwrap();
    assert_eq!(meta["until"], until);
    assert_eq!(issued[0].client_ip.as_deref(), Some(PEER));
    let refused: Vec<_> = banned.iter().filter(|e| e.reason == "banned").collect();
    assert_eq!(refused.len(), 2);
    assert!(
        refused
            .iter()
            .all(|e| e.outcome == Outcome::Denied && e.status == 403)
    );
    // The bans' own refusals struck nothing: 5 unauthorized, no more.
    assert_eq!(
        with_action(&events, AuditAction::UnauthorizedAccess).len(),
        5
    );
}

#[tokio::test]
async fn the_check_reads_the_resolved_address_not_a_forwarded_header() {
    let b = bans(1);
    let h = harness(|s| s.bans(b.clone()));
    let app = h.app("/x", Policy::public(), get(ok));
    b.add(&BanKey::parse(PEER).unwrap(), START + MIN, "manual", START)
        .await
        .unwrap();
    // No trusted proxy: the header is the client's word, and changes nothing.
    let res = req(Method::GET, "/x")
        .header("x-forwarded-for", "198.51.100.77")
        .send(&app)
        .await;
    assert_eq!(res.status, 403);
    let res = req(Method::GET, "/x")
        .peer("198.51.100.77")
        .header("x-forwarded-for", PEER)
        .send(&app)
        .await;
    assert_eq!(
        res.status, 200,
        "nobody is banned by naming a banned address"
    );
}

#[tokio::test]
async fn a_banned_subject_is_refused_from_any_address() {
    let b = bans(50);
    let h = harness(|s| s.bans(b.clone()));
    let app = h.app("/api/notes", Policy::authenticated(), get(ok));
    b.add(&BanKey::subject("mallory"), START + MIN, "manual", START)
        .await
        .unwrap();
    let res = req(Method::GET, "/api/notes")
        .peer("198.51.100.5")
        .bearer("mallory")
        .send(&app)
        .await;
    res.assert_problem(403, "Access temporarily blocked");
    assert_eq!(res.header("retry-after"), Some("60"));
    let res = req(Method::GET, "/api/notes")
        .peer("198.51.100.5")
        .bearer("alice")
        .send(&app)
        .await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn allow_listed_addresses_are_never_banned() {
    let b = bans(1);
    let h = harness(|s| s.bans(b.clone()));
    let app = h.app("/api/notes", Policy::authenticated(), get(ok));
    for _ in 0..3 {
        let res = req(Method::GET, "/api/notes")
            .peer("192.0.2.10")
            .header("authorization", "Bearer nope")
            .send(&app)
            .await;
        assert_eq!(res.status, 401);
        b.flush().await;
    }
    assert!(b.store().list(START).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dry_run_policy_audits_the_ban_as_would_deny_and_forwards() {
    let b = bans(1);
    let h = harness(|s| s.bans(b.clone()));
    let policy = Policy::public()
        .to_builder()
        .name("trial")
        .dry_run(true)
        .build()
        .unwrap();
    let app = h.app("/x", policy, get(ok));
    b.add(&BanKey::parse(PEER).unwrap(), START + MIN, "manual", START)
        .await
        .unwrap();
    let res = req(Method::GET, "/x").send(&app).await;
    assert_eq!(res.status, 200);
    let events = h.events().await;
    let banned = with_action(&events, AuditAction::IpBanned);
    assert_eq!(banned.len(), 1);
    assert_eq!(banned[0].outcome, Outcome::WouldDeny);
    assert_eq!(banned[0].reason, "banned");
}

/// A ban store whose strikes never answer.
#[derive(Default)]
struct StuckStrikes(MemoryBans);

impl BanStore for StuckStrikes {
    fn strike<'a>(
        &'a self,
        _: &'a BanKey,
        _: u32,
        _: &'a BanPolicy,
        _: Duration,
    ) -> BoxFuture<'a, Result<StrikeOutcome, StoreError>> {
        Box::pin(std::future::pending())
    }
    fn check<'a>(
        &'a self,
        key: &'a BanKey,
        now: Duration,
    ) -> BoxFuture<'a, Result<Option<Ban>, StoreError>> {
        self.0.check(key, now)
    }
    fn list(&self, now: Duration) -> BoxFuture<'_, Result<Vec<Ban>, StoreError>> {
        self.0.list(now)
    }
    fn lift<'a>(&'a self, key: &'a BanKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.lift(key)
    }
    fn add<'a>(
        &'a self,
        key: &'a BanKey,
        until: Duration,
        reason: &'a str,
        now: Duration,
    ) -> BoxFuture<'a, Result<Ban, StoreError>> {
        self.0.add(key, until, reason, now)
    }
    fn name(&self) -> &'static str {
        "stuck"
    }
}

#[tokio::test(start_paused = true)]
async fn refusals_are_answered_without_waiting_for_the_ban_store() {
    let b = Bans::new(Arc::new(StuckStrikes::default()), BanPolicy::default());
    let h = harness(|s| s.bans(b.clone()));
    let app = h.app("/api/notes", Policy::authenticated(), get(ok));
    for _ in 0..3 {
        // Paused time: were the refusal waiting for the stuck store, the runtime would idle
        // and the timeout fire at once.
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            req(Method::GET, "/api/notes")
                .header("authorization", "Bearer nope")
                .send(&app),
        )
        .await
        .expect("answered without the store");
        assert_eq!(res.status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_one_memory_store() {
    let one: Arc<dyn BanStore> = Arc::new(MemoryBans::new());
    conformance::three_instances(vec![Arc::clone(&one), Arc::clone(&one), one]).await;
}
