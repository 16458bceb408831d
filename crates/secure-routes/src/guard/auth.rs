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
    let (policy, shared) = (&state.policy, &state.shared);
    if policy.auth() == AuthMode::Off {
        return Ok(None);
    }
    let Some(auth) = &shared.authenticator else {
        // `Security::layer` refuses such a policy; nothing to check with.
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
        Ok(Err(panic)) => {
            tracing::error!(
                panic = %crate::audit::sanitize(&panic_message(&*panic), 512),
                "authenticator panicked"
            );
            return Err(Rejection::new(
                RejectionKind::Internal,
                Reason::AuthenticatorPanicked,
            ));
        }
        Err(_) => {
            tracing::warn!(timeout = ?shared.auth_timeout, "authenticator timed out");
            return Err(Rejection::new(
                RejectionKind::AuthUnavailable,
                Reason::AuthenticatorTimeout,
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
    };
    let reason = match result {
        Ok(p) => return Ok(Some(p)),
        Err(AuthError::Missing) if policy.auth() == AuthMode::Optional => return Ok(None),
        Err(AuthError::Unavailable(why)) => {
            tracing::warn!(error = %crate::audit::sanitize(&why, 256), "authenticator unavailable");
            return Err(Rejection::new(
                RejectionKind::AuthUnavailable,
                Reason::AuthenticatorUnavailable,
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")));
        }
        // A reason string of the crate's own authenticators maps to its variant; a custom
        // authenticator's is kept verbatim.
        Err(AuthError::Invalid(why)) => Reason::from_static(why),
        Err(_) => Reason::MissingCredential,
    };
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
            return Err(
                too_many_requests(policy.name(), quota, &d, shared.clock.now())
                    .audited_as(unauthorized),
            );
        }
    }
    Err(Rejection::unauthorized(reason))
}
