//! Built-in sinks: [`TracingSink`] (audit events as structured log events) and [`JsonlSink`]
//! (an append-only JSON-lines file). Database sinks live in their own crates
//! (`secure-routes-sqlite`, `secure-routes-postgres`), so this crate has no database dependency.
//!
//! Both write text that is safe to read in a terminal or feed to a log pipeline: event fields
//! are already escaped by [`AuditEvent`]'s builders, and JSON escapes every control character,
//! so a hostile value cannot forge a log line.
//!
//! ```
//! use std::sync::Arc;
//! use secure_routes::audit::{AuditConfig, AuditWriter, sinks::TracingSink};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let writer = AuditWriter::spawn(Arc::new(TracingSink), AuditConfig::default());
//! writer.shutdown().await;
//! assert_eq!(writer.stats().sink_errors, 0);
//! # });
//! ```

use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use time::format_description::well_known::Rfc3339;

use super::writer::{open_append, to_json_lines};
use super::{AuditError, AuditEvent, AuditSink, BoxFuture, Outcome};

/// Emits one `tracing` event per audit event, target `secure_routes::audit`, with every field
/// as a structured field (`metadata` as JSON text; `count`, the occurrences a folded row
/// stands for, included). Refusals (`Denied`) log at `info`, since
/// they are the middleware doing its job; `Allowed` (fail-open on a store error) and `Error`
/// log at `warn`.
///
/// Never fails, so it is also a safe last-resort sink.
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditSink, sinks::TracingSink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let batch = [AuditEvent::new(AuditAction::CsrfValidationFailed).with_status(403)];
/// assert!(TracingSink.write_batch(&batch).await.is_ok());
/// assert_eq!(TracingSink.name(), "tracing");
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink;

impl TracingSink {
    fn emit(e: &AuditEvent) {
        let timestamp = e.timestamp.format(&Rfc3339).unwrap_or_default();
        let metadata = e.metadata.to_string();
        // Macro arguments cannot pick the level at run time, so the field list is repeated.
        macro_rules! audit_event {
            ($level:ident) => {
                tracing::$level!(
                    target: "secure_routes::audit",
                    id = %e.id,
                    timestamp = %timestamp,
                    action = e.action.as_str(),
                    outcome = e.outcome.as_str(),
                    status = e.status,
                    count = e.count,
                    subject = e.subject.as_deref(),
                    client_ip = e.client_ip.as_deref(),
                    method = %e.method,
                    route = %e.route,
                    path = %e.path,
                    reason = %e.reason,
                    request_id = %e.request_id,
                    user_agent = e.user_agent.as_deref(),
                    metadata = %metadata,
                    "audit event"
                )
            };
        }
        match e.outcome {
            Outcome::Denied | Outcome::WouldDeny => audit_event!(info),
            Outcome::Allowed | Outcome::Error => audit_event!(warn),
        }
    }
}

impl AuditSink for TracingSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        batch.iter().for_each(Self::emit);
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "tracing"
    }
}

/// Appends events to a file as JSON lines (one [`AuditEvent`] per line, the same format as
/// the writer's spill file, so either can be replayed with
/// [`replay_spill`](super::replay_spill) or read with `jq`).
///
/// Each batch is serialized first, then written with a single `write` on the blocking pool
/// (file I/O must not stall the async runtime). A write that fails part-way is cut back to the
/// previous end of file, so a batch is stored whole or not at all and the writer's retry does
/// not leave duplicates. With [`JsonlSink::sync`] each batch is also `fsync`ed.
///
/// ```
/// use secure_routes::audit::{AuditAction, AuditEvent, AuditSink, sinks::JsonlSink};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("audit.jsonl");
/// let sink = JsonlSink::open(&path).unwrap();
/// let batch = [
///     AuditEvent::new(AuditAction::UnauthorizedAccess).with_status(401),
///     AuditEvent::new(AuditAction::RateLimitExceeded).with_status(429),
/// ];
/// sink.write_batch(&batch).await.unwrap();
///
/// let text = std::fs::read_to_string(&path).unwrap();
/// let back: Vec<AuditEvent> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
/// assert_eq!(back, batch);
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct JsonlSink {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
    sync: bool,
}

impl JsonlSink {
    /// Opens (or creates, owner-readable only on Unix) `path` for appending.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sink = secure_routes::audit::sinks::JsonlSink::open(dir.path().join("a.jsonl")).unwrap();
    /// assert!(sink.path().ends_with("a.jsonl"));
    /// assert!(secure_routes::audit::sinks::JsonlSink::open(dir.path().join("no/such/dir.jsonl")).is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = open_append(&path)?;
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
            sync: false,
        })
    }

    /// Whether to `fsync` after each batch (default off: a process crash loses nothing
    /// either way; an OS crash may lose the last batches without it).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let sink = secure_routes::audit::sinks::JsonlSink::open(dir.path().join("a.jsonl")).unwrap().sync(true);
    /// # let _ = sink;
    /// ```
    pub fn sync(mut self, on: bool) -> Self {
        self.sync = on;
        self
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(file: &Mutex<std::fs::File>, buf: &[u8], sync: bool) -> io::Result<()> {
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        // In append mode every write lands at the end; remember where that is so a torn
        // write can be cut back off.
        let start = file.seek(SeekFrom::End(0))?;
        let result = file
            .write_all(buf)
            .and_then(|()| file.flush())
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        if result.is_err() {
            let _ = file.set_len(start);
        }
        result
    }
}

impl AuditSink for JsonlSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let buf = to_json_lines(batch).map_err(|e| AuditError(format!("serialize: {e}")))?;
            let file = Arc::clone(&self.file);
            let sync = self.sync;
            tokio::task::spawn_blocking(move || Self::append(&file, &buf, sync))
                .await
                .map_err(|e| AuditError(format!("jsonl writer task: {e}")))?
                .map_err(|e| AuditError(format!("{}: {e}", self.path.display())))
        })
    }

    fn name(&self) -> &'static str {
        "jsonl"
    }
}
