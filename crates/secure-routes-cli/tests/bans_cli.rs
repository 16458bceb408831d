//! `secure-routes bans list | lift | add` against the real binary: a SQLite file always,
//! Redis and Postgres when `REDIS_URL` / `DATABASE_URL` are set (the testkit's skip rule).
//! A ban struck through the library is what the command lists (the store is the contract).

use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secure_routes::bans::{BanKey, BanPolicy, BanStore, StrikeOutcome};
use serde_json::Value;

fn bans(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .arg("bans")
        .args(args)
        .env_remove("SECURE_ROUTES_LIMITS")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// The whole round: a struck ban and an added one are listed (table and JSON), lifted, gone.
async fn round_trip(location: &str, store: &dyn BanStore, ip: &str) {
    let key = BanKey::parse(ip).unwrap();
    // A ban the pipeline would issue: 50 points at once.
    let out = store
        .strike(
            &BanKey::subject("mallory"),
            50,
            &BanPolicy::default(),
            now(),
        )
        .await
        .unwrap();
    assert!(
        matches!(out, StrikeOutcome::Banned { new: true, .. }),
        "{out:?}"
    );

    let added = ok(&bans(&["add", ip, "--for", "1h", "--limits", location]));
    assert!(
        added.starts_with(&format!("banned {key} until ")),
        "{added}"
    );

    // A shared Redis or Postgres may hold other tests' bans (the servers' tests strike from
    // 127.x addresses): only this test's keys are compared.
    let ours =
        |b: &Value| matches!(b["key"].as_str(), Some(k) if k == "sub:mallory" || k == key.as_str());
    let listed: Vec<Value> = json_lines(&ok(&bans(&["list", "--json", "--limits", location])))
        .into_iter()
        .filter(ours)
        .collect();
    let keys: Vec<&str> = listed.iter().map(|b| b["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["sub:mallory", key.as_str()], "{listed:?}");
    assert_eq!(listed[0]["strikes"], 1);
    assert_eq!(listed[0]["reason"], "threshold");
    assert_eq!(listed[1]["reason"], "manual");
    assert_eq!(listed[1]["strikes"], 0);
    // `until` is RFC 3339 and about an hour ahead.
    let until = time::OffsetDateTime::parse(
        listed[1]["until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ahead = until.unix_timestamp() - i64::try_from(now().as_secs()).unwrap();
    assert!((3590..=3600).contains(&ahead), "{ahead}");
    for b in &listed {
        assert_eq!(b.as_object().unwrap().len(), 4, "{b}");
    }

    let table = ok(&bans(&["list", "--limits", location]));
    assert!(table.starts_with("KEY"), "{table}");
    assert!(
        table.contains("sub:mallory") && table.contains(key.as_str()),
        "{table}"
    );

    assert_eq!(
        ok(&bans(&["lift", key.as_str(), "--limits", location])),
        format!("lifted {key}\n")
    );
    assert_eq!(
        ok(&bans(&["lift", key.as_str(), "--limits", location])),
        format!("no ban or history for {key}\n")
    );
    assert!(store.check(&key, now()).await.unwrap().is_none());
    let listed = json_lines(&ok(&bans(&["list", "--json", "--limits", location])));
    assert_eq!(listed.iter().filter(|b| ours(b)).count(), 1, "{listed:?}");
    assert!(ok(&bans(&["lift", "sub:mallory", "--limits", location])).starts_with("lifted"));
    let listed = json_lines(&ok(&bans(&["list", "--json", "--limits", location])));
    assert!(!listed.iter().any(ours), "{listed:?}");
    if listed.is_empty() {
        assert_eq!(
            ok(&bans(&["list", "--limits", location])),
            "no bans in force\n"
        );
    }
}

#[tokio::test]
async fn bans_cli_lists_adds_and_lifts_in_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.db");
    let store = secure_routes_sqlite::SqliteStore::open(&path).unwrap();
    let location = format!("sqlite:{}", path.display());
    round_trip(&location, &store, "2001:db8:7:7::1").await;
}

#[tokio::test]
async fn bans_cli_lists_adds_and_lifts_in_redis() {
    let Some(url) = secure_routes_testkit::services::service_url(
        "REDIS_URL",
        "bans_cli_lists_adds_and_lifts_in_redis",
    ) else {
        return;
    };
    let store = secure_routes_redis::RedisStore::connect(&url)
        .await
        .unwrap();
    // The command uses the default prefix: clear what an earlier run may have left.
    let _ = store.lift(&BanKey::subject("mallory")).await;
    round_trip(&url, &store, "198.51.100.77").await;
}

#[tokio::test]
async fn bans_cli_lists_adds_and_lifts_in_postgres() {
    let Some(url) = secure_routes_testkit::services::service_url(
        "DATABASE_URL",
        "bans_cli_lists_adds_and_lifts_in_postgres",
    ) else {
        return;
    };
    let pool = secure_routes_postgres::connect(&url, 2).unwrap();
    secure_routes_postgres::migrate(&pool).await.unwrap();
    let store = secure_routes_postgres::PostgresStore::new(pool);
    let _ = store.lift(&BanKey::subject("mallory")).await;
    round_trip(&url, &store, "198.51.100.78").await;
}

#[test]
fn bans_cli_refuses_memory_and_bad_keys() {
    let out = bans(&["list", "--limits", "memory"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("per process"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.db");
    drop(secure_routes_sqlite::SqliteStore::open(&path).unwrap());
    let location = format!("sqlite:{}", path.display());
    let out = bans(&["add", "not-an-ip", "--for", "1h", "--limits", &location]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ban key"));
    let out = bans(&[
        "list",
        "--limits",
        &format!("sqlite:{}", dir.path().join("none.db").display()),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no limits store"));
}

/// `add` and `lift` with `--audit` record what the operator did (`ip_banned` with reason
/// `manual`, `ban_lifted`) about the key's address; a lift of nothing records nothing.
#[test]
fn bans_cli_records_add_and_lift_in_the_audit_log_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("limits.db");
    drop(secure_routes_sqlite::SqliteStore::open(&path).unwrap());
    let location = format!("sqlite:{}", path.display());
    let log = dir.path().join("audit.jsonl");
    let audit = format!("jsonl:{}", log.display());
    ok(&bans(&[
        "add",
        "192.0.2.9",
        "--for",
        "1h",
        "--reason",
        "scanner",
        "--limits",
        &location,
        "--audit",
        &audit,
    ]));
    ok(&bans(&[
        "lift",
        "192.0.2.9",
        "--limits",
        &location,
        "--audit",
        &audit,
    ]));
    ok(&bans(&[
        "lift",
        "192.0.2.9",
        "--limits",
        &location,
        "--audit",
        &audit,
    ]));
    let events = json_lines(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["action"], "ip_banned");
    assert_eq!(events[0]["reason"], "manual");
    assert_eq!(events[0]["client_ip"], "192.0.2.9");
    assert_eq!(events[0]["metadata"]["reason"], "scanner");
    assert_eq!(events[0]["metadata"]["via"], "cli");
    assert_eq!(events[1]["action"], "ban_lifted");
    assert_eq!(events[1]["outcome"], "allowed");
    assert_eq!(events[1]["client_ip"], "192.0.2.9");
    // Without --audit nothing is written anywhere.
    ok(&bans(&[
        "add",
        "192.0.2.10",
        "--for",
        "1h",
        "--limits",
        &location,
    ]));
    assert_eq!(json_lines(&std::fs::read_to_string(&log).unwrap()).len(), 2);
}
