//! Audit folding under a flood (issue 9, part 4): 100 000 refused requests from one anonymous
//! client over 10 s of injected clock (pipelined `PUT /api/strict` → 405, recorded as the
//! layer records them), into a sink that counts rows and occurrences. Prints rows written,
//! the sum of their counts and the time per `record` call, for the default fold window
//! (10 s) and, as the baseline in the same run, with folding off.
//!
//! `cargo bench -p secure-routes --bench audit_fold`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secure_routes::audit::{
    AuditAction, AuditConfig, AuditError, AuditEvent, AuditSink, AuditWriter, BoxFuture,
};
use secure_routes::clock::FakeClock;

const REQUESTS: u64 = 100_000;
const SPAN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct CountingSink {
    rows: AtomicU64,
    occurrences: AtomicU64,
}

impl AuditSink for CountingSink {
    fn write_batch<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        self.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let n: u64 = batch.iter().map(|e| e.count).sum();
        self.occurrences.fetch_add(n, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

fn refusal(i: u64) -> AuditEvent {
    AuditEvent::new(AuditAction::InvalidInput)
        .with_status(405)
        .with_client_ip("203.0.113.7")
        .with_request("PUT", "route:/api/strict", "/api/strict")
        .with_reason("method_not_allowed")
        .with_request_id(&format!("{i:032x}"))
        .with_user_agent("curl/8.5.0")
        .with_metadata(serde_json::json!({ "policy": "strict" }))
}

struct Run {
    rows: u64,
    occurrences: u64,
    spilled: u64,
    per_record: Duration,
}

async fn run(fold_window: Duration) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = FakeClock::new(Duration::from_secs(1_700_000_000));
    let sink = Arc::new(CountingSink::default());
    let writer = AuditWriter::spawn(
        sink.clone(),
        AuditConfig {
            spill_path: dir.path().join("spill.jsonl"),
            fold_window,
            clock: Arc::new(clock.clone()),
            ..AuditConfig::default()
        },
    );
    let step = SPAN / REQUESTS as u32;
    let events: Vec<AuditEvent> = (0..REQUESTS).map(refusal).collect();
    let start = Instant::now();
    for e in events {
        writer.record(e).await;
        clock.advance(step);
    }
    let per_record = start.elapsed() / REQUESTS as u32;
    writer.shutdown().await;
    Run {
        rows: sink.rows.load(Ordering::Relaxed),
        occurrences: sink.occurrences.load(Ordering::Relaxed),
        spilled: writer.stats().spilled,
        per_record,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once as a smoke test.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "audit_fold: {REQUESTS} refused requests (one client, PUT /api/strict -> 405) over {SPAN:?} of injected clock"
    );
    for (name, window) in [
        ("fold window 10 s (default)", Duration::from_secs(10)),
        ("folding off (baseline)", Duration::ZERO),
    ] {
        let r = rt.block_on(run(window));
        println!(
            "  {name:<28} rows written {:>7}  sum of counts {:>7}  spilled {:>6}  {:>6.0} ns/record",
            r.rows,
            r.occurrences,
            r.spilled,
            r.per_record.as_nanos() as f64
        );
        assert_eq!(
            r.occurrences + r.spilled,
            REQUESTS,
            "counts stay exact, nothing dropped"
        );
    }
}
