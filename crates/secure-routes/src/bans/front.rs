//! [`Bans`]: a store and a policy, with the two calls the pipeline makes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{Ban, BanKey, BanPolicy, BanStore, StoreError, StrikeOutcome, Violation};
use crate::response::problem::RejectionKind;

/// A ban store with its policy: what the pipeline holds to check a client (step 2) and to
/// count its refusals. Cloning is cheap (two `Arc`s).
///
/// * [`check`](Self::check): the ban on the resolved client address, and on the subject once
///   it is known, whichever ends later.
/// * [`record`](Self::record): after a refusal, a strike of the refusal's weight against the
///   address and the subject; returns the bans it issued (each one an `ip_banned` event).
///   Refusals that are no [`Violation`] (404, 5xx, the ban itself) and requests from
///   allow-listed addresses strike nothing.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use secure_routes::bans::{BanPolicy, Bans, MemoryBans};
/// use secure_routes::response::problem::RejectionKind;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bans = Bans::new(Arc::new(MemoryBans::new()), BanPolicy::builder().threshold(4).build().unwrap());
/// let ip = "203.0.113.7".parse().unwrap();
/// let now = Duration::from_secs(1_000);
/// // A CSRF failure weighs 2: the second one bans the address and the subject.
/// assert!(bans.record(RejectionKind::CsrfFailed, ip, Some("eve"), now).await.unwrap().is_empty());
/// let issued = bans.record(RejectionKind::CsrfFailed, ip, Some("eve"), now).await.unwrap();
/// assert_eq!(issued.len(), 2);
/// let ban = bans.check(ip, None, now).await.unwrap().unwrap();
/// assert_eq!(ban.retry_after_secs(now), 900);
/// // Another address of the same subject is refused once the subject is known.
/// let other = "198.51.100.1".parse().unwrap();
/// assert!(bans.check(other, None, now).await.unwrap().is_none());
/// assert!(bans.check(other, Some("eve"), now).await.unwrap().is_some());
/// // A 404 is no violation.
/// assert!(bans.record(RejectionKind::NotFound, other, None, now).await.unwrap().is_empty());
/// # });
/// ```
#[derive(Clone)]
pub struct Bans {
    store: Arc<dyn BanStore>,
    policy: Arc<BanPolicy>,
}

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans")
            .field("store", &self.store.name())
            .field("policy", &self.policy)
            .finish()
    }
}

impl Bans {
    /// Bans kept in `store` under `policy`.
    pub fn new(store: Arc<dyn BanStore>, policy: BanPolicy) -> Self {
        Self {
            store,
            policy: Arc::new(policy),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn BanStore> {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &BanPolicy {
        &self.policy
    }

    /// The ban in force on `ip` (the resolved client address) or on `subject`, the one that
    /// ends later; `None` when neither is banned.
    ///
    /// # Errors
    ///
    /// The store's error (the caller's failure mode decides; failing open is the usual
    /// choice for bans, which only add to the other checks).
    pub async fn check(
        &self,
        ip: IpAddr,
        subject: Option<&str>,
        now: Duration,
    ) -> Result<Option<Ban>, StoreError> {
        let by_ip = self.store.check(&BanKey::ip(ip), now).await?;
        let by_subject = match subject {
            Some(s) => self.store.check(&BanKey::subject(s), now).await?,
            None => None,
        };
        Ok(match (by_ip, by_subject) {
            (Some(a), Some(b)) => Some(if b.until > a.until { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// Counts a refusal of `kind` against `ip` and `subject`; returns the bans this issued.
    ///
    /// # Errors
    ///
    /// The store's error (a strike is lost; nothing else depends on it).
    pub async fn record(
        &self,
        kind: RejectionKind,
        ip: IpAddr,
        subject: Option<&str>,
        now: Duration,
    ) -> Result<Vec<Ban>, StoreError> {
        let Some(violation) = Violation::of(kind) else {
            return Ok(Vec::new());
        };
        let weight = self.policy.weight(violation);
        let ip_key = BanKey::ip(ip);
        if weight == 0 || self.policy.exempts(&ip_key) {
            return Ok(Vec::new());
        }
        let mut issued = Vec::new();
        let keys = std::iter::once(ip_key).chain(subject.map(BanKey::subject));
        for key in keys {
            if let StrikeOutcome::Banned { ban, new: true } =
                self.store.strike(&key, weight, &self.policy, now).await?
            {
                issued.push(ban);
            }
        }
        Ok(issued)
    }
}
