//! `stores::audit_reader`, the one read side the dashboard and `secure-routes audit` share,
//! on all three audit locations against the reader conformance suite; and the `audit`
//! command's filters against the real binary.

mod support;

use std::process::Command;

use secure_routes::audit::reader::conformance;
use secure_routes::audit::sinks::JsonlSink;
use secure_routes::audit::{AuditQuery, AuditReader, AuditSink, MemoryAuditReader, Outcome};
use secure_routes_cli::stores::{self, AuditLocation};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_location_answers_like_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let events = conformance::fixture();

    let jsonl = dir.path().join("audit.jsonl");
    JsonlSink::open(&jsonl)
        .unwrap()
        .write_batch(&events)
        .await
        .unwrap();
    let reader = stores::audit_reader(&AuditLocation::Jsonl(jsonl)).unwrap();
    assert_eq!(reader.name(), "jsonl");
    conformance::run_all(&*reader, &events).await;

    let sqlite = dir.path().join("audit.db");
    secure_routes_sqlite::SqliteAuditSink::open(&sqlite)
        .unwrap()
        .write_batch(&events)
        .await
        .unwrap();
    let reader = stores::audit_reader(&AuditLocation::Sqlite(sqlite)).unwrap();
    assert_eq!(reader.name(), "sqlite");
    conformance::run_all(&*reader, &events).await;

    // Empty files of both kinds read as empty; missing ones are an error naming the path.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    conformance::empty(&*stores::audit_reader(&AuditLocation::Jsonl(empty)).unwrap()).await;
    let err = stores::audit_reader(&AuditLocation::Sqlite(dir.path().join("none.db")))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no audit log"), "{err}");

    let Some(url) = support::service("DATABASE_URL", "every_location_answers_like_the_reference")
    else {
        return;
    };
    let schema = support::Schema::create(&url).await;
    let pool = secure_routes_postgres::connect(&schema.url, 2).unwrap();
    // Not migrated yet: empty, not an error.
    let location = AuditLocation::Postgres(schema.url.clone());
    conformance::empty(&*stores::audit_reader(&location).unwrap()).await;
    secure_routes_postgres::migrate(&pool).await.unwrap();
    secure_routes_postgres::PostgresAuditSink::new(pool)
        .write(&events)
        .await
        .unwrap();
    let reader = stores::audit_reader(&location).unwrap();
    assert_eq!(reader.name(), "postgres");
    conformance::run_all(&*reader, &events).await;
    schema.drop_schema().await;
}

/// `secure-routes audit --json` with `args`, as request ids.
fn audit(dir: &std::path::Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args([
            "audit",
            "--audit",
            "sqlite:audit.db",
            "--json",
            "--limit",
            "1000",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["request_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_command_filters_by_outcome_ip_subject_route_and_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let events = conformance::fixture();
    secure_routes_sqlite::SqliteAuditSink::open(dir.path().join("audit.db"))
        .unwrap()
        .write_batch(&events)
        .await
        .unwrap();
    let reference = MemoryAuditReader::new(events.clone());
    let fingerprint = events.iter().find_map(|e| e.fingerprint.clone()).unwrap();
    let cases: Vec<(Vec<&str>, AuditQuery)> = vec![
        (
            vec!["--outcome", "error"],
            AuditQuery {
                outcome: Some(Outcome::Error),
                ..AuditQuery::default()
            },
        ),
        (
            vec!["--ip", "2001:db8::/64", "--subject", "bö_%"],
            AuditQuery {
                client_ip: Some("2001:db8::/64".into()),
                subject: Some("bö_%".into()),
                ..AuditQuery::default()
            },
        ),
        (
            vec!["--route", "/api/%", "--outcome", "denied"],
            AuditQuery {
                route: Some("/api/%".into()),
                outcome: Some(Outcome::Denied),
                ..AuditQuery::default()
            },
        ),
        (
            vec!["--fingerprint", &fingerprint, "--action", "authz_fail"],
            AuditQuery {
                fingerprint: Some(fingerprint.clone()),
                action: Some(secure_routes::audit::AuditAction::AuthzFail),
                ..AuditQuery::default()
            },
        ),
    ];
    for (args, q) in cases {
        let want: Vec<String> = reference
            .events(&AuditQuery { limit: 1000, ..q })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.request_id)
            .collect();
        assert!(!want.is_empty(), "{args:?} selects something");
        assert_eq!(audit(dir.path(), &args), want, "{args:?}");
    }
    // A typo in an outcome is an error listing the right ones, not an empty answer.
    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args([
            "audit",
            "--audit",
            "sqlite:audit.db",
            "--outcome",
            "refused",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("denied, allowed, error"), "{stderr}");
}
