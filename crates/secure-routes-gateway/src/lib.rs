//! The `secure-routes serve` gateway's building blocks (issue 11, growing): the gateway puts
//! secure-routes policies in front of any HTTP upstream, so it must decide which route a
//! request is exactly as the upstream will.
//!
//! * [`path`]: one normalized request path (percent-decoding of unreserved characters, `//`
//!   collapsed, dot segments resolved; encoded `/` and `\` refused). The gateway matches on
//!   it and forwards it, so the gateway and the upstream cannot disagree about the route.
//! * [`config`]: the `secure-routes.toml` file, checked whole (unknown keys are errors), into
//!   one effective policy per route: what `secure-routes check` and `routes` print.
//! * [`identity`]: what the upstream learns about the caller: forged `X-Secure-Routes-*`
//!   headers removed, credentials stripped where a route asks, the identity headers and a
//!   60-second ES256 assertion the upstream verifies against the gateway's JWK Set.
//! * [`routes`]: route patterns (`/exact`, `{name}`, `{*rest}`) and the table that picks the
//!   most specific one, with ties refused when the table is built.
//! * [`proxy`]: the reverse proxy behind each route's pipeline: pooled keep-alive upstream,
//!   streamed bodies, hop-by-hop headers removed, `X-Forwarded-*`/`Forwarded`, 502/504,
//!   upgrades (WebSocket) passed through.
//! * [`gateway`]: the router that normalizes, matches and dispatches, the reserved
//!   `/_secure-routes/` endpoints, and reload.
//! * [`metrics`]: the Prometheus recorder and text, the admin-token check for
//!   `/_secure-routes/metrics`, and what the proxy records (store call and upstream latency,
//!   upstream statuses, requests in flight, passed requests).
//!
//! ```
//! use secure_routes_gateway::{path::normalize, routes::RouteTable};
//!
//! let table = RouteTable::new(["/api/admin/{*rest}", "/api/{name}"]).unwrap();
//! let path = normalize("/api/public/..//admin/%75sers").unwrap();
//! assert_eq!(path, "/api/admin/users");
//! assert_eq!(table.find(&path), Some(0));
//! ```

pub mod config;
pub mod gateway;
pub mod identity;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod routes;
