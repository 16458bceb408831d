//! `secure-routes dashboard` as a user runs it: against the SQLite audit file and limits store a
//! demo wrote, over loopback, with the admin token from the environment.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::Demo;

const TOKEN: &str = "dashboard-cli-admin-token-0123456789";
const HOSTILE_UA: &str = "<img src=x onerror=alert(1)>";

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args(args)
        .current_dir(dir)
        .env_remove("SECURE_ROUTES_ADMIN_TOKEN")
        .env_remove("SECURE_ROUTES_AUDIT")
        .env_remove("SECURE_ROUTES_LIMITS")
        .output()
        .expect("run secure-routes")
}

fn dashboard(dir: &Path, audit: &str, limits: &str) -> Demo {
    let mut command = Command::new(env!("CARGO_BIN_EXE_secure-routes"));
    command
        .args([
            "dashboard",
            "--addr",
            "127.0.0.1:0",
            "--audit",
            audit,
            "--limits",
            limits,
        ])
        .current_dir(dir)
        .env("SECURE_ROUTES_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .env_remove("SECURE_ROUTES_AUDIT")
        .env_remove("SECURE_ROUTES_LIMITS");
    Demo::spawn(command, dir, "dashboard")
}

#[tokio::test]
async fn the_dashboard_shows_what_a_demo_wrote_and_lifts_its_bans() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let limits_db = dir.path().join("limits.db");
    let audit = format!("sqlite:{}", db.display());
    let limits = format!("sqlite:{}", limits_db.display());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A demo refuses a few bad tokens (one with a hostile user agent), then stops (flushed).
    let demo = Demo::start(
        dir.path(),
        "demo",
        &["--audit", &audit, "--limits", &limits],
    );
    for _ in 0..3 {
        let res = http
            .get(demo.url("/api/user/notes"))
            .header("authorization", "Bearer not-a-token")
            .header("user-agent", HOSTILE_UA)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    demo.stop();
    let out = cli(
        dir.path(),
        &[
            "bans",
            "add",
            "203.0.113.50",
            "--for",
            "1h",
            "--limits",
            &limits,
        ],
    );
    assert!(out.status.success(), "{out:?}");

    // Without the admin token the dashboard refuses to start.
    let out = cli(
        dir.path(),
        &["dashboard", "--addr", "127.0.0.1:0", "--audit", &audit],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SECURE_ROUTES_ADMIN_TOKEN is not set"),
        "{out:?}"
    );

    let dash = dashboard(dir.path(), &audit, &limits);
    let api = |path: &str| {
        http.get(dash.url(&format!("/_secure-routes/api/{path}")))
            .bearer_auth(TOKEN)
            .send()
    };
    // No credential: 401 (and audited: the dashboard's own refusals are in the trail too, so
    // the checks below filter by the demo's route).
    let res = http
        .get(dash.url("/_secure-routes/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let body: Value =
        api("events?action=unauthorized_access&route=route%3A%2Fapi%2Fuser%2Fnotes&limit=10")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let events = body["events"].as_array().unwrap();
    let decisions: u64 = events.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(decisions, 3, "{body}");
    assert_eq!(events[0]["user_agent"], HOSTILE_UA);
    assert_eq!(events[0]["path"], "/api/user/notes");

    let counts: Value = api("counts?bucket=3600&route=route%3A%2Fapi%2Fuser%2Fnotes")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: u64 = counts["counts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "unauthorized_access")
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3, "{counts}");
    let top: Value = api("top?by=ip").await.unwrap().json().await.unwrap();
    assert_eq!(top["top"][0]["key"], "127.0.0.1", "{top}");

    let bans: Value = api("bans").await.unwrap().json().await.unwrap();
    assert_eq!(bans["bans"][0]["key"], "ip:203.0.113.50", "{bans}");

    // A browser's way: log in, read the page's CSRF token, lift the ban.
    let res = http
        .post(dash.url("/_secure-routes/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http
        .get(dash.url("/_secure-routes/"))
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
    let res = http
        .delete(dash.url("/_secure-routes/api/bans/ip%3A203.0.113.50"))
        .header("cookie", &cookie)
        .header("sec-fetch-site", "same-origin")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    dash.stop();

    let out = cli(dir.path(), &["bans", "list", "--limits", &limits]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no bans in force\n");
    // The lift is in the audit trail the dashboard shows.
    let out = cli(
        dir.path(),
        &[
            "audit",
            "--audit",
            &audit,
            "--action",
            "ban_lifted",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let lifted = String::from_utf8_lossy(&out.stdout);
    assert!(lifted.contains("\"ip:203.0.113.50\""), "{lifted}");
}
