//! The JSON API the page reads and scripts may call: events, counts, top offenders, bans and a
//! ban lift. Query parameters are checked strictly: a bad value or an unknown name is a 400
//! problem naming the parameter (a typo must not silently widen a filter).

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request, StatusCode, header, request::Parts};
use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery, Outcome, Reason, TopBy};
use secure_routes::bans::BanKey;
use secure_routes::response::problem::{Rejection, RejectionKind};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::St;
use crate::auth;

/// The most events one page returns.
pub(crate) const MAX_LIMIT: usize = 500;
/// The most time buckets `api/counts` answers per action (the page asks for about 60).
pub(crate) const MAX_BUCKETS: u64 = 10_000;

/// Who called.
pub(crate) enum Caller {
    /// The admin token as a bearer.
    Bearer,
    /// A browser session (the `sr-admin` cookie, verified).
    Session,
}

/// Authenticates a request to the API; `unsafe_method` adds the CSRF checks for sessions.
pub(crate) async fn guard(st: &St, parts: &Parts, unsafe_method: bool) -> Result<Caller, Response> {
    let now = st.now_secs();
    let ip = crate::client_ip(&parts.extensions);
    if let Some(wait) = st.lockout.locked(ip, now) {
        return Err(locked_out(wait));
    }
    if parts.headers.contains_key(header::AUTHORIZATION) {
        if auth::bearer_authorized(&parts.headers, &st.token) {
            return Ok(Caller::Bearer);
        }
        st.lockout.fail(ip, now);
        st.record(event_for(
            AuditAction::UnauthorizedAccess,
            parts,
            401,
            "invalid_admin_token",
        ))
        .await;
        return Err(unauthorized("The admin token is not valid."));
    }
    let Some(_) = auth::session_cookie(&parts.headers).and_then(|s| st.keys.verify(s, now)) else {
        st.record(event_for(
            AuditAction::UnauthorizedAccess,
            parts,
            401,
            "missing_credential",
        ))
        .await;
        return Err(unauthorized(
            "Log in at /_secure-routes/login, or send Authorization: Bearer <admin token>.",
        ));
    };
    if unsafe_method {
        // Login-CSRF and CSRF: a cookie-authenticated change must come from our own page.
        if !auth::same_origin(&parts.headers, st.https) {
            st.record(event_for(
                AuditAction::CsrfValidationFailed,
                parts,
                403,
                "cross_origin",
            ))
            .await;
            return Err(Rejection::new(
                RejectionKind::CsrfFailed,
                Reason::from_static("cross_origin"),
            )
            .with_detail("Cross-site requests cannot change the dashboard.")
            .into_response());
        }
        let session = auth::session_cookie(&parts.headers).unwrap_or_default();
        let presented = parts
            .headers
            .get("x-csrf-token")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !st.keys.csrf_ok(session, presented) {
            st.record(event_for(
                AuditAction::CsrfValidationFailed,
                parts,
                403,
                "csrf_token",
            ))
            .await;
            return Err(Rejection::new(
                RejectionKind::CsrfFailed,
                Reason::from_static("csrf_token"),
            )
            .with_detail("Send the page's CSRF token (meta csrf-token) in X-CSRF-Token.")
            .into_response());
        }
    }
    Ok(Caller::Session)
}

/// An audit event about a request to the dashboard.
pub(crate) fn event_for(
    action: AuditAction,
    parts: &Parts,
    status: u16,
    reason: &str,
) -> AuditEvent {
    let mut e = AuditEvent::new(action)
        .with_status(status)
        .with_reason(reason)
        .with_request(parts.method.as_str(), "/_secure-routes/", parts.uri.path());
    if let Some(ip) = crate::client_ip(&parts.extensions) {
        e = e.with_client_ip(ip);
    }
    if let Some(ua) = parts.headers.get(header::USER_AGENT) {
        e = e.with_user_agent(&String::from_utf8_lossy(ua.as_bytes()));
    }
    e
}

pub(crate) fn unauthorized(detail: &str) -> Response {
    Rejection::unauthorized(Reason::Invalid)
        .with_detail(detail)
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
        .into_response()
}

pub(crate) fn locked_out(wait: u64) -> Response {
    Rejection::new(
        RejectionKind::RateLimited,
        Reason::from_static("login_lockout"),
    )
    .with_detail("Too many failed attempts from this address; try again later.")
    .with_header(header::RETRY_AFTER, HeaderValue::from(wait.max(1)))
    .into_response()
}

/// A query parameter refused: 400 problem+json naming it (`parameter`).
pub(crate) struct BadParam {
    name: String,
    detail: String,
}

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        Rejection::new(
            RejectionKind::InvalidInput,
            Reason::from_static("invalid_parameter"),
        )
        .with_detail(self.detail)
        .with_member("parameter", Value::String(self.name))
        .into_response()
    }
}

fn bad_param(name: &str, detail: String) -> BadParam {
    BadParam {
        name: name.to_owned(),
        detail,
    }
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!("dashboard: the store failed: {e}");
    Rejection::new(
        RejectionKind::Unavailable,
        Reason::from_static("store_failure"),
    )
    .with_detail("The audit or ban store failed; see the server log.")
    .into_response()
}

/// The query string as a map of non-empty values; unknown or repeated names are 400.
fn params(parts: &Parts, allowed: &[&str]) -> Result<HashMap<String, String>, BadParam> {
    let mut out = HashMap::new();
    let raw = parts.uri.query().unwrap_or("");
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(bad_param(&k, format!("Unknown parameter {k:?}.")));
        }
        if out.contains_key(k.as_ref()) {
            return Err(bad_param(&k, format!("Parameter {k:?} given twice.")));
        }
        if !v.is_empty() {
            out.insert(k.into_owned(), v.into_owned());
        }
    }
    Ok(out)
}

const FILTERS: &[&str] = &[
    "action",
    "outcome",
    "ip",
    "subject",
    "route",
    "fingerprint",
    "since",
    "until",
];

fn time_param(p: &HashMap<String, String>, name: &str) -> Result<Option<OffsetDateTime>, BadParam> {
    p.get(name)
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| bad_param(name, format!("{name} must be an RFC 3339 time.")))
        })
        .transpose()
}

/// The filters of an [`AuditQuery`] (no cursor, default limit) from `p`.
fn filters(p: &HashMap<String, String>) -> Result<AuditQuery, BadParam> {
    let action = p
        .get("action")
        .map(|a| {
            AuditAction::parse(a)
                .ok_or_else(|| bad_param("action", "action is not an audit action.".into()))
        })
        .transpose()?;
    let outcome = p
        .get("outcome")
        .map(|o| {
            Outcome::ALL
                .iter()
                .copied()
                .find(|x| x.as_str() == o)
                .ok_or_else(|| bad_param("outcome", "outcome is not an outcome.".into()))
        })
        .transpose()?;
    Ok(AuditQuery {
        action,
        outcome,
        client_ip: p.get("ip").cloned(),
        subject: p.get("subject").cloned(),
        route: p.get("route").cloned(),
        fingerprint: p.get("fingerprint").cloned(),
        since: time_param(p, "since")?,
        until: time_param(p, "until")?,
        ..AuditQuery::default()
    })
}

fn number(
    p: &HashMap<String, String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, BadParam> {
    match p.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= min)
            .map(|n| n.min(max))
            .ok_or_else(|| {
                bad_param(
                    name,
                    format!("{name} must be a whole number, at least {min}."),
                )
            }),
    }
}

fn json_response(v: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        v.to_string(),
    )
        .into_response()
}

/// `GET api/events`.
pub(crate) async fn events(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = guard(&st, &parts, false).await {
        return r;
    }
    let mut allowed = FILTERS.to_vec();
    allowed.extend(["before", "limit"]);
    let q = match params(&parts, &allowed).and_then(|p| {
        let mut q = filters(&p)?;
        q.before = p
            .get("before")
            .map(|b| {
                b.parse::<uuid::Uuid>()
                    .map_err(|_| bad_param("before", "before must be an event id.".into()))
            })
            .transpose()?;
        q.limit = number(&p, "limit", 100, 1, MAX_LIMIT as u64)? as usize;
        Ok(q)
    }) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    match st.reader.events(&q).await {
        Ok(events) => {
            let next = (events.len() == q.limit)
                .then(|| events.last().map(|e| e.id.to_string()))
                .flatten();
            json_response(json!({ "events": events, "next": next }))
        }
        Err(e) => store_error(e),
    }
}

/// `GET api/counts`.
pub(crate) async fn counts(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = guard(&st, &parts, false).await {
        return r;
    }
    let mut allowed = FILTERS.to_vec();
    allowed.push("bucket");
    let (q, bucket) = match params(&parts, &allowed)
        .and_then(|p| Ok((filters(&p)?, number(&p, "bucket", 60, 1, 86_400)?)))
    {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    // At most MAX_BUCKETS buckets per action: `bucket=1` over a long trail would otherwise
    // answer millions of rows. Without `since`, the range is the last MAX_BUCKETS buckets.
    let mut q = q;
    let until = q.until.unwrap_or_else(|| {
        time::OffsetDateTime::from_unix_timestamp(st.now_secs() as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    });
    let widest = time::Duration::seconds((bucket * MAX_BUCKETS) as i64);
    let since = *q.since.get_or_insert(until - widest);
    let span = u64::try_from((until - since).whole_seconds()).unwrap_or(0);
    if span / bucket > MAX_BUCKETS {
        return bad_param(
            "bucket",
            format!("at most {MAX_BUCKETS} buckets: widen the bucket or narrow since/until"),
        )
        .into_response();
    }
    match st.reader.counts(&q, Duration::from_secs(bucket)).await {
        Ok(counts) => {
            let counts: Vec<Value> = counts
                .iter()
                .map(|c| {
                    json!({
                        "bucket_start": c.bucket_start.format(&Rfc3339).unwrap_or_default(),
                        "action": c.action.as_str(),
                        "count": c.count,
                    })
                })
                .collect();
            json_response(json!({ "bucket": bucket, "counts": counts }))
        }
        Err(e) => store_error(e),
    }
}

/// `GET api/top`.
pub(crate) async fn top(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = guard(&st, &parts, false).await {
        return r;
    }
    let mut allowed = FILTERS.to_vec();
    allowed.extend(["by", "n"]);
    let (q, by, n) = match params(&parts, &allowed).and_then(|p| {
        let by = match p.get("by").map(String::as_str) {
            None | Some("ip") => TopBy::ClientIp,
            Some("subject") => TopBy::Subject,
            Some(_) => return Err(bad_param("by", "by must be ip or subject.".into())),
        };
        Ok((filters(&p)?, by, number(&p, "n", 10, 1, 100)?))
    }) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match st.reader.top(&q, by, n as usize).await {
        Ok(top) => {
            let top: Vec<Value> = top
                .iter()
                .map(|t| json!({ "key": t.key, "count": t.count }))
                .collect();
            let by = if by == TopBy::ClientIp {
                "ip"
            } else {
                "subject"
            };
            json_response(json!({ "by": by, "top": top }))
        }
        Err(e) => store_error(e),
    }
}

fn rfc3339_ms(d: Duration) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(d.as_millis() as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `GET api/bans`.
pub(crate) async fn bans(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = guard(&st, &parts, false).await {
        return r;
    }
    if let Err(r) = params(&parts, &[]) {
        return r.into_response();
    }
    let Some(bans) = &st.bans else {
        return json_response(json!({ "bans": [], "enabled": false }));
    };
    match bans.store().list(st.clock.now()).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .iter()
                .map(|b| {
                    json!({
                        "key": b.key.as_str(),
                        "until": rfc3339_ms(b.until),
                        "strikes": b.strikes,
                        "reason": b.reason,
                    })
                })
                .collect();
            json_response(json!({ "bans": list, "enabled": true }))
        }
        Err(e) => store_error(e),
    }
}

/// `DELETE api/bans/{key}`.
pub(crate) async fn lift(
    State(st): State<St>,
    Path(key): Path<String>,
    req: Request<Body>,
) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = guard(&st, &parts, true).await {
        return r;
    }
    let key = match BanKey::parse(&key) {
        Ok(k) => k,
        Err(e) => return bad_param("key", e.to_string()).into_response(),
    };
    let Some(bans) = &st.bans else {
        return not_found("This server keeps no bans.");
    };
    // Through `Bans`, not its store: the serving process's snapshot drops the ban at once.
    match bans.lift(&key).await {
        Ok(true) => {
            let mut e = event_for(AuditAction::BanLifted, &parts, 204, "ban_lifted")
                .with_outcome(Outcome::Allowed)
                .with_metadata(json!({ "key": key.as_str(), "via": "dashboard" }));
            // The event is about the banned key, not the operator: filtering the dashboard by
            // the address or subject shows its ban and its lift together.
            e.client_ip = key.as_str().strip_prefix("ip:").map(str::to_owned);
            e.subject = key.as_str().strip_prefix("sub:").map(str::to_owned);
            st.record(e).await;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => not_found("No ban is held for this key."),
        Err(e) => store_error(e),
    }
}

fn not_found(detail: &str) -> Response {
    Rejection::new(RejectionKind::NotFound, Reason::from_static("no_ban"))
        .with_detail(detail)
        .into_response()
}
