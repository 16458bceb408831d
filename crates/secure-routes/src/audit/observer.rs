//! Observers: code that sees every audit event as it is recorded, before folding.
//!
//! Why before folding: the writer folds identical refusals into one row with a `count`
//! written when the window ends (up to 10 s later), so anything reading the sink sees a flood
//! late and in lumps. An observer registered in [`AuditConfig::observers`] is called by
//! [`AuditWriter::record`] with each event, synchronously, before it is folded or queued:
//! it sees every occurrence at once, in order. Alerts (`alerts::AlertEngine`, feature
//! `alerts`) count events this way.
//!
//! An observer runs on the request path of every refused request, so it must be cheap and
//! must never block (no I/O, no waiting on a lock held across I/O): hand slow work to a task
//! of its own. A panicking observer is caught and logged; the event is recorded anyway.
//!
//! An observer may ask the writer to record events of its own ([`Emitted::push`]): they are
//! recorded right after the event that caused them, through the same folding and queue, and
//! shown to every observer too; what observers emit in answer to an emitted event is
//! discarded (and logged), so two observers can never feed each other in a loop.
//!
//! [`AuditConfig::observers`]: super::AuditConfig::observers
//! [`AuditWriter::record`]: super::AuditWriter::record
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditObserver, AuditWriter, Emitted};
//! use secure_routes::audit::sinks::TracingSink;
//!
//! #[derive(Debug, Default)]
//! struct Count401(AtomicU64);
//! impl AuditObserver for Count401 {
//!     fn observe(&self, event: &AuditEvent, _emit: &mut Emitted) {
//!         if event.action == AuditAction::UnauthorizedAccess {
//!             self.0.fetch_add(1, Ordering::Relaxed);
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! let counter = Arc::new(Count401::default());
//! let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig {
//!     observers: vec![counter.clone()],
//!     spill_path: dir.path().join("spill.jsonl"),
//!     ..AuditConfig::default()
//! });
//! let refusal = AuditEvent::new(AuditAction::UnauthorizedAccess).with_status(401);
//! for _ in 0..3 {
//!     writer.record(refusal.clone()).await;
//! }
//! // Three occurrences seen, though the writer folded two of them into one row.
//! assert_eq!(counter.0.load(Ordering::Relaxed), 3);
//! assert_eq!(writer.stats().folded, 1);
//! writer.shutdown().await;
//! # });
//! ```

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use super::AuditEvent;

/// Sees every audit event as it is recorded, before folding (see the [module docs](self)).
///
/// ```
/// use secure_routes::audit::{AuditEvent, AuditObserver, Emitted};
/// #[derive(Debug)]
/// struct Nothing;
/// impl AuditObserver for Nothing {
///     fn observe(&self, _event: &AuditEvent, _emit: &mut Emitted) {}
/// }
/// let mut emit = Emitted::default();
/// Nothing.observe(&AuditEvent::new(secure_routes::audit::AuditAction::SecurityEvent), &mut emit);
/// assert!(emit.is_empty());
/// ```
pub trait AuditObserver: Send + Sync + fmt::Debug + 'static {
    /// Called once per recorded event, synchronously, on the recording task. Must be cheap
    /// and never block. Events pushed to `emit` are recorded after `event`.
    fn observe(&self, event: &AuditEvent, emit: &mut Emitted);
}

/// Events an observer asks the writer to record (see [`AuditObserver::observe`]).
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, Emitted};
/// let mut emit = Emitted::default();
/// emit.push(AuditEvent::new(AuditAction::SecurityEvent));
/// assert_eq!(emit.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct Emitted {
    events: Vec<AuditEvent>,
}

impl Emitted {
    /// Asks for `event` to be recorded after the one being observed.
    pub fn push(&mut self, event: AuditEvent) {
        self.events.push(event);
    }

    /// How many events were pushed.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub(crate) fn into_events(self) -> Vec<AuditEvent> {
        self.events
    }
}

/// Shows `event` to every observer, each call caught so a panicking observer neither loses the
/// event nor stops the others. Returns what they emitted (no allocation when nothing was).
pub(crate) fn observe_all(observers: &[Arc<dyn AuditObserver>], event: &AuditEvent) -> Emitted {
    let mut emit = Emitted::default();
    for observer in observers {
        let call = AssertUnwindSafe(|| observer.observe(event, &mut emit));
        if std::panic::catch_unwind(call).is_err() {
            tracing::error!(
                target: "secure_routes::audit",
                observer = ?observer,
                action = event.action.as_str(),
                "an audit observer panicked; the event is recorded anyway"
            );
        }
    }
    emit
}
