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
use rand::Rng as _;

/// Every environment variable the `secure-routes` binary reads (the config above, `RUST_LOG`
/// and `NO_COLOR` for the logs, the gateway's secrets): `demo --help` or `serve --help` lists
/// each, and tests that start the binary clear each so the caller's environment cannot leak
/// in.
///
/// ```
/// assert!(secure_routes_cli::config::ENVIRONMENT.contains(&"CSRF_SECRET"));
/// ```
pub const ENVIRONMENT: &[&str] = &[
    "SECURE_ROUTES_JWT_SECRET",
    "CSRF_SECRET",
    "SECURE_ROUTES_ENV",
    "SECURE_ROUTES_TRUSTED_PROXIES",
    "SECURE_ROUTES_CLIENT_IP_HEADER",
    "SECURE_ROUTES_ALLOWED_ORIGINS",
    "PUBLIC_BASE_URL",
    "SECURE_ROUTES_LIMITS",
    "SECURE_ROUTES_AUDIT",
    "SUPABASE_JWT_SECRET",
    "SECURE_ROUTES_ADMIN_TOKEN",
    "SECURE_ROUTES_ASSERTION_KEY",
    "SECURE_ROUTES_WEBHOOK_SECRET",
    "RUST_LOG",
    "NO_COLOR",
];

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

/// Where the JWT secret that signs and verifies session tokens came from, so `secure-routes
/// token` can say which secret it used (a token minted in another directory, with another
/// development secret, is otherwise a silent 401).
///
/// ```
/// use secure_routes_cli::config::SecretSource;
/// let s = SecretSource::DevFile("/srv/app/secure-routes.dev-secrets".into());
/// assert_eq!(s.to_string(), "the development secret in /srv/app/secure-routes.dev-secrets");
/// assert_eq!(SecretSource::Environment.to_string(), "SECURE_ROUTES_JWT_SECRET from the environment");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `SECURE_ROUTES_JWT_SECRET` was set.
    Environment,
    /// Generated (by this process or an earlier one) into this development secrets file,
    /// an absolute path.
    DevFile(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => f.write_str("SECURE_ROUTES_JWT_SECRET from the environment"),
            Self::DevFile(p) => write!(f, "the development secret in {}", p.display()),
        }
    }
}

impl Config {
    /// Reads the process environment (secrets file in the current directory).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_env_with_source().map(|(c, _)| c)
    }

    /// [`from_env`](Self::from_env), and where the JWT secret came from.
    pub fn from_env_with_source() -> anyhow::Result<(Self, SecretSource)> {
        Self::from_lookup_with_source(|k| std::env::var(k).ok(), Path::new(DEV_SECRETS_FILE))
    }

    /// Reads configuration through `get` (testable), with `dev_file` for generated secrets.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
        dev_file: &Path,
    ) -> anyhow::Result<Self> {
        Self::from_lookup_with_source(get, dev_file).map(|(c, _)| c)
    }

    /// [`from_lookup`](Self::from_lookup), and where the JWT secret came from.
    pub fn from_lookup_with_source(
        get: impl Fn(&str) -> Option<String>,
        dev_file: &Path,
    ) -> anyhow::Result<(Self, SecretSource)> {
        let production =
            get("SECURE_ROUTES_ENV").is_some_and(|v| v.eq_ignore_ascii_case("production"));
        let jwt = get("SECURE_ROUTES_JWT_SECRET").filter(|s| !s.is_empty());
        let csrf = get("CSRF_SECRET").filter(|s| !s.is_empty());
        if production && (jwt.is_none() || csrf.is_none()) {
            bail!(
                "SECURE_ROUTES_ENV=production: set SECURE_ROUTES_JWT_SECRET and CSRF_SECRET (32+ bytes each); refusing to start with generated secrets"
            );
        }
        let (jwt_secret, csrf_secret, source) = match (jwt, csrf) {
            (Some(j), Some(c)) => (j.into_bytes(), c.into_bytes(), SecretSource::Environment),
            (j, c) => {
                let dev = dev_secrets(dev_file)?;
                let source = if j.is_some() {
                    SecretSource::Environment
                } else {
                    SecretSource::DevFile(absolute(dev_file))
                };
                (
                    j.map_or(dev.0, String::into_bytes),
                    c.map_or(dev.1, String::into_bytes),
                    source,
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
        let config = Self {
            jwt_secret,
            csrf_secret,
            client_ip_header,
            trusted_proxies: get("SECURE_ROUTES_TRUSTED_PROXIES")
                .map(|s| split_list(&s))
                .unwrap_or_default(),
            allowed_origins,
            production,
        };
        Ok((config, source))
    }
}

/// Reads the development secrets file: `None` if there is none yet.
fn read_dev_secrets(path: &Path) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading development secrets {}", path.display()));
        }
    };
    let mut lines = text.lines().map(str::trim);
    if let (Some(j), Some(c)) = (lines.next(), lines.next())
        && j.len() >= 64
        && c.len() >= 64
    {
        return Ok(Some((j.as_bytes().to_vec(), c.as_bytes().to_vec())));
    }
    bail!(
        "{} is malformed; delete it to generate new development secrets",
        path.display()
    );
}

/// Loads or creates the development secrets file: two hex lines (JWT, CSRF).
///
/// Create-or-read, atomically: `secure-routes demo &` and `secure-routes token` started
/// together must end with the same secrets. The generated secrets are written in full to a
/// private temporary file in the same directory, then hard-linked to `path`; the link either
/// creates `path` whole or fails with `AlreadyExists`, in which case another process won and
/// its (equally complete) file is read. So no process ever reads a half-written file, and the
/// loser of the race never fails or keeps secrets nobody else has.
fn dev_secrets(path: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    if let Some(s) = read_dev_secrets(path)? {
        return Ok(s);
    }
    let gen_hex = || {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let (j, c) = (gen_hex(), gen_hex());
    let created = publish_private(path, &format!("{j}\n{c}\n"))
        .with_context(|| format!("writing development secrets to {}", path.display()))?;
    if !created {
        return read_dev_secrets(path)?.with_context(|| {
            format!(
                "{} disappeared while it was being read; run again",
                path.display()
            )
        });
    }
    eprintln!(
        "\n!!! WARNING: SECURE_ROUTES_JWT_SECRET / CSRF_SECRET not set.\n!!! Generated development secrets in {} (do not use in production;\n!!! set SECURE_ROUTES_ENV=production to refuse to start without real secrets).\n",
        absolute(path).display()
    );
    Ok((j.into_bytes(), c.into_bytes()))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
}

/// Writes `contents` to a fresh private file beside `path` and links it to `path` unless
/// `path` exists. `Ok(true)`: this call created `path`; `Ok(false)`: it already existed (and
/// is left untouched).
fn publish_private(path: &Path, contents: &str) -> std::io::Result<bool> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "secrets".into(), |n| n.to_string_lossy());
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    write_private(&tmp, contents)?;
    let linked = std::fs::hard_link(&tmp, path);
    // The temporary name goes either way; `path` (if we linked it) keeps the contents.
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links (vfat, exFAT, some network mounts): create the file
        // in place. Still exclusive (create_new), so two starts never both write it; a reader
        // racing the write may see it short, which the caller's parse reports.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            match write_private(path, contents) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Creates `path` (which must not exist) readable by its owner only, with `contents` on disk.
#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
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

    /// `demo &` and `token` started together: whoever comes second reads what the first wrote,
    /// nobody fails with "File exists", and nobody keeps secrets of its own.
    #[test]
    fn racing_first_runs_all_end_with_the_same_secrets() {
        const THREADS: usize = 16;
        for round in 0..30 {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join(DEV_SECRETS_FILE);
            let barrier = std::sync::Barrier::new(THREADS);
            let results: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            Config::from_lookup_with_source(lookup(&[]), &f)
                                .map(|(c, src)| (c.jwt_secret, c.csrf_secret, src))
                                .map_err(|e| format!("{e:#}"))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let first = results[0]
                .as_ref()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            for r in &results {
                let r = r.as_ref().unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(r, first, "round {round}: every racer uses the same secrets");
            }
            assert_eq!(first.2, SecretSource::DevFile(f.clone()));
            let on_disk = std::fs::read_to_string(&f).unwrap();
            assert_eq!(
                on_disk,
                format!(
                    "{}\n{}\n",
                    String::from_utf8_lossy(&first.0),
                    String::from_utf8_lossy(&first.1)
                )
            );
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, [DEV_SECRETS_FILE], "no temporary file left behind");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&f).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }

    #[test]
    fn source_says_which_secret_signs() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        let (_, src) =
            Config::from_lookup_with_source(lookup(&[("SECURE_ROUTES_JWT_SECRET", "j")]), &f)
                .unwrap();
        assert_eq!(src, SecretSource::Environment);
        let (_, src) =
            Config::from_lookup_with_source(lookup(&[("CSRF_SECRET", "c")]), &f).unwrap();
        assert_eq!(src, SecretSource::DevFile(f.clone()));
    }

    #[test]
    fn a_malformed_file_is_an_error_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "short\n").unwrap();
        let err = Config::from_lookup(lookup(&[]), &f).unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "short\n");
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
