//! The gateway's configuration file (`secure-routes.toml`, issue 11's contract): parsed,
//! checked whole, and turned into one effective [`Policy`] per route.
//!
//! Unknown keys are errors: a misspelt `rate_limt` must not silently drop a protection. Every
//! problem is reported at once, each with its TOML key (`routes[2].rate_limit`) and, where the
//! file says, its line, so `secure-routes check` can print them all. The file never holds a
//! secret (they come from the environment); it names where stores live, which identity
//! provider signs tokens, and the routes.
//!
//! `[[alerts]]` entries are the library's [`AlertRule`]s (`name`, `action`, `count`, `within`,
//! `per` = ip | subject | route, `webhook`, optional `outcome` and `cooldown`, default 10m).
//!
//! `[bans]` is the library's [`BanPolicy`]: `enabled` (default true: bans are on unless the
//! file turns them off), `threshold`, `window`, `first`, `max`, `history`, `allow` (CIDRs never
//! banned) and `[bans.weights]` (`<violation> = points`, names from [`Violation::as_str`]).
//! Bans live in the limits store (`[stores] limits`).
//!
//! A route's `rate_limit_key` chooses what its rate limit counts per: a list of `ip`,
//! `subject` (the authenticated subject, else the address; the default, `["subject"]`) and
//! `fingerprint` (the request's header shape, [`secure_routes::fingerprint`]; never alone).
//! `["ip", "fingerprint"]` gives programs behind one address separate budgets. Bans stay per
//! address or subject, and authentication failures count against the address alone.
//!
//! Keys beside a route's `preset` override the preset's values. [`GatewayConfig::routes`] is
//! what `secure-routes routes` prints and what the gateway enforces.
//!
//! ```
//! use secure_routes_gateway::config::GatewayConfig;
//!
//! let config = GatewayConfig::parse(r#"
//! upstream = "http://127.0.0.1:3000"
//!
//! [identity]
//! jwt = true
//!
//! [[routes]]
//! path = "/api/sensitive-operation"
//! preset = "strict"
//! methods = ["POST"]
//! rate_limit = "5/hour"
//! "#).unwrap();
//! let route = &config.routes()[0];
//! assert_eq!(route.policy.rate_limit().unwrap().limit(), 5);
//! assert_eq!(config.table().find("/api/sensitive-operation"), Some(0));
//!
//! let problems = GatewayConfig::parse("upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\nrate_limt = \"1/day\"\n")
//!     .unwrap_err();
//! assert!(problems[0].to_string().contains("line 4"));
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use http::Method;
use secure_routes::alerts::{AlertRule, MAX_COUNT, Per};
use secure_routes::audit::{AuditAction, Outcome};
use secure_routes::bans::{BanPolicy, MAX_THRESHOLD, Violation};
use secure_routes::rate_limit::KeyPart;
use secure_routes::{AuthMode, CsrfMode, FailureMode, Policy, Quota};
use serde::Deserialize;
use toml::Spanned;

use crate::routes::RouteTable;

/// `listen` when the file does not say.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// One problem in a configuration file.
///
/// ```
/// use secure_routes_gateway::config::Problem;
/// let p = Problem { key: "routes[0].auth".into(), line: Some(7), message: "unknown".into() };
/// assert_eq!(p.to_string(), "routes[0].auth (line 7): unknown");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The TOML key, as a path (`routes[2].rate_limit`); empty when the file does not parse.
    pub key: String,
    /// The 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.line) {
            (false, Some(l)) => write!(f, "{} (line {l}): {}", self.key, self.message),
            (false, None) => write!(f, "{}: {}", self.key, self.message),
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => f.write_str(&self.message),
        }
    }
}

/// Whether a route's decisions are enforced or only recorded.
///
/// ```
/// use secure_routes_gateway::config::Mode;
/// assert_eq!(Mode::DryRun.as_str(), "dry-run");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Refusals are answered.
    #[default]
    Enforce,
    /// Every decision is computed and audited (`would_deny`); the request is forwarded.
    DryRun,
}

impl Mode {
    /// The config file's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::DryRun => "dry-run",
        }
    }
}

/// One route's effective settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Route {
    /// The path pattern (`/api/user/{*rest}`); `None` for the default route.
    pub path: Option<String>,
    /// The effective policy: the preset with the route's overrides.
    pub policy: Policy,
    /// Enforce or dry-run.
    pub mode: Mode,
    /// Whether credentials are removed before forwarding.
    pub strip_credentials: bool,
}

/// `tls_cert` / `tls_key`: the TLS listener's PEM files (read when the gateway starts).
///
/// ```
/// use secure_routes_gateway::config::GatewayConfig;
/// let c = GatewayConfig::parse(
///     "upstream = \"http://u\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[[routes]]\npath = \"/a\"\n",
/// ).unwrap();
/// assert_eq!(c.tls.unwrap().cert, std::path::PathBuf::from("c.pem"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// `[stores]`: where limits and the audit trail live, as the demo's `--limits` and `--audit`
/// locations (checked when the gateway opens them).
///
/// ```
/// use secure_routes_gateway::config::GatewayConfig;
/// let c = GatewayConfig::parse(
///     "upstream = \"http://u\"\n[stores]\nlimits = \"redis://127.0.0.1\"\n[[routes]]\npath = \"/a\"\n",
/// ).unwrap();
/// assert_eq!(c.stores.limits.as_deref(), Some("redis://127.0.0.1"));
/// assert_eq!(c.stores.audit, None);
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stores {
    /// `limits` (`None`: in memory).
    pub limits: Option<String>,
    /// `audit` (`None`: the demo's default SQLite file).
    pub audit: Option<String>,
}

/// Store URLs may hold a password (`postgres://app:secret@db/app`): `Debug` shows only the
/// scheme.
impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = |s: &Option<String>| {
            s.as_deref()
                .map(|s| s.split(':').next().unwrap_or_default().to_owned() + ":...")
        };
        f.debug_struct("Stores")
            .field("limits", &scheme(&self.limits))
            .field("audit", &scheme(&self.audit))
            .finish()
    }
}

/// `[identity]`: whose credentials the gateway accepts; at most one source.
///
/// ```
/// use secure_routes_gateway::config::GatewayConfig;
/// let c = GatewayConfig::parse(
///     "upstream = \"http://u\"\n[identity]\njwt = true\n[[routes]]\npath = \"/a\"\n",
/// ).unwrap();
/// assert!(c.identity.jwt);
/// assert_eq!(c.identity.session_cookie, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// HS256 tokens signed with `SECURE_ROUTES_JWT_SECRET`.
    pub jwt: bool,
    /// A JWKS URL.
    pub jwks: Option<String>,
    /// The `iss` a JWKS token must carry.
    pub issuer: Option<String>,
    /// The `aud` a JWKS token must carry.
    pub audience: Option<String>,
    /// A Supabase project URL.
    pub supabase_url: Option<String>,
    /// The session cookie carrying a token (HS256 and JWKS sources); default `sr-session`.
    pub session_cookie: Option<String>,
}

/// A checked configuration file.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `listen` (default `127.0.0.1:8080`).
    pub listen: String,
    /// `upstream`: where requests go.
    pub upstream: String,
    /// `upstream_timeout` (default 30 s).
    pub upstream_timeout: Duration,
    /// `metrics_listen`: a second address serving only the metrics text, for a scraper on a
    /// private network (none by default: metrics are then at `/_secure-routes/metrics` behind
    /// the admin token).
    pub metrics_listen: Option<SocketAddr>,
    /// `tls_cert` and `tls_key`: PEM files (certificate chain, private key) for a TLS
    /// listener; both or neither.
    pub tls: Option<TlsFiles>,
    /// `trusted_proxies`: CIDRs (or addresses) whose forwarding headers are believed.
    pub trusted_proxies: Vec<String>,
    /// `allowed_origins`: cross-origin callers allowed by CORS and the CSRF origin check.
    pub allowed_origins: Vec<String>,
    /// `[stores]`.
    pub stores: Stores,
    /// `[identity]`.
    pub identity: Identity,
    /// `[[alerts]]`: alert rules, in the file's order (the signing secret comes from
    /// `SECURE_ROUTES_WEBHOOK_SECRET` when the gateway starts).
    pub alerts: Vec<AlertRule>,
    /// `[bans]`: the ban policy every route is checked against (`None`: `enabled = false`).
    /// On with [`BanPolicy::default`] when the file has no `[bans]`.
    pub bans: Option<BanPolicy>,
    routes: Vec<Route>,
    default: Route,
    table: RouteTable,
}

impl GatewayConfig {
    /// Parses and checks `text`, reporting every problem at once.
    pub fn parse(text: &str) -> Result<GatewayConfig, Vec<Problem>> {
        let line = |span: Range<usize>| line_of(text, span);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            vec![Problem {
                key: String::new(),
                line: e.span().and_then(line),
                message: e.message().trim().to_owned(),
            }]
        })?;
        let mut problems = Vec::new();
        let mut problem = |key: String, span: Option<Range<usize>>, message: String| {
            problems.push(Problem {
                key,
                line: span.and_then(line),
                message,
            });
        };
        if !raw.upstream.get_ref().starts_with("http://")
            && !raw.upstream.get_ref().starts_with("https://")
        {
            problem(
                "upstream".into(),
                Some(raw.upstream.span()),
                "must be an http:// or https:// URL".into(),
            );
        }
        let upstream_timeout = match &raw.upstream_timeout {
            None => Duration::from_secs(30),
            Some(t) => parse_duration(t.get_ref()).unwrap_or_else(|e| {
                problem("upstream_timeout".into(), Some(t.span()), e);
                Duration::from_secs(30)
            }),
        };
        let tls = match (&raw.tls_cert, &raw.tls_key) {
            (Some(c), Some(k)) => Some(TlsFiles {
                cert: c.get_ref().into(),
                key: k.get_ref().into(),
            }),
            (None, None) => None,
            (Some(c), None) => {
                problem(
                    "tls_key".into(),
                    Some(c.span()),
                    "tls_cert needs tls_key (both or neither)".into(),
                );
                None
            }
            (None, Some(k)) => {
                problem(
                    "tls_cert".into(),
                    Some(k.span()),
                    "tls_key needs tls_cert (both or neither)".into(),
                );
                None
            }
        };
        let metrics_listen = raw.metrics_listen.as_ref().and_then(|m| {
            let listen = raw.listen.as_ref().map_or(DEFAULT_LISTEN, |l| l.get_ref());
            let message = match m.get_ref().parse::<SocketAddr>() {
                Err(_) => format!(
                    "{:?}: expected an IP address and port, such as \"127.0.0.1:9090\"",
                    m.get_ref()
                ),
                Ok(a) if listen.parse() == Ok(a) => format!("must differ from listen ({listen})"),
                Ok(a) => return Some(a),
            };
            problem("metrics_listen".into(), Some(m.span()), message);
            None
        });
        // The library's own checks, one list at a time so each problem gets its key. The
        // secret is a placeholder: the real one comes from the environment at start.
        for (key, list) in [
            ("trusted_proxies", &raw.trusted_proxies),
            ("allowed_origins", &raw.allowed_origins),
        ] {
            let Some(list) = list else { continue };
            let builder = secure_routes::Security::builder().csrf_secret([0u8; 32]);
            let builder = if key == "trusted_proxies" {
                builder.trusted_proxies(list.get_ref())
            } else {
                builder.allowed_origins(list.get_ref())
            };
            if let Err(e) = builder.build() {
                for message in e.problems() {
                    problem(key.into(), Some(list.span()), message.clone());
                }
            }
        }
        if let Some(identity) = &raw.identity {
            let sources = [
                identity.jwt.unwrap_or(false),
                identity.jwks.is_some(),
                identity.supabase_url.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() > 1 {
                problem(
                    "identity".into(),
                    None,
                    "at most one of jwt, jwks and supabase_url".into(),
                );
            }
        }
        let mut routes = Vec::new();
        for (i, r) in raw.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let m = mode(r, &key, &mut problem);
            match route(r, &key, &mut problem) {
                Some(policy) => routes.push(Route {
                    path: Some(r.path.get_ref().clone()),
                    policy: with_mode(policy, m),
                    mode: m,
                    strip_credentials: r.strip_credentials.unwrap_or(false),
                }),
                None => routes.push(Route {
                    path: Some(r.path.get_ref().clone()),
                    policy: Policy::public(),
                    mode: Mode::Enforce,
                    strip_credentials: false,
                }),
            }
        }
        // A route that authenticates needs someone to ask: `serve` would refuse to start, so
        // `check` says so first.
        let has_identity = raw.identity.as_ref().is_some_and(|i| {
            i.jwt.unwrap_or(false) || i.jwks.is_some() || i.supabase_url.is_some()
        });
        if !has_identity {
            for (i, (r, built)) in raw.routes.iter().zip(&routes).enumerate() {
                if built.policy.auth() != secure_routes::AuthMode::Off {
                    problem(
                        format!("routes[{i}]"),
                        Some(r.path.span()),
                        "authenticates callers, but [identity] names no source (jwt, jwks or supabase_url)".into(),
                    );
                }
            }
        }
        let default = match &raw.default {
            Some(d) => {
                if !d.path.get_ref().is_empty() {
                    problem(
                        "default.path".into(),
                        Some(d.path.span()),
                        "[default] has no path: it is every path no route matches".into(),
                    );
                }
                let m = mode(d, "default", &mut problem);
                let policy = route(d, "default", &mut problem).unwrap_or_else(Policy::public);
                Route {
                    path: None,
                    policy: with_mode(policy, m),
                    mode: m,
                    strip_credentials: d.strip_credentials.unwrap_or(false),
                }
            }
            None => Route {
                path: None,
                policy: Policy::public(),
                mode: Mode::Enforce,
                strip_credentials: false,
            },
        };
        if !has_identity && default.policy.auth() != secure_routes::AuthMode::Off {
            problem(
                "default".into(),
                None,
                "authenticates callers, but [identity] names no source (jwt, jwks or supabase_url)"
                    .into(),
            );
        }
        if raw.routes.is_empty() {
            problem(
                "routes".into(),
                None,
                "at least one [[routes]] is required".into(),
            );
        }
        let alerts = alerts(&raw.alerts, &mut problem);
        let bans = match &raw.bans {
            None => Some(BanPolicy::default()),
            Some(b) => bans(b, &mut problem),
        };
        let table = RouteTable::new(raw.routes.iter().map(|r| r.path.get_ref().as_str()));
        let table = match table {
            Ok(t) => Some(t),
            Err(errors) => {
                for e in errors {
                    let span = raw.routes.get(e.route).map(|r| r.path.span());
                    problem(format!("routes[{}].path", e.route), span, e.message);
                }
                None
            }
        };
        for (i, r) in raw.routes.iter().enumerate() {
            if r.path.get_ref().starts_with("/_secure-routes/")
                || r.path.get_ref() == "/_secure-routes"
            {
                problem(
                    format!("routes[{i}].path"),
                    Some(r.path.span()),
                    "/_secure-routes/ is reserved for the gateway's own endpoints".into(),
                );
            }
        }
        match table {
            Some(table) if problems.is_empty() => Ok(GatewayConfig {
                listen: raw
                    .listen
                    .map_or_else(|| DEFAULT_LISTEN.to_owned(), Spanned::into_inner),
                upstream: raw.upstream.into_inner(),
                upstream_timeout,
                metrics_listen,
                tls,
                trusted_proxies: raw
                    .trusted_proxies
                    .map(Spanned::into_inner)
                    .unwrap_or_default(),
                allowed_origins: raw
                    .allowed_origins
                    .map(Spanned::into_inner)
                    .unwrap_or_default(),
                stores: raw
                    .stores
                    .map(|s| Stores {
                        limits: s.limits,
                        audit: s.audit,
                    })
                    .unwrap_or_default(),
                identity: raw
                    .identity
                    .map(|i| Identity {
                        jwt: i.jwt.unwrap_or(false),
                        jwks: i.jwks,
                        issuer: i.issuer,
                        audience: i.audience,
                        supabase_url: i.supabase_url,
                        session_cookie: i.session_cookie,
                    })
                    .unwrap_or_default(),
                alerts,
                bans,
                routes,
                default,
                table,
            }),
            _ => Err(problems),
        }
    }

    /// The routes in the file's order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for every path no route matches (`[default]`, PUBLIC when absent).
    pub fn default_route(&self) -> &Route {
        &self.default
    }

    /// The route table over [`routes`](Self::routes) (indexes into it).
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// Each route's effective policy as one line per route (what `secure-routes routes`
    /// prints), the default last, then the effective `[bans]` (defaults filled in).
    ///
    /// ```
    /// use secure_routes_gateway::config::GatewayConfig;
    /// let c = GatewayConfig::parse(
    ///     "upstream = \"http://u\"\n[identity]\njwt = true\n[[routes]]\npath = \"/a\"\npreset = \"authenticated\"\n",
    /// ).unwrap();
    /// let text = c.describe();
    /// assert!(text.contains("/a"));
    /// assert!(text.contains("auth=required"));
    /// ```
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for r in self.routes.iter().chain(std::iter::once(&self.default)) {
            let d = describe(r);
            out.push_str(&format!(
                "{:<32} methods={} auth={} limit={} key={} body={} csrf={} fail={} mode={} bans={}\n",
                r.path.as_deref().unwrap_or("(default)"),
                d.methods,
                d.auth,
                d.limit,
                d.key.join("+"),
                d.body,
                d.csrf,
                d.fail,
                d.mode,
                self.ban_rule()
            ));
        }
        // The whole `[bans]` section as it is enforced (defaults filled in).
        match &self.bans {
            None => out.push_str("[bans] off\n"),
            Some(p) => out.push_str(&format!(
                "[bans] threshold={} window={} first={} max={} history={} allow={} weights={}\n",
                p.threshold(),
                secs(p.window()),
                secs(p.first_ban()),
                secs(p.max_ban()),
                secs(p.history()),
                if p.allow_list().is_empty() {
                    "none".to_owned()
                } else {
                    p.allow_list()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                Violation::ALL
                    .map(|v| format!("{v}:{}", p.weight(v)))
                    .join(","),
            )),
        }
        if !self.alerts.is_empty() {
            out.push_str("\nalerts:\n");
            for a in &self.alerts {
                out.push_str(&format!("  {}\n", describe_alert(a)));
            }
        }
        out
    }

    /// The ban rule every route is checked against, as `routes` prints it beside each route:
    /// `off`, or `THRESHOLD/WINDOW,FIRST..MAX` (`50/600s,900s..86400s`: 50 points within
    /// 600 s ban for 900 s, doubling on each repeat up to 86400 s).
    ///
    /// ```
    /// use secure_routes_gateway::config::GatewayConfig;
    /// let c = GatewayConfig::parse("upstream = \"http://u\"\n[[routes]]\npath = \"/a\"\n").unwrap();
    /// assert_eq!(c.ban_rule(), "50/600s,900s..86400s");
    /// let c = GatewayConfig::parse("upstream = \"http://u\"\n[bans]\nenabled = false\n[[routes]]\npath = \"/a\"\n").unwrap();
    /// assert_eq!(c.ban_rule(), "off");
    /// ```
    pub fn ban_rule(&self) -> String {
        match &self.bans {
            None => "off".to_owned(),
            Some(p) => format!(
                "{}/{},{}..{}",
                p.threshold(),
                secs(p.window()),
                secs(p.first_ban()),
                secs(p.max_ban())
            ),
        }
    }

    /// The `[bans]` policy as JSON (what `routes --json` gives each route): `"off"`, or an
    /// object with `threshold`, `window`, `first`, `max`, `history` (`"600s"`), `allow` (CIDRs)
    /// and `weights` (points per violation).
    ///
    /// ```
    /// use secure_routes_gateway::config::GatewayConfig;
    /// let c = GatewayConfig::parse("upstream = \"http://u\"\n[bans]\nthreshold = 3\n[[routes]]\npath = \"/a\"\n").unwrap();
    /// let b = c.bans_json();
    /// assert_eq!(b["threshold"], 3);
    /// assert_eq!(b["window"], "600s");
    /// assert_eq!(b["weights"]["csrf"], 2);
    /// ```
    pub fn bans_json(&self) -> serde_json::Value {
        match &self.bans {
            None => serde_json::Value::from("off"),
            Some(p) => serde_json::json!({
                "threshold": p.threshold(),
                "window": secs(p.window()),
                "first": secs(p.first_ban()),
                "max": secs(p.max_ban()),
                "history": secs(p.history()),
                "allow": p.allow_list().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "weights": Violation::ALL
                    .iter()
                    .map(|v| (v.as_str().to_owned(), serde_json::Value::from(p.weight(*v))))
                    .collect::<serde_json::Map<_, _>>(),
            }),
        }
    }

    /// [`describe`](Self::describe) as JSON: an array of objects with `path` (null for the
    /// default), `methods`, `auth`, `rate_limit`, `rate_limit_key` (an array of part names),
    /// `max_body`, `csrf`, `failure_mode`, `mode`, `bans` (the ban rule the route is checked
    /// against: [`bans_json`](Self::bans_json)).
    ///
    /// ```
    /// use secure_routes_gateway::config::GatewayConfig;
    /// let c = GatewayConfig::parse("upstream = \"http://u\"\n[[routes]]\npath = \"/a\"\n").unwrap();
    /// let v = c.describe_json();
    /// assert_eq!(v[0]["path"], "/a");
    /// assert!(v[1]["path"].is_null());
    /// ```
    pub fn describe_json(&self) -> serde_json::Value {
        let bans = self.bans_json();
        serde_json::Value::Array(
            self.routes
                .iter()
                .chain(std::iter::once(&self.default))
                .map(|r| {
                    let d = describe(r);
                    serde_json::json!({
                        "path": r.path,
                        "methods": d.methods,
                        "auth": d.auth,
                        "rate_limit": d.limit,
                        "rate_limit_key": d.key,
                        "max_body": d.body,
                        "csrf": d.csrf,
                        "failure_mode": d.fail,
                        "mode": d.mode,
                        "bans": bans,
                    })
                })
                .collect(),
        )
    }
}

/// One alert rule as `routes` prints it. The webhook shows only its scheme, host and port:
/// a webhook URL often holds its secret in the path (Slack's do), and `routes` output gets
/// pasted into tickets.
///
/// ```
/// use secure_routes_gateway::config::{GatewayConfig, describe_alert};
/// let c = GatewayConfig::parse("upstream = \"http://u\"\n[[routes]]\npath = \"/a\"\n\
///     [[alerts]]\nname = \"auth\"\naction = \"unauthorized_access\"\ncount = 5\nwithin = \"1m\"\n\
///     per = \"ip\"\nwebhook = \"https://hooks.example.com:8443/services/T0/B0/SECRET\"\n").unwrap();
/// assert_eq!(
///     describe_alert(&c.alerts[0]),
///     "auth action=unauthorized_access outcome=any count=5 within=60s per=ip cooldown=600s webhook=https://hooks.example.com:8443"
/// );
/// ```
pub fn describe_alert(a: &AlertRule) -> String {
    let w = a.webhook();
    let port = w.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{} action={} outcome={} count={} within={}s per={} cooldown={}s webhook={}://{}{port}",
        a.name(),
        a.action(),
        a.outcome().map_or("any", |o| o.as_str()),
        a.count(),
        a.within().as_secs(),
        a.per(),
        a.cooldown().as_secs(),
        w.scheme_str().unwrap_or("?"),
        w.host().unwrap_or("?"),
    )
}

struct Described {
    methods: String,
    auth: &'static str,
    limit: String,
    key: Vec<&'static str>,
    body: String,
    csrf: &'static str,
    fail: &'static str,
    mode: &'static str,
}

fn describe(r: &Route) -> Described {
    let p = &r.policy;
    Described {
        methods: p.methods().map_or_else(
            || "any".to_owned(),
            |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
        ),
        auth: match p.auth() {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        },
        limit: p.rate_limit().map_or_else(
            || "none".to_owned(),
            |q| format!("{}/{}s", q.limit(), q.window().as_secs()),
        ),
        key: p.rate_limit_key().iter().map(KeyPart::as_str).collect(),
        body: p
            .max_body_bytes()
            .map_or_else(|| "unlimited".to_owned(), |b| b.to_string()),
        csrf: match p.csrf() {
            CsrfMode::Off => "off",
            CsrfMode::Auto => "auto",
            CsrfMode::Always => "always",
        },
        fail: match p.failure_mode() {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        },
        mode: r.mode.as_str(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    upstream: Spanned<String>,
    trusted_proxies: Option<Spanned<Vec<String>>>,
    allowed_origins: Option<Spanned<Vec<String>>>,
    upstream_timeout: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    stores: Option<RawStores>,
    identity: Option<RawIdentity>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    default: Option<RawRoute>,
    #[serde(default)]
    alerts: Vec<RawAlert>,
    bans: Option<RawBans>,
}

/// `[bans]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBans {
    enabled: Option<bool>,
    threshold: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    first: Option<Spanned<String>>,
    max: Option<Spanned<String>>,
    history: Option<Spanned<String>>,
    allow: Option<Spanned<Vec<String>>>,
    weights: Option<Spanned<std::collections::BTreeMap<String, Spanned<i64>>>>,
}

/// A file of `[[alerts]]` only ([`parse_alerts`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertsFile {
    #[serde(default)]
    alerts: Vec<RawAlert>,
}

/// An `[[alerts]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    name: Spanned<String>,
    action: Spanned<String>,
    outcome: Option<Spanned<String>>,
    count: Spanned<i64>,
    within: Spanned<String>,
    per: Spanned<String>,
    webhook: Spanned<String>,
    cooldown: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStores {
    limits: Option<String>,
    audit: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    jwt: Option<bool>,
    jwks: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    supabase_url: Option<String>,
    session_cookie: Option<String>,
}

/// A `[[routes]]` entry, or `[default]` (whose `path` is absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default = "root_path")]
    path: Spanned<String>,
    preset: Option<Spanned<String>>,
    methods: Option<Spanned<Vec<String>>>,
    auth: Option<Spanned<String>>,
    csrf: Option<Spanned<String>>,
    rate_limit: Option<Spanned<String>>,
    rate_limit_key: Option<Spanned<Vec<String>>>,
    max_body: Option<Spanned<String>>,
    failure_mode: Option<Spanned<String>>,
    require_role: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    strip_credentials: Option<bool>,
}

fn root_path() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

/// `policy` enforced or in dry-run as `mode` says.
fn with_mode(policy: Policy, mode: Mode) -> Policy {
    if mode == Mode::DryRun {
        // Dry-run changes nothing `build` checks, so this cannot fail; if it ever did, the
        // policy would stay enforced (the safe side).
        policy.to_builder().dry_run(true).build().unwrap_or(policy)
    } else {
        policy
    }
}

type Report<'a> = dyn FnMut(String, Option<Range<usize>>, String) + 'a;

fn mode(r: &RawRoute, key: &str, problem: &mut Report<'_>) -> Mode {
    match r.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("enforce", _)) => Mode::Enforce,
        Some(("dry-run", _)) => Mode::DryRun,
        Some((other, span)) => {
            problem(
                format!("{key}.mode"),
                Some(span),
                format!("{other:?}: expected enforce or dry-run"),
            );
            Mode::Enforce
        }
    }
}

/// The effective policy of one route: its preset, then its overrides. `None` after a problem.
fn route(r: &RawRoute, key: &str, problem: &mut Report<'_>) -> Option<Policy> {
    let mut failed = false;
    let mut fail = |field: &str, span: Range<usize>, message: String| {
        failed = true;
        problem(format!("{key}.{field}"), Some(span), message);
    };
    let preset = match r.preset.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("public", _)) => Policy::public(),
        Some(("authenticated", _)) => Policy::authenticated(),
        Some(("strict", _)) => Policy::strict(),
        Some((other, span)) => {
            fail(
                "preset",
                span,
                format!("{other:?}: expected public, authenticated or strict"),
            );
            Policy::public()
        }
    };
    let name = policy_name(r.path.get_ref());
    let mut b = preset.to_builder().name(name);
    if let Some(m) = &r.methods {
        let mut methods = Vec::new();
        for s in m.get_ref() {
            match Method::from_bytes(s.as_bytes()) {
                Ok(method) if s.bytes().all(|c| c.is_ascii_uppercase()) => methods.push(method),
                _ => fail(
                    "methods",
                    m.span(),
                    format!("{s:?} is not an upper-case HTTP method"),
                ),
            }
        }
        b = b.methods(methods);
    }
    if let Some(a) = &r.auth {
        match a.get_ref().as_str() {
            "off" => b = b.auth(AuthMode::Off),
            "optional" => b = b.auth(AuthMode::Optional),
            "required" => b = b.auth(AuthMode::Required),
            other => fail(
                "auth",
                a.span(),
                format!("{other:?}: expected off, optional or required"),
            ),
        }
    }
    if let Some(c) = &r.csrf {
        match c.get_ref().as_str() {
            "off" => b = b.csrf(CsrfMode::Off),
            "auto" => b = b.csrf(CsrfMode::Auto),
            "always" => b = b.csrf(CsrfMode::Always),
            other => fail(
                "csrf",
                c.span(),
                format!("{other:?}: expected off, auto or always"),
            ),
        }
    }
    if let Some(q) = &r.rate_limit {
        match parse_rate(q.get_ref()) {
            Ok(quota) => b = b.rate_limit(quota),
            Err(e) => fail("rate_limit", q.span(), e),
        }
    }
    if let Some(k) = &r.rate_limit_key {
        let mut parts = Vec::new();
        for name in k.get_ref() {
            match KeyPart::parse(name) {
                Some(part) => parts.push(part),
                None => fail(
                    "rate_limit_key",
                    k.span(),
                    format!("{name:?}: expected ip, subject or fingerprint"),
                ),
            }
        }
        // An empty list or a lone fingerprint is refused by the policy's own validation.
        b = b.rate_limit_key(parts);
    }
    if let Some(size) = &r.max_body {
        match parse_size(size.get_ref()) {
            Ok(bytes) => b = b.max_body_bytes(bytes),
            Err(e) => fail("max_body", size.span(), e),
        }
    }
    if let Some(f) = &r.failure_mode {
        match f.get_ref().as_str() {
            "open" => b = b.failure_mode(FailureMode::Open),
            "closed" => b = b.failure_mode(FailureMode::Closed),
            other => fail(
                "failure_mode",
                f.span(),
                format!("{other:?}: expected open or closed"),
            ),
        }
    }
    if let Some(role) = &r.require_role {
        b = b.require_role(role.get_ref().clone());
    }
    let built = b.build();
    if failed {
        return None;
    }
    match built {
        Ok(p) => Some(p),
        Err(e) => {
            // `[default]` has no path to point at.
            let span = (!r.path.get_ref().is_empty()).then(|| r.path.span());
            for message in e.problems() {
                problem(key.to_owned(), span.clone(), message.clone());
            }
            None
        }
    }
}

/// Every `[[alerts]]` rule that checks out; the others' problems go to `problem`.
fn alerts(raw: &[RawAlert], problem: &mut Report<'_>) -> Vec<AlertRule> {
    let mut alerts = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = format!("alerts[{i}]");
        if raw[..i]
            .iter()
            .any(|b| b.name.get_ref() == a.name.get_ref())
        {
            problem(
                format!("{key}.name"),
                Some(a.name.span()),
                format!("{:?} names an earlier rule too", a.name.get_ref()),
            );
        }
        if let Some(rule) = alert(a, &key, problem) {
            alerts.push(rule);
        }
    }
    alerts
}

/// Parses a file holding only `[[alerts]]` tables, written as in the gateway's config
/// (`secure-routes demo --alerts FILE`): the same checks and the same problems, each with its
/// key and line. A file without `[[alerts]]` has no rules.
///
/// ```
/// use secure_routes_gateway::config::parse_alerts;
/// let rules = parse_alerts(r#"
/// [[alerts]]
/// name = "auth-failures"
/// action = "unauthorized_access"
/// count = 5
/// within = "1m"
/// per = "ip"
/// webhook = "http://127.0.0.1:9000/hook"
/// "#).unwrap();
/// assert_eq!(rules[0].count(), 5);
/// let problems = parse_alerts("[[alerts]]\nname = \"a\"\naction = \"x\"\ncount = 1\nwithin = \"1m\"\nper = \"ip\"\nwebhook = \"http://h/\"\n").unwrap_err();
/// assert_eq!((problems[0].key.as_str(), problems[0].line), ("alerts[0].action", Some(3)));
/// assert!(parse_alerts("upstream = \"http://u\"\n").is_err());
/// ```
pub fn parse_alerts(text: &str) -> Result<Vec<AlertRule>, Vec<Problem>> {
    let raw: RawAlertsFile = toml::from_str(text).map_err(|e| {
        vec![Problem {
            key: String::new(),
            line: e.span().and_then(|s| line_of(text, s)),
            message: e.message().trim().to_owned(),
        }]
    })?;
    let mut problems = Vec::new();
    let rules = alerts(&raw.alerts, &mut |key, span, message| {
        problems.push(Problem {
            key,
            line: span.and_then(|s| line_of(text, s)),
            message,
        });
    });
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

/// The 1-based line of `text` a byte offset is on.
fn line_of(text: &str, span: Range<usize>) -> Option<usize> {
    let start = span.start.min(text.len());
    Some(
        text.as_bytes()[..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
    )
}

/// One `[[alerts]]` rule, every problem under its key. `None` after a problem.
fn alert(a: &RawAlert, key: &str, problem: &mut Report<'_>) -> Option<AlertRule> {
    // Fields already reported here, so the builder's own "required" for them is not repeated.
    let mut failed: Vec<&'static str> = Vec::new();
    let mut fail = |field: &'static str, span: Range<usize>, message: String| {
        failed.push(field);
        problem(format!("{key}.{field}"), Some(span), message);
    };
    let mut b = AlertRule::builder(a.name.get_ref().clone());
    match AuditAction::parse(a.action.get_ref()) {
        Some(action) => b = b.action(action),
        None => fail(
            "action",
            a.action.span(),
            format!(
                "{:?}: expected an audit action ({})",
                a.action.get_ref(),
                AuditAction::ALL
                    .iter()
                    .filter(|a| **a != AuditAction::AlertTriggered)
                    .map(AuditAction::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
    if let Some(o) = &a.outcome {
        match Outcome::ALL.iter().find(|x| x.as_str() == o.get_ref()) {
            Some(outcome) => b = b.outcome(*outcome),
            None => fail(
                "outcome",
                o.span(),
                format!(
                    "{:?}: expected denied, allowed, error or would_deny",
                    o.get_ref()
                ),
            ),
        }
    }
    match u32::try_from(*a.count.get_ref()) {
        Ok(n) if (1..=MAX_COUNT).contains(&n) => b = b.count(n),
        _ => fail(
            "count",
            a.count.span(),
            format!(
                "{}: expected a whole number from 1 to {MAX_COUNT}",
                a.count.get_ref()
            ),
        ),
    }
    match parse_duration(a.within.get_ref()) {
        Ok(d) => b = b.within(d),
        Err(e) => fail("within", a.within.span(), e),
    }
    match Per::parse(a.per.get_ref()) {
        Some(per) => b = b.per(per),
        None => fail(
            "per",
            a.per.span(),
            format!("{:?}: expected ip, subject or route", a.per.get_ref()),
        ),
    }
    b = b.webhook(a.webhook.get_ref().clone());
    if let Some(c) = &a.cooldown {
        match parse_duration(c.get_ref()) {
            Ok(d) => b = b.cooldown(d),
            Err(e) => fail("cooldown", c.span(), e),
        }
    }
    match b.build() {
        Ok(rule) if failed.is_empty() => Some(rule),
        Ok(_) => None,
        Err(e) => {
            // The library starts each problem with its field's name.
            for message in e.problems() {
                let (field, text) = message.split_once(": ").unwrap_or(("", message));
                if failed.contains(&field) {
                    continue;
                }
                let span = match field {
                    "name" => a.name.span(),
                    "action" => a.action.span(),
                    "count" => a.count.span(),
                    "within" => a.within.span(),
                    "webhook" => a.webhook.span(),
                    "cooldown" => a.cooldown.as_ref().map_or(a.name.span(), Spanned::span),
                    _ => a.name.span(),
                };
                let key = if field.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{field}")
                };
                problem(key, Some(span), text.to_owned());
            }
            None
        }
    }
}

/// `[bans]` as a policy, every problem under its key (`bans.window`, `bans.weights.csrf`).
/// `None` when `enabled = false` or after a problem.
fn bans(b: &RawBans, problem: &mut Report<'_>) -> Option<BanPolicy> {
    let mut found: Vec<(String, Option<Range<usize>>, String)> = Vec::new();
    let mut fail = |field: String, span: Range<usize>, message: String| {
        found.push((field, Some(span), message));
    };
    let mut builder = BanPolicy::builder();
    if let Some(t) = &b.threshold {
        match u32::try_from(*t.get_ref()) {
            Ok(n) => builder = builder.threshold(n),
            Err(_) => fail(
                "threshold".into(),
                t.span(),
                format!(
                    "{}: expected a whole number from 1 to {MAX_THRESHOLD}",
                    t.get_ref()
                ),
            ),
        }
    }
    type Set = fn(
        secure_routes::bans::BanPolicyBuilder,
        Duration,
    ) -> secure_routes::bans::BanPolicyBuilder;
    let durations: [(&str, &Option<Spanned<String>>, Set); 4] = [
        ("window", &b.window, |b, d| b.window(d)),
        ("first", &b.first, |b, d| b.first_ban(d)),
        ("max", &b.max, |b, d| b.max_ban(d)),
        ("history", &b.history, |b, d| b.history(d)),
    ];
    for (field, value, set) in durations {
        let Some(v) = value else { continue };
        match parse_duration(v.get_ref()) {
            Ok(d) => builder = set(builder, d),
            Err(e) => fail(field.into(), v.span(), e),
        }
    }
    if let Some(allow) = &b.allow {
        for cidr in allow.get_ref() {
            builder = builder.allow(cidr);
        }
    }
    if let Some(weights) = &b.weights {
        for (name, points) in weights.get_ref() {
            let Some(v) = Violation::parse(name) else {
                fail(
                    format!("weights.{name}"),
                    points.span(),
                    format!(
                        "unknown violation {name:?}: expected {}",
                        Violation::ALL.map(Violation::as_str).join(", ")
                    ),
                );
                continue;
            };
            match u32::try_from(*points.get_ref()) {
                Ok(n) => builder = builder.weight(v, n),
                Err(_) => fail(
                    format!("weights.{name}"),
                    points.span(),
                    format!(
                        "{}: expected a whole number from 0 to {MAX_THRESHOLD}",
                        points.get_ref()
                    ),
                ),
            }
        }
    }
    let built = builder.build();
    if let Err(e) = &built {
        // The library names the value in each message; each goes under that value's key
        // (the section's when none matches, so no problem is dropped).
        for message in e.problems() {
            let text = message.strip_prefix("bans: ").unwrap_or(message);
            let (field, span) = ban_problem_key(b, text);
            found.push((field, span, text.to_owned()));
        }
    }
    let ok = found.is_empty();
    for (field, span, message) in found {
        let key = if field.is_empty() {
            "bans".to_owned()
        } else {
            format!("bans.{field}")
        };
        problem(key, span, message);
    }
    let policy = built.ok().filter(|_| ok)?;
    b.enabled.unwrap_or(true).then_some(policy)
}

/// The `[bans]` key a library problem is about, and its span.
fn ban_problem_key(b: &RawBans, text: &str) -> (String, Option<Range<usize>>) {
    let dur = |v: &Option<Spanned<String>>| v.as_ref().map(Spanned::span);
    // A pair out of order goes under the value the file wrote: a `first` above the default
    // `max` is the `first` line's problem.
    let pair =
        |field: &str, value: &Option<Spanned<String>>, other: &str, o: &Option<Spanned<String>>| {
            if value.is_none() && o.is_some() {
                (other.to_owned(), dur(o))
            } else {
                (field.to_owned(), dur(value))
            }
        };
    if text.starts_with("threshold") {
        ("threshold".into(), b.threshold.as_ref().map(Spanned::span))
    } else if text.starts_with("window") {
        ("window".into(), dur(&b.window))
    } else if text.starts_with("the first ban") {
        ("first".into(), dur(&b.first))
    } else if text.starts_with("the longest ban") {
        pair("max", &b.max, "first", &b.first)
    } else if text.starts_with("history") {
        pair("history", &b.history, "window", &b.window)
    } else if text.starts_with("allow-list") {
        ("allow".into(), b.allow.as_ref().map(Spanned::span))
    } else if let Some(v) = Violation::ALL
        .into_iter()
        .find(|v| text.starts_with(&format!("weight of {v} ")))
    {
        let s = b
            .weights
            .as_ref()
            .and_then(|w| w.get_ref().get(v.as_str()))
            .map(Spanned::span);
        (format!("weights.{v}"), s)
    } else {
        (String::new(), None)
    }
}

/// A duration as `routes` prints it: whole seconds (`600s`), or milliseconds when not whole.
fn secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A policy name for a route pattern (names are what the `RateLimit-Policy` header shows:
/// letters, digits, `-`, `_`, `.`): `/api/user/{*rest}` is `api_user_rest`; `default` for
/// `[default]`, `root` for `/`.
fn policy_name(path: &str) -> String {
    if path.is_empty() {
        return "default".to_owned();
    }
    let mut name = String::new();
    for c in path.trim_start_matches('/').chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
            name.push(c);
        } else if !name.ends_with('_') && !matches!(c, '{' | '}' | '*') {
            name.push('_');
        }
    }
    let name = name.trim_matches('_');
    match name {
        "" => "root".to_owned(),
        n => n.chars().take(64).collect(),
    }
}

/// `N/second`, `N/minute`, `N/hour` or `N/day`, N at least 1.
///
/// ```
/// use secure_routes_gateway::config::parse_rate;
/// assert_eq!(parse_rate("5/hour").unwrap().limit(), 5);
/// assert!(parse_rate("0/hour").is_err());
/// assert!(parse_rate("5 per hour").is_err());
/// ```
pub fn parse_rate(s: &str) -> Result<Quota, String> {
    let bad = || format!("{s:?}: expected N/second, N/minute, N/hour or N/day (N at least 1)");
    let (n, unit) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(match unit.trim() {
        "second" => Quota::per_second(n),
        "minute" => Quota::per_minute(n),
        "hour" => Quota::per_hour(n),
        "day" => Quota::per_day(n),
        _ => return Err(bad()),
    })
}

/// A size: bytes, or with `KiB`, `MiB` or `GiB` (`100KiB`).
///
/// ```
/// use secure_routes_gateway::config::parse_size;
/// assert_eq!(parse_size("100KiB").unwrap(), 102_400);
/// assert_eq!(parse_size("512").unwrap(), 512);
/// assert!(parse_size("1MB").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?}: expected a number of bytes, or N KiB, MiB or GiB");
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let factor = match t[digits..].trim() {
        "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// A positive duration: an integer and a unit (`ms`, `s`, `m`, `h`, `d`); a bare number
/// means seconds. The CLI's flags (`secure_routes_cli::duration`) parse with it too.
///
/// ```
/// use std::time::Duration;
/// use secure_routes_gateway::config::parse_duration;
/// assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert!(parse_duration("0s").is_err());
/// assert!(parse_duration("1y").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30s, 10m, 1h, 2d"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    n.checked_mul(millis_per_unit)
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {s:?} must be positive and reasonable"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::GatewayConfig;

    #[test]
    fn debug_never_shows_a_store_password() {
        let text = "upstream = \"http://x\"\n[stores]\nlimits = \"postgres://app:s3cret@db/app\"\n[identity]\njwt = true\n[[routes]]\npath = \"/a\"\n";
        let c = super::GatewayConfig::parse(text).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres:..."), "{shown}");
    }

    #[test]
    fn a_route_that_authenticates_needs_an_identity_source() {
        let text = "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\npreset = \"authenticated\"\n[[routes]]\npath = \"/b\"\n[default]\nauth = \"optional\"\n";
        let problems = super::GatewayConfig::parse(text).unwrap_err();
        let keys: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [("routes[0]", Some(3)), ("default", None)],
            "{problems:?}"
        );
        let fixed = format!("{text}[identity]\njwt = true\n");
        assert!(super::GatewayConfig::parse(&fixed).is_ok());
    }

    use super::*;

    const FULL: &str = r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:3000"
trusted_proxies = ["10.0.0.0/8"]
allowed_origins = ["https://app.example.com"]
upstream_timeout = "30s"
metrics_listen = "127.0.0.1:9090"

[stores]
limits = "memory"
audit = "sqlite:./secure-routes.db"

[identity]
jwt = true
issuer = "https://issuer.example/"
audience = "api"
session_cookie = "sr-session"

[[routes]]
path = "/api/public-data"
preset = "public"

[[routes]]
path = "/api/user/{*rest}"
preset = "authenticated"

[[routes]]
path = "/api/sensitive-operation"
methods = ["POST"]
auth = "required"
csrf = "auto"
rate_limit = "5/hour"
max_body = "100KiB"
failure_mode = "closed"
require_role = "admin"
mode = "enforce"

[default]
preset = "public"
"#;

    #[test]
    fn the_contracts_example_parses_into_effective_policies() {
        let c = GatewayConfig::parse(FULL).unwrap();
        assert_eq!(c.routes().len(), 3);
        let s = &c.routes()[2].policy;
        assert_eq!(s.methods(), Some(&[Method::POST][..]));
        assert_eq!(s.auth(), AuthMode::Required);
        assert_eq!(s.csrf(), CsrfMode::Auto);
        assert_eq!(s.rate_limit(), Some(Quota::per_hour(5)));
        assert_eq!(s.max_body_bytes(), Some(100 * 1024));
        assert_eq!(s.failure_mode(), FailureMode::Closed);
        assert_eq!(s.requirements().len(), 1);
        assert_eq!(c.routes()[1].policy.auth(), AuthMode::Required);
        assert_eq!(c.table().find("/api/user/notes"), Some(1));
        assert_eq!(c.upstream_timeout, Duration::from_secs(30));
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
        );
        let json = c.describe_json();
        assert_eq!(json[2]["rate_limit"], "5/3600s");
        assert_eq!(json[2]["max_body"], "102400");
        assert_eq!(json[3]["path"], serde_json::Value::Null);
        assert_eq!(c.routes()[1].policy.name(), "api_user_rest");
        assert_eq!(c.default_route().policy.name(), "default");
    }

    #[test]
    fn every_problem_is_reported_with_its_key_and_line() {
        let text = "upstream = \"ftp://x\"\n\
                    [[routes]]\n\
                    path = \"/a\"\n\
                    preset = \"lax\"\n\
                    rate_limit = \"0/hour\"\n\
                    [[routes]]\n\
                    path = \"/a\"\n\
                    auth = \"maybe\"\n\
                    max_body = \"1MB\"\n\
                    [[routes]]\n\
                    path = \"/_secure-routes/metrics\"\n";
        let problems = GatewayConfig::parse(text).unwrap_err();
        let got: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        for want in [
            ("upstream".to_owned(), Some(1)),
            ("routes[0].preset".to_owned(), Some(4)),
            ("routes[0].rate_limit".to_owned(), Some(5)),
            ("routes[1].auth".to_owned(), Some(8)),
            ("routes[1].max_body".to_owned(), Some(9)),
            ("routes[1].path".to_owned(), Some(7)),
            ("routes[2].path".to_owned(), Some(11)),
        ] {
            assert!(got.contains(&want), "{want:?} missing from {problems:#?}");
        }
    }

    #[test]
    fn rate_limit_key_is_parsed_validated_and_described() {
        let c = GatewayConfig::parse(
            "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\nrate_limit_key = [\"fingerprint\", \"ip\"]\n",
        )
        .unwrap();
        let p = &c.routes()[0].policy;
        assert_eq!(p.rate_limit_key(), [KeyPart::Ip, KeyPart::Fingerprint]);
        assert!(
            c.describe().contains("key=ip+fingerprint"),
            "{}",
            c.describe()
        );
        let json = c.describe_json();
        assert_eq!(
            json[0]["rate_limit_key"],
            serde_json::json!(["ip", "fingerprint"])
        );
        // The default keeps the key every route had before.
        assert_eq!(json[1]["rate_limit_key"], serde_json::json!(["subject"]));

        for (list, key) in [
            ("[\"ip\", \"mac\"]", "routes[0].rate_limit_key"),
            ("[\"fingerprint\"]", "routes[0]"),
            ("[]", "routes[0]"),
        ] {
            let text = format!(
                "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\nrate_limit_key = {list}\n"
            );
            let problems = GatewayConfig::parse(&text).unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.key == key && p.to_string().contains("key")),
                "{list}: {problems:#?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        for (text, line) in [
            (
                "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\nrate_limt = \"1/day\"\n",
                4,
            ),
            (
                "upstream = \"http://x\"\nupstraem = \"http://y\"\n[[routes]]\npath = \"/a\"\n",
                2,
            ),
            (
                "upstream = \"http://x\"\n[stores]\nlimit = \"memory\"\n[[routes]]\npath = \"/a\"\n",
                3,
            ),
        ] {
            let problems = GatewayConfig::parse(text).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].line, Some(line), "{problems:?}");
            assert!(
                problems[0].message.contains("unknown field"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn bad_proxies_and_origins_are_reported_under_their_keys() {
        let p = GatewayConfig::parse(
            "upstream = \"http://x\"\ntrusted_proxies = [\"10.0.0.0/33\"]\n\
             allowed_origins = [\"*\"]\n[[routes]]\npath = \"/a\"\n",
        )
        .unwrap_err();
        let keys: Vec<(&str, Option<usize>)> = p.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            [("trusted_proxies", Some(2)), ("allowed_origins", Some(3))],
            "{p:?}"
        );
    }

    #[test]
    fn metrics_listen_is_optional_and_must_be_another_socket_address() {
        let routes = "[[routes]]\npath = \"/a\"\n";
        let c = GatewayConfig::parse(&format!("upstream = \"http://x\"\n{routes}")).unwrap();
        assert_eq!(c.metrics_listen, None);
        let c = GatewayConfig::parse(&format!(
            "upstream = \"http://x\"\nmetrics_listen = \"[::1]:9090\"\n{routes}"
        ))
        .unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:9090".parse().unwrap()));
        let same = GatewayConfig::parse(&format!(
            "upstream = \"http://x\"\nmetrics_listen = \"127.0.0.1:8080\"\n{routes}"
        ))
        .unwrap_err();
        assert_eq!(
            same[0].key, "metrics_listen",
            "the default listen: {same:?}"
        );
        for bad in ["localhost:9090", "127.0.0.1", ":9090", "127.0.0.1:8081"] {
            let p = GatewayConfig::parse(&format!(
                "upstream = \"http://x\"\nlisten = \"127.0.0.1:8081\"\nmetrics_listen = \"{bad}\"\n{routes}"
            ))
            .unwrap_err();
            let keys: Vec<(&str, Option<usize>)> =
                p.iter().map(|p| (p.key.as_str(), p.line)).collect();
            assert_eq!(keys, [("metrics_listen", Some(3))], "{bad}: {p:?}");
        }
    }

    #[test]
    fn missing_upstream_routes_and_two_identities_are_errors() {
        assert!(GatewayConfig::parse("[[routes]]\npath = \"/a\"\n").is_err());
        let p = GatewayConfig::parse("upstream = \"http://x\"\n").unwrap_err();
        assert_eq!(p[0].key, "routes");
        let p = GatewayConfig::parse(
            "upstream = \"http://x\"\n[identity]\njwt = true\njwks = \"https://i/jwks.json\"\n[[routes]]\npath = \"/a\"\n",
        )
        .unwrap_err();
        assert_eq!(p[0].key, "identity");
    }

    #[test]
    fn alerts_parse_as_the_contract_writes_them() {
        use secure_routes::alerts::Per;
        use secure_routes::audit::{AuditAction, Outcome};
        let c = GatewayConfig::parse(
            r#"
upstream = "http://127.0.0.1:3000"

[[routes]]
path = "/api/{*rest}"

[[alerts]]
name = "auth-failures"
action = "unauthorized_access"     # any audit action
count = 5
within = "1m"
per = "ip"                         # ip | subject | route
webhook = "http://127.0.0.1:9000/hook"
cooldown = "10m"

[[alerts]]
name = "csrf-dry-run"
action = "csrf_validation_failed"
outcome = "would_deny"
count = 20
within = "5m"
per = "route"
webhook = "https://hooks.example.com/services/T/B/secret"
"#,
        )
        .unwrap();
        assert_eq!(c.alerts.len(), 2);
        let a = &c.alerts[0];
        assert_eq!(a.name(), "auth-failures");
        assert_eq!(a.action(), AuditAction::UnauthorizedAccess);
        assert_eq!(a.outcome(), None);
        assert_eq!((a.count(), a.within()), (5, Duration::from_secs(60)));
        assert_eq!(a.per(), Per::Ip);
        assert_eq!(a.webhook().to_string(), "http://127.0.0.1:9000/hook");
        assert_eq!(a.cooldown(), Duration::from_secs(600));
        let b = &c.alerts[1];
        assert_eq!(b.outcome(), Some(Outcome::WouldDeny));
        assert_eq!(b.per(), Per::Route);
        assert_eq!(b.cooldown(), Duration::from_secs(600), "the default");
        // A file without alerts has none.
        let none = GatewayConfig::parse("upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n");
        assert!(none.unwrap().alerts.is_empty());
    }

    #[test]
    fn alert_problems_carry_their_key_and_line() {
        let text = "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n\
            [[alerts]]\nname = \"a\"\naction = \"nope\"\ncount = 0\nwithin = \"1y\"\nper = \"country\"\nwebhook = \"ftp://h/\"\noutcome = \"maybe\"\ncooldown = \"x\"\n\
            [[alerts]]\nname = \"bad name\"\naction = \"alert_triggered\"\ncount = 2\nwithin = \"1m\"\nper = \"ip\"\nwebhook = \"https://user:pw@h/\"\n\
            [[alerts]]\nname = \"dup\"\naction = \"authz_fail\"\ncount = 1\nwithin = \"1m\"\nper = \"subject\"\nwebhook = \"http://h/\"\n\
            [[alerts]]\nname = \"dup\"\naction = \"authz_fail\"\ncount = 1\nwithin = \"1m\"\nper = \"subject\"\nwebhook = \"http://h/\"\n";
        let problems = GatewayConfig::parse(text).unwrap_err();
        let got: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        for want in [
            ("alerts[0].action", 6),
            ("alerts[0].outcome", 11),
            ("alerts[0].count", 7),
            ("alerts[0].within", 8),
            ("alerts[0].per", 9),
            ("alerts[0].cooldown", 12),
            ("alerts[0].webhook", 10),
            ("alerts[1].name", 14),
            ("alerts[1].action", 15),
            ("alerts[1].webhook", 19),
            ("alerts[3].name", 28),
        ] {
            assert!(
                got.contains(&(want.0.to_owned(), Some(want.1))),
                "{want:?} missing from {problems:#?}"
            );
        }
        // The URL (which may hold a secret) is never echoed.
        assert!(problems.iter().all(|p| !p.message.contains("pw")));
        // Unknown keys are errors, with their line.
        let p = GatewayConfig::parse(
            "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n[[alerts]]\nname = \"a\"\naction = \"authz_fail\"\ncount = 1\nwithin = \"1m\"\nper = \"ip\"\nwebhook = \"http://h/\"\nthreshold = 3\n",
        )
        .unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].line, Some(11), "{p:?}");
        assert!(p[0].message.contains("unknown field"), "{p:?}");
    }

    #[test]
    fn bans_are_on_by_default_and_the_section_sets_every_value() {
        use secure_routes::bans::{BanKey, BanPolicy, Violation};
        let base = "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n";
        let c = GatewayConfig::parse(base).unwrap();
        assert_eq!(c.bans, Some(BanPolicy::default()));
        let c = GatewayConfig::parse(&format!(
            "{base}[bans]\nthreshold = 3\nwindow = \"30s\"\nfirst = \"2m\"\nmax = \"1h\"\nhistory = \"1d\"\n\
             allow = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n[bans.weights]\ncsrf = 5\nunauthorized = 0\n"
        ))
        .unwrap();
        let p = c.bans.clone().unwrap();
        assert_eq!(p.threshold(), 3);
        assert_eq!(p.window(), Duration::from_secs(30));
        assert_eq!(p.first_ban(), Duration::from_secs(120));
        assert_eq!(p.max_ban(), Duration::from_secs(3600));
        assert_eq!(p.history(), Duration::from_secs(86_400));
        assert_eq!(p.weight(Violation::Csrf), 5);
        assert_eq!(p.weight(Violation::Unauthorized), 0);
        assert_eq!(p.weight(Violation::RateLimited), 1);
        assert!(p.exempts(&BanKey::ip("10.9.9.9".parse().unwrap())));
        assert_eq!(c.ban_rule(), "3/30s,120s..3600s");
        let text = c.describe();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with("bans=3/30s,120s..3600s"),
            "{text}"
        );
        let last = text.lines().last().unwrap();
        assert_eq!(
            last,
            "[bans] threshold=3 window=30s first=120s max=3600s history=86400s \
             allow=127.0.0.1/32,10.0.0.0/8 weights=unauthorized:0,csrf:5,method_not_allowed:1,\
             payload_too_large:1,rate_limited:1,forbidden:2"
        );
        let json = c.describe_json();
        assert_eq!(json[0]["bans"]["threshold"], 3);
        assert_eq!(json[1]["bans"]["allow"][1], "10.0.0.0/8");

        let off = GatewayConfig::parse(&format!("{base}[bans]\nenabled = false\n")).unwrap();
        assert_eq!(off.bans, None);
        assert!(off.describe().contains("bans=off"));
        assert!(off.describe().ends_with("[bans] off\n"));
        assert_eq!(off.describe_json()[0]["bans"], "off");
    }

    #[test]
    fn ban_problems_carry_their_key_and_line() {
        let text = "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n[bans]\n\
            threshold = 0\nwindow = \"2d\"\nfirst = \"soon\"\nallow = [\"nope\"]\n\
            [bans.weights]\nteapot = 3\ncsrf = -1\nrate_limited = 20000\n";
        let problems = GatewayConfig::parse(text).unwrap_err();
        let got: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.key.clone(), p.line)).collect();
        for want in [
            ("bans.threshold", 5),
            ("bans.window", 6),
            ("bans.first", 7),
            ("bans.allow", 8),
            ("bans.weights.teapot", 10),
            ("bans.weights.csrf", 11),
            ("bans.weights.rate_limited", 12),
        ] {
            assert!(
                got.contains(&(want.0.to_owned(), Some(want.1))),
                "{want:?} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
        let teapot = problems
            .iter()
            .find(|p| p.key == "bans.weights.teapot")
            .unwrap();
        assert!(
            teapot.message.contains("csrf, method_not_allowed"),
            "{teapot:?}"
        );
        // Values right one by one but wrong together go under the value the library names.
        let p = GatewayConfig::parse(
            "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n[bans]\nfirst = \"2h\"\nmax = \"1h\"\n",
        )
        .unwrap_err();
        assert_eq!(
            (p[0].key.as_str(), p[0].line),
            ("bans.max", Some(6)),
            "{p:?}"
        );
        // Unknown keys are errors, with their line.
        let p = GatewayConfig::parse(
            "upstream = \"http://x\"\n[[routes]]\npath = \"/a\"\n[bans]\nthreshhold = 3\n",
        )
        .unwrap_err();
        assert_eq!(p[0].line, Some(5), "{p:?}");
        assert!(p[0].message.contains("unknown field"), "{p:?}");
    }
}
