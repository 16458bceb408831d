//! Step 6, the rate limit: per route (or shared bucket) and subject (`user:<sub>` when
//! authenticated, else the client address, IPv6 grouped by /64), one atomic store call. A
//! policy may key it otherwise ([`KeyPart`]: the address, the subject, the fingerprint).
//!
//! The store call is bounded in time and a panicking store is contained (500, not a dropped
//! connection). A store that fails is never reported as a 429: the policy's
//! [`FailureMode`] lets the request on (audited with its final status) or refuses it with
//! 503 and `Retry-After`. In front of a shared store a deny cache answers keys the store
//! refused, without a call, until their retry time (see DESIGN.md).

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{HeaderValue, header};

use crate::audit::Reason;
use crate::auth::Principal;
use crate::context::RouteState;
use crate::fingerprint::Fingerprint;
use crate::policy::FailureMode;
use crate::rate_limit::deny_cache::{FlightFailure, FlightGuard, MAX_WAIT_FACTOR};
use crate::rate_limit::headers::too_many_requests;
use crate::rate_limit::key_cache::{self, Subject as Cached};
use crate::rate_limit::{Decision, KeyPart, Quota, RateLimitKey, StoreError};
use crate::respond::panic_message;
use crate::response::problem::{Rejection, RejectionInfo, RejectionKind};
use crate::security::Shared;

/// What a passed rate-limit step leaves for the response.
#[derive(Default)]
pub(crate) struct Limited {
    /// The store's decision (for the rate-limit headers); `None` on an unlimited route or
    /// after a store failure let through.
    pub(crate) decision: Option<Decision>,
    /// A store failure the policy let through (fail-open): audited with the final status.
    pub(crate) failed_open: Option<RejectionInfo>,
}

/// Counts the request against its budget; refuses it with 429 (or 503/500 when the store
/// fails and the policy fails closed, or the store panics).
///
/// `Ok` when the store decided at once (the memory store always does, see
/// [`RateLimitStore::try_acquire_now`](crate::rate_limit::RateLimitStore::try_acquire_now)):
/// no future at all. `Err` hands back what [`check_async`] needs to ask a store that must be
/// waited for; the caller boxes that future, so its size stays out of every request's (a
/// network call follows it anyway).
pub(crate) fn check(
    state: &RouteState,
    route: &Arc<str>,
    ip: IpAddr,
    subject: Option<&Principal>,
    fingerprint: Option<&Fingerprint>,
) -> Result<Result<Limited, Rejection>, Pending> {
    let Some(quota) = state.policy.rate_limit() else {
        return Ok(Ok(Limited::default()));
    };
    let key = key(state, route, ip, subject, fingerprint);
    // Behind a deny cache (a shared store) the cache and the single flight come first.
    let asked_now = state.shared.deny.is_none();
    if asked_now && let Some(answer) = answer_now(&state.shared, &key, quota) {
        return Ok(decide(state, quota, answer));
    }
    Err(Pending {
        key,
        quota,
        asked_now,
    })
}

/// A rate-limit check that must wait for its store (see [`check`]).
pub(crate) struct Pending {
    key: RateLimitKey,
    quota: Quota,
    /// [`answer_now`] was asked already (and said `None`).
    asked_now: bool,
}

/// [`check`] for a store that must be waited for (a shared store, behind the deny cache).
pub(crate) async fn check_async(
    state: &RouteState,
    pending: Pending,
) -> Result<Limited, Rejection> {
    let Pending {
        key,
        quota,
        asked_now,
    } = pending;
    let answer = check_limit(
        &state.shared,
        &key,
        quota,
        state.policy.store_timeout(),
        asked_now,
    )
    .await;
    decide(state, quota, answer)
}

/// The step's answer for the store's.
fn decide(
    state: &RouteState,
    quota: Quota,
    answer: Result<Decision, StoreFailure>,
) -> Result<Limited, Rejection> {
    let shared = &state.shared;
    match answer {
        Ok(d) if d.allowed => Ok(Limited {
            decision: Some(d),
            failed_open: None,
        }),
        Ok(d) => Err(too_many_requests(
            state.policy.name(),
            quota,
            &d,
            shared.clock.now(),
        )),
        Err(StoreFailure::Panicked(msg)) => {
            tracing::error!(
                store = shared.store.name(),
                panic = %crate::audit::sanitize(&msg, 512),
                "rate-limit store panicked"
            );
            Err(Rejection::new(
                RejectionKind::Internal,
                Reason::StorePanicked,
            ))
        }
        Err(failure) => {
            let reason = match &failure {
                StoreFailure::Timeout => Reason::StoreTimeout,
                _ => Reason::StoreError,
            };
            if let StoreFailure::Error(e) = &failure {
                tracing::warn!(store = shared.store.name(), error = %e, "rate-limit store failed");
            }
            metrics::counter!(
                "secure_routes_store_failures_total",
                "store" => shared.store.name(),
            )
            .increment(1);
            match state.policy.failure_mode() {
                FailureMode::Open => Ok(Limited {
                    decision: None,
                    failed_open: Some(RejectionInfo {
                        kind: RejectionKind::Unavailable,
                        reason,
                    }),
                }),
                // 503, never 429: the client did nothing wrong.
                FailureMode::Closed => Err(Rejection::new(RejectionKind::Unavailable, reason)
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))),
            }
        }
    }
}

/// The request's key under the policy's [`KeyPart`]s. One address or subject is keyed as
/// before key parts existed (`KeyHasher::key`), so the default keys never changed; any other
/// choice is a composite key.
fn key(
    state: &RouteState,
    route: &Arc<str>,
    ip: IpAddr,
    subject: Option<&Principal>,
    fingerprint: Option<&Fingerprint>,
) -> RateLimitKey {
    let hasher = &state.shared.hasher;
    let parts = state.policy.rate_limit_key();
    match (parts, subject) {
        ([KeyPart::Subject], Some(p)) => key_cache::key(hasher, route, Cached::User(p.subject())),
        ([KeyPart::Subject] | [KeyPart::Ip], _) => {
            key_cache::key(hasher, route, Cached::Ip(crate::client_ip::group(ip)))
        }
        _ => {
            let (v4, v6);
            let ip: &[u8] = match crate::client_ip::group(ip) {
                IpAddr::V4(a) => {
                    v4 = a.octets();
                    &v4
                }
                IpAddr::V6(a) => {
                    v6 = a.octets();
                    &v6
                }
            };
            // At most three parts, in `KeyPart::ALL`'s order (the policy sorted them).
            let mut bytes: [(u8, &[u8]); 3] = [(0, &[]); 3];
            for (slot, part) in bytes.iter_mut().zip(parts) {
                *slot = match (part, subject) {
                    (KeyPart::Ip, _) => (b'i', ip),
                    (KeyPart::Subject, Some(p)) => (b'u', p.subject().as_bytes()),
                    // Anonymous: the subject is the address (tagged apart from `Ip`).
                    (KeyPart::Subject, None) => (b'a', ip),
                    // Always computed when a key part reads it (`fingerprint_read`).
                    (KeyPart::Fingerprint, _) => {
                        (b'f', fingerprint.map_or(&[][..], |f| f.as_bytes()))
                    }
                };
            }
            hasher.composite_key(route, &bytes[..parts.len().min(3)])
        }
    }
}

/// Why a rate-limit check has no decision.
pub(crate) enum StoreFailure {
    Timeout,
    Error(StoreError),
    Panicked(String),
}

/// One rate-limit check: the deny cache first, then (one check per key in flight) the store,
/// bounded by `timeout`; a panicking store is caught (see the `DenyCache` docs).
pub(crate) async fn check_limit(
    shared: &Shared,
    key: &RateLimitKey,
    quota: Quota,
    timeout: Duration,
    asked_now: bool,
) -> Result<Decision, StoreFailure> {
    let Some(deny) = &shared.deny else {
        return call_store(shared, key, quota, timeout, asked_now).await;
    };
    if let Some(d) = deny.check(key, quota, shared.clock.now()) {
        return Ok(d);
    }
    // Boxed: only shared stores get here (a network call follows), and the wait's future
    // would otherwise size the memory store's requests too.
    let flight =
        Box::pin(deny.single_flight(key, timeout.saturating_mul(MAX_WAIT_FACTOR), timeout)).await;
    match flight.as_ref().and_then(FlightGuard::failed_ahead) {
        // The checks ahead failed in a row: the store is failing now, and asking it again
        // would only chain another timeout behind them.
        Some(FlightFailure::Timeout) => return Err(StoreFailure::Timeout),
        Some(FlightFailure::Error) => {
            return Err(StoreFailure::Error(StoreError::Unavailable(
                "the check ahead of this one failed".into(),
            )));
        }
        None => {}
    }
    // The check we waited for may have been refused: then so is this one, without a call.
    let before = shared.clock.now();
    if let Some(d) = deny.check(key, quota, before) {
        return Ok(d);
    }
    let result = call_store(shared, key, quota, timeout, false).await;
    match (&result, &flight) {
        // The time before the call: the store decided no earlier, so the cached refusal
        // never outlasts the store's own.
        (Ok(d), f) => {
            deny.remember(key, quota, d, before);
            if let Some(f) = f {
                f.succeed();
            }
        }
        (Err(StoreFailure::Timeout), Some(f)) => f.fail(FlightFailure::Timeout),
        (Err(StoreFailure::Error(_)), Some(f)) => f.fail(FlightFailure::Error),
        // A panic is a bug in the store, answered 500 on its own: it says nothing about
        // whether the store is reachable, so it starts no streak.
        (Err(StoreFailure::Panicked(_)), _) | (Err(_), None) => {}
    }
    result
}

/// The store's answer when it decides without waiting (the memory store): no future to
/// allocate and no timer. A panic in it is contained as in [`call_store`]'s future.
fn answer_now(
    shared: &Shared,
    key: &RateLimitKey,
    quota: Quota,
) -> Option<Result<Decision, StoreFailure>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        shared.store.try_acquire_now(key, quota, 1)
    })) {
        Ok(Some(Ok(d))) => Some(Ok(d)),
        Ok(Some(Err(e))) => Some(Err(StoreFailure::Error(e))),
        Ok(None) => None,
        Err(panic) => Some(Err(StoreFailure::Panicked(panic_message(&*panic)))),
    }
}

/// `asked_now`: [`answer_now`] was asked for this check already (and said `None`).
async fn call_store(
    shared: &Shared,
    key: &RateLimitKey,
    quota: Quota,
    timeout: Duration,
    asked_now: bool,
) -> Result<Decision, StoreFailure> {
    if !asked_now && let Some(answer) = answer_now(shared, key, quota) {
        return answer;
    }
    // Inside the async block, so a store that panics before returning its future is caught
    // too.
    let call = AssertUnwindSafe(async { shared.store.acquire(key, quota, 1).await }).catch_unwind();
    let mut call = std::pin::pin!(call);
    // A store that answers on its first poll (the memory store always does) needs no timer:
    // arming one reads the clock and sets up a timer entry for every request. A store that
    // is not ready is polled again under the timeout, with the task's own waker.
    let answer = match (&mut call).now_or_never() {
        Some(answer) => answer,
        // Boxed, as the authenticator's: tokio's timer entry is hundreds of bytes and 128-byte
        // aligned, and held inline it would size and align every request's future.
        None => match Box::pin(tokio::time::timeout(timeout, call)).await {
            Err(_) => return Err(StoreFailure::Timeout),
            Ok(answer) => answer,
        },
    };
    match answer {
        Err(panic) => Err(StoreFailure::Panicked(panic_message(&*panic))),
        Ok(Err(e)) => Err(StoreFailure::Error(e)),
        Ok(Ok(d)) => Ok(d),
    }
}
