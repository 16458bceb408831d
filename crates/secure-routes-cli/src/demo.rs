//! `secure-routes demo`: the original pattern's examples as a running API on embedded
//! defaults (memory rate limits, SQLite audit log).
//!
//! | route | policy |
//! | --- | --- |
//! | `GET /health` | none |
//! | `GET, POST /api/public-data` | PUBLIC |
//! | `GET /api/csrf` | PUBLIC limits, optional auth: a token bound to the caller's session |
//! | `GET, POST, PUT, DELETE /api/user/notes` | AUTHENTICATED; per-user notes in memory |
//! | `POST /api/strict` | STRICT |
//! | `POST /api/sensitive-operation` | auth, CSRF, 5 per hour, 100 KiB, POST only |
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use secure_routes_cli::{config::Config, demo};
//! let config = Config { jwt_secret: vec![1; 32], csrf_secret: vec![2; 32],
//!     trusted_proxies: vec![], allowed_origins: vec![], production: false };
//! let app = demo::router(&config, None, false).unwrap();
//! # let _ = app;
//! # });
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, Method, header};
use secure_routes::audit::{AuditConfig, AuditWriter};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::response::problem::{Rejection, RejectionKind};
use secure_routes::{AuthMode, CsrfMode, Policy, Principal, Quota, Security};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::config::Config;

/// Name of the session cookie the demo accepts (an ambient credential: CSRF required).
pub const SESSION_COOKIE: &str = "sr-session";
/// Longest note text accepted, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// Most notes kept per user; the oldest is dropped beyond it.
pub const MAX_NOTES_PER_USER: usize = 100;

#[derive(Clone)]
struct AppState {
    security: Security,
    notes: Arc<Mutex<HashMap<String, Vec<Note>>>>,
}

#[derive(Clone, serde::Serialize)]
struct Note {
    id: u64,
    text: String,
}

/// The policy of the original's Example 3.
pub fn sensitive_policy() -> Policy {
    Policy::builder("sensitive-operation")
        .methods([Method::POST])
        .auth(AuthMode::Required)
        .csrf(CsrfMode::Auto)
        .rate_limit(Quota::per_hour(5))
        .max_body_bytes(100 * 1024)
        .build()
        .unwrap_or_else(|e| unreachable!("constant policy is valid: {e}"))
}

/// Builds the demo's [`Security`] from `config`.
pub fn security(
    config: &Config,
    audit: Option<AuditWriter>,
    secure_cookies: bool,
) -> anyhow::Result<Security> {
    let jwt = JwtAuthenticator::builder()
        .hs256(&config.jwt_secret)
        .cookie(SESSION_COOKIE)
        .build()?;
    let mut b = Security::builder()
        .authenticator(jwt)
        .csrf_secret(&config.csrf_secret)
        .trusted_proxies(&config.trusted_proxies)
        .allowed_origins(&config.allowed_origins)
        .development(!config.production)
        .https(secure_cookies);
    if let Some(w) = audit {
        b = b.audit(w);
    }
    Ok(b.build()?)
}

/// The demo router (serve it with connect info so client addresses are known).
pub fn router(
    config: &Config,
    audit: Option<AuditWriter>,
    secure_cookies: bool,
) -> anyhow::Result<Router> {
    let security = security(config, audit, secure_cookies)?;
    let csrf_policy = Policy::public()
        .to_builder()
        .name("csrf")
        .methods([Method::GET])
        .auth(AuthMode::Optional)
        .build()?;
    let state = AppState {
        security: security.clone(),
        notes: Arc::default(),
    };
    Ok(Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/api/public-data",
            get(public_data)
                .post(public_post)
                .layer(security.layer(Policy::public())?),
        )
        .route(
            "/api/csrf",
            get(csrf_token).layer(security.layer(csrf_policy)?),
        )
        .route(
            "/api/user/notes",
            get(list_notes)
                .post(add_note)
                .put(update_note)
                .delete(delete_notes)
                .layer(security.layer(Policy::authenticated())?),
        )
        .route(
            "/api/strict",
            post(success).layer(security.layer(Policy::strict())?),
        )
        .route(
            "/api/sensitive-operation",
            post(success).layer(security.layer(sensitive_policy())?),
        )
        .with_state(state))
}

async fn public_data() -> Json<Value> {
    Json(json!({"data": [
        {"id": 1, "name": "alpha"},
        {"id": 2, "name": "beta"},
        {"id": 3, "name": "gamma"}
    ]}))
}

async fn public_post(body: axum::body::Bytes) -> Json<Value> {
    Json(json!({"success": true, "received": body.len()}))
}

/// Reads the body as a real handler would (the body limit applies to what is read).
async fn success(_p: Principal, body: axum::body::Bytes) -> Json<Value> {
    Json(json!({"success": true, "received": body.len()}))
}

async fn csrf_token(
    State(s): State<AppState>,
    p: Option<Principal>,
    headers: HeaderMap,
) -> Response {
    let (token, cookie) = s.security.issue_csrf(&headers, p.as_ref());
    let mut res = Json(json!({"csrfToken": token})).into_response();
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Deserialize)]
struct UpdateNote {
    id: u64,
    text: String,
}

fn bad_input(detail: &str) -> Rejection {
    Rejection::new(RejectionKind::InvalidInput, "invalid_json").with_detail(detail)
}

/// Parses a JSON body, answering malformed input with a 400 problem.
async fn json_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, Rejection> {
    let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .map_err(|_| bad_input("The request body could not be read."))?;
    serde_json::from_slice(&bytes).map_err(|_| bad_input("Expected a JSON object."))
}

fn check_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() || text.chars().count() > MAX_NOTE_CHARS {
        return Err(bad_input("\"text\" must be 1 to 1000 characters."));
    }
    Ok(())
}

async fn list_notes(State(s): State<AppState>, p: Principal) -> Json<Value> {
    let notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let mine = notes.get(p.subject()).cloned().unwrap_or_default();
    Json(json!({"notes": mine}))
}

async fn add_note(State(s): State<AppState>, p: Principal, req: Request) -> Response {
    let n: NewNote = match json_body(req).await {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_text(&n.text) {
        return r.into_response();
    }
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let mine = notes.entry(p.subject().to_owned()).or_default();
    let id = mine.last().map_or(1, |n| n.id + 1);
    if mine.len() >= MAX_NOTES_PER_USER {
        mine.remove(0);
    }
    let note = Note { id, text: n.text };
    mine.push(note.clone());
    (
        http::StatusCode::CREATED,
        Json(json!({"success": true, "note": note})),
    )
        .into_response()
}

async fn update_note(State(s): State<AppState>, p: Principal, req: Request) -> Response {
    let u: UpdateNote = match json_body(req).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = check_text(&u.text) {
        return r.into_response();
    }
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    match notes
        .get_mut(p.subject())
        .and_then(|m| m.iter_mut().find(|n| n.id == u.id))
    {
        Some(n) => {
            n.text = u.text;
            Json(json!({"success": true, "note": n.clone()})).into_response()
        }
        None => (
            http::StatusCode::NOT_FOUND,
            Json(json!({"error": "Note not found"})),
        )
            .into_response(),
    }
}

async fn delete_notes(State(s): State<AppState>, p: Principal) -> Json<Value> {
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let removed = notes.remove(p.subject()).map_or(0, |v| v.len());
    Json(json!({"success": true, "deleted": removed}))
}

/// Serves `app` on `listener` until `shutdown` completes, with client addresses attached.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Runs the demo: SQLite audit at `db`, serving on `listener` until `shutdown`, then flushes
/// the audit log.
pub async fn run(
    listener: TcpListener,
    config: &Config,
    db: &Path,
    secure_cookies: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sink = secure_routes_sqlite::SqliteAuditSink::open(db)?;
    let spill = db.with_extension("spill.jsonl");
    let writer = AuditWriter::spawn(
        Arc::new(sink),
        AuditConfig {
            spill_path: spill,
            ..AuditConfig::default()
        },
    );
    let app = router(config, Some(writer.clone()), secure_cookies)?;
    let result = serve(listener, app, shutdown).await;
    writer.shutdown().await;
    Ok(result?)
}

/// The banner printed at start: routes and how to get a token.
pub fn banner(addr: SocketAddr, db: &Path) -> String {
    format!(
        "secure-routes demo listening on http://{addr}  (audit log: {db})

  GET            /health
  GET, POST      /api/public-data          PUBLIC: 60/min, 1 MiB
  GET            /api/csrf                 CSRF token for your session
  GET,POST,PUT,DELETE /api/user/notes      AUTHENTICATED: 20/hour, 5 MiB, CSRF for cookie sessions
  POST           /api/strict               STRICT: 10/min, 512 KiB
  POST           /api/sensitive-operation  auth + CSRF, 5/hour, 100 KiB

Get a token:   TOKEN=$(secure-routes token --sub alice)
Call:          curl -H \"Authorization: Bearer $TOKEN\" http://{addr}/api/user/notes
Audit log:     secure-routes audit --db {db}
Ctrl-C stops the server and flushes the audit log.",
        db = db.display()
    )
}
