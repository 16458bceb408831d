//! What the pipeline adds to or answers instead of the handler's response: problem bodies,
//! security headers, CORS (internal: configured through the builder).

pub(crate) mod cors;
pub mod headers;
pub mod problem;
