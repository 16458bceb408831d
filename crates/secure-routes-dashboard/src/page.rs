//! The HTML pages (the dashboard, the login form), their embedded assets, and login/logout.
//!
//! Pages are sent with a strict CSP (`script-src 'self'`, no inline script or style, nothing
//! from another origin, no framing) so that even an escaping mistake in the script could not
//! run injected markup's script, and with `Cache-Control: no-store` (the page carries the CSRF
//! token).

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderValue, Request, StatusCode, header};
use secure_routes::audit::AuditAction;

use crate::St;
use crate::api::{self, event_for};
use crate::auth::{self, SESSION_COOKIE, SESSION_TTL};

const INDEX_HTML: &str = include_str!("../assets/index.html");
const LOGIN_HTML: &str = include_str!("../assets/login.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// The page's Content-Security-Policy.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The largest login form body read.
const MAX_LOGIN_BODY: usize = 4096;

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Escapes text for HTML element content and quoted attributes.
pub(crate) fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn login_page(status: StatusCode, error: &str) -> Response {
    let hidden = if error.is_empty() { " hidden" } else { "" };
    html(
        status,
        LOGIN_HTML
            .replace("{{error_hidden}}", hidden)
            .replace("{{error}}", &escape_html(error)),
    )
}

/// `GET /_secure-routes` (no slash): to the page.
pub(crate) async fn to_index() -> Redirect {
    Redirect::to(crate::PREFIX)
}

/// `GET /_secure-routes/`: the page for a session or a bearer, else the login form.
pub(crate) async fn index(State(st): State<St>, req: Request<Body>) -> Response {
    let now = st.now_secs();
    let headers = req.headers();
    let csrf = match auth::session_cookie(headers) {
        Some(s) if st.keys.verify(s, now).is_some() => st.keys.csrf_token(s),
        _ if auth::bearer_authorized(headers, &st.token) => String::new(),
        _ => return login_page(StatusCode::OK, ""),
    };
    html(
        StatusCode::OK,
        INDEX_HTML.replace("{{csrf}}", &escape_html(&csrf)),
    )
}

/// `GET /_secure-routes/login`.
pub(crate) async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

/// `POST /_secure-routes/login`: the urlencoded `token` becomes a session cookie.
pub(crate) async fn login(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let now = st.now_secs();
    // Login CSRF: another site must not log this browser into a session (even our own).
    if !auth::same_origin(&parts.headers, st.https) {
        st.record(event_for(
            AuditAction::CsrfValidationFailed,
            &parts,
            403,
            "cross_origin",
        ))
        .await;
        return login_page(StatusCode::FORBIDDEN, "Cross-site login refused.");
    }
    let ip = crate::client_ip(&parts.extensions);
    if let Some(wait) = st.lockout.locked(ip, now) {
        let mut res = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts from this address; try again later.",
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.max(1)));
        return res;
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_LOGIN_BODY).await else {
        return login_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !auth::token_matches(token.trim().as_bytes(), &st.token) {
        st.lockout.fail(ip, now);
        st.record(event_for(
            AuditAction::UnauthorizedAccess,
            &parts,
            401,
            "invalid_admin_token",
        ))
        .await;
        return login_page(StatusCode::UNAUTHORIZED, "Wrong token.");
    }
    let session = st.keys.issue(now);
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path={}; Max-Age={}; HttpOnly; SameSite=Strict{}",
        crate::PREFIX,
        SESSION_TTL.as_secs(),
        if st.https { "; Secure" } else { "" }
    );
    let mut res = Redirect::to(crate::PREFIX).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `POST /_secure-routes/logout`: ends the session (CSRF-checked like every change).
pub(crate) async fn logout(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    if let Err(r) = api::guard(&st, &parts, true).await {
        return r;
    }
    if let Some(s) = auth::session_cookie(&parts.headers) {
        st.keys.revoke(s, st.now_secs());
    }
    let cookie = format!(
        "{SESSION_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict{}",
        crate::PREFIX,
        if st.https { "; Secure" } else { "" }
    );
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /_secure-routes/assets/app.js` (public: it holds no data).
pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /_secure-routes/assets/app.css`.
pub(crate) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(
            super::escape_html("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }
}
