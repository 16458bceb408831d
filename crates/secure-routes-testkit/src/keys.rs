//! Throwaway PEM keys for the JWT and TLS tests and benches (RSA 2048, P-256, Ed25519, a
//! self-signed `localhost` certificate; see
//! `keys/README.md`), embedded once here instead of in every test file. They protect nothing.
//!
//! ```
//! use secure_routes_testkit::keys;
//! assert!(keys::RSA_PRIVATE.starts_with("-----BEGIN PRIVATE KEY-----"));
//! assert!(keys::ED_PUBLIC.starts_with("-----BEGIN PUBLIC KEY-----"));
//! ```

/// RSA 2048 private key (PKCS#8 PEM).
pub const RSA_PRIVATE: &str = include_str!("../keys/rsa-private.pem");
/// Its public key (SPKI PEM).
pub const RSA_PUBLIC: &str = include_str!("../keys/rsa-public.pem");
/// P-256 private key (PKCS#8 PEM).
pub const EC_PRIVATE: &str = include_str!("../keys/ec-private.pem");
/// Its public key (SPKI PEM).
pub const EC_PUBLIC: &str = include_str!("../keys/ec-public.pem");
/// A self-signed certificate for `localhost` and `127.0.0.1` on [`EC_PRIVATE`] (PEM), for
/// TLS listener tests.
pub const LOCALHOST_CERT: &str = include_str!("../keys/localhost-cert.pem");
/// Ed25519 private key (PKCS#8 PEM).
pub const ED_PRIVATE: &str = include_str!("../keys/ed25519-private.pem");
/// Its public key (SPKI PEM).
pub const ED_PUBLIC: &str = include_str!("../keys/ed25519-public.pem");
