//! Alert rules for `demo` and `serve`, and the one function that turns them into a running
//! [`AlertEngine`] for both, so the two commands sign, retry and count alike.
//!
//! `serve` takes its rules from the config file's `[[alerts]]`; `demo` from
//! `--alert-webhook URL` (the [`default_rules`], for a first look without a config file) or
//! `--alerts FILE` (a file of `[[alerts]]` tables, read by the gateway's own parser,
//! [`secure_routes_gateway::config::parse_alerts`]). Either way the webhooks are signed with
//! [`WEBHOOK_SECRET_VAR`]: an alert a receiver cannot authenticate could be forged by anyone
//! who finds its URL, so there is no unsigned mode.
//!
//! ```
//! let rules = secure_routes_cli::alerts::default_rules("http://127.0.0.1:9000/hook").unwrap();
//! let names: Vec<_> = rules.iter().map(|r| r.name()).collect();
//! assert_eq!(names, ["unauthorized-access", "csrf-failures", "ip-banned"]);
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use secure_routes::alerts::{AlertEngine, AlertRule, Per};
use secure_routes::audit::AuditAction;

/// The environment variable holding the alert webhooks' signing secret (32 bytes or more).
///
/// ```
/// assert_eq!(secure_routes_cli::alerts::WEBHOOK_SECRET_VAR, "SECURE_ROUTES_WEBHOOK_SECRET");
/// ```
pub const WEBHOOK_SECRET_VAR: &str = "SECURE_ROUTES_WEBHOOK_SECRET";

/// The cooldown of the [`default_rules`]: one alert per attacker per ten minutes.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(600);

/// The rules `demo --alert-webhook URL` installs, all to `webhook`, each with a 10-minute
/// cooldown: `unauthorized-access` (5 `unauthorized_access` per IP within 1 minute: a token
/// being guessed or replayed), `csrf-failures` (5 `csrf_validation_failed` per IP within 1
/// minute: a cross-site attack being tried) and `ip-banned` (the first `ip_banned` per IP: a
/// ban issued, or a banned address refused; the 10-minute cooldown keeps the refusals that
/// follow a ban from alerting again). An invalid URL is an error that never repeats it (it may hold
/// a secret).
///
/// ```
/// use secure_routes_cli::alerts::default_rules;
/// let rules = default_rules("http://127.0.0.1:9000/hook").unwrap();
/// assert_eq!((rules[0].count(), rules[0].within().as_secs()), (5, 60));
/// assert_eq!(rules[2].count(), 1);
/// let err = default_rules("ftp://user:hunter2@x/").unwrap_err().to_string();
/// assert!(err.contains("--alert-webhook") && !err.contains("hunter2"), "{err}");
/// ```
pub fn default_rules(webhook: &str) -> anyhow::Result<Vec<AlertRule>> {
    let minute = Duration::from_secs(60);
    [
        ("unauthorized-access", AuditAction::UnauthorizedAccess, 5),
        ("csrf-failures", AuditAction::CsrfValidationFailed, 5),
        ("ip-banned", AuditAction::IpBanned, 1),
    ]
    .into_iter()
    .map(|(name, action, count)| {
        AlertRule::builder(name)
            .action(action)
            .count(count)
            .within(minute)
            .per(Per::Ip)
            .webhook(webhook)
            .cooldown(DEFAULT_COOLDOWN)
            .build()
            .map_err(|e| anyhow::anyhow!("--alert-webhook: {e}"))
    })
    .collect()
}

/// Reads a file of `[[alerts]]` tables (`demo --alerts FILE`) with the gateway's parser: the
/// same keys, checks and messages as `[[alerts]]` in `secure-routes.toml`, every problem with
/// its key and line.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("alerts.toml");
/// std::fs::write(&path, "[[alerts]]\nname = \"a\"\naction = \"unauthorized_access\"\ncount = 0\nwithin = \"1m\"\nper = \"ip\"\nwebhook = \"http://h/\"\n").unwrap();
/// let err = secure_routes_cli::alerts::read_rules(&path).unwrap_err().to_string();
/// assert!(err.contains("alerts[0].count (line 4)"), "{err}");
/// ```
pub fn read_rules(path: &Path) -> anyhow::Result<Vec<AlertRule>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    secure_routes_gateway::config::parse_alerts(&text).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        anyhow::anyhow!(
            "{} has {} problem(s):\n{}",
            path.display(),
            problems.len(),
            list.join("\n")
        )
    })
}

/// The signing secret from [`WEBHOOK_SECRET_VAR`] (`None` when unset or empty).
pub fn secret_from_env() -> Option<String> {
    std::env::var(WEBHOOK_SECRET_VAR)
        .ok()
        .filter(|s| !s.is_empty())
}

/// The engine `demo` and `serve` run `rules` with (on the current tokio runtime), signing
/// with `secret`. `None` when there are no rules and no secret (nothing to send, nothing to
/// send with). With a secret and no rules the engine still runs, empty, so a reload can add
/// rules. Rules without a secret are an error naming `source` (`[[alerts]]`,
/// `--alert-webhook`) and the variable; so is a secret shorter than 32 bytes.
///
/// ```
/// use secure_routes_cli::alerts::{default_rules, engine};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert!(engine(Vec::new(), None, "[[alerts]]").unwrap().is_none());
/// let rules = default_rules("http://127.0.0.1:9/hook").unwrap();
/// let err = engine(rules.clone(), None, "--alert-webhook").unwrap_err().to_string();
/// assert!(err.contains("--alert-webhook needs SECURE_ROUTES_WEBHOOK_SECRET"), "{err}");
/// let running = engine(rules, Some("s".repeat(32)), "--alert-webhook").unwrap().unwrap();
/// assert_eq!(running.rules().len(), 3);
/// # });
/// ```
pub fn engine(
    rules: Vec<AlertRule>,
    secret: Option<String>,
    source: &str,
) -> anyhow::Result<Option<AlertEngine>> {
    let secret = match secret {
        Some(s) => s,
        None if rules.is_empty() => return Ok(None),
        None => anyhow::bail!(
            "{source} needs {WEBHOOK_SECRET_VAR} (32 bytes or more) to sign its webhooks; \
             generate one with `openssl rand -hex 32` and give the receiver the same value"
        ),
    };
    let engine = AlertEngine::builder()
        .rules(rules)
        .secret(secret)
        .spawn()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{source}: the alert engine"))?;
    Ok(Some(engine))
}

/// How long a stopping `demo` or `serve` waits for queued webhooks (each bounded by its own
/// attempts and backoff; the alerts are in the audit trail either way).
pub const DRAIN_BOUND: Duration = Duration::from_secs(10);

/// Stops `engine` taking alerts and waits, at most [`DRAIN_BOUND`], for the queued ones to be
/// delivered or given up. Call it after the audit writer is flushed (the writer's last events
/// can still fire a rule).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let engine = secure_routes_cli::alerts::engine(Vec::new(), Some("s".repeat(32)), "test").unwrap().unwrap();
/// secure_routes_cli::alerts::drain(&engine).await;
/// # });
/// ```
pub async fn drain(engine: &AlertEngine) {
    if tokio::time::timeout(DRAIN_BOUND, engine.shutdown())
        .await
        .is_err()
    {
        // Not lost silently: the engine's own counters and log lines name each alert that
        // never went out; this says why the process did not wait for them.
        tracing::warn!(
            "stopped waiting for alert webhooks after {DRAIN_BOUND:?} (their alert_triggered events are in the audit log)"
        );
    }
}
