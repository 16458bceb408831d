//! Audit events per second into SQLite: batched through the `AuditWriter` versus one
//! `INSERT` per event (autocommit, as a request handler writing its own audit row would do),
//! measured in the same run on the same schema and pragmas (WAL, `synchronous=NORMAL`).
//!
//! Run: `cargo bench -p secure-routes-sqlite --bench audit -- --warm-up-time 1 --measurement-time 5`
//!
//! Functions (criterion reports `thrpt` in elements = events per second):
//!
//! * `writer_batched_512`: `AuditWriter` (`max_batch = 512`, default queue of 10 000) into
//!   `SqliteAuditSink`; each iteration spawns a writer, records 20 000 fresh events, and
//!   `shutdown()`s it, so the time covers everything up to the last commit. The producer is
//!   faster than any disk, so the queue stays full: `block_timeout` is raised to 10 s so the
//!   producer waits for room (back-pressure) rather than spilling during a checkpoint stall.
//! * `sink_batches_512`: `SqliteAuditSink::write_batch` called directly with 512-event
//!   batches (the sink alone, without the queue).
//! * `insert_per_event_autocommit`: the baseline, a prepared `INSERT` per event on a plain
//!   connection, each its own transaction, same columns and timestamp encoding.
//!
//! Events are built before the clock starts and carry realistic field sizes (route, path,
//! request id, user agent, small JSON metadata). Each iteration uses fresh ids, so no insert
//! is skipped as a duplicate. The tables grow during the run, as a real log does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rusqlite::{Connection, params};
use secure_routes::audit::{AuditAction, AuditConfig, AuditEvent, AuditSink, AuditWriter};
use secure_routes_sqlite::{SqliteAuditSink, format_timestamp};
use time::OffsetDateTime;

/// Events per iteration on the batched paths.
const BATCHED_EVENTS: usize = 20_000;
/// Events per iteration on the (much slower) per-event baseline.
const BASELINE_EVENTS: usize = 2_000;

fn events(n: usize) -> Vec<AuditEvent> {
    (0..n)
        .map(|i| {
            AuditEvent::new(AuditAction::RateLimitExceeded)
                .with_status(429)
                .with_subject("user-4f1c2a")
                .with_client_ip("203.0.113.0")
                .with_request("POST", "/api/user/notes", "/api/user/notes")
                .with_reason("rate_limited")
                .with_request_id("0190c1d2-aaaa-7bbb-8ccc-123456789abc")
                .with_user_agent(
                    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
                )
                .with_metadata(serde_json::json!({ "limit": 20, "window_s": 3600, "n": i }))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("audit_sqlite");
    group.sample_size(10);

    group.throughput(Throughput::Elements(BATCHED_EVENTS as u64));
    let sink = Arc::new(SqliteAuditSink::open(dir.path().join("batched.db")).unwrap());
    let spill_path = dir.path().join("spill.jsonl");
    group.bench_function("writer_batched_512", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let sink = Arc::clone(&sink);
            let spill_path = spill_path.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = events(BATCHED_EVENTS);
                    let start = Instant::now();
                    let writer = AuditWriter::spawn(
                        sink.clone(),
                        AuditConfig {
                            max_batch: 512,
                            // The producer here outruns any disk, so the queue is full
                            // throughout; wait for room (measuring the sink's pace) instead
                            // of spilling when a WAL checkpoint's fsync stalls a commit.
                            block_timeout: Duration::from_secs(10),
                            spill_path: spill_path.clone(),
                            // One row per event: this measures the sink, not folding.
                            fold_window: Duration::ZERO,
                            ..AuditConfig::default()
                        },
                    );
                    for e in batch {
                        writer.record(e).await;
                    }
                    writer.shutdown().await;
                    total += start.elapsed();
                    let stats = writer.stats();
                    assert_eq!(stats.written, BATCHED_EVENTS as u64, "{stats:?}");
                }
                total
            }
        });
    });

    let direct = SqliteAuditSink::open(dir.path().join("direct.db")).unwrap();
    group.bench_function("sink_batches_512", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let direct = direct.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let all = events(BATCHED_EVENTS);
                    let start = Instant::now();
                    for chunk in all.chunks(512) {
                        direct.write_batch(chunk).await.unwrap();
                    }
                    total += start.elapsed();
                }
                total
            }
        });
    });

    group.throughput(Throughput::Elements(BASELINE_EVENTS as u64));
    let baseline_db = dir.path().join("baseline.db");
    drop(SqliteAuditSink::open(&baseline_db).unwrap()); // same schema and indexes
    let conn = Connection::open(&baseline_db).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    group.bench_function("insert_per_event_autocommit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let all = events(BASELINE_EVENTS);
                let start = Instant::now();
                let mut stmt = conn
                    .prepare_cached(
                        "INSERT INTO audit_logs (id, action, user_id, metadata, timestamp, \
                         created_at, outcome, client_ip, method, route, path, status, reason, \
                         request_id, user_agent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                         ?10, ?11, ?12, ?13, ?14, ?15) ON CONFLICT(id) DO NOTHING",
                    )
                    .unwrap();
                for e in &all {
                    stmt.execute(params![
                        e.id.to_string(),
                        e.action.as_str(),
                        e.subject,
                        e.metadata.to_string(),
                        format_timestamp(e.timestamp),
                        format_timestamp(OffsetDateTime::now_utc()),
                        e.outcome.as_str(),
                        e.client_ip,
                        e.method,
                        e.route,
                        e.path,
                        e.status,
                        e.reason,
                        e.request_id,
                        e.user_agent,
                    ])
                    .unwrap();
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
