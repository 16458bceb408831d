//! Postgres store throughput against the original pattern's own algorithm, on the same
//! database in the same run.
//!
//! * `rate_limit/{postgres_store,seed_algorithm}/{1,16,64}`: checks per second with that many
//!   concurrent clients (one pooled connection each), a 60-per-minute quota over 10 000 keys.
//!   The seed algorithm is the original's: delete every expired row, fetch the key's rows in
//!   the window and count them, then insert a row (or fetch the oldest on refusal): three
//!   round trips and a row per request, on the original table and indexes.
//! * then a latency pass printed to stdout: 5 000 checks per configuration, checks/s with the
//!   p50 and p99 of single checks, the store and the seed algorithm at 1, 16 and 64 clients.
//! * `audit/{unnest_batch,insert_per_event}`: events per second, 1 000 events per
//!   iteration: one `PostgresAuditSink` batch against one autocommitted `INSERT` per event.
//!
//! Needs `DATABASE_URL`; without it, prints a skip message. Runs in a schema of its own,
//! dropped at the end: `DATABASE_URL=postgres://... cargo bench -p secure-routes-postgres`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use secure_routes::audit::{AuditAction, AuditEvent, AuditSink};
use secure_routes::rate_limit::{KeyHasher, Quota, RateLimitKey, RateLimitStore, Subject};
use secure_routes_postgres::{Pool, PostgresAuditSink, PostgresStore};
use secure_routes_testkit::percentile;
use tokio::runtime::Runtime;

const KEYS: u64 = 10_000;
const CLIENTS: [usize; 3] = [1, 16, 64];
const QUOTA: Quota = Quota::per_minute(60);

const SEED_TABLE: &str = "CREATE TABLE seed_rate_limits (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key text NOT NULL,
    identifier text NOT NULL,
    timestamp timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz DEFAULT now()
);
CREATE INDEX seed_rate_limits_key_timestamp ON seed_rate_limits (key, timestamp);
CREATE INDEX seed_rate_limits_timestamp ON seed_rate_limits (timestamp);";

struct Env {
    url: String,
    schema: String,
    config: tokio_postgres::Config,
}

impl Env {
    fn pool(&self, size: usize) -> Pool {
        secure_routes_postgres::pool_from_config(self.config.clone(), size).expect("pool")
    }
}

async fn admin(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
    drop(client);
    let _ = driver.await;
}

/// The original algorithm (see the module docs), one check.
async fn seed_check(pool: &Pool, key: &str) -> bool {
    let client = pool.get().await.expect("connection");
    let window = QUOTA.window();
    let now = time::OffsetDateTime::now_utc();
    let window_start = now - window;
    let delete = client
        .prepare_cached("DELETE FROM seed_rate_limits WHERE timestamp < $1")
        .await
        .expect("prepare");
    client
        .execute(&delete, &[&window_start])
        .await
        .expect("delete");
    let select = client
        .prepare_cached("SELECT id FROM seed_rate_limits WHERE key = $1 AND timestamp >= $2")
        .await
        .expect("prepare");
    let recent = client
        .query(&select, &[&key, &window_start])
        .await
        .expect("select");
    if recent.len() >= QUOTA.limit() as usize {
        let oldest = client
            .prepare_cached(
                "SELECT timestamp FROM seed_rate_limits WHERE key = $1 ORDER BY timestamp LIMIT 1",
            )
            .await
            .expect("prepare");
        client.query(&oldest, &[&key]).await.expect("oldest");
        return false;
    }
    let insert = client
        .prepare_cached(
            "INSERT INTO seed_rate_limits (key, timestamp, identifier) VALUES ($1, $2, $3)",
        )
        .await
        .expect("prepare");
    client
        .execute(&insert, &[&key, &now, &"bench"])
        .await
        .expect("insert");
    true
}

/// Runs `iters` checks spread over `clients` concurrent tasks; returns the wall time and each
/// check's latency (an `Instant` read per check: nanoseconds beside a round trip).
async fn run_clients<F, Fut>(clients: usize, iters: u64, check: F) -> (Duration, Vec<Duration>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let check = Arc::new(check);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let check = Arc::clone(&check);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= iters {
                        break;
                    }
                    let t = Instant::now();
                    check(i).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(usize::try_from(iters).unwrap_or(0));
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    (start.elapsed(), all)
}

/// Prints one latency-pass row: checks/s, p50 and p99 over `checks` checks.
fn latency_row(name: &str, clients: usize, (elapsed, mut lat): (Duration, Vec<Duration>)) {
    lat.sort_unstable();
    println!(
        "{:<16} {:>7} {:>10.0} {:>9.0} {:>9.0}",
        name,
        clients,
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
    );
}

fn rate_limit(c: &mut Criterion, rt: &Runtime, env: &Env) {
    let hasher = KeyHasher::new(b"bench");
    let keys: Arc<Vec<RateLimitKey>> = Arc::new(
        (0..KEYS)
            .map(|i| hasher.key("route:/bench", &Subject::Custom(i.to_string())))
            .collect(),
    );
    let mut group = c.benchmark_group("rate_limit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for clients in CLIENTS {
        let store = PostgresStore::new(env.pool(clients));
        group.bench_with_input(
            BenchmarkId::new("postgres_store", clients),
            &clients,
            |b, &clients| {
                b.to_async(rt).iter_custom(|iters| {
                    let store = store.clone();
                    let keys = Arc::clone(&keys);
                    let run = run_clients(clients, iters, move |i| {
                        let store = store.clone();
                        let keys = Arc::clone(&keys);
                        async move {
                            let key = keys[(i.wrapping_mul(7919) % KEYS) as usize];
                            store.acquire(&key, QUOTA, 1).await.expect("check");
                        }
                    });
                    async move { run.await.0 }
                })
            },
        );
        // One pool at a time: 2 × 64 connections would pass the server's default limit.
        store.pool().close();
        let pool = env.pool(clients);
        group.bench_with_input(
            BenchmarkId::new("seed_algorithm", clients),
            &clients,
            |b, &clients| {
                b.to_async(rt).iter_custom(|iters| {
                    let pool = pool.clone();
                    let run = run_clients(clients, iters, move |i| {
                        let pool = pool.clone();
                        async move {
                            let key = format!("route:/bench:{}", i.wrapping_mul(7919) % KEYS);
                            seed_check(&pool, &key).await;
                        }
                    });
                    async move { run.await.0 }
                })
            },
        );
        pool.close();
    }
    group.finish();

    const CHECKS: u64 = 5_000;
    println!("\nlatency pass: {CHECKS} checks per configuration");
    println!(
        "{:<16} {:>7} {:>10} {:>9} {:>9}",
        "target", "clients", "checks/s", "p50 µs", "p99 µs"
    );
    for clients in CLIENTS {
        let store = PostgresStore::new(env.pool(clients));
        let keys = Arc::clone(&keys);
        let s = store.clone();
        let row = rt.block_on(run_clients(clients, CHECKS, move |i| {
            let store = s.clone();
            let key = keys[(i.wrapping_mul(7919) % KEYS) as usize];
            async move {
                store.acquire(&key, QUOTA, 1).await.expect("check");
            }
        }));
        latency_row("postgres_store", clients, row);
        store.pool().close();
        let pool = env.pool(clients);
        let p = pool.clone();
        let row = rt.block_on(run_clients(clients, CHECKS, move |i| {
            let pool = p.clone();
            async move {
                let key = format!("route:/bench:{}", i.wrapping_mul(7919) % KEYS);
                seed_check(&pool, &key).await;
            }
        }));
        latency_row("seed_algorithm", clients, row);
        pool.close();
    }
}

fn audit(c: &mut Criterion, rt: &Runtime, env: &Env) {
    const BATCH: u64 = 1_000;
    let pool = env.pool(1);
    let sink = PostgresAuditSink::new(pool.clone());
    let batch = || -> Vec<AuditEvent> {
        (0..BATCH)
            .map(|i| {
                AuditEvent::new(AuditAction::RateLimitExceeded)
                    .with_status(429)
                    .with_request("GET", "/api/public-data", "/api/public-data")
                    .with_client_ip("192.0.2.7")
                    .with_reason("quota_exhausted")
                    .with_request_id(&format!("req-{i}"))
                    .with_user_agent("bench/1.0")
            })
            .collect()
    };
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("unnest_batch", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let sink = sink.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let events = batch();
                    let start = Instant::now();
                    sink.write_batch(&events).await.expect("write");
                    total += start.elapsed();
                }
                total
            }
        })
    });
    group.bench_function("insert_per_event", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let pool = pool.clone();
            async move {
                let client = pool.get().await.expect("connection");
                let stmt = client
                    .prepare_cached(
                        "INSERT INTO audit_logs (id, \"timestamp\", action, outcome, subject, \
                         client_ip, method, route, path, status, reason, request_id, user_agent, \
                         metadata) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                    )
                    .await
                    .expect("prepare");
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let events = batch();
                    let start = Instant::now();
                    for e in &events {
                        let metadata: Option<&serde_json::Value> = None;
                        client
                            .execute(
                                &stmt,
                                &[
                                    &e.id,
                                    &e.timestamp,
                                    &e.action.as_str(),
                                    &e.outcome.as_str(),
                                    &e.subject,
                                    &e.client_ip,
                                    &e.method,
                                    &e.route,
                                    &e.path,
                                    &i32::from(e.status),
                                    &e.reason,
                                    &e.request_id,
                                    &e.user_agent,
                                    &metadata,
                                ],
                            )
                            .await
                            .expect("insert");
                    }
                    total += start.elapsed();
                }
                total
            }
        })
    });
    group.finish();
}

fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("skipping the postgres benches: DATABASE_URL is not set");
        return;
    };
    let rt = Runtime::new().expect("runtime");
    let schema = format!("sr_bench_{:016x}", rand::random::<u64>());
    let mut config = tokio_postgres::Config::from_str(&url).expect("DATABASE_URL");
    config.options(format!("-c search_path={schema}"));
    let env = Env {
        url,
        schema,
        config,
    };
    rt.block_on(async {
        admin(&env.url, &format!("CREATE SCHEMA {}", env.schema)).await;
        let pool = env.pool(1);
        secure_routes_postgres::migrate(&pool)
            .await
            .expect("migrate");
        pool.get()
            .await
            .expect("connection")
            .batch_execute(SEED_TABLE)
            .await
            .expect("seed table");
    });

    let mut c = Criterion::default().configure_from_args();
    rate_limit(&mut c, &rt, &env);
    audit(&mut c, &rt, &env);
    c.final_summary();

    rt.block_on(admin(
        &env.url,
        &format!("DROP SCHEMA {} CASCADE", env.schema),
    ));
}
