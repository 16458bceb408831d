//! The Supabase profile against a local stand-in for a project (axum on 127.0.0.1:0 serving
//! `/auth/v1/.well-known/jwks.json`, counting its requests). Time is a `FakeClock`.
//!
//! * one constructor derives the key set URL, the issuer, the audience and the cookie name;
//! * a signed-in user's token authenticates from `Authorization: Bearer` and from the SSR
//!   session cookie (plain, `base64-`, chunked), with `sub`, `role`, `email`, `is_anonymous`
//!   and `app_metadata` on the principal; the cookie principal is ambient (CSRF applies);
//! * a rotated key is fetched once and verifies;
//! * the legacy HS256 secret verifies legacy tokens, and only when configured;
//! * the project's API keys (legacy `anon` / `service_role` JWTs, `sb_publishable_` /
//!   `sb_secret_` keys) are refused as `supabase_api_key`, from the header and the cookie;
//! * another project's tokens, other audiences and malformed sessions are refused.
//!
//! Needs the `jwks` feature, which the crate's dev-dependency on itself turns on.
#![cfg(feature = "jwks")]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Request;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use secure_routes::auth::supabase::{SupabaseAuthenticator, SupabaseAuthenticatorBuilder};
use secure_routes::auth::{AuthError, Authenticator, CredentialSource, Principal};
use secure_routes::clock::FakeClock;
// Supabase's asymmetric signing keys are ES256 by default: `TestKey::fresh_ec`.
use secure_routes_testkit::jwks::{KeyServer, TestKey};
use serde_json::{Value, json};

const T0: u64 = 1_800_000_000;
const LEGACY_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// A stand-in for a Supabase project: only the key set endpoint (the testkit's key server,
/// which also serves `/auth/v1/.well-known/jwks.json`).
struct FakeProject {
    url: String,
    server: KeyServer,
}

impl FakeProject {
    async fn start(keys: &[&TestKey]) -> Self {
        let server = KeyServer::start(keys).await;
        Self {
            url: server.base().to_owned(),
            server,
        }
    }

    fn issuer(&self) -> String {
        format!("{}/auth/v1", self.url)
    }

    fn hits(&self) -> usize {
        self.server.hits()
    }

    fn serve(&self, keys: &[&TestKey]) {
        self.server.serve(keys);
    }

    fn builder(&self, clock: &FakeClock) -> SupabaseAuthenticatorBuilder {
        SupabaseAuthenticator::builder(&self.url).clock(Arc::new(clock.clone()))
    }

    /// What Supabase Auth puts in a signed-in user's access token.
    fn user_claims(&self, sub: &str) -> Value {
        json!({
            "sub": sub,
            "iss": self.issuer(),
            "aud": "authenticated",
            "exp": T0 + 3600,
            "iat": T0,
            "role": "authenticated",
            "email": format!("{sub}@example.com"),
            "is_anonymous": false,
            "aal": "aal1",
            "session_id": "5e551011-0000-4000-8000-000000000000",
            "app_metadata": {"provider": "email", "providers": ["email"], "roles": ["editor"]},
            "user_metadata": {"role": "admin"},
        })
    }
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn clock() -> FakeClock {
    FakeClock::new(Duration::from_secs(T0))
}

async fn with_headers(
    a: &dyn Authenticator,
    headers: &[(&str, String)],
) -> Result<Principal, AuthError> {
    let mut b = Request::get("/");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let (parts, ()) = b.body(()).unwrap().into_parts();
    a.authenticate(&parts).await
}

async fn bearer(a: &dyn Authenticator, token: &str) -> Result<Principal, AuthError> {
    with_headers(a, &[("authorization", format!("Bearer {token}"))]).await
}

/// The session JSON the SSR helpers store, `base64-`-encoded.
fn session_value(access_token: &str) -> String {
    let session = json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": 3600,
        "expires_at": T0 + 3600,
        "refresh_token": "r3fr3sh",
        "user": {"id": "u1"},
    });
    format!(
        "base64-{}",
        URL_SAFE_NO_PAD.encode(session.to_string().as_bytes())
    )
}

/// `encodeURIComponent(s)`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'!'
            | b'~'
            | b'*'
            | b'\''
            | b'('
            | b')' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `value` split into `n` chunk cookies, as the helpers write a session over 3180 bytes.
fn chunked(name: &str, value: &str, n: usize) -> String {
    let size = value.len().div_ceil(n);
    value
        .as_bytes()
        .chunks(size)
        .enumerate()
        .map(|(i, c)| format!("{name}.{i}={}", std::str::from_utf8(c).unwrap()))
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn one_constructor_derives_the_project_settings() {
    let a = SupabaseAuthenticator::builder("https://abcdefghijklmnop.supabase.co/")
        .build()
        .unwrap();
    assert_eq!(a.issuer(), "https://abcdefghijklmnop.supabase.co/auth/v1");
    assert_eq!(a.cookie_name(), "sb-abcdefghijklmnop-auth-token");

    for (url, wanted) in [
        ("https://abcd.supabase.co/auth/v1", "no path"),
        ("https://abcd.supabase.co?x=1", "no path"),
        ("abcd.supabase.co", "no path"),
        ("http://abcd.supabase.co", "https"),
        ("http://[::1]:54321", "project ref"),
    ] {
        let err = SupabaseAuthenticator::builder(url).build().unwrap_err();
        assert!(
            err.problems().iter().any(|p| p.contains(wanted)),
            "{url}: {err}"
        );
        assert!(
            err.problems().iter().all(|p| p.starts_with("supabase:")),
            "{err}"
        );
    }
    // An IPv6 loopback stack works once the cookie is named.
    let a = SupabaseAuthenticator::builder("http://[::1]:54321")
        .session_cookie("sb-local-auth-token")
        .build()
        .unwrap();
    assert_eq!(a.cookie_name(), "sb-local-auth-token");
    // Every problem at once, and never the secret in the message.
    let err = SupabaseAuthenticator::builder("http://abcd.supabase.co")
        .jwt_secret("hunter2-hunter2")
        .cooldown(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.problems().len(), 3, "{err}");
    assert!(!err.to_string().contains("hunter2"));
}

#[tokio::test]
async fn a_users_token_authenticates_from_the_header_and_the_ssr_cookie() {
    let key = TestKey::fresh_ec("k1");
    let project = FakeProject::start(&[&key]).await;
    let clock = clock();
    let a = project.builder(&clock).build().unwrap();
    let token = key.sign(&project.user_claims("u1"));

    let p = bearer(&a, &token).await.unwrap();
    assert_eq!(p.subject(), "u1");
    assert_eq!(p.source(), CredentialSource::Header);
    assert_eq!(p.role(), Some("authenticated"));
    assert_eq!(p.email(), Some("u1@example.com"));
    assert!(!p.is_anonymous());
    assert_eq!(p.app_metadata().unwrap()["roles"], json!(["editor"]));

    let name = a.cookie_name().to_owned();
    assert_eq!(name, "sb-127-auth-token");
    let value = session_value(&token);
    let plain = json!({"access_token": token, "refresh_token": "r"}).to_string();
    for cookie in [
        format!("{name}={value}"),
        chunked(&name, &value, 3),
        // Older helpers: the JSON itself, and an array.
        format!("{name}={plain}"),
        format!("{name}={}", json!([token, "r", null, null, null])),
        // Raw JSON as the `cookie` serializer writes it (encodeURIComponent).
        format!("{name}={}", percent_encode(&plain)),
    ] {
        let p = with_headers(&a, &[("cookie", format!("theme=dark; {cookie}"))])
            .await
            .unwrap_or_else(|e| panic!("{cookie}: {e}"));
        assert_eq!(p.subject(), "u1");
        // A cookie rides along on cross-site requests: the pipeline demands a CSRF token.
        assert!(p.is_ambient());
        assert_eq!(p.source(), CredentialSource::Cookie);
    }
    // One fetch served everything.
    assert_eq!(project.hits(), 1);

    // An anonymous sign-in is a user too, marked as such.
    let mut anon_user = project.user_claims("u2");
    anon_user["is_anonymous"] = json!(true);
    anon_user["email"] = json!("");
    let p = bearer(&a, &key.sign(&anon_user)).await.unwrap();
    assert!(p.is_anonymous());
    assert_eq!(p.email(), None);

    // A bearer header wins over the cookie; an emptied cookie (signed out) is no credential.
    let other = key.sign(&project.user_claims("u3"));
    let p = with_headers(
        &a,
        &[
            ("authorization", format!("Bearer {other}")),
            ("cookie", format!("{name}={value}")),
        ],
    )
    .await
    .unwrap();
    assert_eq!(p.subject(), "u3");
    let signed_out = with_headers(&a, &[("cookie", format!("{name}="))]).await;
    assert_eq!(signed_out.unwrap_err(), AuthError::Missing);
    // A whole cookie beside chunks: one of them was planted from a sibling domain.
    let other_session = session_value(&other);
    let tossed = format!("{name}={other_session}; {}", chunked(&name, &value, 2));
    assert_eq!(
        with_headers(&a, &[("cookie", tossed)]).await.unwrap_err(),
        AuthError::Invalid("bad_session_cookie")
    );
    let garbage = with_headers(&a, &[("cookie", format!("{name}=base64-%%%"))]).await;
    assert_eq!(
        garbage.unwrap_err(),
        AuthError::Invalid("bad_session_cookie")
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_verifies() {
    let old = TestKey::fresh_ec("old");
    let project = FakeProject::start(&[&old]).await;
    let clock = clock();
    let a = project.builder(&clock).cache(100).build().unwrap();
    assert_eq!(a.refresh().await.unwrap(), 1);
    assert!(
        bearer(&a, &old.sign(&project.user_claims("u1")))
            .await
            .is_ok()
    );

    let new = TestKey::fresh_ec("new");
    project.serve(&[&old, &new]);
    // A new `kid` causes a refetch once the cooldown since the last fetch has passed.
    clock.advance(Duration::from_secs(30));
    let tokens: Vec<String> = (0..20)
        .map(|i| new.sign(&project.user_claims(&format!("user{i}"))))
        .collect();
    for t in &tokens {
        assert!(bearer(&a, t).await.is_ok());
    }
    // The refresh, then one refetch for the new `kid`.
    assert_eq!(project.hits(), 2);
}

#[tokio::test]
async fn the_legacy_secret_verifies_legacy_tokens_and_only_when_configured() {
    let key = TestKey::fresh_ec("k1");
    let project = FakeProject::start(&[&key]).await;
    let clock = clock();
    let legacy = hs256(&project.user_claims("u1"), LEGACY_SECRET);

    let without = project.builder(&clock).build().unwrap();
    assert_eq!(
        bearer(&without, &legacy).await.unwrap_err(),
        AuthError::Invalid("wrong_algorithm")
    );
    let with = project
        .builder(&clock)
        .jwt_secret(LEGACY_SECRET)
        .build()
        .unwrap();
    let p = bearer(&with, &legacy).await.unwrap();
    assert_eq!(p.subject(), "u1");
    assert_eq!(p.role(), Some("authenticated"));
    // Signed with another secret.
    let forged = hs256(
        &project.user_claims("u1"),
        "another-secret-another-secret-another-secret",
    );
    assert_eq!(
        bearer(&with, &forged).await.unwrap_err(),
        AuthError::Invalid("bad_signature")
    );
    // The asymmetric keys keep working beside the secret.
    assert!(
        bearer(&with, &key.sign(&project.user_claims("u1")))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_projects_api_keys_are_refused_as_sessions() {
    let key = TestKey::fresh_ec("k1");
    let project = FakeProject::start(&[&key]).await;
    let clock = clock();
    let a = project
        .builder(&clock)
        .jwt_secret(LEGACY_SECRET)
        .build()
        .unwrap();
    a.refresh().await.unwrap();

    // The legacy API keys: JWTs signed with the project secret, no `sub`, iss "supabase".
    let api_key = |role: &str| {
        let claims = json!({"iss": "supabase", "ref": "abcd", "role": role, "iat": T0, "exp": T0 + 86_400 * 3650});
        hs256(&claims, LEGACY_SECRET)
    };
    // Even dressed up as a user's token and signed with the project's real key, the role
    // gives them away.
    let mut dressed = project.user_claims("u1");
    dressed["role"] = json!("service_role");
    // Past the cooldown, a token with an unknown `kid` would make the authenticator fetch the
    // key set again: refused first, this one costs the project nothing.
    clock.advance(Duration::from_secs(30));
    let unknown_kid = TestKey::fresh_ec("not-in-the-set").sign(&dressed);
    let tokens = [
        api_key("anon"),
        api_key("service_role"),
        key.sign(&dressed),
        unknown_kid,
        "sb_publishable_Xk2hQpW1n5tJm8vCdE0aRg_3fT9yLz7".to_owned(),
        "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz".to_owned(),
    ];
    for t in &tokens {
        assert_eq!(
            bearer(&a, t).await.unwrap_err(),
            AuthError::Invalid("supabase_api_key"),
            "{t}"
        );
        let cookie = format!("{}={}", a.cookie_name(), session_value(t));
        assert_eq!(
            with_headers(&a, &[("cookie", cookie)]).await.unwrap_err(),
            AuthError::Invalid("supabase_api_key"),
            "{t} in a cookie"
        );
    }
    // No fetch was spent on them.
    assert_eq!(project.hits(), 1);
    // The role check reads `role` only: a user token whose user_metadata says "anon" passes.
    let mut meta = project.user_claims("u2");
    meta["user_metadata"] = json!({"role": "anon"});
    assert!(bearer(&a, &key.sign(&meta)).await.is_ok());
}

#[tokio::test]
async fn other_projects_audiences_and_shapes_are_refused() {
    let key = TestKey::fresh_ec("k1");
    let project = FakeProject::start(&[&key]).await;
    let clock = clock();
    let a = project.builder(&clock).build().unwrap();
    let user = project.user_claims("u1");

    let with = |k: &str, v: Value| {
        let mut c = user.clone();
        c[k] = v;
        key.sign(&c)
    };
    let without = |k: &str| {
        let mut c = user.clone();
        c.as_object_mut().unwrap().remove(k);
        key.sign(&c)
    };
    for (token, reason) in [
        (
            with("iss", json!("https://other.supabase.co/auth/v1")),
            "bad_issuer",
        ),
        (with("iss", json!(project.url)), "bad_issuer"),
        (with("aud", json!("anon")), "bad_audience"),
        (without("aud"), "missing_aud"),
        (without("iss"), "missing_iss"),
        (without("sub"), "missing_sub"),
        (with("exp", json!(T0 - 3600)), "expired"),
    ] {
        assert_eq!(
            bearer(&a, &token).await.unwrap_err(),
            AuthError::Invalid(reason),
            "{reason}"
        );
    }
}
