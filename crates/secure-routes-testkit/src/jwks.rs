//! Signing keys with their published JWKs, and a fake key server: the stand-in for a JWKS
//! endpoint and for a Supabase project that the JWKS, Supabase and CLI identity tests (and the
//! token-cache bench) used to each build for themselves.
//!
//! The server listens on `127.0.0.1:0` and serves the same key set at `/jwks.json` and at
//! Supabase's `/auth/v1/.well-known/jwks.json`, counts requests, and can be switched to an
//! outage ([`Mode`]) so tests see what a verifier does when the provider misbehaves.
//!
//! ```
//! use secure_routes_testkit::jwks::{KeyServer, TestKey};
//! use serde_json::json;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let key = TestKey::fresh_ec("k1");
//! let server = KeyServer::start(&[&key]).await;
//! assert!(server.url().ends_with("/jwks.json"));
//! assert_eq!(server.hits(), 0);
//! let token = key.sign(&json!({"sub": "alice"}));
//! assert_eq!(token.split('.').count(), 3);
//! # });
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::keys;

/// A signing key and the JWK a provider publishes for it.
///
/// ```
/// use secure_routes_testkit::jwks::TestKey;
/// let k = TestKey::rsa("r1");
/// assert_eq!((k.kid.as_str(), k.jwk["kid"].as_str()), ("r1", Some("r1")));
/// ```
#[derive(Clone)]
pub struct TestKey {
    /// Its key id (`kid`), in the JWK and in the tokens it signs.
    pub kid: String,
    /// The algorithm its tokens name.
    pub alg: Algorithm,
    /// The private key.
    pub enc: EncodingKey,
    /// The public JWK, as JSON.
    pub jwk: Value,
}

impl TestKey {
    /// `enc` published as a JWK for `alg` under `kid`.
    ///
    /// ```
    /// use jsonwebtoken::{Algorithm, EncodingKey};
    /// use secure_routes_testkit::{jwks::TestKey, keys};
    /// let enc = EncodingKey::from_ec_pem(keys::EC_PRIVATE.as_bytes()).unwrap();
    /// let k = TestKey::new("k", Algorithm::ES256, enc);
    /// assert_eq!(k.jwk["kid"], "k");
    /// ```
    ///
    /// # Panics
    ///
    /// If `enc` cannot be published for `alg`.
    pub fn new(kid: &str, alg: Algorithm, enc: EncodingKey) -> Self {
        // `Jwk::from_encoding_key` uses jsonwebtoken's crypto provider; the library installs
        // it when an authenticator is built, a test may get here first.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        let mut jwk = Jwk::from_encoding_key(&enc, alg).expect("a publishable key");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            enc,
            jwk: serde_json::to_value(jwk).expect("a JWK serializes"),
        }
    }

    /// The RS256 test key ([`keys::RSA_PRIVATE`]).
    ///
    /// ```
    /// assert_eq!(secure_routes_testkit::jwks::TestKey::rsa("r").jwk["kty"], "RSA");
    /// ```
    ///
    /// # Panics
    ///
    /// Never with the embedded key.
    pub fn rsa(kid: &str) -> Self {
        let enc = EncodingKey::from_rsa_pem(keys::RSA_PRIVATE.as_bytes()).expect("RSA PEM");
        Self::new(kid, Algorithm::RS256, enc)
    }

    /// The ES256 test key ([`keys::EC_PRIVATE`]).
    ///
    /// ```
    /// assert_eq!(secure_routes_testkit::jwks::TestKey::ec("e").jwk["crv"], "P-256");
    /// ```
    ///
    /// # Panics
    ///
    /// Never with the embedded key.
    pub fn ec(kid: &str) -> Self {
        let enc = EncodingKey::from_ec_pem(keys::EC_PRIVATE.as_bytes()).expect("EC PEM");
        Self::new(kid, Algorithm::ES256, enc)
    }

    /// The EdDSA test key ([`keys::ED_PRIVATE`]).
    ///
    /// ```
    /// assert_eq!(secure_routes_testkit::jwks::TestKey::ed("d").jwk["crv"], "Ed25519");
    /// ```
    ///
    /// # Panics
    ///
    /// Never with the embedded key.
    pub fn ed(kid: &str) -> Self {
        let enc = EncodingKey::from_ed_pem(keys::ED_PRIVATE.as_bytes()).expect("Ed25519 PEM");
        Self::new(kid, Algorithm::EdDSA, enc)
    }

    /// A new P-256 key, as a rotation brings (Supabase's signing keys are ES256 by default).
    ///
    /// ```
    /// use secure_routes_testkit::jwks::TestKey;
    /// assert_ne!(TestKey::fresh_ec("a").jwk["x"], TestKey::fresh_ec("a").jwk["x"]);
    /// ```
    ///
    /// # Panics
    ///
    /// If the system has no randomness.
    pub fn fresh_ec(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("a P-256 key");
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
    }

    /// The same key published without `alg`, under another `kid`.
    ///
    /// ```
    /// use secure_routes_testkit::jwks::TestKey;
    /// let k = TestKey::ec("a").without_alg("b");
    /// assert_eq!(k.jwk["kid"], "b");
    /// assert!(k.jwk.get("alg").is_none());
    /// ```
    pub fn without_alg(&self, kid: &str) -> Self {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        if let Some(o) = jwk.as_object_mut() {
            o.remove("alg");
        }
        Self {
            kid: kid.to_owned(),
            alg: self.alg,
            enc: self.enc.clone(),
            jwk,
        }
    }

    /// A token for `claims` signed by this key, with its `alg` and `kid` in the header.
    ///
    /// ```
    /// use secure_routes_testkit::jwks::TestKey;
    /// let t = TestKey::ed("d").sign(&serde_json::json!({"sub": "a"}));
    /// assert_eq!(t.split('.').count(), 3);
    /// ```
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg, claims)
    }

    /// A token for `claims` signed by this key, naming `alg` in the header (which may be a
    /// lie: that is what some tests check).
    ///
    /// ```
    /// use jsonwebtoken::Algorithm;
    /// use secure_routes_testkit::jwks::TestKey;
    /// let t = TestKey::rsa("r").sign_as(Algorithm::RS384, &serde_json::json!({}));
    /// assert_eq!(t.split('.').count(), 3);
    /// ```
    ///
    /// # Panics
    ///
    /// If the key cannot sign for `alg`.
    pub fn sign_as(&self, alg: Algorithm, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.enc).expect("the key signs")
    }
}

/// The JWK Set (`{"keys": [...]}`) publishing `keys`.
///
/// ```
/// use secure_routes_testkit::jwks::{TestKey, jwk_set};
/// let set: serde_json::Value = serde_json::from_str(&jwk_set(&[&TestKey::ec("a")])).unwrap();
/// assert_eq!(set["keys"][0]["kid"], "a");
/// ```
pub fn jwk_set(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

/// What the key server answers.
///
/// ```
/// use std::sync::Arc;
/// use secure_routes_testkit::jwks::{KeyServer, Mode};
/// use tokio::sync::Semaphore;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let s = KeyServer::start(&[]).await;
/// let gate = Arc::new(Semaphore::new(0));
/// s.set_mode(Mode::Held(Arc::clone(&gate))); // requests wait until `gate.add_permits(1)`
/// s.set_mode(Mode::Keys(r#"{"keys":[]}"#.into(), Some("max-age=5")));
/// # });
/// ```
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 with this JSON body and, optionally, this `Cache-Control`.
    Keys(String, Option<&'static str>),
    /// This status with an empty body; a 3xx points `Location` at `/attacker.json`.
    Status(u16),
    /// 200 with this body and no JSON content type (for bodies that are not a usable set).
    Body(String),
    /// Never answers.
    Hang,
    /// Answers 503 once the test adds a permit, not before.
    Held(Arc<Semaphore>),
}

#[derive(Clone)]
struct ServerState {
    hits: Arc<AtomicUsize>,
    attacker_hits: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
}

/// A key server on loopback; it runs until the test's runtime ends.
///
/// ```
/// use secure_routes_testkit::jwks::{KeyServer, Mode, TestKey};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let (old, new) = (TestKey::ec("old"), TestKey::fresh_ec("new"));
/// let s = KeyServer::start(&[&old]).await;
/// assert_eq!(s.url(), format!("{}/jwks.json", s.base()));
/// s.serve(&[&old, &new]); // a rotation
/// s.set_mode(Mode::Status(302)); // a redirect to /attacker.json, which counts its hits
/// assert_eq!((s.hits(), s.attacker_hits()), (0, 0));
/// # });
/// ```
pub struct KeyServer {
    base: String,
    state: ServerState,
}

impl KeyServer {
    /// Starts a server publishing `keys`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start(keys: &[&TestKey]) -> Self {
        Self::start_with(Mode::Keys(jwk_set(keys), None)).await
    }

    /// Starts a server answering as `mode` says.
    ///
    /// ```
    /// use secure_routes_testkit::jwks::{KeyServer, Mode};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let s = KeyServer::start_with(Mode::Status(500)).await;
    /// assert!(s.base().starts_with("http://127.0.0.1:"));
    /// # });
    /// ```
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    pub async fn start_with(mode: Mode) -> Self {
        let state = ServerState {
            hits: Arc::default(),
            attacker_hits: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
        };
        let app = Router::new()
            .route("/jwks.json", get(serve_keys))
            .route("/auth/v1/.well-known/jwks.json", get(serve_keys))
            .route("/attacker.json", get(serve_attacker))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// `http://127.0.0.1:PORT` (a Supabase project URL).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The key set URL, `BASE/jwks.json`.
    pub fn url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }

    /// Requests for the key set so far (either path).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests that followed a redirect to `/attacker.json`.
    pub fn attacker_hits(&self) -> usize {
        self.state.attacker_hits.load(Ordering::SeqCst)
    }

    /// Changes what the server answers from the next request on.
    pub fn set_mode(&self, mode: Mode) {
        *self
            .state
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mode;
    }

    /// Publishes `keys` from the next request on.
    pub fn serve(&self, keys: &[&TestKey]) {
        self.set_mode(Mode::Keys(jwk_set(keys), None));
    }
}

async fn serve_keys(State(s): State<ServerState>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let mode = s
        .mode
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match mode {
        Mode::Keys(body, cache_control) => {
            let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
            if let Some(cc) = cache_control {
                r.headers_mut().insert(
                    header::CACHE_CONTROL,
                    cc.parse().expect("a valid Cache-Control"),
                );
            }
            r
        }
        Mode::Status(code) => {
            let mut r = StatusCode::from_u16(code)
                .expect("a valid status")
                .into_response();
            if (300..400).contains(&code) {
                r.headers_mut().insert(
                    header::LOCATION,
                    http::HeaderValue::from_static("/attacker.json"),
                );
            }
            r
        }
        Mode::Body(body) => body.into_response(),
        Mode::Hang => std::future::pending().await,
        Mode::Held(gate) => {
            let _permit = gate.acquire().await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn serve_attacker(State(s): State<ServerState>) -> Response {
    s.attacker_hits.fetch_add(1, Ordering::SeqCst);
    StatusCode::NOT_FOUND.into_response()
}
