//! `secure-routes bans list | lift KEY | add IP --for DUR`: reads and changes the bans in a
//! shared limits store (`--limits sqlite:PATH`, `redis://…`, `postgres://…`).
//!
//! A memory store is refused: it lives inside one process, so another process (this command)
//! can neither see nor change its bans. `list --json` prints one object per line: `key`,
//! `until` (RFC 3339, UTC), `strikes` (the ban's number in the key's escalation) and `reason`.
//! `lift` and `add` take `--audit LOCATION` (optional) to record what the operator did in the
//! servers' audit log: `ban_lifted` (reason `ban_lifted`) and `ip_banned` (reason `manual`),
//! with the key's address or subject in the event's own fields and `"via": "cli"`.
//! Keys and reasons are escaped before printing (a reason is free text written by whoever
//! added the ban), as `secure-routes audit` does.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use secure_routes_cli::{bans_cmd, stores::LimitsLocation};
//! let Err(err) = bans_cmd::open(&LimitsLocation::Memory).await else { panic!("opened") };
//! assert!(err.to_string().contains("per process"));
//! # });
//! ```

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use secure_routes::audit::{
    AuditAction, AuditEvent, AuditSink, Outcome, Reason, escape_for_display,
};
use secure_routes::bans::{Ban, BanKey, BanStore, REASON_MANUAL};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::stores::LimitsLocation;

/// Opens the ban store at `location` ([`crate::stores::open_bans`], the servers' own opening).
///
/// # Errors
///
/// For `memory` (bans there belong to one process), and when the store cannot be opened.
pub async fn open(location: &LimitsLocation) -> anyhow::Result<Arc<dyn BanStore>> {
    crate::stores::open_bans(location).await
}

/// The wall clock as the ban stores read it.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The bans in force at `now`, as a table or JSON lines.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use secure_routes::bans::{BanKey, BanStore, MemoryBans};
/// let store = MemoryBans::new();
/// let now = Duration::from_secs(1_700_000_000);
/// store.add(&BanKey::subject("eve"), now + Duration::from_secs(60), "manual", now).await.unwrap();
/// let out = secure_routes_cli::bans_cmd::list(&store, now, true).await.unwrap();
/// assert_eq!(out, "{\"key\":\"sub:eve\",\"until\":\"2023-11-14T22:14:20Z\",\"strikes\":0,\"reason\":\"manual\"}\n");
/// # });
/// ```
///
/// # Errors
///
/// When the store fails.
pub async fn list(store: &dyn BanStore, now: Duration, json: bool) -> anyhow::Result<String> {
    let bans = store.list(now).await.context("listing bans")?;
    let mut out = String::new();
    if json {
        for ban in &bans {
            let line = JsonBan {
                key: ban.key.as_str(),
                until: rfc3339(ban.until)?,
                strikes: ban.strikes,
                reason: &ban.reason,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        }
        return Ok(out);
    }
    if bans.is_empty() {
        return Ok("no bans in force\n".into());
    }
    writeln!(
        out,
        "{:<40} {:<20} {:>7}  REASON",
        "KEY", "UNTIL", "STRIKES"
    )?;
    for ban in &bans {
        writeln!(
            out,
            "{:<40} {:<20} {:>7}  {}",
            escape_for_display(ban.key.as_str()),
            rfc3339(ban.until)?,
            ban.strikes,
            escape_for_display(&ban.reason)
        )?;
    }
    Ok(out)
}

/// One line of `list --json`, fields in the documented order.
#[derive(serde::Serialize)]
struct JsonBan<'a> {
    key: &'a str,
    until: String,
    strikes: u32,
    reason: &'a str,
}

/// Lifts the ban on `key` (`ip:…`, `sub:…` or a bare address) and forgets its history; with
/// `audit`, records a `ban_lifted` event when there was something to lift.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes::bans::MemoryBans;
/// let out = secure_routes_cli::bans_cmd::lift(&MemoryBans::new(), "203.0.113.7", None).await.unwrap();
/// assert_eq!(out, "no ban or history for ip:203.0.113.7\n");
/// # });
/// ```
///
/// # Errors
///
/// For a key that does not parse, or when the store or the audit sink fails (the ban is
/// lifted even when the event cannot be written; the error says so).
pub async fn lift(
    store: &dyn BanStore,
    key: &str,
    audit: Option<&dyn AuditSink>,
) -> anyhow::Result<String> {
    let key = BanKey::parse(key)?;
    if !store.lift(&key).await.context("lifting the ban")? {
        return Ok(format!("no ban or history for {key}\n"));
    }
    if let Some(sink) = audit {
        let event = about(AuditEvent::new(AuditAction::BanLifted), &key)
            .with_outcome(Outcome::Allowed)
            .with_reason(Reason::BanLifted.as_str())
            .with_metadata(serde_json::json!({ "key": key.as_str(), "via": "cli" }));
        record(sink, event)
            .await
            .with_context(|| format!("lifted {key}, but"))?;
    }
    Ok(format!("lifted {key}\n"))
}

/// `event` about `key`: its address or subject in the event's own fields, so filtering the
/// audit log by either shows the ban, the refusals and the lift together.
fn about(mut event: AuditEvent, key: &BanKey) -> AuditEvent {
    event.client_ip = key.as_str().strip_prefix("ip:").map(str::to_owned);
    event.subject = key.as_str().strip_prefix("sub:").map(str::to_owned);
    event
}

/// Writes one operator event (nothing is lost silently: a failure is the command's error).
async fn record(sink: &dyn AuditSink, event: AuditEvent) -> anyhow::Result<()> {
    sink.write_batch(std::slice::from_ref(&event))
        .await
        .map_err(|e| anyhow::anyhow!("the {} event was not recorded: {e}", event.action.as_str()))
}

/// Bans `target` (an address, grouped as the pipeline groups it, or `ip:…` / `sub:…`) for
/// `length` from `now`; with `audit`, records an `ip_banned` event (reason `manual`).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use secure_routes::bans::MemoryBans;
/// let now = Duration::from_secs(1_700_000_000);
/// let out = secure_routes_cli::bans_cmd::add(&MemoryBans::new(), "2001:db8::1",
///     Duration::from_secs(3600), "manual", now, None).await.unwrap();
/// assert_eq!(out, "banned ip:2001:db8::/64 until 2023-11-14T23:13:20Z\n");
/// # });
/// ```
///
/// # Errors
///
/// For a target that does not parse, an empty length, or when the store or the audit sink
/// fails.
pub async fn add(
    store: &dyn BanStore,
    target: &str,
    length: Duration,
    reason: &str,
    now: Duration,
    audit: Option<&dyn AuditSink>,
) -> anyhow::Result<String> {
    let key = BanKey::parse(target)?;
    if length.is_zero() {
        bail!("--for must be longer than zero");
    }
    if reason.chars().any(char::is_control) || reason.len() > 200 {
        bail!("--reason must be at most 200 printable characters");
    }
    let ban: Ban = store
        .add(&key, now + length, reason, now)
        .await
        .context("adding the ban")?;
    if let Some(sink) = audit {
        let event = about(AuditEvent::new(AuditAction::IpBanned), &ban.key)
            .with_status(403)
            .with_reason(REASON_MANUAL)
            .with_metadata(serde_json::json!({
                "key": ban.key.as_str(),
                "until": rfc3339(ban.until)?,
                "strikes": ban.strikes,
                "reason": ban.reason,
                "via": "cli",
            }));
        record(sink, event)
            .await
            .with_context(|| format!("banned {}, but", ban.key))?;
    }
    Ok(format!(
        "banned {} until {}\n",
        ban.key,
        rfc3339(ban.until)?
    ))
}

fn rfc3339(t: Duration) -> anyhow::Result<String> {
    let nanos = i128::try_from(t.as_nanos()).context("time out of range")?;
    Ok(OffsetDateTime::from_unix_timestamp_nanos(nanos)?.format(&Rfc3339)?)
}
