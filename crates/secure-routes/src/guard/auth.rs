//! Step 5, authentication: the policy's [`AuthMode`] with the configured authenticator, 401
//! with `WWW-Authenticate: Bearer` on failure.
//!
//! The call is bounded in time (503 with `Retry-After` past
//! [`crate::security::DEFAULT_AUTHENTICATE_TIMEOUT`] or the configured timeout) and a
//! panicking authenticator is contained (500, not a dropped connection). Failures count
//! against the client address on a rate-limited route, so guessing credentials runs into the
//! route's limit like any other traffic; a guess refused that way is still one
//! `unauthorized_access` decision, answered 429.

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use http::request::Parts;
use http::{HeaderValue, header};

use crate::audit::Reason;
use crate::auth::{AuthError, Principal};
use crate::context::RouteState;
use crate::guard::rate_limit::check_limit;
use crate::policy::AuthMode;
use crate::rate_limit::Subject;
use crate::rate_limit::headers::too_many_requests;
use crate::respond::panic_message;
use crate::response::problem::{Rejection, RejectionInfo, RejectionKind};

/// The caller's principal (`None`: the policy does not authenticate, or allows anonymous
/// callers and none was presented), or the refusal.
pub(crate) async fn authenticate(
    state: &RouteState,
    parts: &Parts,
    route: &str,
    ip: IpAddr,
) -> Result<Option<Principal>, Rejection> {
    let shared = &state.shared;
    let Some(auth) = authenticator(state) else {
        return Ok(None);
    };
    // Inside the async block, so an authenticator that panics before returning its future is
    // caught too.
    let call = AssertUnwindSafe(async { auth.authenticate(parts).await }).catch_unwind();
    let mut call = std::pin::pin!(call);
    // An authenticator that answers on its first poll (a pinned HMAC or API key, a cache
    // hit) needs no timer: arming one reads the clock and registers a timer entry for every
    // request. One that is not ready is polled again under the timeout, as before.
    let answer = match (&mut call).now_or_never() {
        Some(answer) => Ok(answer),
        // Boxed: tokio's timer entry is cache-line padded (hundreds of bytes, 128-byte
        // aligned), and held inline it would size and align every request's future.
        None => Box::pin(tokio::time::timeout(shared.auth_timeout, call)).await,
    };
    let result = match answer {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => return Err(panicked(&*panic)),
        Err(_) => {
            tracing::warn!(timeout = ?shared.auth_timeout, "authenticator timed out");
            return Err(Rejection::new(
                RejectionKind::AuthUnavailable,
                Reason::AuthenticatorTimeout,
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
    };
    match judge(state, result) {
        Now::Done(done) => done,
        Now::Failed(reason) => Err(failed(state, route, ip, reason).await),
    }
}

/// [`authenticate`] without waiting, from [`Authenticator::authenticate_now`]: `None` when
/// the authenticator must be waited for (then `authenticate` is asked).
///
/// A bad credential is [`Now::Failed`]: on a rate-limited route its refusal counts against
/// the client address, which may mean waiting for the store ([`failed`]).
pub(crate) fn authenticate_now(state: &RouteState, parts: &Parts) -> Option<Now> {
    let Some(auth) = authenticator(state) else {
        return Some(Now::Done(Ok(None)));
    };
    let result = match std::panic::catch_unwind(AssertUnwindSafe(|| auth.authenticate_now(parts))) {
        Ok(answer) => answer?,
        Err(panic) => return Some(Now::Done(Err(panicked(&*panic)))),
    };
    Some(judge(state, result))
}

/// What [`authenticate_now`] (and [`judge`], for both ways) decided.
pub(crate) enum Now {
    /// The principal (or none), or a refusal that needs nothing more.
    Done(Result<Option<Principal>, Rejection>),
    /// A bad credential: [`failed`] makes its refusal.
    Failed(Reason),
}

/// The policy's authenticator, or `None` when the policy does not authenticate.
fn authenticator(state: &RouteState) -> Option<&dyn crate::auth::Authenticator> {
    if state.policy.auth() == AuthMode::Off {
        return None;
    }
    // `Security::layer` refuses a policy that authenticates without an authenticator.
    state.shared.authenticator.as_deref()
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> Rejection {
    tracing::error!(
        panic = %crate::audit::sanitize(&panic_message(panic), 512),
        "authenticator panicked"
    );
    Rejection::new(RejectionKind::Internal, Reason::AuthenticatorPanicked)
}

/// The authenticator's answer under the policy: a principal, none (optional), a 503, or a
/// bad credential.
fn judge(state: &RouteState, result: Result<Principal, AuthError>) -> Now {
    let reason = match result {
        Ok(p) => return Now::Done(Ok(Some(p))),
        Err(AuthError::Missing) if state.policy.auth() == AuthMode::Optional => {
            return Now::Done(Ok(None));
        }
        Err(AuthError::Unavailable(why)) => {
            tracing::warn!(error = %crate::audit::sanitize(&why, 256), "authenticator unavailable");
            return Now::Done(Err(Rejection::new(
                RejectionKind::AuthUnavailable,
                Reason::AuthenticatorUnavailable,
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))));
        }
        // A reason string of the crate's own authenticators maps to its variant; a custom
        // authenticator's is kept verbatim.
        Err(AuthError::Invalid(why)) => Reason::from_static(why),
        Err(_) => Reason::MissingCredential,
    };
    Now::Failed(reason)
}

/// The refusal of a bad credential: 401, or 429 when counting it against the client address
/// used up the route's budget.
pub(crate) async fn failed(
    state: &RouteState,
    route: &str,
    ip: IpAddr,
    reason: Reason,
) -> Rejection {
    let (policy, shared) = (&state.policy, &state.shared);
    metrics::counter!("secure_routes_auth_failures_total").increment(1);
    // Failures count against the client address too.
    if let Some(quota) = policy.rate_limit() {
        let key = shared.hasher.key(route, &Subject::from_ip(ip));
        // Boxed: a failure's path, kept out of the size of every request's future.
        if let Ok(d) = Box::pin(check_limit(
            shared,
            &key,
            quota,
            policy.store_timeout(),
            false,
        ))
        .await
            && !d.allowed
        {
            // One decision, one event: the cause (a bad credential), with the status the
            // client saw.
            let unauthorized = RejectionInfo {
                kind: RejectionKind::Unauthorized,
                reason,
            };
            return too_many_requests(policy.name(), quota, &d, shared.clock.now())
                .audited_as(unauthorized);
        }
    }
    Rejection::unauthorized(reason)
}
