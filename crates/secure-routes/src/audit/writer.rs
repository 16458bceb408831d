//! Batching audit writer. STUB: to be completed (keep this public API).

use std::sync::Arc;
use std::time::Duration;

use super::{AuditEvent, AuditSink};

/// Writer settings.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// Queue capacity in events.
    pub queue_capacity: usize,
    /// Largest batch handed to the sink.
    pub max_batch: usize,
    /// How long `record` waits on a full queue before spilling.
    pub block_timeout: Duration,
    /// JSON-lines file receiving events that could not be queued or stored.
    pub spill_path: std::path::PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 10_000,
            max_batch: 512,
            block_timeout: Duration::from_millis(50),
            spill_path: "secure-routes-audit-spill.jsonl".into(),
        }
    }
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events accepted by `record`.
    pub recorded: u64,
    /// Events stored by the sink.
    pub written: u64,
    /// Events spilled to the file.
    pub spilled: u64,
    /// Failed sink attempts.
    pub sink_errors: u64,
}

/// Batching writer handle (cheap to clone).
#[derive(Clone)]
pub struct AuditWriter {
    sink: Arc<dyn AuditSink>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditWriter")
    }
}

impl AuditWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn spawn(sink: Arc<dyn AuditSink>, _config: AuditConfig) -> Self {
        Self { sink }
    }
    /// Queues one event.
    pub async fn record(&self, event: AuditEvent) {
        let _ = self.sink.write_batch(std::slice::from_ref(&event)).await;
    }
    /// Flushes everything queued and stops the task.
    pub async fn shutdown(&self) {}
    /// Current counters.
    pub fn stats(&self) -> AuditStats {
        AuditStats::default()
    }
}
