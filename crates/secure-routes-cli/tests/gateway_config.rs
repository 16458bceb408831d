//! `secure-routes check` and `secure-routes routes` against the real binary (issue 11's
//! contract): `check` exits 0 or 1 and prints every problem with its TOML key and line;
//! `routes` prints each route's effective policy, `--json` as an array.

use std::process::Command;

fn run(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secure-routes.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_secure-routes"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
upstream = "http://127.0.0.1:3000"

[identity]
jwt = true

[[routes]]
path = "/api/public-data"
preset = "public"

[[routes]]
path = "/api/user/{*rest}"
preset = "authenticated"

[[routes]]
path = "/api/sensitive-operation"
preset = "strict"
methods = ["POST"]
rate_limit = "5/hour"
max_body = "100KiB"
failure_mode = "closed"
mode = "dry-run"
"#;

#[test]
fn check_accepts_a_good_file_and_routes_prints_what_it_enforces() {
    let (code, out, err) = run(&["check"], GOOD);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok (3 routes)"), "{out}");

    let (code, out, err) = run(&["routes", "--json"], GOOD);
    assert_eq!(code, 0, "{err}");
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap();
    let routes = routes.as_array().unwrap();
    assert_eq!(routes.len(), 4, "three routes and the default");
    assert_eq!(routes[1]["auth"], "required");
    let sensitive = &routes[2];
    assert_eq!(sensitive["path"], "/api/sensitive-operation");
    assert_eq!(sensitive["methods"], "POST");
    assert_eq!(sensitive["rate_limit"], "5/3600s");
    assert_eq!(sensitive["max_body"], "102400");
    assert_eq!(sensitive["failure_mode"], "closed");
    assert_eq!(sensitive["mode"], "dry-run");
    assert!(routes[3]["path"].is_null());
    // Bans are on by default: every route is checked against the default rule.
    for r in routes {
        assert_eq!(r["bans"]["threshold"], 50, "{r}");
        assert_eq!(r["bans"]["window"], "600s", "{r}");
        assert_eq!(r["bans"]["first"], "900s", "{r}");
        assert_eq!(r["bans"]["max"], "86400s", "{r}");
    }

    let (code, text, _) = run(&["routes"], GOOD);
    assert_eq!(code, 0);
    assert_eq!(text.lines().count(), 5, "four routes and [bans]: {text}");
    assert!(text.contains("/api/sensitive-operation"), "{text}");
    assert!(text.contains("mode=dry-run"), "{text}");
    assert!(
        text.lines()
            .take(4)
            .all(|l| l.ends_with("bans=50/600s,900s..86400s")),
        "{text}"
    );
    assert!(
        text.lines().last().unwrap().starts_with(
            "[bans] threshold=50 window=600s first=900s max=86400s history=604800s allow=none"
        ),
        "{text}"
    );
}

/// `[bans]` through the real binary: `routes` shows the file's rule (or `off`), and `check`
/// names every bad `[bans]` key with its line.
#[test]
fn bans_section_is_printed_by_routes_and_checked_key_by_key() {
    let custom = format!(
        "{GOOD}\n[bans]\nthreshold = 3\nwindow = \"30s\"\nallow = [\"127.0.0.1/32\"]\n[bans.weights]\nunauthorized = 2\n"
    );
    let (code, out, err) = run(&["routes", "--json"], &custom);
    assert_eq!(code, 0, "{err}");
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(routes[0]["bans"]["threshold"], 3);
    assert_eq!(routes[0]["bans"]["window"], "30s");
    assert_eq!(routes[0]["bans"]["allow"][0], "127.0.0.1/32");
    assert_eq!(routes[0]["bans"]["weights"]["unauthorized"], 2);
    let (_, text, _) = run(&["routes"], &custom);
    assert!(text.contains("bans=3/30s,900s..86400s"), "{text}");

    let off = format!("{GOOD}\n[bans]\nenabled = false\n");
    let (code, out, _) = run(&["routes", "--json"], &off);
    assert_eq!(code, 0);
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["bans"] == "off"),
        "{routes}"
    );

    let bad = "upstream = \"http://x\"\n\
               [[routes]]\n\
               path = \"/a\"\n\
               [bans]\n\
               threshold = -1\n\
               window = \"forever\"\n\
               allow = [\"10.0.0.0/33\"]\n\
               [bans.weights]\n\
               sql_injection = 5\n";
    let (code, out, err) = run(&["check"], bad);
    assert_eq!(code, 1, "{out}{err}");
    for line in [
        "bans.threshold (line 5)",
        "bans.window (line 6)",
        "bans.allow (line 7)",
        "bans.weights.sql_injection (line 9)",
    ] {
        assert!(err.contains(line), "{line} missing:\n{err}");
    }
    let (code, _, err) = run(
        &["check"],
        "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n[bans]\nthreshhold = 3\n",
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("line 5") && err.contains("threshhold"),
        "{err}"
    );
}

#[test]
fn check_prints_every_problem_with_its_key_and_line_and_exits_1() {
    let bad = "upstream = \"ftp://x\"\n\
               [[routes]]\n\
               path = \"/a\"\n\
               auth = \"maybe\"\n\
               rate_limit = \"5 per hour\"\n\
               [[routes]]\n\
               path = \"/a\"\n";
    let (code, out, err) = run(&["check"], bad);
    assert_eq!(code, 1, "{out}{err}");
    for line in [
        "upstream (line 1)",
        "routes[0].auth (line 4)",
        "routes[0].rate_limit (line 5)",
        "routes[1].path (line 7)",
    ] {
        assert!(err.contains(line), "{line} missing:\n{err}");
    }
    // A typo is an error, never a silently dropped protection; `routes` refuses it too.
    let typo = "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\nrate_limt = \"1/day\"\n";
    for command in ["check", "routes"] {
        let (code, _, err) = run(&[command], typo);
        assert_eq!(code, 1, "{command}");
        assert!(err.contains("line 4") && err.contains("rate_limt"), "{err}");
    }
}
