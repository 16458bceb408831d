//! A route's `rate_limit_key = ["ip", "fingerprint"]` against the real `secure-routes serve`
//! over loopback (issue 12 part 3): two programs on one address, told apart by the shape of
//! their headers, get separate budgets, where the default key gives them one; `routes` shows
//! the key; `check` refuses a lone fingerprint. Requests are written by hand on a raw socket,
//! so the header order on the wire is exactly the test's.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/upstream.rs"]
mod upstream;

use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use gateway::Gateway;
use upstream::Upstream;

/// A liveness bound for one exchange, not a speed goal.
const BOUND: Duration = Duration::from_secs(20);

fn config(upstream: &Upstream) -> String {
    format!(
        r#"upstream = "{}"

[[routes]]
path = "/api/split"
preset = "public"
rate_limit = "2/minute"
rate_limit_key = ["ip", "fingerprint"]

[[routes]]
path = "/api/shared"
preset = "public"
rate_limit = "2/minute"
"#,
        upstream.origin()
    )
}

/// A curl-like client: Host, User-Agent, Accept.
const CURL: &[(&str, &str)] = &[
    ("Host", "gw.test"),
    ("User-Agent", "curl/8.5.0"),
    ("Accept", "*/*"),
];

/// A browser-like client: more headers, another order, a cookie jar.
const BROWSER: &[(&str, &str)] = &[
    ("Host", "gw.test"),
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0",
    ),
    ("Accept", "application/json"),
    ("Accept-Language", "en-US,en;q=0.5"),
    ("Cookie", "theme=dark"),
    ("Sec-Fetch-Mode", "cors"),
];

/// Sends one GET with `headers` in this order (and `Connection: close` last) and returns the
/// status code.
async fn status(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> u16 {
    let exchange = async {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        let text = String::from_utf8_lossy(&answer);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("an answer within the bound")
}

async fn three(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(status(gw, path, headers).await);
    }
    out
}

#[tokio::test]
async fn two_clients_on_one_address_have_separate_budgets_with_a_fingerprint_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&upstream), &[]).await;

    // Keyed by address and fingerprint: each client its own two.
    assert_eq!(three(&gw, "/api/split", CURL).await, [200, 200, 429]);
    assert_eq!(three(&gw, "/api/split", BROWSER).await, [200, 200, 429]);
    // The same client with other values (a newer curl) is the same shape: no fresh budget.
    let newer = [CURL[0], ("User-Agent", "curl/8.11.1"), CURL[2]];
    assert_eq!(status(&gw, "/api/split", &newer).await, 429);
    // Reordering the headers is another shape: the key splits, as documented.
    let reordered = [CURL[1], CURL[2], CURL[0]];
    assert_eq!(status(&gw, "/api/split", &reordered).await, 200);

    // The default key (the address): the second client finds the budget spent.
    assert_eq!(three(&gw, "/api/shared", CURL).await, [200, 200, 429]);
    assert_eq!(three(&gw, "/api/shared", BROWSER).await, [429, 429, 429]);
}

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

#[test]
fn routes_shows_the_key_and_check_refuses_a_lone_fingerprint() {
    let file = "upstream = \"http://127.0.0.1:3000\"\n\
                [[routes]]\npath = \"/a\"\nrate_limit_key = [\"ip\", \"fingerprint\"]\n";
    let (code, out, err) = run(&["routes", "--json"], file);
    assert_eq!(code, 0, "{err}");
    let routes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        routes[0]["rate_limit_key"],
        serde_json::json!(["ip", "fingerprint"])
    );
    assert_eq!(routes[1]["rate_limit_key"], serde_json::json!(["subject"]));
    let (code, text, _) = run(&["routes"], file);
    assert_eq!(code, 0);
    assert!(text.contains("key=ip+fingerprint"), "{text}");

    let lone = "upstream = \"http://127.0.0.1:3000\"\n\
                [[routes]]\npath = \"/a\"\nrate_limit_key = [\"fingerprint\"]\n";
    let (code, out, err) = run(&["check"], lone);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("needs ip or subject"), "{err}");
    let unknown = "upstream = \"http://127.0.0.1:3000\"\n\
                   [[routes]]\npath = \"/a\"\nrate_limit_key = [\"mac\"]\n";
    let (code, _, err) = run(&["check"], unknown);
    assert_eq!(code, 1);
    assert!(err.contains("routes[0].rate_limit_key (line 4)"), "{err}");
}
