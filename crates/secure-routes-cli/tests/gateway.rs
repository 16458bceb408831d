//! `secure-routes serve` from outside (issue 11 part 10): the real binary over loopback, in
//! front of a recording upstream (tests/support/upstream.rs) that proves what reached it and
//! what did not. Each test starts its own gateway (tests/support/gateway.rs) on a free port
//! with its config file, audit database and secrets in a temp dir.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/upstream.rs"]
mod upstream;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

use gateway::{ADMIN_TOKEN, Gateway, JWT_SECRET, client};
use upstream::{Behaviour, BodyEnd, Upstream};

/// A liveness bound for waiting on something that must happen (a record, a reload): a broken
/// gateway fails the test instead of hanging it. Not a speed goal.
const BOUND: Duration = Duration::from_secs(20);

const MB50: u64 = 50_000_000;

/// The config every test starts from: HS256 tokens from the environment, a public route, an
/// authenticated one, and the default public.
fn config(upstream: &Upstream, extra: &str) -> String {
    format!(
        r#"upstream = "{}"
upstream_timeout = "1s"
{extra}
[identity]
jwt = true

[[routes]]
path = "/api/public-data"
preset = "public"

[[routes]]
path = "/api/user/{{*rest}}"
preset = "authenticated"
"#,
        upstream.origin()
    )
}

/// A bearer token for `sub` with `roles`, signed with the gateway's HS256 secret.
fn bearer(sub: &str, roles: &[&str]) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({ "sub": sub, "roles": roles, "iat": now, "exp": now + 3600 });
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("mint");
    format!("Bearer {token}")
}

/// A response read off the wire by [`raw`].
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and header lines, `\r\n` each, without the blank line) as it is
/// (no client library to resolve dot segments or drop headers on the way) with
/// `Connection: close` semantics expected, and reads the response to the end.
async fn raw(addr: SocketAddr, head: &str) -> RawResponse {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(format!("{head}\r\n").as_bytes())
        .await
        .expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(BOUND, conn.read_to_end(&mut bytes))
        .await
        .expect("response within the bound")
        .expect("read");
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: bytes[split + 4..].to_vec(),
    }
}

/// What an upstream does with the assertion: the key from the gateway's JWKS by `kid`, ES256
/// only, `aud` the upstream's origin, `iss` `secure-routes`, no leeway.
fn verify_assertion(jwks: &[u8], token: &str, audience: &str) -> Value {
    let set: JwkSet = serde_json::from_slice(jwks).expect("the JWKS parses");
    let kid = jsonwebtoken::decode_header(token)
        .expect("assertion header")
        .kid
        .expect("a kid");
    let key = DecodingKey::from_jwk(set.find(&kid).expect("the kid is in the JWKS")).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["secure-routes"]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("the assertion verifies")
        .claims
}

/// The body of a problem+json answer, after checking its content type.
async fn problem(res: reqwest::Response) -> Value {
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{res:?}"
    );
    res.json().await.expect("problem body")
}

#[tokio::test]
async fn forwarding_sends_the_normalized_path_and_only_what_the_gateway_vouches_for() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;
    let host = gw.addr.to_string();

    // Dot segments, `//` and `%41` resolve to /api/user/me/Ab, the authenticated route; the
    // upstream must receive that path, so the two can never disagree about the route.
    let res = raw(
        gw.addr,
        &format!(
            "GET /api/public-data/../user//me/%41b?q=%41&r=a//b HTTP/1.1\r\n\
             Host: {host}\r\n\
             Connection: close, X-Foo\r\n\
             X-Foo: hop\r\n\
             Keep-Alive: timeout=5\r\n\
             TE: trailers\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
             X-Forwarded-For: 198.51.100.9\r\n\
             X-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: evil.example\r\n\
             Forwarded: for=198.51.100.9\r\n\
             X-Secure-Routes-Subject: admin\r\n\
             X-Secure-Routes-Roles: admin\r\n\
             X-Kept: yes\r\n\
             Authorization: {}\r\n",
            bearer("alice", &["editor", "viewer"])
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    let seen = upstream.records();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let r = &seen[0];
    assert_eq!(r.path_and_query, "/api/user/me/Ab?q=%41&r=a//b");
    // The upstream's own Host (virtual hosts), the client's in X-Forwarded-Host below.
    assert_eq!(r.header("host"), Some(upstream.addr.to_string().as_str()));
    for hop in [
        "x-foo",
        "keep-alive",
        "te",
        "proxy-authorization",
        "connection",
    ] {
        assert!(r.header(hop).is_none(), "{hop} reached the upstream");
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
    assert!(
        r.header("authorization").is_some(),
        "credentials pass by default"
    );
    // Loopback is not a trusted proxy here: the forged forwarding headers are replaced.
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(
        r.header("forwarded"),
        Some(format!("for=127.0.0.1;proto=http;host=\"{host}\"").as_str())
    );
    // The identity is the gateway's, not the client's.
    assert_eq!(r.header("x-secure-routes-subject"), Some("alice"));
    assert_eq!(r.header("x-secure-routes-roles"), Some("editor,viewer"));
    let request_id = r.header("x-request-id").expect("a request id").to_owned();
    assert!(!request_id.is_empty());
    // The client sees the same request id, the upstream's end-to-end headers, and none of
    // its hop-by-hop ones.
    assert_eq!(res.header("x-request-id"), Some(request_id.as_str()));
    assert_eq!(res.header("x-upstream-end"), Some("1"));
    assert_eq!(res.header("x-upstream-hop"), None, "{res:?}");

    // The assertion verifies with nothing but the gateway's JWKS.
    let jwks = client()
        .get(gw.url("/_secure-routes/jwks.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let claims = verify_assertion(
        &jwks,
        r.header("x-secure-routes-assertion").expect("an assertion"),
        &upstream.origin(),
    );
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["roles"], json!(["editor", "viewer"]));
    assert_eq!(claims["rid"], request_id.as_str());
    assert_eq!(claims["aud"], upstream.origin());

    // Anonymous on a public route: a forged subject is removed and none is set.
    let res = raw(
        gw.addr,
        &format!(
            "GET /api/public-data HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
             X-Secure-Routes-Subject: admin\r\nX-Secure-Routes-Assertion: forged\r\n\
             X-Request-Id: forged-request-id\r\n"
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    let r = upstream
        .records_for("/api/public-data")
        .pop()
        .expect("forwarded");
    assert!(r.header("x-secure-routes-subject").is_none(), "{r:?}");
    assert!(r.header("x-secure-routes-roles").is_none());
    // A request id is kept only from a trusted proxy: the upstream joins logs on the
    // gateway's, which a client cannot pick.
    assert_ne!(r.header("x-request-id"), Some("forged-request-id"));
    let claims = verify_assertion(
        &jwks,
        r.header("x-secure-routes-assertion").unwrap(),
        &upstream.origin(),
    );
    assert!(claims.get("sub").is_none(), "{claims}");

    // A gateway that trusts loopback as a proxy appends to what the proxy sent.
    let trusting_dir = tempfile::tempdir().unwrap();
    let trusting_upstream = Upstream::start().await;
    let trusting = Gateway::start(
        trusting_dir.path(),
        &config(&trusting_upstream, "trusted_proxies = [\"127.0.0.1/32\"]"),
        &[],
    )
    .await;
    let thost = trusting.addr.to_string();
    let res = raw(
        trusting.addr,
        &format!(
            "GET /api/public-data HTTP/1.1\r\nHost: {thost}\r\nConnection: close\r\n\
             X-Forwarded-For: 198.51.100.9\r\nForwarded: for=198.51.100.9\r\n\
             X-Forwarded-Proto: https\r\n"
        ),
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
    let r = &trusting_upstream.records()[0];
    assert_eq!(r.header("x-forwarded-for"), Some("198.51.100.9, 127.0.0.1"));
    assert_eq!(
        r.header("forwarded"),
        Some(format!("for=198.51.100.9, for=127.0.0.1;proto=http;host=\"{thost}\"").as_str())
    );
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn refusals_never_reach_the_upstream_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let extra_routes = r#"
[[routes]]
path = "/api/only-get"
methods = ["GET"]

[[routes]]
path = "/api/small"
methods = ["POST"]
max_body = "1KiB"
"#;
    let body = format!("{}{extra_routes}", config(&upstream, ""));
    let mut gw = Gateway::start(dir.path(), &body, &[]).await;
    let http = client();

    let res = http.get(gw.url("/api/user/me")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(problem(res).await["error"], "Authentication required");

    let res = http.delete(gw.url("/api/only-get")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    problem(res).await;

    let res = http
        .post(gw.url("/api/small"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    problem(res).await;

    let res = raw(
        gw.addr,
        &format!(
            "GET /api/a%2Fb HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            gw.addr
        ),
    )
    .await;
    assert_eq!(res.status, 400, "{res:?}");
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    let body: Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(body["type"], "urn:secure-routes:problem:invalid-input");

    // Encoded dot segments climb out of the public route before routing, not after: this is
    // the authenticated route, whatever the upstream would make of the escapes.
    for sneaky in [
        "/api/public-data/%2e%2e/user/x",
        "/api/public-data/.%2E/user/x",
    ] {
        let res = raw(
            gw.addr,
            &format!(
                "GET {sneaky} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
                gw.addr
            ),
        )
        .await;
        assert_eq!(res.status, 401, "{sneaky}: {res:?}");
    }

    assert!(
        upstream.records().is_empty(),
        "refused requests reached the upstream: {:?}",
        upstream.records()
    );
    // The upstream is there: an allowed request reaches it.
    let res = http.get(gw.url("/api/only-get")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(upstream.records().len(), 1);

    gw.stop().await;
    let rows = gw.audit_rows();
    for (status, path) in [
        (401, "/api/user/me"),
        (405, "/api/only-get"),
        (413, "/api/small"),
        (400, "/api/a%2Fb"),
    ] {
        assert!(
            rows.iter()
                .any(|r| r.status == status && r.path == path && r.outcome == "denied"),
            "no audit row for {status} {path}: {rows:#?}"
        );
    }
    let bad_path = rows.iter().find(|r| r.status == 400).unwrap();
    assert_eq!(bad_path.reason, "bad_path");
    assert_eq!(bad_path.action, "invalid_input");
    let unauthorized = rows.iter().find(|r| r.status == 401).unwrap();
    assert_eq!(unauthorized.action, "unauthorized_access");
}

/// `total` bytes as a chunked request body (no length), in 64 KiB slices of one buffer.
fn chunked_body(total: u64) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64);
            #[allow(clippy::cast_possible_truncation)] // n <= 64 KiB
            let data = chunk.slice(..n as usize);
            Some((Ok::<_, std::io::Error>(data), left - n))
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn fifty_megabytes_stream_both_ways_in_bounded_memory_and_an_overlong_upload_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.on("/download/", Behaviour::Download { bytes: MB50 });
    let extra_routes = r#"
[[routes]]
path = "/api/upload"
methods = ["POST"]
max_body = "64MiB"

[[routes]]
path = "/api/upload-small"
methods = ["POST"]
max_body = "1MiB"
"#;
    let body = format!("{}{extra_routes}", config(&upstream, ""));
    let gw = Gateway::start(dir.path(), &body, &[]).await;
    let http = client();
    // Warm up (the upstream pool, the route's stores), then take the idle figure.
    let res = http.get(gw.url("/api/public-data")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (idle, _) = gw.memory();

    let res = http
        .post(gw.url("/api/upload"))
        .body(chunked_body(MB50))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let r = upstream.records_for("/api/upload").pop().unwrap();
    assert_eq!(r.header("content-length"), None, "sent without a length");
    assert_eq!(r.body_end, BodyEnd::Complete);
    assert_eq!(r.body_len, MB50, "the upload reached the upstream whole");

    let res = http.get(gw.url("/download/big")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        received += chunk.expect("download chunk").len() as u64;
    }
    assert_eq!(received, MB50, "the download arrived whole");

    // The peak resident size over both transfers: streamed, not buffered.
    let (_, peak) = gw.memory();
    let grown = peak.saturating_sub(idle);
    // Shown with --nocapture: the figure for the report, not a speed claim.
    println!(
        "gateway RSS: idle {} KiB, peak over 50 MB up and 50 MB down {} KiB (+{} KiB)",
        idle >> 10,
        peak >> 10,
        grown >> 10
    );
    assert!(
        grown < 40 << 20,
        "the gateway's peak RSS grew {} MiB over its idle {} MiB",
        grown >> 20,
        idle >> 20
    );

    // curl's way for bodies over 1 MiB: `Expect: 100-continue`, the body only after the
    // interim answer. The gateway must send it (or curl stalls a second per upload).
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    let upload = 2usize << 20;
    conn.write_all(
        format!(
            "POST /api/upload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Expect: 100-continue\r\nContent-Length: {upload}\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(BOUND, conn.read_exact(&mut interim))
        .await
        .expect("an interim answer")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(&vec![b'c'; upload]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, conn.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let r = upstream.records_for("/api/upload").pop().unwrap();
    assert_eq!(
        (r.body_len, &r.body_end),
        (upload as u64, &BodyEnd::Complete)
    );

    // Past the route's limit on the stream: 413 to the client, and the upstream sees the body
    // aborted, never a truncated body passed off as complete.
    let res = http
        .post(gw.url("/api/upload-small"))
        .body(chunked_body(4 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let r = upstream
        .wait_for(BOUND, |r| r.path() == "/api/upload-small")
        .await
        .expect("the upload reached the upstream before the limit cut it");
    assert!(
        matches!(r.body_end, BodyEnd::Aborted(_)),
        "the upstream got a complete body: {r:?}"
    );
    assert!(
        r.body_len <= 1 << 20,
        "{} bytes passed the limit",
        r.body_len
    );
    assert!(
        upstream
            .records_for("/api/upload-small")
            .iter()
            .all(|r| r.body_end != BodyEnd::Complete)
    );
}

#[tokio::test]
async fn upstream_failures_are_502_504_and_a_cut_body_is_an_error_for_the_client() {
    let http = client();

    // Nobody listens on the upstream's port: 502, problem+json, audited.
    let closed_dir = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", gateway::free_port());
    let body = format!(
        "upstream = \"http://{closed}\"\n\n[[routes]]\npath = \"/api/public-data\"\npreset = \"public\"\n"
    );
    let mut gw = Gateway::start(closed_dir.path(), &body, &[]).await;
    let res = http.get(gw.url("/api/public-data")).send().await.unwrap();
    assert_eq!(res.status(), 502);
    assert_eq!(
        problem(res).await["type"],
        "urn:secure-routes:problem:bad-gateway"
    );
    gw.stop().await;
    let rows = gw.audit_rows();
    assert!(
        rows.iter()
            .any(|r| r.action == "upstream_failure" && r.status == 502),
        "{rows:#?}"
    );

    // An upstream that never answers: 504 once upstream_timeout (1 s) has passed, and the
    // request did reach it.
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.on("/slow/", Behaviour::Never);
    upstream.on("/cut/declared", Behaviour::MidBody { declared: true });
    upstream.on("/cut/chunked", Behaviour::MidBody { declared: false });
    let mut gw = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;
    let started = Instant::now();
    let res = http.get(gw.url("/slow/never")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(res.status(), 504);
    assert_eq!(
        problem(res).await["type"],
        "urn:secure-routes:problem:gateway-timeout"
    );
    assert!(
        waited >= Duration::from_secs(1),
        "504 before the timeout: {waited:?}"
    );
    assert_eq!(upstream.records_for("/slow/never").len(), 1);

    // The upstream closes mid-body: the client's read fails, it never gets a clean short body.
    for path in ["/cut/declared", "/cut/chunked"] {
        let res = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}: the head came through");
        let read = res.bytes().await;
        assert!(
            read.is_err(),
            "{path}: a clean body of {:?} bytes",
            read.map(|b| b.len())
        );
    }

    gw.stop().await;
    let rows = gw.audit_rows();
    assert!(
        rows.iter().any(|r| r.action == "upstream_failure"
            && r.status == 504
            && r.reason == "upstream_timeout"
            && r.path == "/slow/never"),
        "{rows:#?}"
    );
}

#[tokio::test]
async fn sighup_reloads_a_good_file_and_keeps_the_running_config_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let route = |preset: &str| {
        format!(
            "{}\n[[routes]]\npath = \"/api/toggle\"\npreset = \"{preset}\"\n",
            config(&upstream, "")
        )
    };
    let gw = Gateway::start(dir.path(), &route("public"), &[]).await;
    let http = client();
    let status = || async {
        http.get(gw.url("/api/toggle"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(status().await, 200);

    gw.rewrite(&route("authenticated"));
    gw.signal("HUP");
    let deadline = Instant::now() + BOUND;
    while status().await != 401 {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let forwarded = upstream.records_for("/api/toggle").len();

    // A broken file (a typo'd key) is refused as a whole; the route stays authenticated.
    gw.rewrite_raw(
        "upstream = \"http://127.0.0.1:1\"\n[[routes]]\npath = \"/api/toggle\"\nrate_limt = \"1/day\"\n",
    );
    gw.signal("HUP");
    let deadline = Instant::now() + BOUND;
    while !gw.stderr().contains("reload refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.stderr().contains("rate_limt"), "{}", gw.stderr());
    assert_eq!(status().await, 401);
    assert_eq!(upstream.records_for("/api/toggle").len(), forwarded);
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_refuses_new_connections_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.on("/hold/", Behaviour::Hold);
    let mut gw = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;
    let held = tokio::spawn(client().get(gw.url("/hold/on")).send());
    upstream
        .wait_for(BOUND, |r| r.path() == "/hold/on")
        .await
        .expect("the held request reached the upstream");

    gw.signal("TERM");
    let deadline = Instant::now() + BOUND;
    while TcpStream::connect(gw.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.exited().is_none(), "exited with a request in flight");

    upstream.release();
    let res = held.await.unwrap().expect("the held request completes");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/hold/on");
    // Within the default 10 s grace (the bound here is liveness only).
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}; stderr:\n{}",
        gw.stderr()
    );
}

#[tokio::test]
async fn websockets_echo_through_a_public_route_and_need_a_token_on_an_authenticated_one() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.on("/ws/", Behaviour::WebSocketEcho);
    upstream.on("/api/user/ws", Behaviour::WebSocketEcho);
    let gw = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;

    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut ws, res) = tokio_tungstenite::client_async(format!("ws://{}/ws/echo", gw.addr), tcp)
        .await
        .expect("the upgrade goes through");
    assert_eq!(res.status(), 101);
    for text in ["hello", "through the gateway"] {
        ws.send(tungstenite::Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(BOUND, ws.next())
            .await
            .expect("an echo")
            .expect("open")
            .expect("a message");
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();
    let r = &upstream.records_for("/ws/echo")[0];
    assert_eq!(r.header("upgrade"), Some("websocket"));

    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let refused =
        tokio_tungstenite::client_async(format!("ws://{}/api/user/ws", gw.addr), tcp).await;
    match refused {
        Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(upstream.records_for("/api/user/ws").is_empty());
}

#[tokio::test]
async fn an_h2c_upgrade_cannot_open_a_tunnel_past_the_routes() {
    // h2c smuggling: a client asks a public route to upgrade to h2c; an upstream that speaks
    // h2c answers 101, and if the gateway joined the two connections, every later HTTP/2
    // request on that tunnel would reach the upstream with no route's checks at all
    // (authentication, limits, paths). The gateway must not pass this upgrade on.
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    upstream.on("/", Behaviour::H2cUpgrade);
    let gw = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;

    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(
        format!(
            "GET /api/public-data HTTP/1.1\r\nHost: {}\r\n\
             Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // The head, byte by byte, so nothing after it is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(BOUND, conn.read_u8())
            .await
            .expect("an answer")
            .expect("read");
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 101") {
        // Show what the tunnel gives: an unauthenticated request on an authenticated route.
        let (mut sender, tunnel) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(conn))
            .await
            .expect("HTTP/2 through the tunnel");
        tokio::spawn(tunnel);
        let req = http::Request::get(format!("http://{}/api/user/secret", gw.addr))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let status = sender.send_request(req).await.map(|r| r.status());
        panic!(
            "the gateway passed an h2c upgrade on; through the tunnel GET /api/user/secret \
             without a token got {status:?}, the upstream saw {:?}",
            upstream
                .records()
                .iter()
                .map(|r| &r.path_and_query)
                .collect::<Vec<_>>()
        );
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Forwarded as a plain request: no upgrade reached the upstream.
    let r = &upstream.records_for("/api/public-data")[0];
    assert_eq!(r.header("upgrade"), None, "{r:?}");
    assert!(upstream.records_for("/api/user/secret").is_empty());
}

#[tokio::test]
async fn a_dry_run_route_forwards_what_it_would_refuse_and_audits_would_deny() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let body = format!(
        "{}\n[[routes]]\npath = \"/api/dry/{{*rest}}\"\npreset = \"authenticated\"\nmode = \"dry-run\"\n",
        config(&upstream, "")
    );
    let mut gw = Gateway::start(dir.path(), &body, &[]).await;
    let res = client().get(gw.url("/api/dry/x")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let r = &upstream.records_for("/api/dry/x")[0];
    assert!(r.header("x-secure-routes-subject").is_none());

    gw.stop().await;
    let rows = gw.audit_rows();
    assert!(
        rows.iter()
            .any(|r| r.path == "/api/dry/x" && r.outcome == "would_deny" && r.status == 401),
        "{rows:#?}"
    );
    assert!(
        rows.iter().all(|r| r.outcome != "denied"),
        "dry-run denied: {rows:#?}"
    );
}

#[tokio::test]
async fn an_h2c_request_reaches_the_upstream_over_http_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;

    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c prior knowledge");
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/api/public-data?via=h2", gw.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["path"], "/api/public-data?via=h2");

    let r = &upstream.records()[0];
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.path_and_query, "/api/public-data?via=h2");
    assert_eq!(
        r.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
}

#[tokio::test]
async fn metrics_need_the_admin_token_and_count_upstream_responses() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        dir.path(),
        &config(&upstream, ""),
        &[("SECURE_ROUTES_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    let http = client();
    let res = http.get(gw.url("/api/public-data")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    let metrics = gw.url("/_secure-routes/metrics");
    let res = http.get(&metrics).send().await.unwrap();
    assert_eq!(res.status(), 401);
    problem(res).await;
    let res = http
        .get(&metrics)
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let res = http
        .get(&metrics)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    // One proxied request, one upstream answer (the gateway's own endpoints are not counted).
    assert!(
        text.contains("secure_routes_upstream_responses_total{status=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        upstream
            .records()
            .iter()
            .all(|r| !r.path().starts_with("/_secure-routes"))
    );
}

/// The audit dashboard under the reserved prefix (issue 12 part 4): only with the admin token,
/// answered by the gateway (never the upstream), its own CSP, the other reserved endpoints
/// unchanged, and an IPv6 ban key's raw `/` accepted (an encoded one is refused by the path
/// normalizing).
#[tokio::test]
async fn the_dashboard_is_served_under_the_reserved_prefix_with_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    {
        let closed = Gateway::start(dir.path(), &config(&upstream, ""), &[]).await;
        let res = http
            .get(closed.url("/_secure-routes/"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "no admin token: no dashboard");
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &config(&upstream, ""),
        &[("SECURE_ROUTES_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await;
    let res = http.get(gw.url("/_secure-routes/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let csp = res.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(res.text().await.unwrap().contains("<form id=\"login\""));
    let res = http
        .get(gw.url("/_secure-routes/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let res = http
        .get(gw.url("/_secure-routes/api/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    problem(res).await;
    let res = http
        .get(gw.url("/_secure-routes/api/events?limit=5"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["events"].is_array(), "{body}");

    let res = http
        .post(gw.url("/_secure-routes/login"))
        .header("sec-fetch-site", "cross-site")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = http
        .post(gw.url("/_secure-routes/login"))
        .header("sec-fetch-site", "same-origin")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("HttpOnly")
    );

    // Bans are on by default in serve: the dashboard lists the gateway's own ban store.
    let res = http
        .get(gw.url("/_secure-routes/api/bans"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["enabled"], true, "{body}");
    // The key's '/' raw reaches the dashboard (404: no such ban), not the bad-path 400.
    let res = http
        .delete(gw.url("/_secure-routes/api/bans/ip%3A2001%3Adb8%3A%3A/64"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    for path in [
        "/_secure-routes/health",
        "/_secure-routes/jwks.json",
        "/_secure-routes/csrf",
    ] {
        let res = http.get(gw.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
    let res = http
        .get(gw.url("/_secure-routes/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        upstream
            .records()
            .iter()
            .all(|r| !r.path().starts_with("/_secure-routes"))
    );
}

/// `[[alerts]]` through `serve` (issue 12 part 2's contract): a flood of bad tokens fires the
/// rule once, at its threshold, with a signed webhook; the rest of the flood is in cooldown.
#[tokio::test]
async fn an_alert_rule_fires_one_signed_webhook_for_a_flood_of_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start().await;
    let alerts = format!(
        r#"
[[alerts]]
name = "auth-failures"
action = "unauthorized_access"
count = 3
within = "1m"
per = "ip"
webhook = "{}/hook"
cooldown = "10m"
"#,
        upstream.origin()
    );
    let secret = "webhook-secret-for-the-gateway-tests-0123456789";
    let body = config(&upstream, &alerts);
    let mut gw = Gateway::start(
        dir.path(),
        &body,
        &[("SECURE_ROUTES_WEBHOOK_SECRET", secret)],
    )
    .await;
    let http = client();
    for _ in 0..6 {
        let res = http
            .get(gw.url("/api/user/me"))
            .header("authorization", "Bearer not-a-token")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }
    let hook = upstream
        .wait_for(BOUND, |r| r.path() == "/hook")
        .await
        .expect("the webhook was called");
    assert_eq!(hook.method, http::Method::POST);
    let signature = hook
        .header("x-secure-routes-signature")
        .expect("signed")
        .to_owned();
    assert!(
        signature.starts_with("t=") && signature.contains(",v1="),
        "{signature}"
    );
    gw.stop().await;
    // Stopped: every queued alert has been delivered or dropped, none is still coming.
    assert_eq!(
        upstream.records_for("/hook").len(),
        1,
        "one alert for the flood, the rest in cooldown"
    );
    let rows = gw.audit_rows();
    assert_eq!(
        rows.iter()
            .filter(|r| r.action == "alert_triggered")
            .count(),
        1,
        "{rows:?}"
    );
    assert!(
        upstream.records_for("/api/user/me").is_empty(),
        "no refused request reached the upstream"
    );
}
