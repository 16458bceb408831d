//! A [`Policy`] says what one route (or router) enforces. Build one in code with
//! [`Policy::builder`], or start from a preset: [`Policy::public`], [`Policy::authenticated`],
//! [`Policy::strict`] (the original pattern's `SECURITY_PRESETS`, same numbers).
//!
//! Policies are validated when built and every problem is returned at once.
//!
//! ```
//! use http::Method;
//! use secure_routes::{AuthMode, CsrfMode, FailureMode, Policy, Quota};
//!
//! let p = Policy::builder("sensitive-operation")
//!     .methods([Method::POST])
//!     .auth(AuthMode::Required)
//!     .csrf(CsrfMode::Auto)
//!     .rate_limit(Quota::per_hour(5))
//!     .max_body_bytes(100 * 1024)
//!     .build()
//!     .unwrap();
//! assert_eq!(p.failure_mode(), FailureMode::Open);
//! assert_eq!(Policy::strict().failure_mode(), FailureMode::Closed);
//! ```

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::authz::Requirement;
use crate::error::ConfigError;
use crate::rate_limit::{KeyPart, Quota, quotas};
use crate::response::headers::SecurityHeaders;

/// Whether the route needs an authenticated caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No authentication is attempted.
    #[default]
    Off,
    /// A valid credential identifies the caller (for rate-limit keys and handlers); none is
    /// fine; an *invalid* one is still refused with 401, never silently downgraded.
    Optional,
    /// 401 without a valid credential.
    Required,
}

/// When the signed double-submit CSRF token is required on unsafe methods: every method but
/// the safe GET, HEAD, OPTIONS and TRACE (RFC 9110 §9.2.1), so POST, PUT, PATCH, DELETE and
/// any extension method (`PROPFIND`, ...) the policy allows. The Fetch Metadata / `Origin`
/// check runs whenever this is not [`CsrfMode::Off`] (it exempts GET, HEAD and OPTIONS only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CsrfMode {
    /// No CSRF checks.
    #[default]
    Off,
    /// Token required unless the caller authenticated with an explicit header
    /// (`Authorization`, API key): such a request carries no ambient credential to forge.
    Auto,
    /// Token required on every unsafe request.
    Always,
}

/// What a policy does when its rate-limit store fails or times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the request through unlimited (audited and counted).
    Open,
    /// Answer 503 with `Retry-After` (audited and counted). Never 429: a store outage is not
    /// the client's fault.
    Closed,
}

/// Default timeout for one store call.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

/// What one route enforces.
///
/// Cloning copies it: a few small allocations (the name, methods, headers, requirements).
/// That happens when layers are built, never per request: each layer keeps its policy once,
/// shared by its requests behind one reference count.
#[derive(Clone, Debug)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) auth: AuthMode,
    pub(crate) rate_limit: Option<Quota>,
    pub(crate) bucket: Option<String>,
    /// The rate-limit key's parts, in [`KeyPart::ALL`]'s order once built.
    pub(crate) rate_limit_key: Vec<KeyPart>,
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) csrf: CsrfMode,
    pub(crate) failure_mode: FailureMode,
    /// Whether `failure_mode` was set with [`PolicyBuilder::failure_mode`] (else it is the
    /// default derived from the rest of the policy, recomputed by a later `build`).
    pub(crate) failure_mode_explicit: bool,
    pub(crate) store_timeout: Duration,
    pub(crate) headers: SecurityHeaders,
    pub(crate) requirements: Vec<Requirement>,
    pub(crate) dry_run: bool,
}

impl Policy {
    /// Starts a policy named `name` (used in rate-limit headers and audit events; letters,
    /// digits, `-`, `_`, `.` only). Defaults: any method, no auth, no limits, no CSRF,
    /// fail-open, default security headers.
    pub fn builder(name: impl Into<String>) -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy {
                name: name.into(),
                methods: None,
                auth: AuthMode::Off,
                rate_limit: None,
                bucket: None,
                rate_limit_key: vec![KeyPart::Subject],
                max_body_bytes: None,
                csrf: CsrfMode::Off,
                failure_mode: FailureMode::Open,
                failure_mode_explicit: false,
                store_timeout: DEFAULT_STORE_TIMEOUT,
                headers: SecurityHeaders::default(),
                requirements: Vec::new(),
                dry_run: false,
            },
            failure_mode_set: false,
        }
    }

    /// PUBLIC: 60 requests per minute, 1 MiB bodies, GET and POST. Fails open.
    ///
    /// ```
    /// let p = secure_routes::Policy::public();
    /// assert_eq!(p.max_body_bytes(), Some(1024 * 1024));
    /// ```
    pub fn public() -> Policy {
        Self::preset(
            Policy::builder("public")
                .methods([Method::GET, Method::POST])
                .rate_limit(quotas::API_GENERAL)
                .max_body_bytes(1024 * 1024),
        )
    }

    /// AUTHENTICATED: authentication required, 20 requests per hour, 5 MiB, GET, POST, PUT,
    /// DELETE, CSRF protection. Fails open.
    ///
    /// ```
    /// let p = secure_routes::Policy::authenticated();
    /// assert_eq!(p.auth(), secure_routes::AuthMode::Required);
    /// ```
    pub fn authenticated() -> Policy {
        Self::preset(
            Policy::builder("authenticated")
                .methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .auth(AuthMode::Required)
                .rate_limit(quotas::AUTH_GENERATION)
                .max_body_bytes(5 * 1024 * 1024)
                .csrf(CsrfMode::Auto),
        )
    }

    /// STRICT: authentication required, 10 requests per minute, 512 KiB, POST only, CSRF.
    /// Fails **closed** (503) when the rate-limit store is unavailable.
    ///
    /// ```
    /// let p = secure_routes::Policy::strict();
    /// assert_eq!(p.rate_limit(), Some(secure_routes::Quota::per_minute(10)));
    /// ```
    pub fn strict() -> Policy {
        Self::preset(
            Policy::builder("strict")
                .methods([Method::POST])
                .auth(AuthMode::Required)
                .rate_limit(Quota::per_minute(10))
                .max_body_bytes(512 * 1024)
                .csrf(CsrfMode::Auto),
        )
    }

    fn preset(b: PolicyBuilder) -> Policy {
        // Presets are constants of this crate, covered by tests; building them cannot fail.
        b.build()
            .unwrap_or_else(|e| unreachable!("preset policy is valid: {e}"))
    }

    /// Turns this policy back into a builder, to adjust a preset.
    ///
    /// The failure mode follows what you change: unless it was set explicitly (on this
    /// builder, or on the one that built this policy), `build` derives it again from the
    /// adjusted policy, so STRICT with an hourly limit fails open like any other policy that
    /// is not STRICT-like. Set [`failure_mode`](PolicyBuilder::failure_mode) to keep it.
    ///
    /// ```
    /// use secure_routes::{FailureMode, Policy, Quota};
    /// let p = Policy::public().to_builder().name("search").build().unwrap();
    /// assert_eq!(p.name(), "search");
    ///
    /// let hourly = Policy::strict().to_builder().rate_limit(Quota::per_hour(100)).build().unwrap();
    /// assert_eq!(hourly.failure_mode(), FailureMode::Open);
    /// let kept = Policy::strict().to_builder()
    ///     .rate_limit(Quota::per_hour(100))
    ///     .failure_mode(FailureMode::Closed)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(kept.failure_mode(), FailureMode::Closed);
    /// ```
    pub fn to_builder(&self) -> PolicyBuilder {
        PolicyBuilder {
            policy: self.clone(),
            failure_mode_set: self.failure_mode_explicit,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Allowed methods (`None`: any).
    pub fn methods(&self) -> Option<&[Method]> {
        self.methods.as_deref()
    }
    /// Authentication mode.
    pub fn auth(&self) -> AuthMode {
        self.auth
    }
    /// The rate limit, if any.
    pub fn rate_limit(&self) -> Option<Quota> {
        self.rate_limit
    }
    /// The shared bucket name, if set.
    pub fn bucket(&self) -> Option<&str> {
        self.bucket.as_deref()
    }
    /// What the rate limit counts per: the key's parts, in [`KeyPart::ALL`]'s order
    /// (default `[Subject]`: the authenticated subject, else the client address).
    ///
    /// ```
    /// use secure_routes::rate_limit::KeyPart;
    /// assert_eq!(secure_routes::Policy::public().rate_limit_key(), [KeyPart::Subject]);
    /// ```
    pub fn rate_limit_key(&self) -> &[KeyPart] {
        &self.rate_limit_key
    }
    /// Body limit in bytes, if any.
    pub fn max_body_bytes(&self) -> Option<u64> {
        self.max_body_bytes
    }
    /// CSRF mode.
    pub fn csrf(&self) -> CsrfMode {
        self.csrf
    }
    /// Failure mode for store errors.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }
    /// Timeout for one store call.
    pub fn store_timeout(&self) -> Duration {
        self.store_timeout
    }

    /// What an authenticated principal must also meet (403 otherwise); see [`crate::authz`].
    ///
    /// ```
    /// let p = secure_routes::Policy::strict().to_builder().require_role("admin").build().unwrap();
    /// assert_eq!(p.requirements()[0].description(), "role \"admin\"");
    /// ```
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }
    /// The response security headers.
    pub fn security_headers(&self) -> &SecurityHeaders {
        &self.headers
    }
    /// Whether refusals are only recorded (see [`PolicyBuilder::dry_run`]).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// Builds a [`Policy`]; see [`Policy::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct PolicyBuilder {
    policy: Policy,
    failure_mode_set: bool,
}

impl PolicyBuilder {
    /// Renames the policy.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.policy.name = name.into();
        self
    }
    /// Allows only these methods (405 with `Allow` otherwise). `HEAD` is allowed wherever
    /// `GET` is, as HTTP requires. Repeats are dropped, keeping the first-seen order (which is
    /// the order of the `Allow` header).
    ///
    /// ```
    /// use http::Method;
    /// let p = secure_routes::Policy::builder("p")
    ///     .methods([Method::POST, Method::GET, Method::POST, Method::GET])
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(p.methods().unwrap(), [Method::POST, Method::GET, Method::HEAD]);
    /// ```
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.policy.methods = Some(methods.into_iter().collect());
        self
    }
    /// Sets the authentication mode.
    pub fn auth(mut self, mode: AuthMode) -> Self {
        self.policy.auth = mode;
        self
    }
    /// Limits requests per caller. The bucket is the matched route (each route its own) unless
    /// [`bucket`](Self::bucket) names a shared one.
    pub fn rate_limit(mut self, quota: Quota) -> Self {
        self.policy.rate_limit = Some(quota);
        self
    }
    /// Removes the rate limit.
    pub fn no_rate_limit(mut self) -> Self {
        self.policy.rate_limit = None;
        self
    }
    /// Shares one rate-limit budget across every route using this bucket name.
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.policy.bucket = Some(name.into());
        self
    }
    /// Chooses what the rate limit counts per (default `[KeyPart::Subject]`: the
    /// authenticated subject, else the client address). Several parts make one key: with
    /// `[Ip, Fingerprint]` two programs behind one address (a NAT, an office) have separate
    /// budgets, told apart by the shape of their headers ([`crate::fingerprint`]). Order and
    /// repeats do not matter.
    ///
    /// A fingerprint is the client's own choice, so a key with it is never stricter than one
    /// without: a client that changes its headers gets a fresh budget. It is refused as the
    /// only part (every user of one browser version would share one budget, and anyone could
    /// spend it). Authentication failures keep counting against the address alone, whatever
    /// the key, and bans stay per address or subject.
    ///
    /// ```
    /// use secure_routes::{Policy, rate_limit::KeyPart};
    /// let p = Policy::public().to_builder()
    ///     .rate_limit_key([KeyPart::Fingerprint, KeyPart::Ip])
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(p.rate_limit_key(), [KeyPart::Ip, KeyPart::Fingerprint]);
    /// assert!(Policy::public().to_builder().rate_limit_key([KeyPart::Fingerprint]).build().is_err());
    /// assert!(Policy::public().to_builder().rate_limit_key([]).build().is_err());
    /// ```
    pub fn rate_limit_key(mut self, parts: impl IntoIterator<Item = KeyPart>) -> Self {
        self.policy.rate_limit_key = parts.into_iter().collect();
        self
    }
    /// Refuses bodies over `bytes` (413), declared or streamed.
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.policy.max_body_bytes = Some(bytes);
        self
    }
    /// Sets the CSRF mode.
    pub fn csrf(mut self, mode: CsrfMode) -> Self {
        self.policy.csrf = mode;
        self
    }
    /// Sets the failure mode for store errors (default: closed when CSRF and auth are both
    /// required and the limit is per minute or tighter, as STRICT; open otherwise).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.policy.failure_mode = mode;
        self.failure_mode_set = true;
        self
    }
    /// Adds an authorization requirement: an authenticated principal that does not meet it
    /// gets 403, audited as `authz_fail`. Needs [`AuthMode::Required`].
    ///
    /// ```
    /// use secure_routes::{Policy, authz::Requirement};
    /// let p = Policy::authenticated().to_builder()
    ///     .require(Requirement::claim_equals("aal", "aal2")) // multi-factor sessions only
    ///     .build().unwrap();
    /// assert_eq!(p.requirements().len(), 1);
    /// assert!(Policy::public().to_builder().require_role("admin").build().is_err());
    /// ```
    pub fn require(mut self, requirement: Requirement) -> Self {
        self.policy.requirements.push(requirement);
        self
    }

    /// Requires the role `role` ([`crate::authz::has_role`]); shorthand for
    /// `require(Requirement::role(role))`.
    pub fn require_role(self, role: impl Into<String>) -> Self {
        self.require(Requirement::role(role))
    }

    /// Sets the store call timeout (default 50 ms).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.policy.store_timeout = timeout;
        self
    }
    /// Dry-run: every check still runs and every refusal it would answer is audited with
    /// outcome [`would_deny`](crate::audit::Outcome::WouldDeny) (and counted), but the request
    /// goes on to the handler. For trying a policy on live traffic before enforcing it. One
    /// check is not evaluated in dry-run, because it acts on the body as it streams: a body
    /// without a declared length that grows past the limit is passed whole (a declared
    /// `Content-Length` over it is recorded).
    ///
    /// ```
    /// let p = secure_routes::Policy::strict().to_builder().dry_run(true).build().unwrap();
    /// assert!(p.is_dry_run());
    /// ```
    pub fn dry_run(mut self, on: bool) -> Self {
        self.policy.dry_run = on;
        self
    }
    /// Sets or replaces one response security header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.policy.headers.set(name, value);
        self
    }
    /// Removes one default response security header.
    pub fn remove_header(mut self, name: &HeaderName) -> Self {
        self.policy.headers.remove(name);
        self
    }

    /// Validates and returns the policy, or every problem found.
    pub fn build(self) -> Result<Policy, ConfigError> {
        let mut p = self.policy;
        let mut problems = Vec::new();
        if p.name.is_empty()
            || p.name.len() > 64
            || !p
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            problems.push(format!(
                "policy name {:?} must be 1-64 letters, digits, '-', '_' or '.'",
                p.name
            ));
        }
        if let Some(q) = p.rate_limit {
            problems.extend(q.problems(&format!("policy {:?}", p.name)));
        }
        p.rate_limit_key.sort_unstable();
        p.rate_limit_key.dedup();
        match p.rate_limit_key[..] {
            [] => problems.push(format!(
                "policy {:?}: the rate-limit key needs at least one part (ip, subject)",
                p.name
            )),
            [KeyPart::Fingerprint] => problems.push(format!(
                "policy {:?}: a fingerprint is chosen by the client; the rate-limit key needs ip or subject with it",
                p.name
            )),
            _ => {}
        }
        if p.max_body_bytes == Some(0) {
            problems.push(format!(
                "policy {:?}: max_body_bytes must be at least 1",
                p.name
            ));
        }
        if let Some(methods) = &mut p.methods {
            if methods.is_empty() {
                problems.push(format!("policy {:?}: allow at least one method", p.name));
            }
            // `dedup` alone only drops adjacent repeats; the list is short, so a quadratic
            // scan that keeps the first occurrence (a stable `Allow` order) is the simplest.
            let mut unique: Vec<Method> = Vec::with_capacity(methods.len() + 1);
            for m in methods.drain(..) {
                if !unique.contains(&m) {
                    unique.push(m);
                }
            }
            *methods = unique;
            if methods.contains(&Method::GET) && !methods.contains(&Method::HEAD) {
                methods.push(Method::HEAD);
            }
        }
        if let Some(b) = &p.bucket
            && (b.is_empty() || b.len() > 128)
        {
            problems.push(format!(
                "policy {:?}: bucket name must be 1-128 bytes",
                p.name
            ));
        }
        if !p.requirements.is_empty() && p.auth != AuthMode::Required {
            problems.push(format!(
                "policy {:?}: authorization requirements need auth(AuthMode::Required)",
                p.name
            ));
        }
        if p.store_timeout.is_zero() {
            problems.push(format!(
                "policy {:?}: store timeout must be positive",
                p.name
            ));
        }
        if !self.failure_mode_set {
            p.failure_mode = default_failure_mode(&p);
        }
        p.failure_mode_explicit = self.failure_mode_set;
        ConfigError::check(problems, p)
    }
}

/// STRICT-like policies (auth + CSRF + a limit whose window is a minute or less) fail closed;
/// everything else fails open, as DESIGN.md declares.
fn default_failure_mode(p: &Policy) -> FailureMode {
    let strict_like = p.auth == AuthMode::Required
        && p.csrf != CsrfMode::Off
        && p.rate_limit
            .is_some_and(|q| q.window() <= Duration::from_secs(60));
    if strict_like {
        FailureMode::Closed
    } else {
        FailureMode::Open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_seed() {
        let p = Policy::public();
        assert_eq!(p.rate_limit(), Some(Quota::per_minute(60)));
        assert_eq!(p.max_body_bytes(), Some(1 << 20));
        assert_eq!(
            p.methods().unwrap(),
            [Method::GET, Method::POST, Method::HEAD]
        );
        assert_eq!(p.auth(), AuthMode::Off);
        assert_eq!(p.failure_mode(), FailureMode::Open);

        let a = Policy::authenticated();
        assert_eq!(a.rate_limit(), Some(Quota::per_hour(20)));
        assert_eq!(a.max_body_bytes(), Some(5 << 20));
        assert_eq!(a.csrf(), CsrfMode::Auto);
        assert_eq!(a.failure_mode(), FailureMode::Open);

        let s = Policy::strict();
        assert_eq!(s.methods().unwrap(), [Method::POST]);
        assert_eq!(s.max_body_bytes(), Some(512 << 10));
        assert_eq!(s.failure_mode(), FailureMode::Closed);
    }

    #[test]
    fn every_problem_is_reported() {
        let err = Policy::builder("bad name!")
            .rate_limit(Quota::per_minute(0))
            .max_body_bytes(0)
            .methods([])
            .store_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.problems().len(), 5, "{err}");
    }

    #[test]
    fn methods_are_deduplicated_fully_in_first_seen_order() {
        let p = Policy::builder("p")
            .methods([
                Method::POST,
                Method::GET,
                Method::POST,
                Method::HEAD,
                Method::GET,
                Method::POST,
            ])
            .build()
            .unwrap();
        assert_eq!(
            p.methods().unwrap(),
            [Method::POST, Method::GET, Method::HEAD]
        );
        let p = Policy::builder("p")
            .methods([Method::PUT, Method::DELETE, Method::PUT])
            .build()
            .unwrap();
        assert_eq!(p.methods().unwrap(), [Method::PUT, Method::DELETE]);
        // Adjusting a preset and rebuilding adds nothing twice either.
        let again = Policy::public()
            .to_builder()
            .methods([Method::GET, Method::POST, Method::GET])
            .build()
            .unwrap();
        assert_eq!(
            again.methods().unwrap(),
            [Method::GET, Method::POST, Method::HEAD]
        );
    }

    #[test]
    fn to_builder_recomputes_a_derived_failure_mode() {
        // STRICT is closed by derivation; loosen what makes it STRICT-like and it opens.
        let hourly = Policy::strict()
            .to_builder()
            .rate_limit(Quota::per_hour(10))
            .build()
            .unwrap();
        assert_eq!(hourly.failure_mode(), FailureMode::Open);
        let no_csrf = Policy::strict()
            .to_builder()
            .csrf(CsrfMode::Off)
            .build()
            .unwrap();
        assert_eq!(no_csrf.failure_mode(), FailureMode::Open);
        // And the other way: AUTHENTICATED (open) with a per-minute limit is STRICT-like.
        let tight = Policy::authenticated()
            .to_builder()
            .rate_limit(Quota::per_minute(5))
            .build()
            .unwrap();
        assert_eq!(tight.failure_mode(), FailureMode::Closed);
        // Unchanged inputs, unchanged mode.
        let renamed = Policy::strict().to_builder().name("s2").build().unwrap();
        assert_eq!(renamed.failure_mode(), FailureMode::Closed);
    }

    #[test]
    fn an_explicit_failure_mode_survives_to_builder() {
        let open = Policy::strict()
            .to_builder()
            .failure_mode(FailureMode::Open)
            .build()
            .unwrap();
        // Rebuilt from a policy whose mode was set explicitly: kept, whatever changes.
        let still_open = open
            .to_builder()
            .rate_limit(Quota::per_minute(5))
            .build()
            .unwrap();
        assert_eq!(still_open.failure_mode(), FailureMode::Open);
        let closed = Policy::public()
            .to_builder()
            .failure_mode(FailureMode::Closed)
            .build()
            .unwrap()
            .to_builder()
            .rate_limit(Quota::per_day(1_000))
            .build()
            .unwrap();
        assert_eq!(closed.failure_mode(), FailureMode::Closed);
    }

    #[test]
    fn explicit_failure_mode_wins() {
        let p = Policy::strict()
            .to_builder()
            .failure_mode(FailureMode::Open)
            .build()
            .unwrap();
        assert_eq!(p.failure_mode(), FailureMode::Open);
    }
}
