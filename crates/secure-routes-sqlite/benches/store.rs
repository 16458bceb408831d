//! Rate-limit checks per second: `SqliteStore` against `MemoryStore`, same run, same load.
//!
//! Run: `cargo bench -p secure-routes-sqlite --bench store -- --warm-up-time 1 --measurement-time 3`
//!
//! Functions (criterion reports `thrpt` in elements = checks per second):
//!
//! * `memory/1_task`, `memory/16_tasks`: the sharded in-memory store (the baseline).
//! * `sqlite/1_task`, `sqlite/16_tasks`: `SqliteStore` on a file in a temporary directory
//!   (WAL, `synchronous=NORMAL`). With one task every check is its own transaction; with 16,
//!   the checks waiting when the writer thread wakes share one.
//!
//! Each iteration runs 8 000 checks split evenly over the tasks (spawned on a two-worker
//! multi-threaded runtime), each task walking its own stride through 10 000 keys under the
//! sliding-window preset (60 per minute) on the system clock, so a check reads and rewrites a
//! key that already holds state, as in steady traffic. The time covers spawning the tasks
//! to the last answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use secure_routes::rate_limit::{MemoryStore, Quota, RateLimitKey, RateLimitStore};
use secure_routes_sqlite::SqliteStore;

const CHECKS: u64 = 8_000;
const KEYS: u64 = 10_000;

fn key(n: u64) -> RateLimitKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(n % KEYS).to_le_bytes());
    // Spread the rest like a keyed hash would.
    k[8..].copy_from_slice(&(n % KEYS).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    RateLimitKey::from_bytes(k)
}

/// `CHECKS` checks over `tasks` concurrent tasks; returns the wall time.
async fn run<S: RateLimitStore>(store: &Arc<S>, tasks: u64, round: u64) -> Duration {
    let quota = Quota::per_minute(60);
    let per_task = CHECKS / tasks;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let base = round.wrapping_mul(CHECKS) + t * per_task;
                for i in 0..per_task {
                    let d = store.acquire(&key(base + i), quota, 1).await;
                    assert!(d.is_ok());
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let memory = Arc::new(MemoryStore::new());
    let sqlite = Arc::new(SqliteStore::open(dir.path().join("limits.db")).unwrap());

    let mut group = c.benchmark_group("rate_limit_store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(CHECKS));
    for tasks in [1u64, 16] {
        let label = if tasks == 1 {
            "1_task".to_owned()
        } else {
            format!("{tasks}_tasks")
        };
        group.bench_function(BenchmarkId::new("memory", &label), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = Arc::clone(&memory);
                async move {
                    let mut total = Duration::ZERO;
                    for round in 0..iters {
                        total += run(&store, tasks, round).await;
                    }
                    total
                }
            });
        });
        group.bench_function(BenchmarkId::new("sqlite", &label), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let store = Arc::clone(&sqlite);
                async move {
                    let mut total = Duration::ZERO;
                    for round in 0..iters {
                        total += run(&store, tasks, round).await;
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
