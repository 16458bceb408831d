//! The pipeline's checks, one module each. Each check is a pure function over the request
//! head (and the policy), kept apart from `Service::call` so it is tested on its own.

pub mod body;
pub mod csrf;
pub mod method;
pub mod rate_limit;
