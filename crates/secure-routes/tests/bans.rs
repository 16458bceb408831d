//! Bans (issue 12 part 1): the memory stores pass the ban conformance suite, and the banned
//! refusal is the documented problem.

use std::sync::Arc;

use axum::response::IntoResponse;
use http_body_util::BodyExt;
use secure_routes::audit::{AuditAction, Reason};
use secure_routes::bans::{MemoryBans, conformance};
use secure_routes::rate_limit::MemoryStore;
use secure_routes::response::problem::{Rejection, RejectionInfo, RejectionKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_bans_pass_the_ban_conformance_suite() {
    conformance::run_all(
        || async { MemoryBans::new() },
        || async {
            let one = Arc::new(MemoryBans::new());
            vec![Arc::clone(&one), Arc::clone(&one), one]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_ban_conformance_suite() {
    conformance::run_all(
        || async { MemoryStore::new() },
        || async {
            let one = Arc::new(MemoryStore::new());
            vec![Arc::clone(&one), Arc::clone(&one), one]
        },
    )
    .await;
}

#[tokio::test]
async fn a_banned_client_gets_403_problem_with_retry_after() {
    let res = Rejection::banned(900).into_response();
    assert_eq!(res.status(), 403);
    assert_eq!(res.headers()["retry-after"], "900");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let info = *res.extensions().get::<RejectionInfo>().unwrap();
    assert_eq!(info.kind, RejectionKind::Banned);
    assert_eq!(info.reason, Reason::Banned);
    assert_eq!(info.kind.audit_action(), AuditAction::IpBanned);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], "urn:secure-routes:problem:banned");
    assert_eq!(body["error"], "Access temporarily blocked");
    assert_eq!(body["status"], 403);
    assert_eq!(body["retryAfter"], 900);
}

#[test]
fn ban_actions_are_in_the_vocabulary() {
    for (action, name) in [
        (AuditAction::IpBanned, "ip_banned"),
        (AuditAction::BanLifted, "ban_lifted"),
    ] {
        assert_eq!(action.as_str(), name);
        assert_eq!(AuditAction::parse(name), Some(action));
        assert!(AuditAction::ALL.contains(&action));
    }
}
