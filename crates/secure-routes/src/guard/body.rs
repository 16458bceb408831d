//! Request body limit: a declared `Content-Length` over the limit is refused at once (413),
//! and the same limit is enforced on the streamed body, so a chunked body without a length
//! (the original only read `Content-Length`) cannot slip past. The streamed limit applies to
//! what the handler reads: a handler that never reads the body never buffers it either, and
//! the server discards the rest.
//!
//! A body that cannot be read (malformed chunked encoding, a connection cut short) is flagged
//! too: the pipeline answers it with a problem+json 400, audited, whatever the handler made of
//! the error (axum's extractors would answer plain text).
//!
//! Public for the types a handler meets: its request body is a [`LimitedBody`], and a read
//! past the limit fails with [`BodyLimitExceeded`]. The checks themselves are pipeline steps
//! (7; see [`super`]).
//!
//! ```
//! use http_body_util::{BodyExt, Full};
//! use secure_routes::guard::body::{BodyLimitExceeded, LimitedBody};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let (body, _state) = LimitedBody::new(Full::new(bytes::Bytes::from_static(b"hello")), Some(3));
//! let err = body.collect().await.unwrap_err();
//! assert!(err.is::<BodyLimitExceeded>());
//! # });
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Buf;
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};

use crate::audit::Reason;
use crate::response::problem::{Rejection, RejectionKind};

/// Step 7, declared: refuses a `Content-Length` over the route's limit (none: no limit).
pub(crate) fn check(limit: Option<u64>, headers: &HeaderMap) -> Result<(), Rejection> {
    match limit {
        Some(limit) => check_declared(headers, limit),
        None => Ok(()),
    }
}

/// Step 7, streamed (after the handler): whatever the handler made of a body error, the
/// answer is the pipeline's: 413 past the limit, 400 for a body that could not be read.
pub(crate) fn check_streamed(state: BodyState) -> Result<(), Rejection> {
    match state {
        BodyState::Fine => Ok(()),
        BodyState::Exceeded => Err(too_large(Reason::StreamedLength)),
        BodyState::Unreadable => Err(Rejection::new(
            RejectionKind::InvalidInput,
            Reason::BodyUnreadable,
        )
        .with_detail(
            "The request body could not be read (malformed chunked encoding, or cut short).",
        )),
    }
}

/// Refuses a declared `Content-Length` over `limit`. A malformed length is left to the HTTP
/// server (hyper refuses it before we run); the streamed limit still applies.
pub(crate) fn check_declared(headers: &HeaderMap, limit: u64) -> Result<(), Rejection> {
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let declared = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large(Reason::DeclaredLength));
        }
    }
    Ok(())
}

/// What reading the body has found so far (see [`LimitedBody::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyState {
    /// Nothing wrong (or not read).
    Fine,
    /// More than the limit arrived (413).
    Exceeded,
    /// The body could not be read: bad chunked encoding, cut short (400).
    Unreadable,
}

/// A [`BodyState`] shared between a [`LimitedBody`] and the pipeline. The first problem
/// found sticks. For a body already at its end when wrapped there is nothing to share (no
/// allocation), and the state stays [`BodyState::Fine`].
///
/// ```
/// use secure_routes::guard::body::{BodyState, LimitedBody};
/// let (_body, state) = LimitedBody::new(axum::body::Body::empty(), Some(10));
/// assert_eq!(state.get(), BodyState::Fine);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SharedBodyState(Option<Arc<AtomicU8>>);

impl SharedBodyState {
    /// The state now.
    pub fn get(&self) -> BodyState {
        match self.0.as_ref().map(|s| s.load(Ordering::SeqCst)) {
            Some(1) => BodyState::Exceeded,
            Some(2) => BodyState::Unreadable,
            _ => BodyState::Fine,
        }
    }

    /// A state to share (one allocation).
    fn shared() -> Self {
        Self(Some(Arc::default()))
    }

    fn set(&self, s: BodyState) {
        let Some(state) = &self.0 else {
            // A body that was at its end when wrapped has nothing left to record.
            return;
        };
        let v = match s {
            BodyState::Fine => return,
            BodyState::Exceeded => 1,
            BodyState::Unreadable => 2,
        };
        // The first problem wins: an over-limit body also ends in an error, which is not a
        // read failure.
        let _ = state.compare_exchange(0, v, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// The 413 rejection.
fn too_large(reason: Reason) -> Rejection {
    Rejection::new(RejectionKind::PayloadTooLarge, reason)
}

/// The error a [`LimitedBody`] yields once the limit is crossed.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's limit")]
pub struct BodyLimitExceeded;

pin_project_lite::pin_project! {
    /// A request body that fails once more than `limit` bytes have streamed through, and
    /// records it (or a read failure) in a [`SharedBodyState`] the pipeline reads to answer
    /// 413 (or 400) whatever the handler made of the error.
    ///
    /// ```
    /// use http_body_util::{BodyExt, Full};
    /// use secure_routes::guard::body::{BodyState, LimitedBody};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let (body, state) = LimitedBody::new(Full::new(bytes::Bytes::from_static(b"hello")), Some(3));
    /// assert!(body.collect().await.is_err());
    /// assert_eq!(state.get(), BodyState::Exceeded);
    /// # });
    /// ```
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        remaining: u64,
        state: SharedBodyState,
    }
}

impl<B: Body> LimitedBody<B> {
    /// Wraps `inner` with an optional byte limit; returns the body and its shared state.
    pub fn new(inner: B, limit: Option<u64>) -> (Self, SharedBodyState) {
        // A body already at its end (a `GET` without one) can neither cross the limit nor
        // fail to read: its state needs no allocation to share.
        let state = if inner.is_end_stream() {
            SharedBodyState::default()
        } else {
            SharedBodyState::shared()
        };
        (
            Self {
                inner,
                remaining: limit.unwrap_or(u64::MAX),
                state: state.clone(),
            },
            state,
        )
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                this.state.set(BodyState::Unreadable);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.remaining() as u64;
                    if len > *this.remaining {
                        this.state.set(BodyState::Exceeded);
                        *this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyLimitExceeded))));
                    }
                    *this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if hint.lower() > self.remaining {
            // Declares more than allowed: let readers find out by reading.
            return SizeHint::default();
        }
        if hint.upper().is_none_or(|u| u > self.remaining) {
            hint.set_upper(self.remaining);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = std::convert::Infallible> {
        let frames = (0..n).map(move |_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn chunked_body_over_limit_fails_and_flags() {
        let (body, flag) = LimitedBody::new(chunks(5, 100), Some(450));
        assert!(body.collect().await.is_err());
        assert_eq!(flag.get(), BodyState::Exceeded);
    }

    #[tokio::test]
    async fn body_at_limit_passes() {
        let (body, flag) = LimitedBody::new(chunks(5, 100), Some(500));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 500);
        assert_eq!(flag.get(), BodyState::Fine);
    }

    #[tokio::test]
    async fn a_failing_body_is_flagged_unreadable() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::other("bad chunk size")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (body, flag) = LimitedBody::new(body, Some(450));
        assert!(body.collect().await.is_err());
        assert_eq!(flag.get(), BodyState::Unreadable);
    }

    #[test]
    fn the_steps_answer_413_and_400_with_their_reasons() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert!(check(None, &h).is_ok());
        let info = check(Some(10), &h).unwrap_err().info();
        assert_eq!(
            (info.kind, info.reason),
            (RejectionKind::PayloadTooLarge, Reason::DeclaredLength)
        );
        assert!(check_streamed(BodyState::Fine).is_ok());
        let info = check_streamed(BodyState::Exceeded).unwrap_err().info();
        assert_eq!(
            (info.kind, info.reason),
            (RejectionKind::PayloadTooLarge, Reason::StreamedLength)
        );
        let info = check_streamed(BodyState::Unreadable).unwrap_err().info();
        assert_eq!(
            (info.kind, info.reason),
            (RejectionKind::InvalidInput, Reason::BodyUnreadable)
        );
    }

    #[test]
    fn declared_length_table() {
        for (cl, limit, ok) in [
            ("10", 10, true),
            ("11", 10, false),
            ("x", 10, true),
            (" 99 ", 10, false),
            ("2048", 1024, false),
            ("2048", 4096, true),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, cl.parse().unwrap());
            assert_eq!(check_declared(&h, limit).is_ok(), ok, "{cl}");
        }
    }
}
