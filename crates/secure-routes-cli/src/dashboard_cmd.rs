//! `secure-routes dashboard --audit LOCATION [--limits LOCATION] --addr HOST:PORT`: the audit
//! dashboard (the `secure-routes-dashboard` crate) on its own, for library users whose app
//! writes the audit trail and who run no gateway.
//!
//! The admin token comes from `SECURE_ROUTES_ADMIN_TOKEN` and is required: without it the
//! command refuses to start (a dashboard nobody can open, or one open to anybody, is never
//! what was meant). With `--limits` the bans in that shared store are listed and can be
//! lifted; failed logins and lifts are recorded in the audit location itself.
//!
//! ```
//! assert_eq!(
//!     secure_routes_cli::dashboard_cmd::admin_token(Some("")).unwrap_err().to_string(),
//!     "SECURE_ROUTES_ADMIN_TOKEN is not set: the dashboard needs it (it is the login password and the API's bearer token)"
//! );
//! assert_eq!(&*secure_routes_cli::dashboard_cmd::admin_token(Some("s3cret")).unwrap(), "s3cret");
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secure_routes::audit::{AuditConfig, AuditWriter};
use secure_routes::bans::{BanPolicy, Bans};
use secure_routes::serve::ServeConfig;
use secure_routes_dashboard::DashboardState;

use crate::gateway_cmd::ADMIN_TOKEN_VAR;
use crate::stores::{self, AuditLocation, LimitsLocation};

/// The admin token from the environment's value, refused when unset or blank.
///
/// # Errors
///
/// When `value` is `None` or blank.
pub fn admin_token(value: Option<&str>) -> anyhow::Result<Arc<str>> {
    match value.map(str::trim) {
        Some(t) if !t.is_empty() => Ok(Arc::from(t)),
        _ => anyhow::bail!(
            "{ADMIN_TOKEN_VAR} is not set: the dashboard needs it (it is the login password and \
             the API's bearer token)"
        ),
    }
}

/// Runs the dashboard until `shutdown` resolves.
///
/// # Errors
///
/// Without an admin token, when a store cannot be opened, or the address cannot be bound.
pub async fn run(
    audit: AuditLocation,
    limits: Option<LimitsLocation>,
    addr: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = admin_token(std::env::var(ADMIN_TOKEN_VAR).ok().as_deref())?;
    let reader = stores::audit_reader(&audit)?;
    // A `Bans` of its own over the servers' shared store (its policy is never used: this
    // process strikes nothing); the servers see a lift at their next sync, within 1 s.
    let bans: Option<Bans> = match &limits {
        Some(l) => Some(Bans::new(
            crate::bans_cmd::open(l).await?,
            BanPolicy::default(),
        )),
        None => None,
    };
    // The dashboard's own events (failed logins, cross-site attempts, lifts) go to the trail
    // it shows.
    let opened = stores::open(&LimitsLocation::Memory, &audit).await?;
    let writer = AuditWriter::spawn(
        Arc::clone(&opened.audit),
        AuditConfig {
            spill_path: audit.spill_path(),
            ..AuditConfig::default()
        },
    );
    let mut state = DashboardState::new(reader, token).with_audit(writer.clone());
    if let Some(b) = bans {
        state = state.with_bans(b);
    }
    let listener = crate::cli::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!(
        "secure-routes dashboard listening on http://{local} (page at /_secure-routes/; audit \
         {audit}; bans {})",
        limits.map_or_else(|| "none".to_owned(), |l| l.to_string())
    );
    let app = secure_routes_dashboard::router(state);
    let config = ServeConfig {
        // Open live tails end with the server: do not wait long for them.
        shutdown_grace: Duration::from_secs(2),
        ..ServeConfig::default()
    };
    let served = secure_routes::serve::serve(listener, app, config, shutdown)
        .await
        .context("serving the dashboard");
    writer.shutdown().await;
    drop(opened);
    served.map(|_| ())
}
