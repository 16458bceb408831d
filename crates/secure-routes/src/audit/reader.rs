//! Reading the audit trail back: the filter ([`AuditQuery`]) and the read side of a store
//! ([`AuditReader`]), which the CLI's `audit` command and the dashboard share.
//!
//! Each store answers the three questions the dashboard asks (the events, page by page; the
//! counts per action over time; the top offenders) in its own query language; the memory
//! reader ([`MemoryAuditReader`]) answers them over a list of events (a JSON-lines file read
//! whole, or a test's events) and is the reference the stores are tested against.
//!
//! Counts are sums of [`AuditEvent::count`], never numbers of rows: a folded row stands for
//! many refusals.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{AuditAction, AuditError, AuditEvent, BoxFuture, Outcome};

#[cfg(feature = "conformance")]
pub mod conformance;

/// A filter for reading audit events back, shared by every store that can list them: which
/// events [`AuditReader::events`] returns. Every field left `None` matches everything; text
/// fields match exactly (as stored: escaped, bounded).
///
/// Paging goes backwards in time: `before` is the id of the last (oldest) event of the
/// previous page, and the next page holds the events older than it in the list's order,
/// newest first by `(timestamp, id)`: a keyset cursor. Readers look the cursor's event up
/// and compare `(timestamp, id)` pairs, so pages have no gaps or repeats even where ids
/// (UUIDv7, millisecond time then per-process order) and timestamps disagree (two
/// instances within one millisecond, a clock stepped back), and a store serves the list
/// from its timestamp indexes. A cursor naming no stored event gives an empty page.
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditQuery, Outcome};
/// let q = AuditQuery {
///     action: Some(AuditAction::RateLimitExceeded),
///     outcome: Some(Outcome::Denied),
///     since: Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(10)),
///     limit: 50,
///     ..AuditQuery::default()
/// };
/// assert_eq!(AuditQuery::default().limit, 100);
/// # let _ = q;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AuditQuery {
    /// Only this action.
    pub action: Option<AuditAction>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// Only this client address (as stored, possibly truncated).
    pub client_ip: Option<String>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only this route (template or bucket, as stored).
    pub route: Option<String>,
    /// Only this request fingerprint.
    pub fingerprint: Option<String>,
    /// Only events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Only events before this instant.
    pub until: Option<OffsetDateTime>,
    /// Only events after the event with this id in the list's order, i.e. with a smaller
    /// `(timestamp, id)` (the paging cursor; see above).
    pub before: Option<Uuid>,
    /// At most this many events (the newest ones). `0` returns none.
    pub limit: usize,
}

impl Default for AuditQuery {
    /// Every event, any time, the newest 100.
    fn default() -> Self {
        Self {
            action: None,
            outcome: None,
            client_ip: None,
            subject: None,
            route: None,
            fingerprint: None,
            since: None,
            until: None,
            before: None,
            limit: 100,
        }
    }
}

impl AuditQuery {
    /// Whether `e` passes every filter (the limit and the cursor aside: the cursor names an
    /// event, which a reader looks up): the rule every store implements.
    ///
    /// ```
    /// use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery};
    /// let e = AuditEvent::new(AuditAction::UnauthorizedAccess).with_client_ip("203.0.113.7");
    /// let q = AuditQuery { client_ip: Some("203.0.113.7".into()), ..AuditQuery::default() };
    /// assert!(q.matches(&e));
    /// let q = AuditQuery { action: Some(AuditAction::AuthzFail), ..AuditQuery::default() };
    /// assert!(!q.matches(&e));
    /// ```
    pub fn matches(&self, e: &AuditEvent) -> bool {
        fn same(want: &Option<String>, have: &Option<String>) -> bool {
            want.is_none() || want == have
        }
        self.action.is_none_or(|a| a == e.action)
            && self.outcome.is_none_or(|o| o == e.outcome)
            && same(&self.client_ip, &e.client_ip)
            && same(&self.subject, &e.subject)
            && self.route.as_ref().is_none_or(|r| *r == e.route)
            && same(&self.fingerprint, &e.fingerprint)
            && self.since.is_none_or(|t| e.timestamp >= t)
            && self.until.is_none_or(|t| e.timestamp < t)
    }
}

/// The events of one action within one time bucket, summed over [`AuditEvent::count`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionCount {
    /// The bucket's start (a multiple of the bucket length since the Unix epoch, UTC).
    pub bucket_start: OffsetDateTime,
    /// The action.
    pub action: AuditAction,
    /// How many decisions (the sum of `count`).
    pub count: u64,
}

/// What [`AuditReader::top`] ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopBy {
    /// The client address.
    ClientIp,
    /// The authenticated subject.
    Subject,
}

/// One key of a [`AuditReader::top`] ranking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopEntry {
    /// The address or subject.
    pub key: String,
    /// How many decisions (the sum of `count`).
    pub count: u64,
}

/// The read side of an audit store.
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditQuery, AuditReader, MemoryAuditReader};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let reader = MemoryAuditReader::new(vec![
///     AuditEvent::new(AuditAction::UnauthorizedAccess).with_count(3),
///     AuditEvent::new(AuditAction::RateLimitExceeded),
/// ]);
/// let newest = reader.events(&AuditQuery::default()).await.unwrap();
/// assert_eq!(newest[0].action, AuditAction::RateLimitExceeded);
/// # });
/// ```
pub trait AuditReader: Send + Sync + 'static {
    /// The events matching `q` (all its filters and the cursor), newest first by
    /// `(timestamp, id)`, at most `q.limit`.
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>>;

    /// For the events matching `q` (its limit and cursor ignored), the decisions per action
    /// per `bucket` of time, oldest bucket first, then by action name; buckets without
    /// events are left out. `bucket` is at least a second.
    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>>;

    /// For the events matching `q` (its limit and cursor ignored) that have the key `by`, the
    /// `n` keys with the most decisions, most first (ties by key).
    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>>;

    /// A short name for logs.
    fn name(&self) -> &'static str;
}

/// An [`AuditReader`] over events held in memory: a JSON-lines file read whole, a test's
/// events. The reference the stores' readers are checked against.
#[derive(Clone, Debug, Default)]
pub struct MemoryAuditReader {
    events: Vec<AuditEvent>,
}

impl MemoryAuditReader {
    /// A reader over `events`, in any order.
    pub fn new(events: Vec<AuditEvent>) -> Self {
        Self { events }
    }
}

impl AuditReader for MemoryAuditReader {
    fn events<'a>(
        &'a self,
        q: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        // The keyset cursor: the named event's place in the order (none: an empty page).
        let cursor = match q.before {
            None => None,
            Some(id) => match self.events.iter().find(|e| e.id == id) {
                Some(e) => Some((e.timestamp, e.id)),
                None => return Box::pin(std::future::ready(Ok(Vec::new()))),
            },
        };
        let mut found: Vec<AuditEvent> = self
            .events
            .iter()
            .filter(|e| q.matches(e) && cursor.is_none_or(|c| (e.timestamp, e.id) < c))
            .cloned()
            .collect();
        found.sort_by_key(|e| std::cmp::Reverse((e.timestamp, e.id)));
        found.truncate(q.limit);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn counts<'a>(
        &'a self,
        q: &'a AuditQuery,
        bucket: Duration,
    ) -> BoxFuture<'a, Result<Vec<ActionCount>, AuditError>> {
        Box::pin(std::future::ready(Ok(count_per_bucket(
            self.events.iter().filter(|e| q.matches(e)),
            bucket,
        ))))
    }

    fn top<'a>(
        &'a self,
        q: &'a AuditQuery,
        by: TopBy,
        n: usize,
    ) -> BoxFuture<'a, Result<Vec<TopEntry>, AuditError>> {
        Box::pin(std::future::ready(Ok(rank(
            self.events.iter().filter(|e| q.matches(e)),
            by,
            n,
        ))))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// The start of the `bucket` holding `t`: a multiple of the bucket length since the epoch.
///
/// ```
/// use std::time::Duration;
/// use secure_routes::audit::reader::bucket_start;
/// let t = time::OffsetDateTime::from_unix_timestamp(125).unwrap();
/// assert_eq!(bucket_start(t, Duration::from_secs(60)).unix_timestamp(), 120);
/// ```
pub fn bucket_start(t: OffsetDateTime, bucket: Duration) -> OffsetDateTime {
    let len = bucket.as_secs().max(1) as i64;
    let s = t.unix_timestamp();
    OffsetDateTime::from_unix_timestamp(s - s.rem_euclid(len)).unwrap_or(t)
}

/// [`AuditReader::counts`] over events already filtered.
pub fn count_per_bucket<'e>(
    events: impl Iterator<Item = &'e AuditEvent>,
    bucket: Duration,
) -> Vec<ActionCount> {
    let mut sums: HashMap<(OffsetDateTime, AuditAction), u64> = HashMap::new();
    for e in events {
        *sums
            .entry((bucket_start(e.timestamp, bucket), e.action))
            .or_default() += e.count;
    }
    let mut out: Vec<ActionCount> = sums
        .into_iter()
        .map(|((bucket_start, action), count)| ActionCount {
            bucket_start,
            action,
            count,
        })
        .collect();
    out.sort_by(|a, b| {
        (a.bucket_start, a.action.as_str()).cmp(&(b.bucket_start, b.action.as_str()))
    });
    out
}

/// [`AuditReader::top`] over events already filtered.
pub fn rank<'e>(
    events: impl Iterator<Item = &'e AuditEvent>,
    by: TopBy,
    n: usize,
) -> Vec<TopEntry> {
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for e in events {
        let key = match by {
            TopBy::ClientIp => e.client_ip.as_deref(),
            TopBy::Subject => e.subject.as_deref(),
        };
        if let Some(k) = key {
            *sums.entry(k).or_default() += e.count;
        }
    }
    let mut out: Vec<TopEntry> = sums
        .into_iter()
        .map(|(key, count)| TopEntry {
            key: key.to_owned(),
            count,
        })
        .collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, action: AuditAction, ip: &str, count: u64) -> AuditEvent {
        let mut e = AuditEvent::new(action).with_client_ip(ip).with_count(count);
        e.timestamp = OffsetDateTime::from_unix_timestamp(secs).unwrap();
        e
    }

    #[tokio::test]
    async fn counts_sum_folded_rows_per_bucket_and_action() {
        let r = MemoryAuditReader::new(vec![
            at(10, AuditAction::UnauthorizedAccess, "a", 3),
            at(50, AuditAction::UnauthorizedAccess, "b", 1),
            at(70, AuditAction::UnauthorizedAccess, "a", 2),
            at(70, AuditAction::AuthzFail, "a", 1),
        ]);
        let c = r
            .counts(&AuditQuery::default(), Duration::from_secs(60))
            .await
            .unwrap();
        let got: Vec<(i64, &str, u64)> = c
            .iter()
            .map(|c| (c.bucket_start.unix_timestamp(), c.action.as_str(), c.count))
            .collect();
        assert_eq!(
            got,
            [
                (0, "unauthorized_access", 4),
                (60, "authz_fail", 1),
                (60, "unauthorized_access", 2)
            ]
        );
        let top = r
            .top(&AuditQuery::default(), TopBy::ClientIp, 1)
            .await
            .unwrap();
        assert_eq!(
            top,
            [TopEntry {
                key: "a".into(),
                count: 6
            }]
        );
        assert!(
            r.top(&AuditQuery::default(), TopBy::Subject, 5)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn pages_go_back_in_time_without_gaps_or_repeats() {
        let events: Vec<AuditEvent> = (0..7)
            .map(|i| at(i, AuditAction::InvalidInput, "a", 1))
            .collect();
        let r = MemoryAuditReader::new(events);
        let mut q = AuditQuery {
            limit: 3,
            ..AuditQuery::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = r.events(&q).await.unwrap();
            let Some(last) = page.last() else { break };
            q.before = Some(last.id);
            seen.extend(page.iter().map(|e| e.timestamp.unix_timestamp()));
        }
        assert_eq!(seen, [6, 5, 4, 3, 2, 1, 0]);
    }
}
