//! Step 1, the client: the socket peer, the client address behind trusted proxies, the
//! request id and the route identity the rate limit counts against.
//!
//! The socket peer comes from axum's `ConnectInfo<SocketAddr>`. A request without it is
//! refused with a 500 and the configuration error is logged once: guessing an address (the
//! old `0.0.0.0`) would put every client in one rate-limit bucket and write a meaningless
//! address into the audit trail.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath};
use http::HeaderValue;
use http::request::Parts;

use crate::audit::Reason;
use crate::client_ip::ClientIp;
use crate::context::{Bucket, RouteState};
use crate::request_id::{X_REQUEST_ID, fresh_request_id_at, plain_request_id};
use crate::response::problem::{Rejection, RejectionKind};

/// Who is asking, and which budget the request counts against.
pub(crate) struct Client {
    /// The client address (trusted proxies applied).
    pub(crate) ip: IpAddr,
    /// The request id, kept from a trusted proxy or fresh.
    pub(crate) request_id: HeaderValue,
    /// The pipeline's clock when the request arrived (the fresh id's time).
    pub(crate) now: Duration,
    /// The route identity (`route:<template>`, `bucket:<name>` or `policy:<name>`), named
    /// as the audit context keeps it ([`Bucket`]).
    pub(crate) bucket: Bucket,
}

/// Resolves the client, and puts the request id (header) and [`ClientIp`] (extension) into
/// the request for the handler.
pub(crate) fn resolve(state: &RouteState, parts: &mut Parts) -> Result<Client, Rejection> {
    let Some(peer) = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return Err(missing_peer(state));
    };
    let shared = &state.shared;
    let ip = shared.proxies.client_ip(peer, &parts.headers);
    let now = shared.clock.now();
    // A request id from a trusted proxy is kept if it is short and plain; anything else is
    // replaced by a fresh UUIDv7 (an untrusted client could otherwise forge audit ids).
    let request_id = if shared.proxies.contains(peer)
        && let Some(v) = parts.headers.get(X_REQUEST_ID)
        && plain_request_id(v)
    {
        v.clone()
    } else {
        fresh_request_id_at(now)
    };
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    parts.extensions.insert(ClientIp(ip));
    let bucket = route_identity(state, parts);
    Ok(Client {
        ip,
        request_id,
        now,
        bucket,
    })
}

/// The configuration error of a server that gives no socket peer: counted, logged once per
/// process, refused.
fn missing_peer(state: &RouteState) -> Rejection {
    metrics::counter!("secure_routes_missing_peer_total").increment(1);
    if !state
        .shared
        .missing_peer_logged
        .swap(true, Ordering::Relaxed)
    {
        tracing::error!(
            "secure-routes: the request has no ConnectInfo<SocketAddr>: serve the app with \
             `into_make_service_with_connect_info::<SocketAddr>()` (or secure_routes::serve); \
             every request is refused with 500 until then"
        );
    }
    Rejection::new(RejectionKind::Internal, Reason::MissingConnectInfo)
}

fn route_identity(state: &RouteState, parts: &Parts) -> Bucket {
    if state.fixed_bucket.is_some() {
        return Bucket::Fixed;
    }
    match parts.extensions.get::<MatchedPath>() {
        // The matched template, never the raw URL: `?x=1`, case or encoding tricks cannot
        // create a fresh bucket.
        Some(m) => {
            let template = m.as_str();
            let (seen, _) = state
                .route_bucket
                .get_or_init(|| (template.into(), Arc::from(format!("route:{template}"))));
            if **seen == *template {
                Bucket::Route
            } else {
                Bucket::Own(Arc::from(format!("route:{template}")))
            }
        }
        // Applied outside routing (a whole-router `.layer`): one bucket for the policy.
        None => Bucket::Fallback,
    }
}
