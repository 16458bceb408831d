//! The audit dashboard (issue 12 part 4): a page and a small JSON API over the audit trail and
//! the bans, at `/_secure-routes/`, behind the admin token. The gateway mounts it beside its
//! own reserved endpoints; `secure-routes dashboard` serves it alone for library users.
//!
//! Every asset is compiled in (`include_str!`): no CDN, no download at run time, no build
//! step. The page is plain HTML with one script (`assets/app.js`) under a strict CSP
//! (`script-src 'self'`, no inline script), and the script inserts everything read from the
//! audit log with `textContent` / `setAttribute`, never as HTML: a `User-Agent` is attacker
//! input.
//!
//! Endpoints (all under `/_secure-routes/`; see [`auth`] for who may call them):
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /` | the page, or the login page without a session |
//! | `GET /login`, `POST /login` | the login form; the token (urlencoded `token`) becomes a session cookie |
//! | `POST /logout` | ends the session |
//! | `GET /api/events?action=&outcome=&ip=&subject=&route=&fingerprint=&since=&until=&before=&limit=` | `{"events": [...], "next": ID or null}` |
//! | `GET /api/counts?bucket=60&...` | `{"bucket": 60, "counts": [{"bucket_start", "action", "count"}]}` |
//! | `GET /api/top?by=ip\|subject&n=10&...` | `{"by": "ip", "top": [{"key", "count"}]}` |
//! | `GET /api/bans` | `{"bans": [{"key", "until", "strikes", "reason"}]}` |
//! | `DELETE /api/bans/{key}` | 204, or 404 when no ban was held; audited `ban_lifted` |
//! | `GET /api/tail` | server-sent events, `event: audit`, one event's JSON per message |
//!
//! ```
//! use std::sync::Arc;
//! use secure_routes::audit::MemoryAuditReader;
//! use secure_routes_dashboard::{DashboardState, router};
//! let state = DashboardState::new(Arc::new(MemoryAuditReader::default()), "admin-token");
//! let app: axum::Router = router(state);
//! # let _ = app;
//! ```

mod api;
pub mod auth;
mod page;
mod tail;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{delete, get, post};
use secure_routes::ClientIp;
use secure_routes::audit::{AuditEvent, AuditReader, AuditWriter};
use secure_routes::bans::Bans;
use secure_routes::clock::{Clock, SystemClock};

/// The path the dashboard lives under (the gateway's reserved prefix).
///
/// ```
/// assert_eq!(secure_routes_dashboard::PREFIX, "/_secure-routes/");
/// ```
pub const PREFIX: &str = "/_secure-routes/";

/// Live tails open at once, at most (each polls the store once a second); one more is 503.
pub const MAX_TAIL_STREAMS: usize = 16;

/// What the dashboard reads and changes, and its secret.
///
/// ```
/// use std::sync::Arc;
/// use secure_routes::audit::MemoryAuditReader;
/// use secure_routes::bans::{BanPolicy, Bans, MemoryBans};
/// use secure_routes_dashboard::DashboardState;
/// let state = DashboardState::new(Arc::new(MemoryAuditReader::default()), "admin-token")
///     .with_bans(Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default()))
///     .with_https(true);
/// # let _ = state;
/// ```
#[derive(Clone)]
pub struct DashboardState {
    reader: Arc<dyn AuditReader>,
    bans: Option<Bans>,
    audit: Option<AuditWriter>,
    token: Arc<str>,
    https: bool,
    clock: Arc<dyn Clock>,
    tail_interval: Duration,
}

impl std::fmt::Debug for DashboardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("DashboardState")
            .field("reader", &self.reader.name())
            .field("bans", &self.bans.as_ref().map(|b| b.store().name()))
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

impl DashboardState {
    /// A dashboard over `reader`, opened by `admin_token` (an empty token opens nothing).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::audit::MemoryAuditReader;
    /// let s = secure_routes_dashboard::DashboardState::new(Arc::new(MemoryAuditReader::default()), "t");
    /// assert!(!format!("{s:?}").contains("\"t\""));
    /// ```
    pub fn new(reader: Arc<dyn AuditReader>, admin_token: impl Into<Arc<str>>) -> Self {
        Self {
            reader,
            bans: None,
            audit: None,
            token: admin_token.into(),
            https: false,
            clock: Arc::new(SystemClock),
            tail_interval: Duration::from_secs(1),
        }
    }

    /// The bans to list and lift (without them the bans table stays empty and a lift is 404).
    ///
    /// Give the [`Bans`] the serving [`Security`](secure_routes::Security) enforces (its
    /// [`Security::bans`](secure_routes::Security::bans)), not a second handle on its store:
    /// a lift then ends the ban in that process's snapshot at once. Through the store alone,
    /// a process on a memory store would keep refusing the client until the ban expired (it
    /// never re-reads a store only it writes), and one on a shared store for up to a second.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::{audit::MemoryAuditReader, bans::{BanPolicy, Bans, MemoryBans}};
    /// let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::default());
    /// let s = secure_routes_dashboard::DashboardState::new(Arc::new(MemoryAuditReader::default()), "t")
    ///     .with_bans(bans);
    /// # let _ = s;
    /// ```
    pub fn with_bans(mut self, bans: Bans) -> Self {
        self.bans = Some(bans);
        self
    }

    /// Where `ban_lifted`, failed logins (`unauthorized_access`) and cross-site attempts
    /// (`csrf_validation_failed`) are recorded.
    ///
    /// ```no_run
    /// # async fn f(writer: secure_routes::audit::AuditWriter) {
    /// use std::sync::Arc;
    /// use secure_routes::audit::MemoryAuditReader;
    /// let s = secure_routes_dashboard::DashboardState::new(Arc::new(MemoryAuditReader::default()), "t")
    ///     .with_audit(writer);
    /// # let _ = s; }
    /// ```
    pub fn with_audit(mut self, writer: AuditWriter) -> Self {
        self.audit = Some(writer);
        self
    }

    /// Served over TLS: the session cookie is `Secure` and origins are `https://`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use secure_routes::audit::MemoryAuditReader;
    /// let s = secure_routes_dashboard::DashboardState::new(Arc::new(MemoryAuditReader::default()), "t")
    ///     .with_https(true);
    /// # let _ = s;
    /// ```
    pub fn with_https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// The clock sessions, lockouts and ban times are read from (tests inject a fake one).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::{audit::MemoryAuditReader, clock::FakeClock};
    /// let s = secure_routes_dashboard::DashboardState::new(Arc::new(MemoryAuditReader::default()), "t")
    ///     .with_clock(Arc::new(FakeClock::new(Duration::from_secs(1_000))));
    /// # let _ = s;
    /// ```
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How often a live tail polls the reader (default one second).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use secure_routes::audit::MemoryAuditReader;
    /// let s = secure_routes_dashboard::DashboardState::new(Arc::new(MemoryAuditReader::default()), "t")
    ///     .with_tail_interval(Duration::from_millis(200));
    /// # let _ = s;
    /// ```
    pub fn with_tail_interval(mut self, every: Duration) -> Self {
        self.tail_interval = every.max(Duration::from_millis(10));
        self
    }
}

/// The state the handlers share.
pub(crate) struct Shared {
    pub(crate) reader: Arc<dyn AuditReader>,
    pub(crate) bans: Option<Bans>,
    pub(crate) audit: Option<AuditWriter>,
    pub(crate) token: Arc<str>,
    pub(crate) https: bool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) tail_interval: Duration,
    pub(crate) keys: auth::Keys,
    pub(crate) lockout: auth::Lockout,
    pub(crate) streams: AtomicUsize,
}

impl Shared {
    pub(crate) fn now_secs(&self) -> u64 {
        self.clock.now().as_secs()
    }

    /// Records `event` when an audit writer was given.
    pub(crate) async fn record(&self, event: AuditEvent) {
        if let Some(w) = &self.audit {
            w.record(event).await;
        }
    }
}

pub(crate) type St = Arc<Shared>;

/// The dashboard's routes, all under [`PREFIX`]; merge them into a router served with
/// connect info (the failed-login counter is per client address).
///
/// ```
/// use std::sync::Arc;
/// use secure_routes::audit::MemoryAuditReader;
/// let app = secure_routes_dashboard::router(secure_routes_dashboard::DashboardState::new(
///     Arc::new(MemoryAuditReader::default()), "admin-token"));
/// # let _: axum::Router = app;
/// ```
pub fn router(state: DashboardState) -> Router {
    let shared: St = Arc::new(Shared {
        keys: auth::Keys::new(&state.token),
        reader: state.reader,
        bans: state.bans,
        audit: state.audit,
        token: state.token,
        https: state.https,
        clock: state.clock,
        tail_interval: state.tail_interval,
        lockout: auth::Lockout::default(),
        streams: AtomicUsize::new(0),
    });
    Router::new()
        .route("/_secure-routes", get(page::to_index))
        .route("/_secure-routes/", get(page::index))
        .route(
            "/_secure-routes/login",
            get(page::login_form).post(page::login),
        )
        .route("/_secure-routes/logout", post(page::logout))
        .route("/_secure-routes/assets/app.js", get(page::app_js))
        .route("/_secure-routes/assets/app.css", get(page::app_css))
        .route("/_secure-routes/api/events", get(api::events))
        .route("/_secure-routes/api/counts", get(api::counts))
        .route("/_secure-routes/api/top", get(api::top))
        .route("/_secure-routes/api/bans", get(api::bans))
        // A wildcard: an IPv6 key (`ip:2001:db8::/64`) may reach us with its `/` unencoded
        // (the gateway refuses an encoded `/` in a path, so the page sends it raw).
        .route("/_secure-routes/api/bans/{*key}", delete(api::lift))
        .route("/_secure-routes/api/tail", get(tail::tail))
        .with_state(shared)
}

/// The client address for the failed-login counter and the audit: the pipeline's resolved
/// address when a pipeline ran in front, else the socket peer.
pub(crate) fn client_ip(ext: &http::Extensions) -> Option<IpAddr> {
    ext.get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
}
