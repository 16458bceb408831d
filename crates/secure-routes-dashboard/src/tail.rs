//! The live tail: server-sent events fed by polling the reader.
//!
//! Why polling: the dashboard reads a store other processes write (the gateway's SQLite file,
//! a shared Postgres, a JSON-lines file), so there is no in-process event to wait on, and one
//! query a second per open tail is cheap. Each poll asks for the events since a minute before
//! the newest one sent and skips the ids already sent: the audit writer batches and folds, so
//! a row can land a little after newer ones, and a plain "newer than the last" cursor would
//! lose it. Streams are bounded ([`MAX_TAIL_STREAMS`](crate::MAX_TAIL_STREAMS)) and end with
//! the session that opened them (its expiry or its logout, checked on every poll).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Request, header};
use secure_routes::audit::{AuditQuery, Reason};
use secure_routes::response::problem::{Rejection, RejectionKind};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::api::{Caller, guard};
use crate::{MAX_TAIL_STREAMS, St};

/// How far back each poll looks before the newest event sent.
const LOOKBACK: time::Duration = time::Duration::seconds(60);
/// Events one poll sends at most.
const PER_POLL: usize = 200;
/// Ids remembered as sent, at most.
const MAX_SEEN: usize = 10_000;
/// Polls between keep-alive comments when nothing happens.
const KEEPALIVE_POLLS: u32 = 15;

/// Holds one of the [`MAX_TAIL_STREAMS`] slots while the stream lives.
struct Slot(St);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Tail {
    slot: Slot,
    interval: tokio::time::Interval,
    /// The session cookie that opened the stream (`None`: the bearer token), checked on each
    /// poll so the stream ends when the session expires or is logged out: a stolen cookie's
    /// tail must not outlive the logout that revoked it.
    session: Option<String>,
    high: OffsetDateTime,
    seen: HashMap<Uuid, OffsetDateTime>,
    idle: u32,
}

impl Tail {
    /// One poll: the SSE text to send (possibly empty), or `None` to end the stream.
    async fn poll(&mut self) -> Option<String> {
        self.interval.tick().await;
        let st = &self.slot.0;
        if let Some(session) = &self.session
            && st.keys.verify(session, st.now_secs()).is_none()
        {
            return None;
        }
        let q = AuditQuery {
            since: Some(self.high - LOOKBACK),
            limit: PER_POLL,
            ..AuditQuery::default()
        };
        let mut out = String::new();
        match st.reader.events(&q).await {
            Ok(mut events) => {
                // A full page whose oldest event is new to this tail: more arrived since the
                // last poll than one poll reads, and the older ones will not be sent. Said to
                // the page (`event: gap`), not dropped silently; the events API has them all.
                let gap = events.len() == PER_POLL
                    && events
                        .last()
                        .is_some_and(|e| !self.seen.contains_key(&e.id));
                events.retain(|e| !self.seen.contains_key(&e.id));
                if gap {
                    out.push_str(&format!("event: gap\ndata: {{\"limit\":{PER_POLL}}}\n\n"));
                }
                events.reverse();
                for e in events {
                    self.high = self.high.max(e.timestamp);
                    self.seen.insert(e.id, e.timestamp);
                    let Ok(data) = serde_json::to_string(&e) else {
                        continue;
                    };
                    out.push_str(&format!("event: audit\nid: {}\ndata: {data}\n\n", e.id));
                }
                let floor = self.high - LOOKBACK;
                self.seen.retain(|_, t| *t >= floor);
                if self.seen.len() > MAX_SEEN {
                    // A flood within one minute: forget the oldest half (they are old enough
                    // that a repeat is unlikely, and a repeat is only shown twice).
                    let mut times: Vec<OffsetDateTime> = self.seen.values().copied().collect();
                    times.sort();
                    let cut = times[times.len() / 2];
                    self.seen.retain(|_, t| *t > cut);
                }
            }
            Err(e) => {
                tracing::warn!("dashboard tail: reading the audit store failed: {e}");
                out.push_str("event: error\ndata: {\"error\":\"the audit store failed\"}\n\n");
            }
        }
        if out.is_empty() {
            self.idle += 1;
            if self.idle >= KEEPALIVE_POLLS {
                self.idle = 0;
                out.push_str(": keep-alive\n\n");
            }
        } else {
            self.idle = 0;
        }
        Some(out)
    }
}

/// `GET api/tail`.
pub(crate) async fn tail(State(st): State<St>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    let session = match guard(&st, &parts, false).await {
        Ok(Caller::Session) => crate::auth::session_cookie(&parts.headers).map(str::to_owned),
        Ok(Caller::Bearer) => None,
        Err(r) => return r,
    };
    if st.streams.fetch_add(1, Ordering::AcqRel) >= MAX_TAIL_STREAMS {
        st.streams.fetch_sub(1, Ordering::AcqRel);
        return Rejection::new(
            RejectionKind::Unavailable,
            Reason::from_static("too_many_tails"),
        )
        .with_detail("Too many live tails are open; close one and retry.")
        .into_response();
    }
    let slot = Slot(st.clone());
    // Start after the newest event already stored: the tail shows what happens from now on.
    let newest = st
        .reader
        .events(&AuditQuery {
            since: Some(OffsetDateTime::now_utc() - LOOKBACK),
            limit: PER_POLL,
            ..AuditQuery::default()
        })
        .await
        .unwrap_or_default();
    let high = newest
        .first()
        .map(|e| e.timestamp)
        .unwrap_or_else(OffsetDateTime::now_utc);
    let seen = newest.iter().map(|e| (e.id, e.timestamp)).collect();
    let mut interval = tokio::time::interval(st.tail_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Tail {
        slot,
        interval,
        session,
        high,
        seen,
        idle: 0,
    };
    let stream = futures_util::stream::unfold(state, |mut t| async move {
        let text = t.poll().await?;
        Some((Ok::<Bytes, Infallible>(Bytes::from(text)), t))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        [(http::HeaderName::from_static("x-accel-buffering"), "no")],
        Body::from_stream(stream),
    )
        .into_response()
}
