//! The conformance suite every [`AuditReader`] must pass (feature `conformance`): the same
//! questions asked of a store's reader and of [`MemoryAuditReader`] over the same events must
//! get the same answers.
//!
//! A store's test writes [`fixture`] through its sink, opens its reader, and calls
//! [`run_all`] with the reader and the fixture; an empty store is checked with [`empty`].
//! Why one suite: the dashboard and `secure-routes audit` read every store through the trait,
//! so a filter one store forgets (or a `count` summed as a row count) would show an operator
//! a different attack depending on where the log is kept.
//!
//! What is checked: every filter alone and combined (text filters with SQL wildcards and
//! quotes in them, values no event has), limits, paging with `before` (pages joined equal the
//! whole list, no event twice, also under a filter), counts per bucket for several bucket
//! lengths (sums of `count`, never row counts), top-n by address and subject with ties.
//!
//! ```
//! use secure_routes::audit::{AuditReader, MemoryAuditReader};
//! use secure_routes::audit::reader::conformance;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let events = conformance::fixture();
//! conformance::run_all(&MemoryAuditReader::new(events.clone()), &events).await;
//! conformance::empty(&MemoryAuditReader::default()).await;
//! # });
//! ```

use std::time::Duration;

use time::OffsetDateTime;

use super::{AuditQuery, AuditReader, MemoryAuditReader, TopBy};
use crate::audit::{AuditAction, AuditEvent, Outcome};

/// Where the fixture's time starts: 2030-01-01T00:00:00Z.
pub const START: i64 = 1_893_456_000;

const ACTIONS: [AuditAction; 5] = [
    AuditAction::UnauthorizedAccess,
    AuditAction::RateLimitExceeded,
    AuditAction::CsrfValidationFailed,
    AuditAction::AuthzFail,
    AuditAction::InvalidInput,
];
const IPS: [Option<&str>; 4] = [
    Some("203.0.113.1"),
    Some("203.0.113.2"),
    Some("2001:db8::/64"),
    None,
];
const SUBJECTS: [Option<&str>; 4] = [Some("alice"), Some("o'brien"), None, Some("bö_%")];
const ROUTES: [&str; 3] = ["/api/a", "/api/%", "bucket:not_found"];
const FINGERPRINTS: [Option<&str>; 3] = [
    Some("ge11nn05enus_a1b2c3d4e5f6_000000000000"),
    None,
    Some("po11cr03nn00_ffffffffffff_abcdefabcdef"),
];
const COUNTS: [u64; 6] = [1, 1, 3, 1, 7, 2];

/// The events the suite expects a store to hold: 65 events over about 17 minutes from
/// [`START`], timestamps in whole microseconds (Postgres' precision), folded rows among
/// them, two pairs of keys whose sums tie (for the top-n order), equal timestamps, and an
/// event whose id is out of time order.
pub fn fixture() -> Vec<AuditEvent> {
    let mut out = Vec::new();
    for i in 0..60usize {
        let mut e = AuditEvent::new(ACTIONS[i % 5])
            .with_outcome(match i % 7 {
                0 => Outcome::Allowed,
                3 => Outcome::Error,
                _ => Outcome::Denied,
            })
            .with_request(
                ["GET", "POST"][i % 2],
                ROUTES[(i / 2) % 3],
                &format!("/p/{i}"),
            )
            .with_status([401, 429, 403, 403, 400][i % 5])
            .with_reason("conformance")
            .with_request_id(&format!("req-{i}"))
            .with_count(COUNTS[i % 6]);
        if let Some(ip) = IPS[i % 4] {
            e = e.with_client_ip(ip);
        }
        if let Some(s) = SUBJECTS[(i % 4) ^ ((i / 4) % 2)] {
            e = e.with_subject(s);
        }
        if let Some(f) = FINGERPRINTS[(i / 3) % 3] {
            e = e.with_fingerprint(f);
        }
        if i % 5 == 1 {
            e = e.with_user_agent("curl/8.5");
            e = e.with_metadata(serde_json::json!({"n": i, "tags": ["a", "b"]}));
        }
        e.timestamp = at(i as i64 * 17, (i as i64 * 7_919) % 1_000_000);
        out.push(e);
    }
    // Ties: two addresses and two subjects with equal sums, above every other key, so the
    // order among them is the key order.
    for (ip, subject) in [("192.0.2.9", "tie-b"), ("192.0.2.10", "tie-a")] {
        let mut e = AuditEvent::new(AuditAction::RateLimitExceeded)
            .with_client_ip(ip)
            .with_subject(subject)
            .with_request("GET", "/api/a", "/api/a")
            .with_status(429)
            .with_count(1_000);
        e.timestamp = at(61 * 17, 0);
        out.push(e);
    }
    // Ids that disagree with timestamps (made last, so the largest ids, yet stamped in the
    // middle: another instance's event within one millisecond, a clock stepped back), and
    // two events with the same timestamp as another (the id breaks the tie): paging must
    // neither skip nor repeat them.
    for (n, t) in [
        (0, at(10 * 17, 1)),
        (1, at(40 * 17, 40 * 7_919)),
        (2, at(40 * 17, 40 * 7_919)),
    ] {
        let mut e = AuditEvent::new(AuditAction::UnauthorizedAccess)
            .with_client_ip("203.0.113.1")
            .with_request("GET", "/api/a", "/api/a")
            .with_status(401)
            .with_request_id(&format!("odd-{n}"));
        e.timestamp = t;
        out.push(e);
    }
    out
}

fn at(secs: i64, micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(START + secs) * 1_000_000_000 + i128::from(micros) * 1_000,
    )
    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The queries the suite asks: each filter alone (every value the fixture has, and one it
/// has not), then combinations, then limits.
fn queries(events: &[AuditEvent]) -> Vec<AuditQuery> {
    let all = AuditQuery {
        limit: 1_000,
        ..AuditQuery::default()
    };
    let mut qs = vec![all.clone(), AuditQuery::default()];
    for a in ACTIONS.iter().chain([&AuditAction::IpBanned]) {
        qs.push(AuditQuery {
            action: Some(*a),
            ..all.clone()
        });
    }
    for o in Outcome::ALL {
        qs.push(AuditQuery {
            outcome: Some(*o),
            ..all.clone()
        });
    }
    for ip in IPS
        .iter()
        .flatten()
        .chain(&["192.0.2.9", "203.0.113.%", "nobody"])
    {
        qs.push(AuditQuery {
            client_ip: Some((*ip).to_owned()),
            ..all.clone()
        });
    }
    for s in SUBJECTS.iter().flatten().chain(&["tie-a", "b%", "nobody"]) {
        qs.push(AuditQuery {
            subject: Some((*s).to_owned()),
            ..all.clone()
        });
    }
    for r in ROUTES.iter().chain(&["/api/_", "/API/A"]) {
        qs.push(AuditQuery {
            route: Some((*r).to_owned()),
            ..all.clone()
        });
    }
    for f in FINGERPRINTS.iter().flatten().chain(&["nope"]) {
        qs.push(AuditQuery {
            fingerprint: Some((*f).to_owned()),
            ..all.clone()
        });
    }
    let mid = at(30 * 17, 30 * 7_919);
    qs.push(AuditQuery {
        since: Some(mid),
        ..all.clone()
    });
    qs.push(AuditQuery {
        until: Some(mid),
        ..all.clone()
    });
    qs.push(AuditQuery {
        since: Some(at(100, 0)),
        until: Some(at(400, 0)),
        ..all.clone()
    });
    qs.push(AuditQuery {
        since: Some(at(400, 0)),
        until: Some(at(100, 0)),
        ..all.clone()
    });
    if let Some(e) = events.get(events.len() / 2) {
        qs.push(AuditQuery {
            before: Some(e.id),
            ..all.clone()
        });
    }
    qs.push(AuditQuery {
        before: Some(uuid::Uuid::nil()),
        ..all.clone()
    });
    qs.push(AuditQuery {
        before: Some(uuid::Uuid::max()),
        ..all.clone()
    });
    // Combined.
    qs.push(AuditQuery {
        action: Some(AuditAction::UnauthorizedAccess),
        client_ip: Some("203.0.113.1".into()),
        ..all.clone()
    });
    qs.push(AuditQuery {
        subject: Some("alice".into()),
        outcome: Some(Outcome::Denied),
        since: Some(at(200, 0)),
        ..all.clone()
    });
    qs.push(AuditQuery {
        route: Some("/api/a".into()),
        fingerprint: Some(FINGERPRINTS[0].unwrap_or_default().to_owned()),
        until: Some(at(800, 0)),
        ..all.clone()
    });
    qs.push(AuditQuery {
        action: Some(AuditAction::RateLimitExceeded),
        outcome: Some(Outcome::Denied),
        client_ip: Some("203.0.113.2".into()),
        subject: Some("o'brien".into()),
        route: Some("/api/%".into()),
        since: Some(at(0, 0)),
        until: Some(at(2_000, 0)),
        ..all.clone()
    });
    for limit in [0, 1, 5] {
        qs.push(AuditQuery {
            limit,
            ..all.clone()
        });
        qs.push(AuditQuery {
            limit,
            client_ip: Some("203.0.113.2".into()),
            ..all.clone()
        });
    }
    qs
}

/// Checks `reader`, which must hold exactly `events` (normally [`fixture`], written through
/// the store's sink), against [`MemoryAuditReader`] over the same events.
///
/// # Panics
///
/// On the first answer that differs, naming the query.
pub async fn run_all(reader: &dyn AuditReader, events: &[AuditEvent]) {
    let reference = MemoryAuditReader::new(events.to_vec());
    assert!(!reader.name().is_empty());
    let qs = queries(events);
    for q in &qs {
        let want = reference.events(q).await.expect("reference events");
        let got = reader
            .events(q)
            .await
            .unwrap_or_else(|e| panic!("{} events {q:?}: {e}", reader.name()));
        assert_eq!(got, want, "{}: events for {q:?}", reader.name());
    }
    // The fixture must exercise what it claims to.
    let all = reference.events(&qs[0]).await.expect("reference events");
    assert_eq!(all.len(), events.len());
    for q in &qs {
        for bucket in [1, 60, 300, 86_400] {
            let bucket = Duration::from_secs(bucket);
            let want = reference.counts(q, bucket).await.expect("reference counts");
            let got = reader
                .counts(q, bucket)
                .await
                .unwrap_or_else(|e| panic!("{} counts {q:?}: {e}", reader.name()));
            assert_eq!(
                got,
                want,
                "{}: counts per {bucket:?} for {q:?}",
                reader.name()
            );
        }
        for by in [TopBy::ClientIp, TopBy::Subject] {
            for n in [0, 1, 2, 3, 100] {
                let want = reference.top(q, by, n).await.expect("reference top");
                let got = reader
                    .top(q, by, n)
                    .await
                    .unwrap_or_else(|e| panic!("{} top {q:?}: {e}", reader.name()));
                assert_eq!(got, want, "{}: top {n} by {by:?} for {q:?}", reader.name());
            }
        }
    }
    // Sums, not rows: the whole log counts every folded occurrence.
    let total: u64 = events.iter().map(|e| e.count).sum();
    let counted: u64 = reader
        .counts(&qs[0], Duration::from_secs(86_400))
        .await
        .expect("counts")
        .iter()
        .map(|c| c.count)
        .sum();
    assert_eq!(counted, total, "{}: counts sum `count`", reader.name());
    // The fixture's tie (with its counts; an old store counting each row once has others),
    // so the comparisons above did check the order among equal sums.
    if events.iter().any(|e| e.count == 1_000) {
        let top = reader.top(&qs[0], TopBy::ClientIp, 2).await.expect("top");
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].count, top[1].count, "the fixture's tie");
        assert!(top[0].key < top[1].key, "ties by key: {top:?}");
    }

    paging(
        reader,
        &reference,
        &AuditQuery {
            limit: 7,
            ..AuditQuery::default()
        },
    )
    .await;
    paging(
        reader,
        &reference,
        &AuditQuery {
            limit: 3,
            outcome: Some(Outcome::Denied),
            client_ip: Some("203.0.113.1".into()),
            ..AuditQuery::default()
        },
    )
    .await;
}

/// Walks every page of `q` with `before` and checks the pages join to the whole list.
async fn paging(reader: &dyn AuditReader, reference: &MemoryAuditReader, q: &AuditQuery) {
    let whole = reference
        .events(&AuditQuery {
            limit: usize::MAX,
            ..q.clone()
        })
        .await
        .expect("reference");
    let mut page_q = q.clone();
    let mut seen = Vec::new();
    for _ in 0..=whole.len() {
        let page = reader.events(&page_q).await.expect("page");
        assert!(page.len() <= q.limit);
        let Some(last) = page.last() else { break };
        page_q.before = Some(last.id);
        seen.extend(page.into_iter().map(|e| e.id));
    }
    let want: Vec<_> = whole.iter().map(|e| e.id).collect();
    assert_eq!(seen, want, "{}: pages of {q:?}", reader.name());
}

/// Checks that an empty store answers every question with nothing (not an error).
///
/// # Panics
///
/// On an error or any event, count or key.
pub async fn empty(reader: &dyn AuditReader) {
    for q in queries(&[]) {
        assert!(reader.events(&q).await.expect("events").is_empty(), "{q:?}");
        assert!(
            reader
                .counts(&q, Duration::from_secs(60))
                .await
                .expect("counts")
                .is_empty()
        );
        assert!(
            reader
                .top(&q, TopBy::ClientIp, 10)
                .await
                .expect("top")
                .is_empty()
        );
        assert!(
            reader
                .top(&q, TopBy::Subject, 10)
                .await
                .expect("top")
                .is_empty()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_reference_passes_its_own_suite() {
        let events = fixture();
        run_all(&MemoryAuditReader::new(events.clone()), &events).await;
        empty(&MemoryAuditReader::default()).await;
    }

    #[tokio::test]
    async fn a_reader_that_counts_rows_fails() {
        struct Rows(MemoryAuditReader);
        impl AuditReader for Rows {
            fn events<'a>(
                &'a self,
                q: &'a AuditQuery,
            ) -> crate::audit::BoxFuture<'a, Result<Vec<AuditEvent>, crate::audit::AuditError>>
            {
                self.0.events(q)
            }
            fn counts<'a>(
                &'a self,
                q: &'a AuditQuery,
                b: Duration,
            ) -> crate::audit::BoxFuture<
                'a,
                Result<Vec<super::super::ActionCount>, crate::audit::AuditError>,
            > {
                Box::pin(async move {
                    let mut c = self.0.counts(q, b).await?;
                    for x in &mut c {
                        x.count = 1;
                    }
                    Ok(c)
                })
            }
            fn top<'a>(
                &'a self,
                q: &'a AuditQuery,
                by: TopBy,
                n: usize,
            ) -> crate::audit::BoxFuture<
                'a,
                Result<Vec<super::super::TopEntry>, crate::audit::AuditError>,
            > {
                self.0.top(q, by, n)
            }
            fn name(&self) -> &'static str {
                "rows"
            }
        }
        let failed = tokio::spawn(async {
            let events = fixture();
            let r = Rows(MemoryAuditReader::new(events.clone()));
            run_all(&r, &events).await;
        })
        .await
        .is_err();
        assert!(failed, "a reader counting rows must fail the suite");
    }
}
