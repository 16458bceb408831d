//! `secure-routes serve --config FILE`: the gateway. Opens the stores the file names, builds
//! the shared [`Security`] with the secrets from the environment (the same variables as
//! `demo`), serves the routes of [`secure_routes_gateway::gateway`] with the server limits of
//! [`secure_routes::serve`], reloads the routes on SIGHUP and drains on SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secure_routes::Security;
use secure_routes::audit::{AuditConfig, AuditWriter};
use secure_routes::serve::ServeConfig;
use secure_routes_gateway::config::{GatewayConfig, Identity as IdentityConfig};
use secure_routes_gateway::gateway::{GatewayHandle, GatewayParts, gateway};
use secure_routes_gateway::identity::{AssertionSigner, CookieNames};
use secure_routes_gateway::metrics::{GatewayMetrics, TimedStore};

use crate::config::Config;
use crate::demo::{self, DemoOptions, Identity, SESSION_COOKIE, Wiring};
use crate::stores::{self, AuditLocation, LimitsLocation};

/// The environment variable holding the gateway's assertion key (PKCS#8 PEM), so several
/// instances sign with one key; without it each process makes its own at start.
pub const ASSERTION_KEY_VAR: &str = "SECURE_ROUTES_ASSERTION_KEY";
/// The environment variable holding the admin token (`/_secure-routes/metrics`).
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
    let file = load(&path)?;
    let mut config = Config::from_env()?;
    config.trusted_proxies.clone_from(&file.trusted_proxies);
    config.allowed_origins.clone_from(&file.allowed_origins);
    let (limits, audit) = locations(&file)?;
    let identity = identity(&file.identity, std::env::var("SUPABASE_JWT_SECRET").ok())?;
    let signer = match std::env::var(ASSERTION_KEY_VAR) {
        Ok(pem) if !pem.trim().is_empty() => AssertionSigner::from_pem(&pem)
            .with_context(|| format!("{ASSERTION_KEY_VAR} is not a PKCS#8 P-256 key"))?,
        _ => AssertionSigner::generate()?,
    };
    let admin_token = std::env::var(ADMIN_TOKEN_VAR)
        .ok()
        .filter(|t| !t.is_empty())
        .map(Arc::<str>::from);
    let metrics = GatewayMetrics::install().context("installing the metrics recorder")?;
    metrics.spawn_upkeep(Duration::from_secs(5));

    let listener = crate::cli::bind(&file.listen).await?;
    let stores = stores::open(&limits, &audit).await?;
    let writer = AuditWriter::spawn(
        Arc::clone(&stores.audit),
        AuditConfig {
            spill_path: audit.spill_path(),
            ..AuditConfig::default()
        },
    );
    let served = async {
        let session_cookie = file
            .identity
            .session_cookie
            .clone()
            .unwrap_or_else(|| SESSION_COOKIE.to_owned());
        let security = security(
            &config,
            &Wiring {
                audit: Some(writer.clone()),
                limits: Some(Arc::new(TimedStore::from_arc(Arc::clone(&stores.limits)))),
                session_cookie: Some(session_cookie.clone()),
                ..Wiring::default()
            },
            identity,
        )?;
        let mut parts = GatewayParts::new(security)?;
        parts.signer = Arc::new(signer);
        parts.cookie_names = Arc::new(CookieNames::new([session_cookie]));
        parts.admin_token = admin_token;
        parts.metrics = Some(metrics);
        let (router, handle) = gateway(&file, parts).context("invalid configuration")?;
        let addr = listener.local_addr()?;
        println!(
            "secure-routes gateway on http://{addr} -> {} ({} routes; audit {audit}, limits {})",
            file.upstream,
            file.routes().len(),
            stores.limits.name()
        );
        reload_on_hangup(path.clone(), handle);
        secure_routes::serve::serve(listener, router, ServeConfig::default(), shutdown).await?;
        anyhow::Ok(())
    }
    .await;
    // Always: events recorded so far reach the store (or the spill file).
    writer.shutdown().await;
    drop(stores);
    served
}

/// The gateway's [`Security`]: the demo's wiring, with an authenticator only when the file
/// names an identity source.
fn security(
    config: &Config,
    wiring: &Wiring,
    identity: Option<Identity>,
) -> anyhow::Result<Security> {
    let mut b = Security::builder()
        .csrf_secret(&config.csrf_secret)
        .trusted_proxies(&config.trusted_proxies)
        .client_ip_header(config.client_ip_header)
        .allowed_origins(&config.allowed_origins)
        .development(!config.production);
    if let Some(identity) = identity {
        let wiring = Wiring {
            identity,
            ..wiring.clone()
        };
        let (auth, prefetch) = demo::authenticator(config, &wiring)?;
        if let Some(p) = prefetch {
            tokio::spawn(p.run());
        }
        b = b.shared_authenticator(auth);
    }
    if let Some(w) = &wiring.audit {
        b = b.audit(w.clone());
    }
    if let Some(s) = &wiring.limits {
        b = b.shared_rate_limit_store(Arc::clone(s));
    }
    Ok(b.build()?)
}

/// On SIGHUP: re-reads the file and swaps the routes; a bad file keeps the running ones and
/// logs every problem. Settings that need a restart are named when they changed.
fn reload_on_hangup(path: PathBuf, handle: GatewayHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload needs a restart");
            return;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reload(&path, &handle);
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (path, handle);
    }
}

/// One reload (see [`reload_on_hangup`]).
fn reload(path: &Path, handle: &GatewayHandle) {
    let file = match load(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("reload refused, the running configuration stays: {e:#}");
            return;
        }
    };
    match handle.reload(&file) {
        Ok(()) => tracing::info!(
            routes = file.routes().len(),
            "configuration reloaded (listen, stores, identity, trusted_proxies and allowed_origins need a restart)"
        ),
        Err(e) => tracing::error!("reload refused, the running configuration stays: {e}"),
    }
}
