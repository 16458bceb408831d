//! Authorization on top of authentication: what an authenticated principal must also be to
//! use a route.
//!
//! A policy lists [`Requirement`]s ([`PolicyBuilder::require`](crate::PolicyBuilder::require),
//! [`require_role`](crate::PolicyBuilder::require_role)); a principal that fails one gets a
//! 403 with the original pattern's `error` body, audited as `authz_fail`. The check runs after
//! the rate limit, so probing a forbidden route spends the caller's quota like any request.
//!
//! Roles are read only from claims the identity provider controls: top-level `role` (a string)
//! and `roles` (an array of strings), and the same two under `app_metadata` (Supabase's
//! server-controlled metadata). Never from `user_metadata`, which Supabase lets users edit
//! themselves: a role taken from there would be a role anyone can grant themselves.
//!
//! ```
//! use axum::{Router, body::Body, routing::post};
//! use http::{Request, StatusCode};
//! use secure_routes::auth::jwt::JwtAuthenticator;
//! use secure_routes::{Policy, Security};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let jwt = JwtAuthenticator::builder().hs256([7u8; 32]).build().unwrap();
//! let token = jwt.mint("alice", std::time::Duration::from_secs(60)).unwrap(); // no role
//! let security = Security::builder().authenticator(jwt).csrf_secret([1u8; 32]).build().unwrap();
//! let admin_only = Policy::strict().to_builder().name("admin").require_role("admin").build().unwrap();
//! let app: Router = Router::new()
//!     .route("/admin", post(|| async { "ok" }).layer(security.layer(admin_only).unwrap()));
//! let res = app
//!     .oneshot(Request::post("/admin").header("authorization", format!("Bearer {token}"))
//!         .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1], 4000))))
//!         .body(Body::empty()).unwrap())
//!     .await.unwrap();
//! assert_eq!(res.status(), StatusCode::FORBIDDEN);
//! # });
//! ```

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::audit::Reason;
use crate::auth::Principal;

type Check = dyn Fn(&Principal) -> bool + Send + Sync;

/// One condition a principal must meet. Cheap to clone.
///
/// ```
/// use secure_routes::authz::Requirement;
/// use secure_routes::auth::{CredentialSource, Principal};
/// let alice = Principal::new("alice", CredentialSource::Header)
///     .with_claims(serde_json::json!({"app_metadata": {"roles": ["editor"]}}).as_object().unwrap().clone());
/// assert!(Requirement::role("editor").is_met(&alice));
/// assert!(!Requirement::role("admin").is_met(&alice));
/// assert_eq!(Requirement::role("admin").reason().as_str(), "missing_role");
/// ```
#[derive(Clone)]
pub struct Requirement {
    description: Arc<str>,
    reason: Reason,
    check: Arc<Check>,
}

impl Requirement {
    /// The principal has `role` (see [`has_role`]).
    pub fn role(role: impl Into<String>) -> Self {
        let role = role.into();
        Self {
            description: format!("role {role:?}").into(),
            reason: Reason::MissingRole,
            check: Arc::new(move |p| has_role(p, &role)),
        }
    }

    /// The claim `name` equals `value` exactly (JSON equality: `"1"` is not `1`).
    ///
    /// ```
    /// use secure_routes::authz::Requirement;
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let p = Principal::new("a", CredentialSource::Header)
    ///     .with_claims(serde_json::json!({"aal": "aal2"}).as_object().unwrap().clone());
    /// assert!(Requirement::claim_equals("aal", "aal2").is_met(&p));
    /// assert!(!Requirement::claim_equals("aal", "aal1").is_met(&p));
    /// ```
    pub fn claim_equals(name: impl Into<String>, value: impl Into<Value>) -> Self {
        let (name, value) = (name.into(), value.into());
        Self {
            description: format!("claim {name:?} = {value}").into(),
            reason: Reason::ClaimMismatch,
            check: Arc::new(move |p| p.claim(&name) == Some(&value)),
        }
    }

    /// Any condition on the principal; `description` names it in logs and `Debug` output.
    ///
    /// ```
    /// use secure_routes::authz::Requirement;
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// let not_anonymous = Requirement::predicate("not anonymous", |p| {
    ///     p.claim("is_anonymous").and_then(|v| v.as_bool()) != Some(true)
    /// });
    /// assert!(not_anonymous.is_met(&Principal::new("a", CredentialSource::Header)));
    /// ```
    pub fn predicate(
        description: impl Into<String>,
        check: impl Fn(&Principal) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            description: description.into().into(),
            reason: Reason::RequirementNotMet,
            check: Arc::new(check),
        }
    }

    /// Whether `principal` meets it.
    ///
    /// ```
    /// use secure_routes::authz::Requirement;
    /// use secure_routes::auth::{CredentialSource, Principal};
    /// assert!(!Requirement::role("admin").is_met(&Principal::new("a", CredentialSource::Header)));
    /// ```
    pub fn is_met(&self, principal: &Principal) -> bool {
        (self.check)(principal)
    }

    /// The audit reason when it is not met: `missing_role`, `claim_mismatch` or
    /// `requirement_not_met`.
    ///
    /// ```
    /// use secure_routes::authz::Requirement;
    /// assert_eq!(Requirement::claim_equals("aal", "aal2").reason().as_str(), "claim_mismatch");
    /// ```
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// What it requires, for people.
    ///
    /// ```
    /// use secure_routes::authz::Requirement;
    /// assert_eq!(Requirement::role("admin").description(), "role \"admin\"");
    /// ```
    pub fn description(&self) -> &str {
        &self.description
    }
}

impl fmt::Debug for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Requirement")
            .field(&self.description)
            .finish()
    }
}

/// Whether `principal` has `role`: it is one of [`roles`].
///
/// ```
/// use secure_routes::authz::has_role;
/// use secure_routes::auth::{CredentialSource, Principal};
/// let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
/// let p = |v| Principal::new("a", CredentialSource::Header).with_claims(claims(v));
/// assert!(has_role(&p(serde_json::json!({"role": "admin"})), "admin"));
/// assert!(has_role(&p(serde_json::json!({"app_metadata": {"role": "admin"}})), "admin"));
/// assert!(!has_role(&p(serde_json::json!({"user_metadata": {"role": "admin"}})), "admin"));
/// ```
pub fn has_role(principal: &Principal, role: &str) -> bool {
    roles(principal).any(|r| r == role)
}

/// Every role `principal` has, the one rule [`has_role`] and the gateway's identity headers
/// share: the string claim `role` and the strings in the array claim `roles`, at the top level
/// and then under `app_metadata` (never `user_metadata`: users can write that themselves).
/// In claim order; a role named in two places is listed twice, non-strings are skipped.
///
/// ```
/// use secure_routes::authz::roles;
/// use secure_routes::auth::{CredentialSource, Principal};
/// let claims = serde_json::json!({
///     "role": "authenticated",
///     "roles": ["editor", 7],
///     "app_metadata": {"roles": ["admin"]},
///     "user_metadata": {"role": "owner"},
/// });
/// let p = Principal::new("a", CredentialSource::Header)
///     .with_claims(claims.as_object().unwrap().clone());
/// assert_eq!(roles(&p).collect::<Vec<_>>(), ["authenticated", "editor", "admin"]);
/// ```
pub fn roles(principal: &Principal) -> impl Iterator<Item = &str> {
    fn in_map(m: &serde_json::Map<String, Value>) -> impl Iterator<Item = &str> {
        let role = m.get("role").and_then(Value::as_str);
        let listed = m
            .get("roles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        role.into_iter().chain(listed.filter_map(Value::as_str))
    }
    let app = principal.claim("app_metadata").and_then(Value::as_object);
    in_map(principal.claims()).chain(app.into_iter().flat_map(in_map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialSource;

    fn principal(claims: Value) -> Principal {
        Principal::new("u", CredentialSource::Header)
            .with_claims(claims.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn roles_come_only_from_provider_controlled_claims() {
        let cases = [
            (serde_json::json!({"role": "admin"}), true),
            (serde_json::json!({"roles": ["x", "admin"]}), true),
            (
                serde_json::json!({"app_metadata": {"roles": ["admin"]}}),
                true,
            ),
            (serde_json::json!({"role": "administrator"}), false),
            (serde_json::json!({"role": ["admin"]}), false),
            (serde_json::json!({"roles": "admin"}), false),
            (
                serde_json::json!({"roles": [1, null, {"admin": true}]}),
                false,
            ),
            (
                serde_json::json!({"user_metadata": {"role": "admin"}}),
                false,
            ),
            (
                serde_json::json!({"user_metadata": {"roles": ["admin"]}}),
                false,
            ),
            (serde_json::json!({"app_metadata": "admin"}), false),
            (serde_json::json!({}), false),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                has_role(&principal(claims.clone()), "admin"),
                expected,
                "{claims}"
            );
        }
    }

    #[test]
    fn roles_lists_what_has_role_accepts() {
        let p = principal(serde_json::json!({
            "role": ["not", "a", "string"],
            "roles": ["a", null, "b"],
            "app_metadata": {"role": "c", "roles": "not an array"},
            "user_metadata": {"roles": ["forged"]},
        }));
        let listed: Vec<&str> = roles(&p).collect();
        assert_eq!(listed, ["a", "b", "c"]);
        for r in ["a", "b", "c"] {
            assert!(has_role(&p, r), "{r}");
        }
        assert!(!has_role(&p, "forged"));
        assert_eq!(roles(&principal(serde_json::json!({}))).count(), 0);
    }

    #[test]
    fn claim_equality_is_typed() {
        let p = principal(serde_json::json!({"level": 1}));
        assert!(Requirement::claim_equals("level", 1).is_met(&p));
        assert!(!Requirement::claim_equals("level", "1").is_met(&p));
        assert!(!Requirement::claim_equals("missing", Value::Null).is_met(&p));
        assert_eq!(
            format!("{:?}", Requirement::claim_equals("level", 1)),
            "Requirement(\"claim \\\"level\\\" = 1\")"
        );
    }
}
