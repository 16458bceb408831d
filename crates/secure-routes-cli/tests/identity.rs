//! The demo with an identity provider: `--jwks URL` and `--supabase-url URL` (with
//! `SUPABASE_JWT_SECRET`), against a stand-in provider on loopback that publishes its ES256
//! signing keys at `/jwks.json` and at Supabase's `/auth/v1/.well-known/jwks.json`.
//!
//! * in process, on a fake clock: a rotating JWKS (a new key verifies once the cooldown has
//!   passed, the removed key stops verifying at the refetch);
//! * the real binary: a JWKS token with its issuer and audience; a Supabase SSR session
//!   cookie (chunked, `base64-`) reading and, with a CSRF token, writing notes; a legacy
//!   HS256 token; the project's anon key refused and audited as `supabase_api_key`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Client, StatusCode};
use secure_routes::clock::{Clock, FakeClock, SystemClock};
use secure_routes_cli::config::Config;
use secure_routes_cli::demo::{self, Identity, Wiring};
// The stand-in identity provider: the testkit's key server publishes its set at `/jwks.json`
// and at Supabase's `/auth/v1/.well-known/jwks.json`; its keys are fresh ES256 keys.
use secure_routes_testkit::jwks::{KeyServer, TestKey};
use serde_json::{Value, json};
use support::Demo;

const LEGACY_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// `sub`'s claims from issuer `iss` for audience `aud`, valid for an hour from `now`.
fn claims(sub: &str, iss: &str, aud: &str, now: Duration) -> Value {
    json!({"sub": sub, "iss": iss, "aud": aud, "exp": now.as_secs() + 3600, "iat": now.as_secs(),
           "role": "authenticated", "email": format!("{sub}@example.com")})
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn a_rotating_jwks_authenticates_in_the_demo() {
    let k1 = TestKey::fresh_ec("k1");
    let idp = KeyServer::start(&[&k1]).await;
    let clock = FakeClock::new(Duration::from_secs(1_800_000_000));
    let now = || clock.now();
    let iss = "https://idp.test/";
    let config = Config {
        jwt_secret: vec![1; 32],
        csrf_secret: vec![2; 32],
        trusted_proxies: vec![],
        allowed_origins: vec![],
        client_ip_header: Default::default(),
        production: false,
    };
    let wiring = Wiring {
        clock: Some(Arc::new(clock.clone())),
        identity: Identity::Jwks {
            url: format!("{}/jwks.json", idp.base()),
            issuer: Some(iss.to_owned()),
            audience: Some("api".to_owned()),
        },
        ..Wiring::default()
    };
    let app = demo::router(&config, &wiring).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(demo::serve(listener, app, async {
        let _ = stopped.await;
    }));
    let http = Client::new();
    let notes = format!("http://{addr}/api/user/notes");
    let get = |auth: String| {
        let req = http.get(&notes).header("authorization", auth);
        async move { req.send().await.unwrap().status() }
    };

    let t1 = k1.sign(&claims("alice", iss, "api", now()));
    assert_eq!(get(bearer(&t1)).await, StatusCode::OK);
    // The issuer and audience flags are enforced.
    let elsewhere = k1.sign(&claims("alice", "https://other.test/", "api", now()));
    assert_eq!(get(bearer(&elsewhere)).await, StatusCode::UNAUTHORIZED);
    let other_api = k1.sign(&claims("alice", iss, "billing", now()));
    assert_eq!(get(bearer(&other_api)).await, StatusCode::UNAUTHORIZED);

    // The provider rotates: k2 in, k1 out.
    let k2 = TestKey::fresh_ec("k2");
    idp.serve(&[&k2]);
    let t2 = k2.sign(&claims("bob", iss, "api", now()));
    // Within the cooldown since the last fetch, an unknown `kid` fetches nothing.
    assert_eq!(get(bearer(&t2)).await, StatusCode::UNAUTHORIZED);
    clock.advance(Duration::from_secs(30));
    assert_eq!(get(bearer(&t2)).await, StatusCode::OK);
    // The refetch dropped k1: its token, cached a moment ago, no longer verifies.
    assert_eq!(get(bearer(&t1)).await, StatusCode::UNAUTHORIZED);
    // The demo's session cookie carries provider tokens too.
    let res = http
        .get(&notes)
        .header("cookie", format!("{}={t2}", demo::SESSION_COOKIE))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_demo_binary_takes_a_jwks_url_with_issuer_and_audience() {
    let key = TestKey::fresh_ec("k1");
    let idp = KeyServer::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/jwks.json", idp.base());
    let d = Demo::start(
        dir.path(),
        "jwks",
        &[
            "--jwks",
            &url,
            "--jwt-issuer",
            "https://idp.test/",
            "--jwt-audience",
            "api",
            "--audit",
            "jsonl:audit.jsonl",
        ],
    );
    let http = Client::new();
    let now = SystemClock.now();
    let ok = key.sign(&claims("alice", "https://idp.test/", "api", now));
    let wrong_aud = key.sign(&claims("alice", "https://idp.test/", "other", now));
    for (token, want) in [(ok, StatusCode::OK), (wrong_aud, StatusCode::UNAUTHORIZED)] {
        let res = http
            .get(d.url("/api/user/notes"))
            .header("authorization", bearer(&token))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want);
    }
    // The demo secret's tokens are not accepted beside a provider.
    let res = http
        .get(d.url("/api/user/notes"))
        .header("authorization", support::bearer("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let stderr = d.stop();
    assert_eq!(support::stop_counts(&stderr).lost, 0);
}

/// The SSR helpers' cookie for `token`: the session JSON, `base64-`, split in `n` chunks.
fn ssr_cookie(name: &str, token: &str, n: usize) -> String {
    let session = json!({"access_token": token, "refresh_token": "r", "token_type": "bearer",
                         "expires_in": 3600, "user": {"id": "u"}});
    let value = format!("base64-{}", URL_SAFE_NO_PAD.encode(session.to_string()));
    let size = value.len().div_ceil(n);
    (0..n)
        .map(|i| {
            let chunk = &value[i * size..((i + 1) * size).min(value.len())];
            format!("{name}.{i}={chunk}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn a_supabase_ssr_cookie_authenticates_in_the_demo_binary() {
    let key = TestKey::fresh_ec("sb-key-1");
    let project = KeyServer::start(&[&key]).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Demo::start_with_env(
        dir.path(),
        "supabase",
        &[
            "--supabase-url",
            project.base(),
            "--audit",
            "jsonl:audit.jsonl",
        ],
        &[("SUPABASE_JWT_SECRET", LEGACY_SECRET)],
    );
    let http = Client::new();
    let notes = d.url("/api/user/notes");
    let iss = format!("{}/auth/v1", project.base());
    let now = SystemClock.now();
    let user = key.sign(&claims("0b7e-user", &iss, "authenticated", now));
    // A local project's cookies are named after the host's first label, as the helpers do.
    let session = ssr_cookie("sb-127-auth-token", &user, 3);

    let res = http
        .get(&notes)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"notes": []}));

    // A cookie is ambient: writing needs the CSRF token bound to this session.
    let res = http
        .post(&notes)
        .header("cookie", &session)
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = http
        .get(d.url("/api/csrf"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let csrf_cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = res.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = http
        .post(&notes)
        .header("cookie", format!("{session}; {csrf_cookie}"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);

    // The legacy secret's tokens are the same user's.
    let legacy = encode(
        &Header::new(Algorithm::HS256),
        &claims("0b7e-user", &iss, "authenticated", now),
        &EncodingKey::from_secret(LEGACY_SECRET.as_bytes()),
    )
    .unwrap();
    let res = http
        .get(&notes)
        .header("authorization", bearer(&legacy))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["notes"][0]["text"], "hi");

    // The anon key is the app's, not a user's.
    let anon = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "supabase", "ref": "127", "role": "anon", "exp": now.as_secs() + 3600}),
        &EncodingKey::from_secret(LEGACY_SECRET.as_bytes()),
    )
    .unwrap();
    let res = http
        .get(&notes)
        .header("authorization", bearer(&anon))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let stderr = d.stop();
    assert_eq!(support::stop_counts(&stderr).lost, 0, "{stderr}");
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "unauthorized_access" && e["reason"] == "supabase_api_key"),
        "{audit}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["action"] == "csrf_validation_failed"),
        "{audit}"
    );
    for secret in [&user, &legacy, &anon, &csrf] {
        assert!(
            !audit.contains(secret.as_str()),
            "a credential in the audit log"
        );
    }
}

#[test]
fn a_bad_provider_flag_stops_the_demo_before_it_announces_itself() {
    let dir = tempfile::tempdir().unwrap();
    for (args, wanted) in [
        (
            &["--supabase-url", "https://abcd.supabase.co/rest/v1"][..],
            "project URL",
        ),
        (&["--jwks", "http://idp.example/jwks.json"][..], "https"),
        (
            &["--jwks", "https://user:hunter2@idp.example/jwks.json"][..],
            "credentials",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_secure-routes"))
            .arg("demo")
            .args(["--addr", "127.0.0.1:0", "--audit", "jsonl:audit.jsonl"])
            .args(args)
            .current_dir(dir.path())
            .env("SECURE_ROUTES_JWT_SECRET", support::JWT_SECRET)
            .env("CSRF_SECRET", support::CSRF_SECRET)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(!stdout.contains("listening on"), "{args:?}: {stdout}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
