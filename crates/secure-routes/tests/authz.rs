//! Authorization on top of authentication (`Policy::require*`) and the anonymous-allowed mode
//! (`AuthMode::Optional`), through the whole pipeline.

mod common;

use axum::routing::post;
use common::{Harness, harness, req, with_action};
use http::Method;
use secure_routes::audit::{AuditAction, Outcome};
use secure_routes::authz::Requirement;
use secure_routes::{AuthMode, Policy, Principal, Quota};

async fn whoami(p: Option<Principal>) -> String {
    p.map_or_else(
        || "anonymous".to_owned(),
        |p| format!("hello {}", p.subject()),
    )
}

fn admin_app(h: &Harness) -> axum::Router {
    let policy = Policy::builder("admin")
        .auth(AuthMode::Required)
        .rate_limit(Quota::per_minute(3))
        .require_role("admin")
        .build()
        .unwrap();
    h.app("/admin", policy, post(whoami))
}

#[tokio::test]
async fn a_principal_without_the_role_gets_a_403_audited_as_authz_fail() {
    let h = harness(|b| b);
    let app = admin_app(&h);

    let res = req(Method::POST, "/admin")
        .bearer("mallory")
        .send(&app)
        .await;
    let body = res.assert_problem(403, "Forbidden");
    assert_eq!(body["type"], "urn:secure-routes:problem:forbidden");
    // The check comes after the rate limit: the refused request spent a unit.
    assert_eq!(res.header("x-ratelimit-remaining"), Some("2"));

    let res = req(Method::POST, "/admin")
        .header("authorization", "Bearer role:admin:alice")
        .send(&app)
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "hello alice");

    // A role of another name is not the role.
    let res = req(Method::POST, "/admin")
        .header("authorization", "Bearer role:administrator:eve")
        .send(&app)
        .await;
    res.assert_problem(403, "Forbidden");

    let events = h.events().await;
    let denied = with_action(&events, AuditAction::AuthzFail);
    assert_eq!(denied.len(), 2, "{events:?}");
    for e in &denied {
        assert_eq!(e.status, 403);
        assert_eq!(e.outcome, Outcome::Denied);
        assert_eq!(e.reason, "missing_role");
    }
    assert_eq!(denied[0].subject.as_deref(), Some("mallory"));
    assert_eq!(denied[1].subject.as_deref(), Some("eve"));
}

#[tokio::test]
async fn forbidden_requests_still_run_into_the_rate_limit() {
    let h = harness(|b| b);
    let app = admin_app(&h);
    for _ in 0..3 {
        req(Method::POST, "/admin")
            .bearer("mallory")
            .send(&app)
            .await
            .assert_problem(403, "Forbidden");
    }
    req(Method::POST, "/admin")
        .bearer("mallory")
        .send(&app)
        .await
        .assert_problem(429, "Rate limit exceeded");
}

#[tokio::test]
async fn every_requirement_must_hold_and_the_first_unmet_one_is_reported() {
    let h = harness(|b| b);
    let policy = Policy::builder("two")
        .auth(AuthMode::Required)
        .require_role("admin")
        .require(Requirement::predicate("not alice", |p| {
            p.subject() != "alice"
        }))
        .build()
        .unwrap();
    let app = h.app("/two", policy, post(whoami));
    let alice = req(Method::POST, "/two")
        .header("authorization", "Bearer role:admin:alice")
        .send(&app)
        .await;
    alice.assert_problem(403, "Forbidden");
    let bob = req(Method::POST, "/two")
        .header("authorization", "Bearer role:admin:bob")
        .send(&app)
        .await;
    assert_eq!(bob.status, 200);
    let events = h.events().await;
    let denied = with_action(&events, AuditAction::AuthzFail);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].reason, "requirement_not_met");
}

#[test]
fn requirements_need_required_authentication() {
    for mode in [AuthMode::Off, AuthMode::Optional] {
        let err = Policy::builder("p")
            .auth(mode)
            .require_role("admin")
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("authorization requirements"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn optional_auth_keys_the_limit_by_user_when_a_valid_token_comes_and_by_address_otherwise() {
    let h = harness(|b| b);
    let policy = Policy::builder("feed")
        .auth(AuthMode::Optional)
        .rate_limit(Quota::per_minute(2))
        .build()
        .unwrap();
    let app = h.app("/feed", policy, post(whoami));

    // Anonymous callers share their address's budget.
    for _ in 0..2 {
        let res = req(Method::POST, "/feed").send(&app).await;
        assert_eq!(
            (res.status.as_u16(), res.text().as_str()),
            (200, "anonymous")
        );
    }
    req(Method::POST, "/feed")
        .send(&app)
        .await
        .assert_problem(429, "Rate limit exceeded");

    // The same address with a valid token is identified, with a budget of its own.
    let res = req(Method::POST, "/feed").bearer("alice").send(&app).await;
    assert_eq!(
        (res.status.as_u16(), res.text().as_str()),
        (200, "hello alice")
    );
    assert_eq!(res.header("x-ratelimit-remaining"), Some("1"));

    // A token that does not verify is refused, not treated as anonymous (from another
    // address: failures count against the address, and this one's budget is spent).
    req(Method::POST, "/feed")
        .peer("198.51.100.9")
        .header("authorization", "Bearer forged")
        .send(&app)
        .await
        .assert_problem(401, "Authentication required");
}
