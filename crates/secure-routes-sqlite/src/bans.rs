//! Bans in the `bans` table: each operation loads the key's row, runs the core's pure step
//! ([`BanState`]) and writes the row back, on the store's writer thread and inside its
//! transaction, so operations on one key never interleave (also across processes sharing the
//! file: every batch is an `IMMEDIATE` transaction, which holds SQLite's write lock).

use std::time::Duration;

use rusqlite::{OptionalExtension, Transaction, params};
use secure_routes::bans::{
    Ban, BanKey, BanPolicy, BanState, StoreError, StrikeOutcome, duration_ms,
};

const SELECT_SQL: &str =
    "SELECT log, level, last_ban, until, reason, expires_at FROM bans WHERE key = ?1";
const UPSERT_SQL: &str = "INSERT INTO bans (key, log, level, last_ban, until, reason, expires_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (key) DO UPDATE SET log = excluded.log, level = excluded.level, \
     last_ban = excluded.last_ban, until = excluded.until, reason = excluded.reason, \
     expires_at = excluded.expires_at";
const LIST_SQL: &str =
    "SELECT key, level, until, reason FROM bans WHERE until > ?1 ORDER BY until, key";
const DELETE_SQL: &str = "DELETE FROM bans WHERE key = ?1";
const SWEEP_SQL: &str = "DELETE FROM bans WHERE expires_at <= ?1";

/// One ban operation, run on the writer thread.
#[derive(Debug)]
pub(crate) enum BanOp {
    Strike {
        key: BanKey,
        weight: u32,
        policy: Box<BanPolicy>,
        now: Duration,
    },
    Check {
        key: BanKey,
        now: Duration,
    },
    List {
        now: Duration,
    },
    Lift {
        key: BanKey,
    },
    Add {
        key: BanKey,
        until: Duration,
        reason: String,
        now: Duration,
    },
}

/// What a [`BanOp`] answers.
#[derive(Debug)]
pub(crate) enum BanAnswer {
    Strike(StrikeOutcome),
    Check(Option<Ban>),
    List(Vec<Ban>),
    Lift(bool),
    Add(Ban),
}

/// Runs `op` in `tx`. The outer error is SQL (fails the batch); the inner one is this key's
/// row being unreadable.
pub(crate) fn run(
    tx: &Transaction<'_>,
    op: &BanOp,
) -> rusqlite::Result<Result<BanAnswer, StoreError>> {
    Ok(match op {
        BanOp::Strike {
            key,
            weight,
            policy,
            now,
        } => {
            if policy.exempts(key) {
                return Ok(Ok(BanAnswer::Strike(StrikeOutcome::Exempt)));
            }
            let now = duration_ms(*now);
            let mut state = match load(tx, key)? {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => return Ok(Err(e)),
            };
            // Expired state decides like a fresh key; starting fresh keeps the row bounded.
            if state.expires <= now {
                state = BanState::default();
            }
            let out = state.strike(key, *weight, policy, now);
            if !matches!(out, StrikeOutcome::Banned { new: false, .. }) {
                store(tx, key, &state)?;
            }
            Ok(BanAnswer::Strike(out))
        }
        BanOp::Check { key, now } => load(tx, key)?
            .map(|s| BanAnswer::Check(s.and_then(|s| s.active(key, duration_ms(*now))))),
        BanOp::List { now } => {
            let mut stmt = tx.prepare_cached(LIST_SQL)?;
            let rows = stmt.query_map([to_i64(duration_ms(*now))], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })?;
            let mut bans = Vec::new();
            for row in rows {
                let (key, level, until, reason) = row?;
                bans.push(Ban {
                    key: BanKey::from_stored(key),
                    until: Duration::from_millis(u64::try_from(until).unwrap_or(0)),
                    strikes: u32::try_from(level).unwrap_or(u32::MAX),
                    reason,
                });
            }
            Ok(BanAnswer::List(bans))
        }
        BanOp::Lift { key } => Ok(BanAnswer::Lift(
            tx.prepare_cached(DELETE_SQL)?.execute([key.as_str()])? > 0,
        )),
        BanOp::Add {
            key,
            until,
            reason,
            now,
        } => {
            let mut state = match load(tx, key)? {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => return Ok(Err(e)),
            };
            let ban = state.add(key, duration_ms(*until), reason, duration_ms(*now));
            store(tx, key, &state)?;
            Ok(BanAnswer::Add(ban))
        }
    })
}

/// Deletes rows that have expired at `now` (milliseconds); returns how many.
pub(crate) fn sweep(tx: &Transaction<'_>, now: Duration) -> rusqlite::Result<u64> {
    Ok(tx
        .prepare_cached(SWEEP_SQL)?
        .execute([to_i64(duration_ms(now))])? as u64)
}

type Row = (String, i64, i64, i64, String, i64);

fn load(
    tx: &Transaction<'_>,
    key: &BanKey,
) -> rusqlite::Result<Result<Option<BanState>, StoreError>> {
    let row: Option<Row> = match tx
        .prepare_cached(SELECT_SQL)?
        .query_row([key.as_str()], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()
    {
        Ok(row) => row,
        Err(
            e @ (rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)),
        ) => return Ok(Err(corrupt(key, &e.to_string()))),
        Err(e) => return Err(e),
    };
    let Some((log, level, last_ban, until, reason, expires)) = row else {
        return Ok(Ok(None));
    };
    let log = match BanState::decode_log(&log) {
        Ok(log) => log,
        Err(e) => return Ok(Err(e)),
    };
    let non_negative = |n: i64| u64::try_from(n).ok();
    match (
        u32::try_from(level).ok(),
        non_negative(last_ban),
        non_negative(until),
        non_negative(expires),
    ) {
        (Some(level), Some(last_ban), Some(until), Some(expires)) => Ok(Ok(Some(BanState {
            log,
            level,
            last_ban,
            until,
            reason,
            expires,
        }))),
        _ => Ok(Err(corrupt(key, "negative time or level"))),
    }
}

fn store(tx: &Transaction<'_>, key: &BanKey, s: &BanState) -> rusqlite::Result<()> {
    tx.prepare_cached(UPSERT_SQL)?.execute(params![
        key.as_str(),
        BanState::encode_log(&s.log),
        i64::from(s.level),
        to_i64(s.last_ban),
        to_i64(s.until),
        s.reason,
        to_i64(s.expires),
    ])?;
    Ok(())
}

fn corrupt(key: &BanKey, what: &str) -> StoreError {
    StoreError::Protocol(format!("unreadable ban row for {key}: {what}"))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
