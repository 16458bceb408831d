//! Configuration from the environment, with the original pattern's names kept where they map.
//!
//! | variable | meaning |
//! | --- | --- |
//! | `SECURE_ROUTES_JWT_SECRET` | HS256 secret for session tokens (32+ bytes) |
//! | `CSRF_SECRET` | CSRF signing secret (the original's `CSRF_SALT`; 32+ bytes) |
//! | `SECURE_ROUTES_TRUSTED_PROXIES` | comma-separated CIDRs whose forwarding headers are believed |
//! | `SECURE_ROUTES_ALLOWED_ORIGINS` | comma-separated CORS origins |
//! | `PUBLIC_BASE_URL` | one more allowed origin (the original's `NEXT_PUBLIC_BASE_URL`) |
//! | `SECURE_ROUTES_ENV` | `production` refuses to start without secrets and drops localhost origins |
//!
//! In development, a missing secret is generated once and kept in
//! `./secure-routes.dev-secrets` (mode 0600) so `secure-routes token` and `secure-routes demo`
//! agree; a loud warning says so.
//!
//! ```
//! use secure_routes_cli::config::split_list;
//! assert_eq!(split_list(" a, b ,,c "), vec!["a", "b", "c"]);
//! ```

use secure_routes::client_ip::ForwardedHeader;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::RngCore;

/// Where development secrets are kept.
pub const DEV_SECRETS_FILE: &str = "secure-routes.dev-secrets";

/// Everything the demo needs from its environment.
#[derive(Clone)]
pub struct Config {
    /// HS256 secret for session JWTs.
    pub jwt_secret: Vec<u8>,
    /// CSRF signing secret.
    pub csrf_secret: Vec<u8>,
    /// Trusted proxy CIDRs.
    pub trusted_proxies: Vec<String>,
    /// Allowed CORS origins.
    pub allowed_origins: Vec<String>,
    /// The one forwarding header the trusted proxies write (`SECURE_ROUTES_CLIENT_IP_HEADER`:
    /// `x-forwarded-for`, the default, `forwarded` or `x-real-ip`).
    pub client_ip_header: ForwardedHeader,
    /// Production mode.
    pub production: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Config")
            .field("trusted_proxies", &self.trusted_proxies)
            .field("allowed_origins", &self.allowed_origins)
            .field("client_ip_header", &self.client_ip_header)
            .field("production", &self.production)
            .finish_non_exhaustive()
    }
}

/// Splits a comma-separated list, trimming and dropping empties.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Config {
    /// Reads the process environment (secrets file in the current directory).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok(), Path::new(DEV_SECRETS_FILE))
    }

    /// Reads configuration through `get` (testable), with `dev_file` for generated secrets.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        dev_file: &Path,
    ) -> anyhow::Result<Self> {
        let production =
            get("SECURE_ROUTES_ENV").is_some_and(|v| v.eq_ignore_ascii_case("production"));
        let jwt = get("SECURE_ROUTES_JWT_SECRET").filter(|s| !s.is_empty());
        let csrf = get("CSRF_SECRET").filter(|s| !s.is_empty());
        if production && (jwt.is_none() || csrf.is_none()) {
            bail!(
                "SECURE_ROUTES_ENV=production: set SECURE_ROUTES_JWT_SECRET and CSRF_SECRET (32+ bytes each); refusing to start with generated secrets"
            );
        }
        let (jwt_secret, csrf_secret) = match (jwt, csrf) {
            (Some(j), Some(c)) => (j.into_bytes(), c.into_bytes()),
            (j, c) => {
                let dev = dev_secrets(dev_file)?;
                (
                    j.map_or(dev.0, String::into_bytes),
                    c.map_or(dev.1, String::into_bytes),
                )
            }
        };
        let mut allowed_origins = get("SECURE_ROUTES_ALLOWED_ORIGINS")
            .map(|s| split_list(&s))
            .unwrap_or_default();
        if let Some(base) = get("PUBLIC_BASE_URL").filter(|s| !s.trim().is_empty()) {
            allowed_origins.push(base.trim().to_owned());
        }
        let client_ip_header = match get("SECURE_ROUTES_CLIENT_IP_HEADER") {
            Some(h) if !h.trim().is_empty() => h
                .parse()
                .map_err(|e| anyhow::anyhow!("SECURE_ROUTES_CLIENT_IP_HEADER: {e}"))?,
            _ => ForwardedHeader::default(),
        };
        Ok(Self {
            jwt_secret,
            csrf_secret,
            client_ip_header,
            trusted_proxies: get("SECURE_ROUTES_TRUSTED_PROXIES")
                .map(|s| split_list(&s))
                .unwrap_or_default(),
            allowed_origins,
            production,
        })
    }
}

/// Loads or creates the development secrets file: two hex lines (JWT, CSRF).
fn dev_secrets(path: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let mut lines = text.lines().map(str::trim);
        if let (Some(j), Some(c)) = (lines.next(), lines.next())
            && j.len() >= 64
            && c.len() >= 64
        {
            return Ok((j.as_bytes().to_vec(), c.as_bytes().to_vec()));
        }
        bail!(
            "{} is malformed; delete it to generate new development secrets",
            path.display()
        );
    }
    let gen_hex = || {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let (j, c) = (gen_hex(), gen_hex());
    write_private(path, &format!("{j}\n{c}\n"))
        .with_context(|| format!("writing development secrets to {}", path.display()))?;
    eprintln!(
        "\n!!! WARNING: SECURE_ROUTES_JWT_SECRET / CSRF_SECRET not set.\n!!! Generated development secrets in {} (do not use in production;\n!!! set SECURE_ROUTES_ENV=production to refuse to start without real secrets).\n",
        absolute(path).display()
    );
    Ok((j.into_bytes(), c.into_bytes()))
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn production_refuses_missing_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::from_lookup(
            lookup(&[("SECURE_ROUTES_ENV", "production")]),
            &dir.path().join("s"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("refusing to start"));
        assert!(!dir.path().join("s").exists());
    }

    #[test]
    fn dev_generates_once_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        let a = Config::from_lookup(lookup(&[]), &f).unwrap();
        let b = Config::from_lookup(lookup(&[]), &f).unwrap();
        assert_eq!(a.jwt_secret, b.jwt_secret);
        assert_ne!(a.jwt_secret, a.csrf_secret);
        assert!(a.jwt_secret.len() >= 32);
    }

    #[test]
    fn env_lists_and_origins() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::from_lookup(
            lookup(&[
                ("SECURE_ROUTES_JWT_SECRET", "j"),
                ("CSRF_SECRET", "c"),
                ("SECURE_ROUTES_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
                ("SECURE_ROUTES_ALLOWED_ORIGINS", "https://a.example"),
                ("PUBLIC_BASE_URL", "https://b.example"),
            ]),
            &dir.path().join("s"),
        )
        .unwrap();
        assert_eq!(c.trusted_proxies, ["10.0.0.0/8", "127.0.0.1"]);
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(
            !dir.path().join("s").exists(),
            "no file when both secrets are set"
        );
    }
}
