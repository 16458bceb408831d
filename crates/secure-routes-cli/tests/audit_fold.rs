//! A flood of identical refusals against the real binary folds into a couple of audit rows
//! whose counts sum to the number sent, and `secure-routes audit` shows those counts (issue 9,
//! part 4).

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Demo, stop_counts};

/// Requests sent: well over any row budget a flood should cost.
const SENT: u64 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_405s_is_a_couple_of_rows_whose_counts_sum_to_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    // Bans off: the flood is about folding, and its 51st 405 would meet a ban instead.
    let demo = Demo::start(
        dir.path(),
        "fold",
        &["--audit", "sqlite:audit.db", "--bans", "off"],
    );
    let client = reqwest::Client::new();
    // `/api/strict` allows only POST: a PUT is refused with 405 before authentication and
    // rate limiting, every time, from the same client.
    let url = demo.url("/api/strict");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..SENT / 4 {
                let res = client.put(&url).send().await.unwrap();
                assert_eq!(res.status(), 405);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = stop_counts(&demo.stop());
    assert_eq!(counts.recorded, SENT, "{counts:?}");
    assert_eq!(
        counts.written, SENT,
        "written counts occurrences: {counts:?}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args([
            "audit",
            "--audit",
            "sqlite:audit.db",
            "--json",
            "--limit",
            "1000",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        (1..=4).contains(&rows.len()),
        "a couple of rows, not one per request: {}",
        rows.len()
    );
    for r in &rows {
        assert_eq!(r["status"], 405, "{r}");
        assert_eq!(r["method"], "PUT", "{r}");
    }
    let sum: u64 = rows.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(sum, SENT);

    // The table shows them too, with a COUNT column.
    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args(["audit", "--audit", "sqlite:audit.db", "--limit", "1000"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.lines().next().unwrap().contains("COUNT"), "{table}");
    let folded = rows
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().any(|w| w == folded.to_string())),
        "{table}"
    );
}
