//! The pipeline's steps, one module each, in DESIGN's order: `client` (1), `method` (4),
//! `auth` (5), `rate_limit` (6), `authz` (6b), [`body`] (7), [`csrf`] (8b).
//!
//! Each step is a function returning `Result<_, Rejection>`, kept apart from
//! `Service::call` so it reads (and is tested) on its own; the service's `run` is the list of
//! those calls. Steps depend on shared types only (the route and request context, the
//! rejection), never on the service or the layer. Two modules are public for their types:
//! [`body`] (the limited request body a handler receives) and [`csrf`] (the token issuer).

pub(crate) mod auth;
pub(crate) mod authz;
pub mod body;
pub(crate) mod client;
pub mod csrf;
pub(crate) mod method;
pub(crate) mod rate_limit;
