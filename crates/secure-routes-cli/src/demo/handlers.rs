//! The demo's handlers: sample data, a CSRF token for the caller's session, and per-user
//! notes kept in memory (bounded in size and count), with JSON bodies checked into 400
//! problems that never echo the body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use secure_routes::response::problem::{Rejection, RejectionKind};
use secure_routes::{Principal, Security};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{MAX_NOTE_CHARS, MAX_NOTES_PER_USER};

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) security: Security,
    pub(super) notes: Arc<Mutex<HashMap<String, Vec<Note>>>>,
}

#[derive(Clone, serde::Serialize)]
pub(super) struct Note {
    id: u64,
    text: String,
}

pub(super) async fn public_data() -> Json<Value> {
    Json(json!({"data": [
        {"id": 1, "name": "alpha"},
        {"id": 2, "name": "beta"},
        {"id": 3, "name": "gamma"}
    ]}))
}

pub(super) async fn public_post(body: axum::body::Bytes) -> Json<Value> {
    Json(json!({"success": true, "received": body.len()}))
}

/// Reads the body as a real handler would (the body limit applies to what is read).
pub(super) async fn success(_p: Principal, body: axum::body::Bytes) -> Json<Value> {
    Json(json!({"success": true, "received": body.len()}))
}

pub(super) async fn csrf_token(
    State(s): State<AppState>,
    p: Option<Principal>,
    headers: HeaderMap,
) -> Response {
    s.security.csrf_token_response(&headers, p.as_ref())
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
    serde_json::from_slice(&bytes).map_err(|e| bad_input(&json_error_detail(&e)))
}

/// Longest serde message kept in a 400's detail, in characters.
const MAX_JSON_ERROR_CHARS: usize = 160;

/// What was wrong with a JSON body, for the client: serde_json's own message, which names the
/// field ("missing field `text`", "invalid type: integer `5`, expected a string"), without its
/// position suffix. The body is never echoed: a string value serde would quote ("invalid
/// type: string \"...\"") becomes "a string"; what is left is field names and types from our
/// own structs, cut to [`MAX_JSON_ERROR_CHARS`] and stripped of control characters so it
/// cannot stretch or break the response or a log line.
fn json_error_detail(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let mut msg = full
        .rsplit_once(" at line ")
        .filter(|(_, pos)| pos.split(" column ").all(|n| n.parse::<u64>().is_ok()))
        .map_or(full.as_str(), |(head, _)| head)
        .to_owned();
    if let Some(start) = msg.find("string \"") {
        let end = msg
            .rfind("\", expected")
            .filter(|&end| end > start)
            .map_or(msg.len(), |end| end + 1);
        msg.replace_range(start..end, "a string");
    }
    let mut clean: String = msg
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_JSON_ERROR_CHARS)
        .collect();
    if msg.chars().count() > MAX_JSON_ERROR_CHARS {
        clean.push('…');
    }
    if e.is_data() {
        format!("Invalid JSON body: {clean}.")
    } else {
        format!("Expected a JSON object: {clean}.")
    }
}

fn check_text(text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() || text.chars().count() > MAX_NOTE_CHARS {
        return Err(bad_input("\"text\" must be 1 to 1000 characters."));
    }
    Ok(())
}

pub(super) async fn list_notes(State(s): State<AppState>, p: Principal) -> Json<Value> {
    let notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let mine = notes.get(p.subject()).cloned().unwrap_or_default();
    Json(json!({"notes": mine}))
}

pub(super) async fn add_note(State(s): State<AppState>, p: Principal, req: Request) -> Response {
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

pub(super) async fn update_note(State(s): State<AppState>, p: Principal, req: Request) -> Response {
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

pub(super) async fn delete_notes(State(s): State<AppState>, p: Principal) -> Json<Value> {
    let mut notes = s.notes.lock().unwrap_or_else(|e| e.into_inner());
    let removed = notes.remove(p.subject()).map_or(0, |v| v.len());
    Json(json!({"success": true, "deleted": removed}))
}
