//! Configuration and store errors.
//!
//! Configuration is validated when it is built and every problem is reported at once, so a
//! misconfigured service fails at start-up with the full list instead of one error per restart.
//!
//! ```
//! use secure_routes::{Policy, Quota};
//! let err = Policy::builder("bad")
//!     .rate_limit(Quota::per_minute(0))
//!     .max_body_bytes(0)
//!     .build()
//!     .unwrap_err();
//! assert_eq!(err.problems().len(), 2);
//! ```

use std::fmt;

/// Every problem found while validating a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    /// A configuration error with one problem.
    ///
    /// ```
    /// let e = secure_routes::ConfigError::new("csrf secret is too short");
    /// assert_eq!(e.problems(), ["csrf secret is too short"]);
    /// ```
    pub fn new(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }

    /// The problems, in the order they were found.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Turns a list of problems into `Ok(value)` when empty, else an error carrying all of them.
    pub(crate) fn check<T>(problems: Vec<String>, value: T) -> Result<T, ConfigError> {
        if problems.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems })
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.problems.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// A rate-limit or ban store failed to answer.
///
/// A store error is never reported to a client as a 429: the policy's
/// [`FailureMode`](crate::FailureMode) decides between letting the request through and a 503.
///
/// ```
/// let e = secure_routes::StoreError::Timeout;
/// assert_eq!(e.to_string(), "store call timed out");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the configured timeout.
    #[error("store call timed out")]
    Timeout,
    /// The store is unreachable (connection refused, reset, pool exhausted).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this crate cannot interpret.
    #[error("store protocol error: {0}")]
    Protocol(String),
}
