//! Argument parsing and dispatch.
//!
//! ```
//! use clap::Parser;
//! use secure_routes_cli::cli::{Cli, Command};
//! let cli = Cli::try_parse_from(["secure-routes", "token", "--sub", "alice", "--ttl", "1h"]).unwrap();
//! assert!(matches!(cli.command, Command::Token { .. }));
//! let bad = Cli::try_parse_from(["secure-routes", "demo", "--limits", "mysql://db"]);
//! assert!(bad.unwrap_err().to_string().contains("unsupported --limits location"));
//! ```

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use secure_routes::bans::BanPolicy;
use secure_routes::serve::ServeConfig;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::demo::{DemoOptions, Identity, Wiring};
use crate::stores::{self, AuditLocation, LimitsLocation};
use crate::{audit_cmd, bans_cmd, dashboard_cmd, demo, duration, gateway_cmd, token};

/// What the binary is, as `secure-routes --help` shows it.
pub const ABOUT: &str = "secure-routes: security middleware demo, token minting and audit log \
reader for the secure-routes library (composable security middleware for Rust HTTP APIs)";

/// Every environment variable `secure-routes demo` reads, shown by `secure-routes demo --help`.
pub const DEMO_ENVIRONMENT: &str = "\
Environment:
  SECURE_ROUTES_JWT_SECRET       HS256 secret for session tokens (32+ bytes)
  CSRF_SECRET                    CSRF signing secret (32+ bytes); instances sharing a store
                                 must share it
    Without these two, development secrets are generated once into
    ./secure-routes.dev-secrets (mode 0600) and shared with `secure-routes token` run from
    the same directory.
  SECURE_ROUTES_ENV              `production` refuses to start without the secrets above and
                                 drops localhost origins
  SECURE_ROUTES_TRUSTED_PROXIES  comma-separated CIDRs whose forwarding header is believed
                                 (default: none)
  SECURE_ROUTES_CLIENT_IP_HEADER the one forwarding header those proxies set: x-forwarded-for
                                 (default), forwarded or x-real-ip
  SECURE_ROUTES_ALLOWED_ORIGINS  comma-separated CORS origins
  PUBLIC_BASE_URL                one more allowed CORS origin
  SECURE_ROUTES_LIMITS           the same as --limits
  SECURE_ROUTES_AUDIT            the same as --audit
  SUPABASE_JWT_SECRET            with --supabase-url: the project's legacy HS256 secret
  SECURE_ROUTES_WEBHOOK_SECRET   signs the alert webhooks of --alert-webhook and --alerts
                                 (32+ bytes; needed with them)
  RUST_LOG                       log filter (default: info,secure_routes::audit=warn)
  NO_COLOR                       set: no colour in logs (logs are never coloured when stderr
                                 is not a terminal)";

/// Every environment variable `secure-routes serve` reads, shown by `secure-routes serve --help`.
/// The config file holds everything else, and never a secret.
pub const SERVE_ENVIRONMENT: &str = "\
Environment:
  SECURE_ROUTES_JWT_SECRET       HS256 secret for tokens ([identity] jwt = true; 32+ bytes)
  CSRF_SECRET                    CSRF signing secret (32+ bytes); instances sharing a store
                                 must share it
    Without these two, development secrets are generated once into
    ./secure-routes.dev-secrets, as for demo.
  SECURE_ROUTES_ENV              `production` refuses to start without the secrets above
  SUPABASE_JWT_SECRET            with [identity] supabase_url: the legacy HS256 secret
  SECURE_ROUTES_ADMIN_TOKEN      bearer token for /_secure-routes/metrics (unset: closed)
  SECURE_ROUTES_ASSERTION_KEY    P-256 key (PEM) signing X-Secure-Routes-Assertion; instances
                                 behind one load balancer must share it (unset: one per process)
  SECURE_ROUTES_WEBHOOK_SECRET   signs the [[alerts]] webhooks (32+ bytes; needed with alerts)
  RUST_LOG                       log filter
  NO_COLOR                       set: no colour in logs";

/// Every environment variable `secure-routes dashboard` reads.
pub const DASHBOARD_ENVIRONMENT: &str = "\
Environment:
  SECURE_ROUTES_ADMIN_TOKEN      required: the login form's password and the API's bearer
                                 token (the command refuses to start without it)
  SECURE_ROUTES_AUDIT            the same as --audit
  SECURE_ROUTES_LIMITS           the same as --limits
  RUST_LOG                       log filter";

/// Where `secure-routes token` takes its secret from, shown by `secure-routes token --help`.
pub const TOKEN_SECRETS: &str = "\
Secrets:
  The token is signed with SECURE_ROUTES_JWT_SECRET when it is set. Otherwise with the
  development secret in ./secure-routes.dev-secrets in the current directory (created on
  first use, by `token` or `demo`, whichever runs first): run `token` from the directory
  where `secure-routes demo` runs, or the demo answers 401. stderr names the secret used
  (never its value).";

/// The `secure-routes` command line.
#[derive(Debug, Parser)]
#[command(name = "secure-routes", version, about = ABOUT)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing the demo's flags would only complicate matching"
)]
pub enum Command {
    /// Run the demo API (default: memory rate limits, SQLite audit log).
    #[command(after_help = DEMO_ENVIRONMENT)]
    Demo {
        /// Address to listen on: IP:PORT or HOST:PORT (a name such as localhost is resolved
        /// and the first of its addresses that can be bound is used).
        #[arg(long, default_value = "127.0.0.1:3000", value_parser = parse_listen_addr)]
        addr: String,
        /// Rate-limit store: memory, sqlite:PATH, redis://HOST[:PORT][/DB] or
        /// postgres://USER@HOST/DB (shared by every instance pointing at it).
        #[arg(long, env = "SECURE_ROUTES_LIMITS", default_value = "memory")]
        limits: LimitsLocation,
        /// Audit store: sqlite:PATH, postgres://USER@HOST/DB or jsonl:PATH
        /// [default: sqlite:./secure-routes.db].
        #[arg(long, env = "SECURE_ROUTES_AUDIT")]
        audit: Option<AuditLocation>,
        /// SQLite audit database (the same as --audit sqlite:PATH).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Use `__Host-csrf-token` with `Secure` and send HSTS (when served over HTTPS).
        #[arg(long)]
        secure_cookies: bool,
        /// Longest wait for one rate-limit store call before the route's failure mode applies
        /// (fail-closed routes answer 503): 50ms, 2s, ... [default: 50ms].
        #[arg(long, value_parser = duration::parse)]
        store_timeout: Option<Duration>,
        /// Testing aid: shift this instance's clock by this many milliseconds (negative:
        /// behind), to check that instances with disagreeing clocks admit nothing extra.
        #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
        clock_skew_ms: i64,
        /// Accept tokens signed by the keys of this JWK set instead of the demo secret
        /// (https; plain http only on loopback).
        #[arg(long, value_name = "URL", conflicts_with = "supabase_url")]
        jwks: Option<String>,
        /// With --jwks: the issuer (`iss`) tokens must carry.
        #[arg(long, value_name = "ISS", requires = "jwks")]
        jwt_issuer: Option<String>,
        /// With --jwks: the audience (`aud`) tokens must carry (without it, a token that
        /// names an audience is refused).
        #[arg(long, value_name = "AUD", requires = "jwks")]
        jwt_audience: Option<String>,
        /// Accept the users of this Supabase project (https://REF.supabase.co): access
        /// tokens and SSR session cookies. SUPABASE_JWT_SECRET adds the legacy HS256 secret.
        #[arg(long, value_name = "URL")]
        supabase_url: Option<String>,
        /// Close a connection whose request head takes longer than this to arrive (slowloris
        /// protection; also the longest wait for a connection's first request) [default: 10s].
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        header_read_timeout: Option<Duration>,
        /// Close a connection with no request in flight for this long [default: 60s].
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        idle_timeout: Option<Duration>,
        /// Most open connections; more are closed at once [default: 10000].
        #[arg(long, value_name = "N")]
        max_connections: Option<usize>,
        /// Most open connections from one client address (IPv6: one /64); more are closed at
        /// once [default: 256].
        #[arg(long, value_name = "N")]
        max_connections_per_ip: Option<usize>,
        /// On Ctrl-C or SIGTERM, how long open connections get to finish before they are
        /// closed; the audit log is flushed after [default: 10s].
        #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
        shutdown_grace: Option<Duration>,
        /// Escalating bans for repeat violators: on or off. Refusals a client causes (401,
        /// 403 CSRF/authorization, 405, 413, 429) are weighted points against its address and
        /// subject; 50 points within 10 minutes ban it for 15 minutes, doubling on each
        /// repeat up to 24 hours. Kept in the --limits store (see `secure-routes bans`).
        #[arg(
            long,
            value_name = "on|off",
            default_value = "on",
            action = clap::ArgAction::Set,
            value_parser = clap::builder::BoolishValueParser::new()
        )]
        bans: bool,
        /// Points within the ban window that ban a client (1 to 10000) [default: 50].
        #[arg(long, value_name = "N")]
        ban_threshold: Option<u32>,
        /// POST signed alerts to this webhook with the default rules: 5 unauthorized_access
        /// or 5 csrf_validation_failed from one IP within 1m, any ip_banned; one alert per IP
        /// per rule per 10m. Needs SECURE_ROUTES_WEBHOOK_SECRET.
        #[arg(long, value_name = "URL", conflicts_with = "alerts")]
        alert_webhook: Option<String>,
        /// Alert rules from a file of [[alerts]] tables, written as in the gateway's config.
        /// Needs SECURE_ROUTES_WEBHOOK_SECRET.
        #[arg(long, value_name = "FILE")]
        alerts: Option<PathBuf>,
    },
    /// Print an HS256 JWT for the demo, signed with SECURE_ROUTES_JWT_SECRET or the
    /// development secret (see below).
    #[command(after_help = TOKEN_SECRETS)]
    Token {
        /// The subject (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Lifetime: 30s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = duration::parse)]
        ttl: Duration,
    },
    /// List audit events, newest first.
    Audit {
        /// Audit store to read: sqlite:PATH, postgres://USER@HOST/DB or jsonl:PATH
        /// [default: sqlite:./secure-routes.db].
        #[arg(long, env = "SECURE_ROUTES_AUDIT")]
        audit: Option<AuditLocation>,
        /// SQLite audit database (the same as --audit sqlite:PATH).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Only this action (e.g. rate_limit_exceeded).
        #[arg(long)]
        action: Option<String>,
        /// Only this outcome: denied, allowed, error or would_deny.
        #[arg(long)]
        outcome: Option<String>,
        /// Only this client address (as stored, e.g. 203.0.113.7 or 2001:db8::/64).
        #[arg(long)]
        ip: Option<String>,
        /// Only this authenticated subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only this route (the matched template or bucket, e.g. /api/user/notes).
        #[arg(long)]
        route: Option<String>,
        /// Only this request fingerprint.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Only events newer than this: 30s, 10m, 1h, 2d.
        #[arg(long, value_parser = duration::parse)]
        since: Option<Duration>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Serve the audit dashboard (events, counts, top offenders, bans, alerts, live tail) at
    /// http://ADDR/_secure-routes/, behind SECURE_ROUTES_ADMIN_TOKEN.
    #[command(after_help = DASHBOARD_ENVIRONMENT)]
    Dashboard {
        /// Audit store to show: sqlite:PATH, postgres://USER@HOST/DB or jsonl:PATH.
        #[arg(long, env = "SECURE_ROUTES_AUDIT")]
        audit: AuditLocation,
        /// Limits store holding the bans to list and lift: sqlite:PATH, redis://… or
        /// postgres://… (without it, no bans are shown).
        #[arg(long, env = "SECURE_ROUTES_LIMITS")]
        limits: Option<LimitsLocation>,
        /// Address to listen on, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:3001", value_parser = parse_listen_addr)]
        addr: String,
    },
    /// Read and change the bans in a shared limits store (the one the servers use).
    Bans {
        /// What to do.
        #[command(subcommand)]
        command: BansCommand,
    },
    /// Run the gateway: the config file's per-route policies in front of its upstream.
    /// Secrets from the environment (below); SIGHUP reloads the routes and alert rules,
    /// SIGTERM drains and stops.
    #[command(after_help = SERVE_ENVIRONMENT)]
    Serve {
        /// The gateway's config file (secure-routes.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a gateway config file: prints every problem with its TOML key and line; exit
    /// status 0 when there is none, 1 otherwise.
    Check {
        /// The gateway's config file (secure-routes.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print each route's effective policy from a gateway config file (methods, auth,
    /// limit, body limit, CSRF, failure mode, mode), the default last, then the alert rules
    /// (webhooks by scheme, host and port only; the text output, not --json).
    Routes {
        /// The gateway's config file (secure-routes.toml).
        #[arg(long)]
        config: PathBuf,
        /// A JSON array, one object per route.
        #[arg(long)]
        json: bool,
    },
}

/// `secure-routes bans ...`.
#[derive(Debug, Subcommand)]
pub enum BansCommand {
    /// List the bans in force, soonest end first.
    List {
        /// Limits store holding the bans: sqlite:PATH, redis://HOST[:PORT][/DB] or
        /// postgres://USER@HOST/DB (memory is per process: refused).
        #[arg(long, env = "SECURE_ROUTES_LIMITS")]
        limits: LimitsLocation,
        /// One JSON object per line: key, until (RFC 3339), strikes, reason.
        #[arg(long)]
        json: bool,
    },
    /// Lift a ban (and forget the key's history): KEY is ip:ADDRESS, ip:IPV6/64, sub:SUBJECT
    /// or an address.
    Lift {
        /// The banned key, as `bans list` prints it.
        key: String,
        /// Limits store holding the bans (see `bans list`).
        #[arg(long, env = "SECURE_ROUTES_LIMITS")]
        limits: LimitsLocation,
        /// Also record a `ban_lifted` event in this audit store (sqlite:PATH,
        /// postgres://USER@HOST/DB or jsonl:PATH; the servers' --audit).
        #[arg(long)]
        audit: Option<AuditLocation>,
    },
    /// Ban an address (IPv6 by its /64, as the servers key it) or a key for a while.
    Add {
        /// The address (or ip:… / sub:… key) to ban.
        ip: String,
        /// How long: 30m, 1h, 2d.
        #[arg(long = "for", value_name = "DURATION", value_parser = duration::parse)]
        length: Duration,
        /// Why (shown by `bans list`).
        #[arg(long, default_value = "manual")]
        reason: String,
        /// Limits store holding the bans (see `bans list`).
        #[arg(long, env = "SECURE_ROUTES_LIMITS")]
        limits: LimitsLocation,
        /// Also record an `ip_banned` event (reason `manual`) in this audit store
        /// (sqlite:PATH, postgres://USER@HOST/DB or jsonl:PATH; the servers' --audit).
        #[arg(long)]
        audit: Option<AuditLocation>,
    },
}

/// Parses the process arguments and runs the command.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,secure_routes::audit=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Escape codes only for a person at a terminal: a log file or a pipe gets plain text
        // (https://no-color.org: a non-empty NO_COLOR turns colour off everywhere).
        .with_ansi(colour_logs(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            addr,
            limits,
            audit,
            db,
            secure_cookies,
            store_timeout,
            clock_skew_ms,
            jwks,
            jwt_issuer,
            jwt_audience,
            supabase_url,
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_ip,
            shutdown_grace,
            bans,
            ban_threshold,
            alert_webhook,
            alerts,
        } => {
            let config = Config::from_env()?;
            // Before the banner: a rule set without a secret must stop the start, not be
            // found missing at the first attack.
            let (rules, source) = match (&alert_webhook, &alerts) {
                (Some(url), _) => (crate::alerts::default_rules(url)?, "--alert-webhook"),
                (None, Some(path)) => (crate::alerts::read_rules(path)?, "--alerts"),
                (None, None) => (Vec::new(), ""),
            };
            let alerts = if rules.is_empty() {
                None
            } else {
                crate::alerts::engine(rules, crate::alerts::secret_from_env(), source)?
            };
            let options = DemoOptions {
                limits,
                audit: audit_location(audit, db)?,
                secure_cookies,
                store_timeout,
                clock_skew_ms,
                identity: identity(
                    jwks,
                    jwt_issuer,
                    jwt_audience,
                    supabase_url,
                    std::env::var("SUPABASE_JWT_SECRET").ok(),
                ),
                serve: serve_config(
                    header_read_timeout,
                    idle_timeout,
                    max_connections,
                    max_connections_per_ip,
                    shutdown_grace,
                ),
                bans: ban_policy(bans, ban_threshold)?,
                alerts,
            };
            options.serve.validate()?;
            options.identity.check(&config)?;
            // The banner promises a running server, so everything that can still refuse the
            // configuration (secrets, proxies, origins, policies) is built once before it: a
            // router with the demo identity (the identity was checked above without fetching
            // keys) and no stores.
            demo::router(
                &config,
                &Wiring {
                    secure_cookies: options.secure_cookies,
                    store_timeout: options.store_timeout,
                    ..Wiring::default()
                },
            )
            .context("invalid configuration")
            .map(drop)?;
            let listener = bind(&addr).await?;
            let stores = stores::open(&options.limits, &options.audit).await?;
            let shutdown = shutdown_signal();
            println!("{}", demo::banner(listener.local_addr()?, &options));
            let stats = demo::run(listener, &config, &options, stores, shutdown).await?;
            eprintln!(
                "stopped; audit log flushed to {} ({} events recorded, {} written, {} spilled, {} replayed, {} lost)",
                options.audit,
                stats.recorded,
                stats.written,
                stats.spilled,
                stats.replayed,
                stats.lost
            );
            Ok(())
        }
        Command::Token { sub, ttl } => {
            let (config, source) = Config::from_env_with_source()?;
            let token = token::mint(&config.jwt_secret, &sub, ttl)?;
            // Which secret, never the secret: a token minted in another directory (another
            // development secret) is otherwise a silent 401.
            eprintln!("secure-routes: signed with {source}");
            println!("{token}");
            Ok(())
        }
        Command::Audit {
            audit,
            db,
            action,
            outcome,
            ip,
            subject,
            route,
            fingerprint,
            since,
            limit,
            json,
        } => {
            let audit = audit_location(audit, db)?;
            let filters = audit_cmd::Filters {
                action: action.as_deref(),
                outcome: outcome.as_deref(),
                ip: ip.as_deref(),
                subject: subject.as_deref(),
                route: route.as_deref(),
                fingerprint: fingerprint.as_deref(),
                since,
            };
            let out = audit_cmd::list_filtered(&audit, &filters, limit, json).await?;
            print!("{out}");
            Ok(())
        }
        Command::Bans { command } => {
            let out = match command {
                BansCommand::List { limits, json } => {
                    let store = bans_cmd::open(&limits).await?;
                    bans_cmd::list(&*store, bans_cmd::now(), json).await?
                }
                BansCommand::Lift { key, limits, audit } => {
                    let store = bans_cmd::open(&limits).await?;
                    let sink = open_sink(audit.as_ref()).await?;
                    bans_cmd::lift(&*store, &key, sink.as_deref()).await?
                }
                BansCommand::Add {
                    ip,
                    length,
                    reason,
                    limits,
                    audit,
                } => {
                    let store = bans_cmd::open(&limits).await?;
                    let sink = open_sink(audit.as_ref()).await?;
                    bans_cmd::add(
                        &*store,
                        &ip,
                        length,
                        &reason,
                        bans_cmd::now(),
                        sink.as_deref(),
                    )
                    .await?
                }
            };
            print!("{out}");
            Ok(())
        }
        Command::Dashboard {
            audit,
            limits,
            addr,
        } => dashboard_cmd::run(audit, limits, addr, shutdown_signal()).await,
        Command::Serve { config } => {
            let shutdown = shutdown_signal();
            gateway_cmd::run(config, shutdown).await
        }
        Command::Check { config } => {
            let gateway = gateway_cmd::load(&config)?;
            println!(
                "{}: ok ({} routes)",
                config.display(),
                gateway.routes().len()
            );
            Ok(())
        }
        Command::Routes { config, json } => {
            let gateway = gateway_cmd::load(&config)?;
            if json {
                println!("{}", gateway.describe_json());
            } else {
                print!("{}", gateway.describe());
            }
            Ok(())
        }
    }
}

/// Whether log lines carry ANSI colour: only on a terminal, and never with a non-empty
/// `NO_COLOR`.
fn colour_logs(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Checks `--addr` is `HOST:PORT` (an IP literal, `[v6]:port`, or a name resolved when the
/// demo starts).
fn parse_listen_addr(s: &str) -> Result<String, String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains(':')
                && port.parse::<u16>().is_ok()
                && !host.chars().any(char::is_whitespace) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(format!(
            "expected HOST:PORT or IP:PORT (e.g. 127.0.0.1:3000, localhost:3001, [::1]:3000), got {s:?}"
        )),
    }
}

/// Resolves `addr` and listens on the first of its addresses that can be bound (the order is
/// the resolver's: `localhost` is usually 127.0.0.1, then ::1). An error names the address.
pub(crate) async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve --addr {addr}"))?
        .collect();
    let mut last = None;
    for a in resolved {
        match TcpListener::bind(a).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("cannot listen on {a}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("--addr {addr} resolves to no address")))
}

/// Whose tokens the demo accepts, from `--jwks` (with `--jwt-issuer`, `--jwt-audience`),
/// `--supabase-url` and `SUPABASE_JWT_SECRET` (clap already refused `--jwks` beside
/// `--supabase-url`).
fn identity(
    jwks: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    supabase_url: Option<String>,
    supabase_secret: Option<String>,
) -> Identity {
    let supabase_secret = supabase_secret.filter(|s| !s.is_empty());
    match (jwks, supabase_url) {
        (_, Some(url)) => Identity::Supabase {
            url,
            jwt_secret: supabase_secret.map(String::into_bytes),
        },
        (jwks, None) => {
            if supabase_secret.is_some() {
                // A shell that exports it for other tools should not stop the demo.
                eprintln!(
                    "warning: SUPABASE_JWT_SECRET is set but --supabase-url is not; ignoring it"
                );
            }
            if jwks.is_some() && issuer.is_none() {
                eprintln!(
                    "warning: --jwks without --jwt-issuer accepts any issuer those keys sign for"
                );
            }
            match jwks {
                Some(url) => Identity::Jwks {
                    url,
                    issuer,
                    audience,
                },
                None => Identity::DemoSecret,
            }
        }
    }
}

/// The connection limits from the demo's flags, the library's defaults for those not given.
fn serve_config(
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    shutdown_grace: Option<Duration>,
) -> ServeConfig {
    let d = ServeConfig::default();
    ServeConfig {
        header_read_timeout: header_read_timeout.unwrap_or(d.header_read_timeout),
        idle_timeout: idle_timeout.unwrap_or(d.idle_timeout),
        max_connections: max_connections.unwrap_or(d.max_connections),
        max_connections_per_ip: max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        shutdown_grace: shutdown_grace.unwrap_or(d.shutdown_grace),
        ..d
    }
}

/// The audit sink `bans lift|add --audit` record in, opened before the store is changed (a
/// bad location is refused before anything happens).
async fn open_sink(
    audit: Option<&AuditLocation>,
) -> anyhow::Result<Option<std::sync::Arc<dyn secure_routes::audit::AuditSink>>> {
    match audit {
        Some(a) => Ok(Some(stores::open_audit_sink(a).await?)),
        None => Ok(None),
    }
}

/// The demo's ban policy from `--bans` and `--ban-threshold` (`None`: off).
fn ban_policy(on: bool, threshold: Option<u32>) -> anyhow::Result<Option<BanPolicy>> {
    match (on, threshold) {
        (false, Some(_)) => anyhow::bail!("--ban-threshold needs bans on (drop --bans off)"),
        (false, None) => Ok(None),
        (true, None) => Ok(Some(BanPolicy::default())),
        (true, Some(n)) => Ok(Some(
            BanPolicy::builder()
                .threshold(n)
                .build()
                .map_err(|e| anyhow::anyhow!("--ban-threshold: {e}"))?,
        )),
    }
}

/// `--audit` or its `--db PATH` shorthand (kept from the first release), at most one of them.
fn audit_location(
    audit: Option<AuditLocation>,
    db: Option<PathBuf>,
) -> anyhow::Result<AuditLocation> {
    match (audit, db) {
        (Some(_), Some(_)) => anyhow::bail!(
            "give either --db PATH or --audit LOCATION (or SECURE_ROUTES_AUDIT), not both"
        ),
        (Some(a), None) => Ok(a),
        (None, Some(path)) => Ok(AuditLocation::Sqlite(path)),
        (None, None) => Ok(DemoOptions::default().audit),
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (`kill %1`). The handlers are installed when this is
/// called, not when the future is first polled: called before the banner, a signal sent as
/// soon as the banner is out (a script's `kill %1`) stops the demo gracefully, flushing the
/// audit log, instead of killing it with the default action.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {},
                () = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The README's Rust examples, compiled as doc tests so they keep compiling when copied (this
/// crate has every dependency they use). Only under `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeExamples;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let mut all = vec!["secure-routes"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().command
    }

    fn help(args: &[&str]) -> String {
        let mut all = vec!["secure-routes"];
        all.extend_from_slice(args);
        all.push("--help");
        Cli::try_parse_from(all).unwrap_err().to_string()
    }

    #[test]
    fn about_says_what_the_binary_is() {
        let top = help(&[]);
        assert!(
            top.contains("security middleware demo, token minting and audit log reader"),
            "{top}"
        );
    }

    /// Every variable the binary reads (grep the CLI and config for `env(`, `env =` and
    /// `std::env::var`) appears in `demo --help` or `serve --help`, and the gateway's own in
    /// `serve --help`.
    #[test]
    fn demo_and_serve_help_list_every_environment_variable_they_read() {
        let demo = help(&["demo"]);
        let serve = help(&["serve"]);
        for var in crate::config::ENVIRONMENT {
            assert!(
                demo.contains(var) || serve.contains(var),
                "neither demo --help nor serve --help mentions {var}:\n{demo}\n{serve}"
            );
        }
        for var in [
            "SECURE_ROUTES_JWT_SECRET",
            "CSRF_SECRET",
            "SECURE_ROUTES_ADMIN_TOKEN",
            "SECURE_ROUTES_ASSERTION_KEY",
            "SECURE_ROUTES_WEBHOOK_SECRET",
        ] {
            assert!(serve.contains(var), "serve --help lacks {var}:\n{serve}");
        }
        // The demo's alert flags sign with it too.
        assert!(demo.contains("SECURE_ROUTES_WEBHOOK_SECRET"), "{demo}");
    }

    #[test]
    fn token_help_says_where_secrets_come_from() {
        let text = help(&["token"]);
        for needle in [
            "SECURE_ROUTES_JWT_SECRET",
            "secure-routes.dev-secrets",
            "directory",
        ] {
            assert!(
                text.contains(needle),
                "token --help lacks {needle}:\n{text}"
            );
        }
    }

    #[test]
    fn addr_takes_host_port_and_ip_port() {
        for good in [
            "127.0.0.1:3000",
            "localhost:3001",
            "[::1]:3000",
            "0.0.0.0:0",
        ] {
            let Command::Demo { addr, .. } = parse(&["demo", "--addr", good]) else {
                panic!("demo")
            };
            assert_eq!(addr, good);
        }
        for bad in [
            "localhost",
            ":3000",
            "localhost:99999",
            "::1:3000",
            "a b:1",
            "host:x",
        ] {
            let r = Cli::try_parse_from(["secure-routes", "demo", "--addr", bad]);
            assert!(r.is_err(), "{bad} accepted");
        }
    }

    #[tokio::test]
    async fn bind_resolves_names_and_names_a_busy_address() {
        let l = bind("localhost:0")
            .await
            .expect("localhost resolves and binds");
        assert!(l.local_addr().unwrap().ip().is_loopback());
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = taken.local_addr().unwrap().to_string();
        let err = format!("{:#}", bind(&at).await.unwrap_err());
        assert!(
            err.starts_with(&format!("cannot listen on {at}: ")),
            "{err}"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_logs(true, None));
        assert!(colour_logs(true, Some(OsStr::new(""))));
        assert!(!colour_logs(true, Some(OsStr::new("1"))));
        assert!(!colour_logs(false, None));
    }

    #[test]
    fn db_is_shorthand_for_a_sqlite_audit_location_and_excludes_audit() {
        let Command::Demo {
            audit, db, limits, ..
        } = parse(&["demo", "--db", "x.db"])
        else {
            panic!("demo")
        };
        assert_eq!(limits, LimitsLocation::Memory);
        assert_eq!(
            audit_location(audit, db).unwrap(),
            AuditLocation::Sqlite("x.db".into())
        );
        let Command::Audit { audit, db, .. } =
            parse(&["audit", "--db", "x.db", "--audit", "jsonl:y"])
        else {
            panic!("audit")
        };
        assert!(audit_location(audit, db).is_err());
        assert_eq!(
            audit_location(None, None).unwrap(),
            AuditLocation::Sqlite("./secure-routes.db".into())
        );
    }

    #[test]
    fn demo_takes_store_locations_and_a_negative_clock_skew() {
        let Command::Demo {
            limits,
            audit,
            clock_skew_ms,
            ..
        } = parse(&[
            "demo",
            "--limits",
            "redis://127.0.0.1:6379",
            "--audit",
            "postgres://postgres@127.0.0.1/test",
            "--clock-skew-ms",
            "-45000",
        ])
        else {
            panic!("demo")
        };
        assert_eq!(
            limits,
            LimitsLocation::Redis("redis://127.0.0.1:6379".into())
        );
        assert!(matches!(audit, Some(AuditLocation::Postgres(_))));
        assert_eq!(clock_skew_ms, -45_000);
    }

    #[test]
    fn serve_flags_override_the_library_defaults() {
        let Command::Demo {
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_ip,
            shutdown_grace,
            ..
        } = parse(&[
            "demo",
            "--header-read-timeout",
            "300ms",
            "--max-connections-per-ip",
            "3",
            "--shutdown-grace",
            "2s",
        ])
        else {
            panic!("demo")
        };
        let config = serve_config(
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_connections_per_ip,
            shutdown_grace,
        );
        assert_eq!(
            config,
            ServeConfig {
                header_read_timeout: Duration::from_millis(300),
                max_connections_per_ip: 3,
                shutdown_grace: Duration::from_secs(2),
                ..ServeConfig::default()
            }
        );
        assert_eq!(
            serve_config(None, None, None, None, None),
            ServeConfig::default()
        );
        // A zero cap parses but is refused before the demo starts.
        let Command::Demo {
            max_connections, ..
        } = parse(&["demo", "--max-connections", "0"])
        else {
            panic!("demo")
        };
        assert!(
            serve_config(None, None, max_connections, None, None)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn bans_are_on_by_default_and_the_flags_change_or_disable_them() {
        let Command::Demo {
            bans,
            ban_threshold,
            ..
        } = parse(&["demo"])
        else {
            panic!("demo")
        };
        assert_eq!(
            ban_policy(bans, ban_threshold).unwrap(),
            Some(BanPolicy::default())
        );
        let Command::Demo {
            bans,
            ban_threshold,
            ..
        } = parse(&["demo", "--ban-threshold", "5"])
        else {
            panic!("demo")
        };
        assert_eq!(
            ban_policy(bans, ban_threshold)
                .unwrap()
                .unwrap()
                .threshold(),
            5
        );
        let Command::Demo {
            bans,
            ban_threshold,
            ..
        } = parse(&["demo", "--bans", "off"])
        else {
            panic!("demo")
        };
        assert_eq!(ban_policy(bans, ban_threshold).unwrap(), None);
        assert!(ban_policy(false, Some(5)).is_err());
        let err = ban_policy(true, Some(0)).unwrap_err().to_string();
        assert!(
            err.contains("--ban-threshold") && err.contains("threshold"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["secure-routes", "demo", "--bans", "maybe"]).is_err());
    }

    #[test]
    fn identity_flags() {
        let Command::Demo {
            jwks,
            jwt_issuer,
            jwt_audience,
            supabase_url,
            ..
        } = parse(&[
            "demo",
            "--jwks",
            "https://idp.example/jwks.json",
            "--jwt-issuer",
            "https://idp.example/",
            "--jwt-audience",
            "api",
        ])
        else {
            panic!("demo")
        };
        assert_eq!(
            identity(
                jwks,
                jwt_issuer,
                jwt_audience,
                supabase_url,
                Some("s".into())
            ),
            Identity::Jwks {
                url: "https://idp.example/jwks.json".into(),
                issuer: Some("https://idp.example/".into()),
                audience: Some("api".into()),
            }
        );
        let Command::Demo {
            jwks, supabase_url, ..
        } = parse(&["demo", "--supabase-url", "https://abcd.supabase.co"])
        else {
            panic!("demo")
        };
        assert_eq!(
            identity(jwks, None, None, supabase_url, Some("legacy".into())),
            Identity::Supabase {
                url: "https://abcd.supabase.co".into(),
                jwt_secret: Some(b"legacy".to_vec()),
            }
        );
        assert_eq!(
            identity(None, None, None, None, Some("x".into())),
            Identity::DemoSecret
        );
        for bad in [
            &[
                "demo",
                "--jwks",
                "https://a/j",
                "--supabase-url",
                "https://b.supabase.co",
            ][..],
            &["demo", "--jwt-issuer", "https://a/"][..],
        ] {
            let mut all = vec!["secure-routes"];
            all.extend_from_slice(bad);
            assert!(Cli::try_parse_from(all).is_err(), "{bad:?}");
        }
    }
}
