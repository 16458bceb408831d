//! `secure-routes demo`: the original pattern's examples as a running API, on embedded
//! defaults (memory rate limits, SQLite audit log) or on shared stores ([`DemoOptions`]).
//!
//! | route | policy |
//! | --- | --- |
//! | `GET /health` | none |
//! | `GET, POST /api/public-data` | PUBLIC |
//! | `GET /api/csrf` | PUBLIC limits, optional auth: a token bound to the caller's session |
//! | `GET, POST, PUT, DELETE /api/user/notes` | AUTHENTICATED; per-user notes in memory |
//! | `POST /api/strict` | STRICT |
//! | `POST /api/sensitive-operation` | auth, CSRF, 5 per hour, 100 KiB, POST only |
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use secure_routes_cli::{config::Config, demo};
//! let config = Config { jwt_secret: vec![1; 32], csrf_secret: vec![2; 32],
//!     trusted_proxies: vec![], allowed_origins: vec![], client_ip_header: Default::default(), production: false };
//! let app = demo::router(&config, &demo::Wiring::default()).unwrap();
//! # let _ = app;
//! # });
//! ```
//!
//! ## Layout
//!
//! * `options`: [`DemoOptions`], the `secure-routes demo` flags (stores, cookies, clock skew,
//!   serving limits).
//! * `identity`: [`Identity`], whose tokens are accepted, and the authenticator built for it.
//! * `app`: the wiring: [`Wiring`], [`security`], [`router`], [`serve`] and [`run`].
//! * `handlers`: the routes' handlers and the in-memory notes.
//! * `banner`: [`banner`], what the demo prints at start.

mod app;
mod banner;
mod handlers;
mod identity;
mod options;

pub(crate) use app::security_for;
pub use app::{Wiring, router, run, security, sensitive_policy, serve};
pub use banner::banner;
pub use identity::{Identity, TOKEN_CACHE};
pub use options::DemoOptions;

/// Name of the session cookie the demo accepts (an ambient credential: CSRF required).
pub const SESSION_COOKIE: &str = "sr-session";
/// Longest note text accepted, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// Most notes kept per user; the oldest is dropped beyond it.
pub const MAX_NOTES_PER_USER: usize = 100;
