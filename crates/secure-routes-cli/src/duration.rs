//! Human durations for flags: a positive integer and a unit (`ms`, `s`, `m`, `h`, `d`).
//!
//! ```
//! use secure_routes_cli::duration::parse;
//! assert_eq!(parse("90s").unwrap().as_secs(), 90);
//! assert_eq!(parse("250ms").unwrap().as_millis(), 250);
//! assert_eq!(parse("1h").unwrap().as_secs(), 3600);
//! assert!(parse("1y").is_err());
//! assert!(parse("").is_err());
//! ```

/// Parses `<n><unit>`; a bare number means seconds. The gateway's config file reads its
/// durations with the same function.
pub use secure_routes_gateway::config::parse_duration as parse;
