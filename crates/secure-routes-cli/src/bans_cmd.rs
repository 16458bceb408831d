//! `secure-routes bans list | lift KEY | add IP --for DUR`: reads and changes the bans in a
//! shared limits store (`--limits sqlite:PATH`, `redis://…`, `postgres://…`).
//!
//! A memory store is refused: it lives inside one process, so another process (this command)
//! can neither see nor change its bans. `list --json` prints one object per line: `key`,
//! `until` (RFC 3339, UTC), `strikes` (the ban's number in the key's escalation) and `reason`.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use secure_routes::audit::escape_for_display;
use secure_routes::bans::{Ban, BanKey, BanStore};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::stores::LimitsLocation;

/// Opens the ban store at `location` (Postgres locations are migrated first).
///
/// # Errors
///
/// For `memory` (bans there belong to one process), and when the store cannot be opened.
pub async fn open(location: &LimitsLocation) -> anyhow::Result<Box<dyn BanStore>> {
    Ok(match location {
        LimitsLocation::Memory => bail!(
            "--limits memory keeps bans per process, so there is nothing to read or change from \
             here; pass the shared store the servers use: sqlite:PATH, redis://… or postgres://…"
        ),
        LimitsLocation::Sqlite(path) => {
            if !path.exists() {
                bail!(
                    "no limits store at {} (--limits {location})",
                    path.display()
                );
            }
            Box::new(
                secure_routes_sqlite::SqliteStore::open(path)
                    .with_context(|| format!("opening ban store {location}"))?,
            )
        }
        LimitsLocation::Redis(url) => Box::new(
            secure_routes_redis::RedisStore::connect(url)
                .await
                .with_context(|| format!("connecting to ban store {location}"))?,
        ),
        LimitsLocation::Postgres(url) => {
            let pool = secure_routes_postgres::connect(url, 2)
                .with_context(|| format!("postgres location {location}"))?;
            secure_routes_postgres::migrate(&pool)
                .await
                .with_context(|| format!("migrating {location}"))?;
            Box::new(secure_routes_postgres::PostgresStore::new(pool))
        }
    })
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

/// Lifts the ban on `key` (`ip:…`, `sub:…` or a bare address) and forgets its history.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use secure_routes::bans::MemoryBans;
/// let out = secure_routes_cli::bans_cmd::lift(&MemoryBans::new(), "203.0.113.7").await.unwrap();
/// assert_eq!(out, "no ban or history for ip:203.0.113.7\n");
/// # });
/// ```
///
/// # Errors
///
/// For a key that does not parse, or when the store fails.
pub async fn lift(store: &dyn BanStore, key: &str) -> anyhow::Result<String> {
    let key = BanKey::parse(key)?;
    Ok(if store.lift(&key).await.context("lifting the ban")? {
        format!("lifted {key}\n")
    } else {
        format!("no ban or history for {key}\n")
    })
}

/// Bans `target` (an address, grouped as the pipeline groups it, or `ip:…` / `sub:…`) for
/// `length` from `now`.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use secure_routes::bans::MemoryBans;
/// let now = Duration::from_secs(1_700_000_000);
/// let out = secure_routes_cli::bans_cmd::add(&MemoryBans::new(), "2001:db8::1",
///     Duration::from_secs(3600), "manual", now).await.unwrap();
/// assert_eq!(out, "banned ip:2001:db8::/64 until 2023-11-14T23:13:20Z\n");
/// # });
/// ```
///
/// # Errors
///
/// For a target that does not parse, an empty length, or when the store fails.
pub async fn add(
    store: &dyn BanStore,
    target: &str,
    length: Duration,
    reason: &str,
    now: Duration,
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
