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
