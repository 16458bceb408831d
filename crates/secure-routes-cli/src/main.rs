//! The `secure-routes` binary. Thin: all logic lives in the `secure_routes_cli` library so the
//! server can be started from tests.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    secure_routes_cli::cli::main().await
}
