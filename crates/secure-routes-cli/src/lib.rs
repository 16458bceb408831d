//! The `secure-routes` command line: `demo`, `token`, `audit`, and for the gateway's config
//! file (the gateway itself is being built) `check` and `routes`.
//!
//! ## Layout
//!
//! * [`cli`]: argument parsing and dispatch (`main` is one call into it).
//! * [`config`]: environment variables and secrets (dev mode generates, production refuses).
//! * [`demo`]: the original pattern's examples as a running API; [`demo::serve`] takes a
//!   listener and a shutdown future, so tests run it on an ephemeral port.
//! * [`token`]: HS256 tokens for the demo.
//! * [`stores`]: the `--limits` / `--audit` locations (memory, SQLite, Redis, Postgres,
//!   JSON lines), opened and migrated.
//! * [`audit_cmd`]: lists audit events from any audit location.
//! * [`bans_cmd`]: lists, lifts and adds bans in a shared limits store.
//! * [`dashboard_cmd`]: the audit dashboard on its own (`secure-routes dashboard`).
//! * [`alerts`]: alert rules and the one engine construction `demo` and `serve` share.
//! * [`duration`]: `30s`, `10m`, `1h`, `2d`.
//!
//! ```
//! assert_eq!(secure_routes_cli::duration::parse("10m").unwrap().as_secs(), 600);
//! ```

pub mod alerts;
pub mod audit_cmd;
pub mod bans_cmd;
pub mod cli;
pub mod config;
pub mod dashboard_cmd;
pub mod demo;
pub mod duration;
pub mod gateway_cmd;
pub mod stores;
pub mod token;
