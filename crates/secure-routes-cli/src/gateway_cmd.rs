//! `secure-routes serve --config FILE`: the gateway. Opens the stores the file names, builds
//! the shared [`Security`] with the secrets from the environment (the same variables as
//! `demo`), serves the routes of [`secure_routes_gateway::gateway`] with the server limits of
//! [`secure_routes::serve`], reloads the routes and `[[alerts]]` rules on SIGHUP and drains on
//! SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secure_routes::alerts::AlertEngine;
use secure_routes::audit::{AuditConfig, AuditObserver, AuditWriter};
use secure_routes::bans::Bans;
use secure_routes::serve::ServeConfig;
use secure_routes_gateway::config::{GatewayConfig, Identity as IdentityConfig, TlsFiles};
use secure_routes_gateway::gateway::{GatewayHandle, GatewayParts, gateway};
use secure_routes_gateway::identity::{AssertionSigner, CookieNames, KEY_ENV};
use secure_routes_gateway::metrics::{GatewayMetrics, TimedStore};

use crate::config::Config;
use crate::demo::{self, DemoOptions, Identity, SESSION_COOKIE, Wiring};
use crate::stores::{self, AuditLocation, LimitsLocation};

/// The environment variable holding the admin token (`/_secure-routes/metrics`).
///
/// ```
/// assert_eq!(secure_routes_cli::gateway_cmd::ADMIN_TOKEN_VAR, "SECURE_ROUTES_ADMIN_TOKEN");
/// ```
pub const ADMIN_TOKEN_VAR: &str = "SECURE_ROUTES_ADMIN_TOKEN";

/// Reads and checks a gateway config file; the error lists every problem, one per line, each
/// with its TOML key and line. The store locations are checked here too (they are the CLI's).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("g.toml");
/// std::fs::write(&path, "upstream = \"http://u\"\n[stores]\nlimits = \"mongo://x\"\n[[routes]]\npath = \"/a\"\n").unwrap();
/// let err = secure_routes_cli::gateway_cmd::load(&path).unwrap_err().to_string();
/// assert!(err.contains("stores.limits"), "{err}");
/// ```
pub fn load(path: &Path) -> anyhow::Result<GatewayConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut problems: Vec<String> = Vec::new();
    let config = match GatewayConfig::parse(&text) {
        Ok(c) => Some(c),
        Err(list) => {
            problems.extend(list.iter().map(ToString::to_string));
            None
        }
    };
    if let Some(c) = &config {
        if let Err(e) = locations(c) {
            problems.push(e.to_string());
        }
        if let Err(e) = identity(&c.identity, None) {
            problems.push(format!("identity: {e}"));
        }
        if let Some(files) = &c.tls
            && let Err(e) = tls_config(files)
        {
            problems.push(format!("tls_cert/tls_key: {e:#}"));
        }
    }
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => {
            let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
            anyhow::bail!(
                "{} has {} problem(s):\n{}",
                path.display(),
                problems.len(),
                list.join("\n")
            )
        }
    }
}

/// The TLS listener's rustls configuration from the PEM files: the certificate chain and
/// private key, ALPN `h2` then `http/1.1` (so browsers get HTTP/2).
fn tls_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        files.cert.display()
    );
    // The error never includes the key's bytes, only where it came from.
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key from {}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a valid pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The store locations of `[stores]` (defaults: memory limits, the demo's SQLite audit file).
fn locations(c: &GatewayConfig) -> anyhow::Result<(LimitsLocation, AuditLocation)> {
    let limits = match &c.stores.limits {
        None => LimitsLocation::Memory,
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("stores.limits: {e}"))?,
    };
    let audit = match &c.stores.audit {
        None => DemoOptions::default().audit,
        Some(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("stores.audit: {e}"))?,
    };
    Ok((limits, audit))
}

/// The identity source of `[identity]`, if any (`None`: no authenticator; a route that
/// authenticates is then a start-up error).
fn identity(
    c: &IdentityConfig,
    supabase_secret: Option<String>,
) -> anyhow::Result<Option<Identity>> {
    let sources =
        usize::from(c.jwt) + usize::from(c.jwks.is_some()) + usize::from(c.supabase_url.is_some());
    anyhow::ensure!(sources <= 1, "at most one of jwt, jwks and supabase_url");
    Ok(if c.jwt {
        Some(Identity::DemoSecret)
    } else if let Some(url) = &c.jwks {
        Some(Identity::Jwks {
            url: url.clone(),
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
        })
    } else {
        c.supabase_url.as_ref().map(|url| Identity::Supabase {
            url: url.clone(),
            jwt_secret: supabase_secret.map(String::into_bytes),
        })
    })
}

/// Runs the gateway for the file at `path` until SIGINT/SIGTERM.
pub async fn run(
    path: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let hangups = hangups();
    let file = load(&path)?;
    let mut config = Config::from_env()?;
    config.trusted_proxies.clone_from(&file.trusted_proxies);
    config.allowed_origins.clone_from(&file.allowed_origins);
    let (limits, audit) = locations(&file)?;
    let identity = identity(&file.identity, std::env::var("SUPABASE_JWT_SECRET").ok())?;
    let signer = match std::env::var(KEY_ENV) {
        Ok(pem) if !pem.trim().is_empty() => AssertionSigner::from_pem(&pem)
            .with_context(|| format!("{KEY_ENV} is not a P-256 key in PEM (PKCS#8 or SEC1)"))?,
        _ => AssertionSigner::generate()?,
    };
    let tls = file.tls.as_ref().map(tls_config).transpose()?;
    let admin_token = std::env::var(ADMIN_TOKEN_VAR)
        .ok()
        .filter(|t| !t.is_empty())
        .map(Arc::<str>::from);
    let metrics = GatewayMetrics::install().context("installing the metrics recorder")?;
    metrics.spawn_upkeep(Duration::from_secs(5));
    // With the secret set an engine runs even without rules, so a reload can add some.
    let alerts = crate::alerts::engine(
        file.alerts.clone(),
        crate::alerts::secret_from_env(),
        "[[alerts]]",
    )?;

    let listener = crate::cli::bind(&file.listen).await?;
    let stores = stores::open(&limits, &audit).await?;
    let writer = AuditWriter::spawn(
        Arc::clone(&stores.audit),
        AuditConfig {
            spill_path: audit.spill_path(),
            observers: alerts
                .iter()
                .map(|a| Arc::new(a.clone()) as Arc<dyn AuditObserver>)
                .collect(),
            ..AuditConfig::default()
        },
    );
    // `[bans]` (on by default), kept in the limits store like the rate limits.
    let bans = file
        .bans
        .clone()
        .map(|policy| Bans::new(Arc::clone(&stores.bans), policy));
    let served = async {
        let session_cookie = file
            .identity
            .session_cookie
            .clone()
            .unwrap_or_else(|| SESSION_COOKIE.to_owned());
        let security = demo::security_for(
            &config,
            &Wiring {
                audit: Some(writer.clone()),
                limits: Some(Arc::new(TimedStore::from_arc(Arc::clone(&stores.limits)))),
                session_cookie: Some(session_cookie.clone()),
                // Over TLS the CSRF cookie is `__Host-` and `Secure`, and HSTS is sent.
                secure_cookies: tls.is_some(),
                bans: bans.clone(),
                ..Wiring::default()
            },
            identity.as_ref(),
        )?;
        let mut parts = GatewayParts::new(security)?;
        parts.signer = Arc::new(signer);
        parts.cookie_names = Arc::new(CookieNames::new([session_cookie]));
        // The dashboard at /_secure-routes/ reads the gateway's own audit trail (only served
        // with an admin token).
        if admin_token.is_some() {
            parts.audit_reader = Some(stores::audit_reader(&audit)?);
        }
        parts.admin_token = admin_token;
        parts.metrics = Some(metrics.clone());
        parts.https = tls.is_some();
        let metrics = Some(metrics);
        let (router, handle) = gateway(&file, parts).context("invalid configuration")?;
        let addr = listener.local_addr()?;
        println!(
            "secure-routes gateway listening on {}://{addr} -> {} ({} routes; audit {audit}, limits {}, bans {})",
            if tls.is_some() { "https" } else { "http" },
            file.upstream,
            file.routes().len(),
            stores.limits.name(),
            file.ban_rule()
        );
        reload_on_hangup(hangups, path.clone(), handle, file.clone(), alerts.clone());
        // One stop signal for the gateway and the metrics listener.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let metrics_server = match (file.metrics_listen, metrics) {
            (Some(at), Some(m)) => {
                let l = crate::cli::bind(&at.to_string()).await?;
                println!("metrics served at http://{}/metrics", l.local_addr()?);
                Some(tokio::spawn(secure_routes::serve::serve(
                    l,
                    metrics_router(m),
                    ServeConfig::default(),
                    stopped(stop_rx.clone()),
                )))
            }
            _ => None,
        };
        let stop = stopped(stop_rx);
        match tls {
            Some(tls) => {
                secure_routes::serve::serve_tls(listener, router, ServeConfig::default(), tls, stop)
                    .await?
            }
            None => {
                secure_routes::serve::serve(listener, router, ServeConfig::default(), stop).await?
            }
        };
        if let Some(m) = metrics_server {
            m.await??;
        }
        anyhow::Ok(())
    }
    .await;
    // Strikes still queued reach the ban store first (a ban they issue is an audit event).
    if let Some(bans) = &bans {
        bans.flush().await;
    }
    // Always: events recorded so far reach the store (or the spill file).
    writer.shutdown().await;
    // Queued alerts get a bounded chance to reach their webhooks.
    if let Some(a) = &alerts {
        crate::alerts::drain(a).await;
    }
    drop(stores);
    served
}

/// The `metrics_listen` address's only endpoint: `GET /metrics`, the Prometheus text, without
/// the admin token (the address is meant to be reachable only by the scraper).
fn metrics_router(metrics: GatewayMetrics) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = metrics.render();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        secure_routes_gateway::metrics::CONTENT_TYPE,
                    )],
                    text,
                )
            }
        }),
    )
}

/// The SIGHUP stream, installed first thing in [`run`]: a SIGHUP during start-up (opening
/// stores, binding) would otherwise kill the process with the default action.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangups() -> Hangups {}

/// On SIGHUP: re-reads the file and swaps the routes and the `[[alerts]]` rules; a bad file
/// keeps the running ones and logs every problem. Settings that need a restart are named when
/// they changed.
fn reload_on_hangup(
    hangups: Hangups,
    path: PathBuf,
    handle: GatewayHandle,
    running: GatewayConfig,
    alerts: Option<AlertEngine>,
) {
    #[cfg(unix)]
    {
        let Some(mut hangups) = hangups else {
            tracing::warn!("cannot listen for SIGHUP: reload needs a restart");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reload(&path, &handle, &running, alerts.as_ref());
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (hangups, path, handle, running, alerts);
    }
}

/// One reload (see [`reload_on_hangup`]). `running` is the file the process started with:
/// what lives in the shared state (listen, stores, identity, proxies, origins, metrics
/// address, `[bans]`) keeps its start-up value, and a change to it is named in the log. The
/// `[[alerts]]` rules are swapped after the routes (a rule kept unchanged keeps its counts
/// and cooldowns, see [`AlertEngine::set_rules`]); rules in a gateway started without
/// `SECURE_ROUTES_WEBHOOK_SECRET` refuse the whole reload, since nothing could sign them.
fn reload(
    path: &Path,
    handle: &GatewayHandle,
    running: &GatewayConfig,
    alerts: Option<&AlertEngine>,
) {
    let file = match load(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e:#}");
            return;
        }
    };
    if alerts.is_none() && !file.alerts.is_empty() {
        tracing::error!(
            "reload refused, the running configuration stays: [[alerts]] needs {} (32 bytes or more), which was not set when the gateway started",
            crate::alerts::WEBHOOK_SECRET_VAR
        );
        return;
    }
    // The proxy's list of trusted proxies must stay the pipeline's (which keeps its start-up
    // value): otherwise the forwarded headers and the audited client address would disagree.
    let mut effective = file.clone();
    effective
        .trusted_proxies
        .clone_from(&running.trusted_proxies);
    match handle.reload(&effective) {
        Ok(()) => {
            if let Some(engine) = alerts
                && let Err(e) = engine.set_rules(file.alerts.clone())
            {
                // The file's parser refuses what set_rules would (duplicate names), so this
                // is a disagreement between the two, not a user's mistake: said loudly.
                tracing::error!("[[alerts]] not reloaded, the running rules stay: {e}");
            }
            tracing::info!(
                routes = file.routes().len(),
                alerts = file.alerts.len(),
                "configuration reloaded"
            );
            let changed = restart_needed(&file, running);
            if !changed.is_empty() {
                tracing::warn!(
                    "changed settings that need a restart, still on their start-up values: {}",
                    changed.join(", ")
                );
            }
        }
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
    }
}

/// The settings `file` changes against the `running` configuration that a reload cannot
/// apply (they live in the shared state built at start), by their config key.
fn restart_needed(file: &GatewayConfig, running: &GatewayConfig) -> Vec<&'static str> {
    [
        ("listen", file.listen != running.listen),
        ("stores", file.stores != running.stores),
        ("identity", file.identity != running.identity),
        (
            "trusted_proxies",
            file.trusted_proxies != running.trusted_proxies,
        ),
        (
            "allowed_origins",
            file.allowed_origins != running.allowed_origins,
        ),
        (
            "metrics_listen",
            file.metrics_listen != running.metrics_listen,
        ),
        // The ban policy lives in the shared `Security` with the store it reads.
        ("bans", file.bans != running.bans),
    ]
    .into_iter()
    .filter_map(|(k, c)| c.then_some(k))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_that_changes_bans_names_them_as_needing_a_restart() {
        let base = "upstream = \"http://u\"\n[[routes]]\npath = \"/a\"\n";
        let running = GatewayConfig::parse(base).unwrap();
        let same = GatewayConfig::parse(&format!("{base}[bans]\nthreshold = 50\n")).unwrap();
        assert!(restart_needed(&same, &running).is_empty());
        for changed in [
            "threshold = 3",
            "enabled = false",
            "allow = [\"10.0.0.0/8\"]",
        ] {
            let file = GatewayConfig::parse(&format!("{base}[bans]\n{changed}\n")).unwrap();
            assert_eq!(restart_needed(&file, &running), ["bans"], "{changed}");
        }
    }
}
