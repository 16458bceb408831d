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
use secure_routes::audit::{
    ActionCount, AuditConfig, AuditError, AuditEvent, AuditQuery, AuditReader, AuditWriter,
    BoxFuture, MemoryAuditReader, TopBy, TopEntry,
};
use secure_routes::bans::BanStore;
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
    let reader = open_reader(&audit)?;
    let bans: Option<Arc<dyn BanStore>> = match &limits {
        Some(l) => Some(Arc::from(crate::bans_cmd::open(l).await?)),
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

/// The audit reader for `location`.
///
/// Until the stores' own readers are wired (`stores::audit_reader`), this reads the events
/// through [`stores::read_audit`] on each call and answers over them in memory: right for
/// every store, not fast on a large one.
pub(crate) fn open_reader(location: &AuditLocation) -> anyhow::Result<Arc<dyn AuditReader>> {
    if let AuditLocation::Sqlite(p) | AuditLocation::Jsonl(p) = location {
        anyhow::ensure!(
            p.exists(),
            "no audit log at {} (run `secure-routes demo` or your app first)",
            p.display()
        );
    }
    Ok(Arc::new(LoadingReader(location.clone())))
}

struct LoadingReader(AuditLocation);

impl LoadingReader {
    async fn load(&self, q: &AuditQuery) -> Result<MemoryAuditReader, AuditError> {
        // The filters every store's reader already has; the rest are applied in memory.
        let wide = AuditQuery {
            action: q.action,
            since: q.since,
            limit: usize::MAX,
            ..AuditQuery::default()
        };
        stores::read_audit(&self.0, &wide)
            .await
            .map(MemoryAuditReader::new)
            .map_err(|e| AuditError(format!("{e:#}")))
    }
}

impl AuditReader for LoadingReader {
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move { self.load(q).await?.events(q).await })
    }

    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>> {
        Box::pin(async move { self.load(q).await?.counts(q, bucket).await })
    }

    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>> {
        Box::pin(async move { self.load(q).await?.top(q, by, n).await })
    }

    fn name(&self) -> &'static str {
        "loading"
    }
}
