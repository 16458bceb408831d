//! Step 6b, authorization: the policy's requirements on the authenticated principal, 403 when
//! one is unmet. It runs after the rate limit, so probing a forbidden route costs quota.
//! Requirements imply required authentication (checked when the policy is built); a request
//! with no principal here still fails closed.

use crate::audit::Reason;
use crate::auth::Principal;
use crate::authz::Requirement;
use crate::policy::Policy;
use crate::response::problem::{Rejection, RejectionKind};

/// Passes when `principal` meets every requirement of `policy` (trivially with none).
pub(crate) fn check(policy: &Policy, principal: Option<&Principal>) -> Result<(), Rejection> {
    if policy.requirements().is_empty() {
        return Ok(());
    }
    let unmet = match principal {
        None => Some(Reason::MissingCredential),
        Some(p) => policy
            .requirements()
            .iter()
            .find(|r| !r.is_met(p))
            .map(Requirement::reason),
    };
    match unmet {
        None => Ok(()),
        Some(reason) => {
            metrics::counter!("secure_routes_authz_failures_total").increment(1);
            Err(Rejection::new(RejectionKind::Forbidden, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::CredentialSource;
    use crate::authz::Requirement;
    use crate::policy::AuthMode;

    fn admin_only() -> Policy {
        Policy::builder("admin")
            .auth(AuthMode::Required)
            .require(Requirement::role("admin"))
            .build()
            .unwrap()
    }

    #[test]
    fn unmet_requirements_are_refused_with_their_reason() {
        let editor = Principal::new("e", CredentialSource::Header).with_claims(
            serde_json::json!({"role": "editor"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let admin = Principal::new("a", CredentialSource::Header).with_claims(
            serde_json::json!({"role": "admin"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let info = check(&admin_only(), Some(&editor)).unwrap_err().info();
        assert_eq!(info.kind, RejectionKind::Forbidden);
        assert_eq!(info.reason, Reason::MissingRole);
        assert!(check(&admin_only(), Some(&admin)).is_ok());
        // No principal: fails closed.
        let info = check(&admin_only(), None).unwrap_err().info();
        assert_eq!(info.reason, Reason::MissingCredential);
        // No requirements: nothing to check.
        assert!(check(&Policy::public(), None).is_ok());
    }
}
