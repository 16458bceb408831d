//! Three `secure-routes demo` processes on one shared store admit exactly the limit.
//!
//! Each test starts three real demo processes pointing at the same Redis (or Postgres, in a
//! schema of its own), fires six times STRICT's quota (10 per minute, per user) at
//! `POST /api/strict` concurrently and spread across the three, and asserts that exactly 10
//! are admitted and every other request is a 429, and that each 429 is in the audit trail. The
//! clock-skew variants start the instances with clocks 45 s behind, on time, and 45 s ahead:
//! the shared stores take time from the server, so that must not admit anything extra (a
//! store that trusted instance clocks would, since each instance would see the others'
//! admissions as older than they are).
//!
//! The instances run with the default store timeout (50 ms). Before the deny cache (issue 9
//! part 5) these runs needed a 5 s timeout: the sixty checks of one user queued on one row
//! lock (Postgres) and the last ones outlived 50 ms, so STRICT (fail-closed) answered some of
//! them 503 instead of 429. Now each instance has at most one check of the key in flight and
//! answers the rest from its deny cache once the store refused, so no response may be anything
//! but 200 or 429.

mod support;

use futures_util::future::join_all;
use reqwest::StatusCode;
use support::{Demo, Schema, bearer, fresh_subject, service};

/// STRICT's quota.
const LIMIT: usize = 10;
/// Requests fired per run: six times the limit.
const FIRED: usize = 6 * LIMIT;

/// Fires `FIRED` concurrent requests for one fresh user across `demos`; returns the statuses.
async fn fire(demos: &[Demo], subject: &str) -> Vec<StatusCode> {
    let client = reqwest::Client::new();
    let auth = bearer(subject);
    let requests = (0..FIRED).map(|i| {
        let url = demos[i % demos.len()].url("/api/strict");
        let request = client
            .post(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body("{}");
        async move { request.send().await.expect("request").status() }
    });
    join_all(requests).await
}

fn tally(statuses: &[StatusCode]) -> (usize, usize, Vec<StatusCode>) {
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let other = statuses
        .iter()
        .copied()
        .filter(|s| *s != StatusCode::OK && *s != StatusCode::TOO_MANY_REQUESTS)
        .collect();
    (ok, limited, other)
}

fn start_three(
    dir: &std::path::Path,
    limits: &str,
    audit: &dyn Fn(usize) -> String,
    skews: [i64; 3],
) -> Vec<Demo> {
    skews
        .iter()
        .enumerate()
        .map(|(i, skew)| {
            let audit = audit(i);
            let skew = skew.to_string();
            Demo::start(
                dir,
                &format!("instance{i}"),
                &[
                    "--limits",
                    limits,
                    "--audit",
                    &audit,
                    "--clock-skew-ms",
                    &skew,
                    // Rate limits alone: 50 refusals would otherwise ban 127.0.0.1 in the
                    // shared store (bans are on by default) for every later test.
                    "--bans",
                    "off",
                ],
            )
        })
        .collect()
}

/// Counts `rate_limit_exceeded` lines in the instances' JSONL audit files.
fn jsonl_rate_limited(dir: &std::path::Path, n: usize) -> usize {
    (0..n)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("audit{i}.jsonl")))
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
                .filter(|e| e["action"] == "rate_limit_exceeded")
                // Identical refusals fold into one line with a count.
                .map(|e| e["count"].as_u64().expect("count") as usize)
                .sum::<usize>()
        })
        .sum()
}

/// Starts three instances, fires at them, stops them (each must have lost no audit event) and
/// returns what the client saw.
async fn run_three(
    dir: &std::path::Path,
    subject: &str,
    limits: &str,
    audit: &dyn Fn(usize) -> String,
    skews: [i64; 3],
) -> (usize, usize) {
    // One three-instance run at a time: six of them at once put eighteen processes and their
    // stores on two cores, where a single check can outlive the 50 ms store timeout for
    // reasons that have nothing to do with the store (the CPU queue). Sequential, the runs
    // measure what the issue asks: a hot key under the default timeout.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let demos = start_three(dir, limits, audit, skews);
    let statuses = fire(&demos, subject).await;
    for d in demos {
        let stderr = d.stop();
        assert_eq!(support::stop_counts(&stderr).lost, 0, "{stderr}");
    }
    let (ok, limited, other) = tally(&statuses);
    assert!(
        other.is_empty(),
        "only 200 and 429 expected, also got {other:?}"
    );
    (ok, limited)
}

async fn redis_run(test: &str, skews: [i64; 3]) {
    let Some(redis) = service("REDIS_URL", test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let audit = |i: usize| format!("jsonl:audit{i}.jsonl");
    let seen = run_three(dir.path(), &fresh_subject(test), &redis, &audit, skews).await;
    assert_eq!(seen, (LIMIT, FIRED - LIMIT), "{test}: exactly the limit");
    assert_eq!(
        jsonl_rate_limited(dir.path(), 3),
        FIRED - LIMIT,
        "every 429 audited"
    );
}

async fn postgres_run(test: &str, skews: [i64; 3]) {
    let Some(database) = service("DATABASE_URL", test) else {
        return;
    };
    let schema = Schema::create(&database).await;
    let dir = tempfile::tempdir().unwrap();
    let url = schema.url.clone();
    let audit = |_: usize| url.clone();
    // Three instances migrating one schema at once: the advisory lock makes that safe.
    let seen = run_three(dir.path(), &fresh_subject(test), &schema.url, &audit, skews).await;
    let audited = schema
        .count_audit("action = 'rate_limit_exceeded' AND route = 'route:/api/strict'")
        .await;
    schema.drop_schema().await;
    assert_eq!(seen, (LIMIT, FIRED - LIMIT), "{test}: exactly the limit");
    assert_eq!(audited as usize, FIRED - LIMIT, "every 429 audited, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_admit_exactly_the_limit() {
    redis_run("three_instances_on_one_redis", [0, 0, 0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_redis_with_skewed_clocks_admit_exactly_the_limit() {
    redis_run("three_instances_on_one_redis_skewed", [-45_000, 0, 45_000]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_admit_exactly_the_limit() {
    postgres_run("three_instances_on_one_postgres", [0, 0, 0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_postgres_with_skewed_clocks_admit_exactly_the_limit() {
    postgres_run(
        "three_instances_on_one_postgres_skewed",
        [-45_000, 0, 45_000],
    )
    .await;
}

/// The control: three instances on their own memory stores each admit the limit, so the
/// harness above does see a store that is not shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_memory_stores_each_admit_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let audit = |i: usize| format!("jsonl:audit{i}.jsonl");
    let seen = run_three(
        dir.path(),
        &fresh_subject("memory_control"),
        "memory",
        &audit,
        [0, 0, 0],
    )
    .await;
    assert_eq!(seen, (3 * LIMIT, FIRED - 3 * LIMIT));
}

/// `--limits sqlite:PATH`: one machine, and the budget survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_keeps_the_budget_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let subject = fresh_subject("sqlite_restart");
    let args = [
        "--limits",
        "sqlite:limits.db",
        "--audit",
        "jsonl:audit0.jsonl",
        // The budget alone: the first run's 50 refusals would ban the client for the second.
        "--bans",
        "off",
    ];
    let first = Demo::start(dir.path(), "first", &args);
    let (ok, other) = tally_only(&fire(std::slice::from_ref(&first), &subject).await);
    first.stop();
    assert_eq!(ok, LIMIT, "{other:?}");
    let second = Demo::start(dir.path(), "second", &args);
    let (ok, _) = tally_only(&fire(std::slice::from_ref(&second), &subject).await);
    second.stop();
    assert_eq!(ok, 0, "the restarted instance remembers the spent quota");
}

fn tally_only(statuses: &[StatusCode]) -> (usize, Vec<StatusCode>) {
    let (ok, _, other) = tally(statuses);
    assert!(other.is_empty(), "{other:?}");
    (ok, other)
}
