//! secure-routes. (crate docs written with the layer)

pub mod audit;
pub mod auth;
pub mod client_ip;
pub mod clock;
pub mod error;
pub mod guard;
pub mod layer;
pub mod policy;
pub mod rate_limit;
pub mod response;

pub use auth::Principal;
pub use error::{ConfigError, StoreError};
pub use layer::{ClientIp, Security, SecurityBuilder, SecurityLayer, SecurityService};
pub use policy::{AuthMode, CsrfMode, FailureMode, Policy, PolicyBuilder};
pub use rate_limit::Quota;
