//! The rule for tests that need a service (PostgreSQL, Redis): without its URL a test is
//! skipped *visibly* and passes, unless `SECURE_ROUTES_REQUIRE_SERVICES=1` (CI), where a
//! missing service is a failure, so CI can never go green by skipping.
//!
//! ```
//! use secure_routes_testkit::services::service_url;
//! // An unset variable: a SKIPPED line on stderr, and `None` (outside CI).
//! if std::env::var_os("SECURE_ROUTES_REQUIRE_SERVICES").is_none() {
//!     assert_eq!(service_url("SR_TESTKIT_DOCTEST_UNSET_URL", "doctest"), None);
//! }
//! ```

use std::io::Write as _;

/// The variable that turns a skip into a failure.
///
/// ```
/// assert_eq!(secure_routes_testkit::services::REQUIRE_SERVICES, "SECURE_ROUTES_REQUIRE_SERVICES");
/// ```
pub const REQUIRE_SERVICES: &str = "SECURE_ROUTES_REQUIRE_SERVICES";

/// `var`'s URL from the environment; `None` after announcing that `test` is skipped when it
/// is unset or blank.
///
/// # Panics
///
/// When `var` is unset and `SECURE_ROUTES_REQUIRE_SERVICES=1`.
///
/// ```
/// use secure_routes_testkit::services::service_url;
/// // A variable that is set comes back as is (PATH stands in for DATABASE_URL here).
/// if let Ok(path) = std::env::var("PATH") {
///     assert_eq!(service_url("PATH", "doctest"), Some(path));
/// }
/// ```
pub fn service_url(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var(REQUIRE_SERVICES).as_deref() != Ok("1"),
                "{test}: {var} is not set but {REQUIRE_SERVICES}=1: this test must run"
            );
            announce_skip(test, &not_set(var));
            None
        }
    }
}

/// `"<VAR> is not set"`, with an example URL for the services the tests know.
fn not_set(var: &str) -> String {
    let example = match var {
        "DATABASE_URL" => Some("postgres://postgres@127.0.0.1:5432/test"),
        "REDIS_URL" => Some("redis://127.0.0.1:6379"),
        _ => None,
    };
    match example {
        Some(e) => format!("{var} is not set (e.g. {e})"),
        None => format!("{var} is not set"),
    }
}

/// Prints `SKIPPED <test>: <why>` where `cargo test` shows it. libtest captures `eprintln!`
/// of a passing test (the line would only appear with `--nocapture`), so a skip would look
/// exactly like a pass; writing to the process's stderr handle directly is not captured.
///
/// ```
/// secure_routes_testkit::services::announce_skip("doctest", "nothing to skip");
/// ```
pub fn announce_skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skip_line_names_the_variable_and_an_example() {
        assert_eq!(
            not_set("DATABASE_URL"),
            "DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
        assert_eq!(
            not_set("REDIS_URL"),
            "REDIS_URL is not set (e.g. redis://127.0.0.1:6379)"
        );
        assert_eq!(not_set("OTHER_URL"), "OTHER_URL is not set");
    }
}
