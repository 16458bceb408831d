//! Checks per second and latency of `RedisStore`, against a trivial script (`return 1`, by
//! `EVALSHA` with one key, on the same connection) as the baseline, measured in the same run:
//! what one round trip to this Redis costs, so the store's own cost is the difference.
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo bench -p secure-routes-redis --bench redis --
//! --warm-up-time 1 --measurement-time 3`. Without `REDIS_URL` it prints a message and exits.
//!
//! For each of 1, 16 and 64 concurrent clients (tasks on a multi-threaded runtime sharing one
//! multiplexed `ConnectionManager`, as the instances of a service do):
//!
//! * criterion group `redis_throughput/<clients>`: `baseline_evalsha`, `sliding_window`,
//!   `gcra`. The time reported is wall time divided by the number of checks of all clients
//!   together: the cost per check at the aggregate throughput (checks/s = 1e9 / ns).
//! * then a latency pass printed to stdout: 20 000 checks per configuration, p50 and p99 of
//!   each check's own latency, and the checks/s of that pass.
//!
//! Keys: 10 000 keys, 60 per minute each; clients walk through them, so checks are a realistic
//! mix of admissions and refusals over a bounded set of small sorted sets / strings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use redis::Script;
use redis::aio::ConnectionManager;
use secure_routes::rate_limit::{
    Algorithm, KeyHasher, Quota, RateLimitKey, RateLimitStore, Subject,
};
use secure_routes_redis::RedisStore;
use secure_routes_testkit::percentile;

const KEYS: usize = 10_000;
const CLIENTS: [usize; 3] = [1, 16, 64];

#[derive(Clone, Copy, Debug)]
enum Target {
    Baseline,
    Store(Algorithm),
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Baseline => "baseline_evalsha",
            Target::Store(Algorithm::SlidingWindow) => "sliding_window",
            Target::Store(Algorithm::Gcra) => "gcra",
        }
    }
}

struct Setup {
    store: RedisStore,
    conn: ConnectionManager,
    baseline: Arc<Script>,
    keys: Arc<Vec<RateLimitKey>>,
}

/// One check of `target` for key number `i`.
async fn check(setup: &Setup, target: Target, i: usize) {
    let key = &setup.keys[i % KEYS];
    match target {
        Target::Baseline => {
            let mut conn = setup.conn.clone();
            let name = setup.store.key_name(key, Algorithm::Gcra);
            let one: i64 = setup
                .baseline
                .key(name)
                .invoke_async(&mut conn)
                .await
                .expect("baseline script");
            assert_eq!(one, 1);
        }
        Target::Store(algorithm) => {
            let q = Quota::per_minute(60).with_algorithm(algorithm);
            setup.store.acquire(key, q, 1).await.expect("redis check");
        }
    }
}

/// Runs `total` checks split over `clients` tasks; returns each check's latency.
async fn run(setup: &Arc<Setup>, target: Target, clients: usize, total: usize) -> Vec<Duration> {
    let per_client = total.div_ceil(clients);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let setup = Arc::clone(setup);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let t = Instant::now();
                    check(&setup, target, c * 7_919 + n * 13).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

fn bench(c: &mut Criterion) {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipping the Redis benches: set REDIS_URL (e.g. redis://127.0.0.1:6379)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let setup = rt.block_on(async {
        let conn = ConnectionManager::new(redis::Client::open(url.as_str()).expect("url"))
            .await
            .expect("redis reachable");
        // The store and the baseline share one connection: the difference is the scripts.
        let store = RedisStore::new(conn.clone())
            .with_prefix(format!("srbench-{:016x}", rand::random::<u64>()))
            .expect("prefix");
        let hasher = KeyHasher::new(b"bench");
        let keys = (0..KEYS)
            .map(|i| hasher.key("route:/bench", &Subject::Custom(i.to_string())))
            .collect();
        Arc::new(Setup {
            store,
            conn,
            baseline: Arc::new(Script::new("return 1")),
            keys: Arc::new(keys),
        })
    });
    let targets = [
        Target::Baseline,
        Target::Store(Algorithm::SlidingWindow),
        Target::Store(Algorithm::Gcra),
    ];

    for clients in CLIENTS {
        let mut group = c.benchmark_group(format!("redis_throughput/{clients}"));
        for target in targets {
            group.bench_function(target.name(), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let setup = Arc::clone(&setup);
                    async move {
                        let total = usize::try_from(iters).unwrap_or(usize::MAX).max(clients);
                        let start = Instant::now();
                        run(&setup, target, clients, total).await;
                        // Report per requested iteration (the run may round up per client).
                        start.elapsed().mul_f64(iters as f64 / total as f64)
                    }
                });
            });
        }
        group.finish();
    }

    println!("\nlatency pass: 20000 checks per configuration");
    println!(
        "{:<18} {:>7} {:>12} {:>10} {:>10}",
        "target", "clients", "checks/s", "p50 µs", "p99 µs"
    );
    for clients in CLIENTS {
        for target in targets {
            let start = Instant::now();
            let mut lat = rt.block_on(run(&setup, target, clients, 20_000));
            let elapsed = start.elapsed();
            lat.sort_unstable();
            println!(
                "{:<18} {:>7} {:>12.0} {:>10.1} {:>10.1}",
                target.name(),
                clients,
                lat.len() as f64 / elapsed.as_secs_f64(),
                percentile(&lat, 0.50).as_secs_f64() * 1e6,
                percentile(&lat, 0.99).as_secs_f64() * 1e6,
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
