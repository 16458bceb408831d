//! Cost of one rate-limit check in the memory store, against `governor`'s keyed limiter as the
//! baseline, measured in the same run.
//!
//! Run: `cargo bench -p secure-routes --bench rate_limit -- --warm-up-time 1 --measurement-time 3`
//!
//! Groups:
//!
//! * `hot_key`: one key checked over and over, on the real clock (ours: the store's own
//!   monotonic clock, governor: its quanta clock, both as shipped; `memory_gcra_admit_system_clock`
//!   is our store reading `SystemClock` on every check, the default until the store kept its own
//!   time).
//!   * `*_admit`: a quota so large it never refuses, so every check takes the admitting path
//!     (the most work: update the state; for the sliding window, push a stamp and drop the ones
//!     that left its 1 ms window, a steady log of a few tens of thousands of stamps). For
//!     governor: `Quota::per_second(1e9)` (1 ns per cell, burst 1e9), which the bench cannot
//!     exhaust; for our GCRA the same quota.
//!   * `*_refuse`: a realistic `60 per hour` quota, exhausted before the bench, so every check
//!     is the steady-state refusal a client hammering a limited route gets (GCRA frees one
//!     unit a minute, longer than a bench runs).
//!   * `*_async`: the same through the `RateLimitStore` trait (`BoxFuture`), polled once with a
//!     no-op waker: the memory store's future is ready immediately, so this measures the box.
//! * `hot_key_fake_clock`: the same on frozen fake clocks on both sides, so neither pays for
//!   reading time: the cost of the store itself. (Reading the wall clock, `SystemTime::now`,
//!   costs several times what the TSC-based quanta clock costs, which is why the store keeps
//!   its own time: see `parts/clock`.)
//! * `random_keys_100k`: 100 000 pre-generated keys (HMAC outputs, as in production), all
//!   inserted first, then checked in turn: a map too large for the L2 cache, as on a busy
//!   server. The quotas never refuse and keep each key's state alive between two visits (see
//!   [`gcra_keyed`]), so this measures checks of known keys.
//! * `two_threads`: two threads checking (a) the same hot key, the worst case for the shard
//!   locks and governor's CAS loop alike, and (b) random keys, where sharding spreads them. The
//!   time reported is wall time divided by the total number of checks of both threads (the
//!   cost per check at the aggregate throughput).
//! * `parts`: reading each side's clock, and our pure algorithms alone.

use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use secure_routes::clock::{Clock, FakeClock, SystemClock};
use secure_routes::rate_limit::gcra::{self, GcraState};
use secure_routes::rate_limit::sliding_window::{self, SlidingLog};
use secure_routes::rate_limit::{
    Algorithm, KeyHasher, MemoryStore, Quota, RateLimitKey, RateLimitStore, Subject,
};

const RANDOM_KEYS: usize = 100_000;

/// Never refused within a bench: 1e9 per second (1 ns per unit), burst 1e9.
fn gcra_admit() -> Quota {
    Quota::per_second(1_000_000_000).with_algorithm(Algorithm::Gcra)
}

/// Never refused within a bench: 1e9 per millisecond, exact sliding window. The log holds the
/// last millisecond's admissions (a few tens of thousands of stamps at tens of ns per check).
fn sliding_admit() -> Quota {
    Quota::new(1_000_000_000, Duration::from_millis(1))
}

/// For many keys: never refused within a bench, and each key's state outlives the time between
/// two checks of it (~10 ms for 100 000 keys), so the bench measures checks of known keys rather
/// than expiry and re-insertion. GCRA: T = 100 ms, burst 1e6.
fn gcra_keyed() -> Quota {
    Quota::new(1_000_000, Duration::from_secs(100_000)).with_algorithm(Algorithm::Gcra)
}

/// For many keys: sliding window of 500 ms (a few dozen stamps per key), limit 1e6.
fn sliding_keyed() -> Quota {
    Quota::new(1_000_000, Duration::from_millis(500))
}

/// Governor's equivalent of [`gcra_keyed`]: one cell per 100 ms, burst 1e6.
fn governor_keyed() -> DefaultKeyedRateLimiter<RateLimitKey> {
    let q = governor::Quota::with_period(Duration::from_millis(100))
        .unwrap_or_else(|| unreachable!("non-zero period"))
        .allow_burst(NonZeroU32::new(1_000_000).unwrap_or(NonZeroU32::MIN));
    RateLimiter::keyed(q)
}

fn governor_admit_quota() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MIN))
}

fn governor_admit() -> DefaultKeyedRateLimiter<RateLimitKey> {
    RateLimiter::keyed(governor_admit_quota())
}

fn keys(n: usize) -> Vec<RateLimitKey> {
    let h = KeyHasher::new(b"rate-limit-bench-secret-of-32-bytes!");
    (0..n)
        .map(|i| h.key("route:/api/bench", &Subject::Custom(i.to_string())))
        .collect()
}

/// Polls a future once with a no-op waker: enough for the memory store, which is ready at
/// once.
fn ready<T>(fut: impl Future<Output = T>) -> T {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store answers immediately"),
    }
}

fn hot_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_key");
    let key = keys(1)[0];
    let (gcra, sliding) = (MemoryStore::new(), MemoryStore::new());
    let governor = governor_admit();

    g.bench_function("memory_gcra_admit", |b| {
        b.iter(|| gcra.acquire_now(black_box(&key), gcra_admit(), 1))
    });
    let system = MemoryStore::with_clock(Arc::new(SystemClock));
    g.bench_function("memory_gcra_admit_system_clock", |b| {
        b.iter(|| system.acquire_now(black_box(&key), gcra_admit(), 1))
    });
    g.bench_function("memory_sliding_admit", |b| {
        b.iter(|| sliding.acquire_now(black_box(&key), sliding_admit(), 1))
    });
    g.bench_function("governor_admit", |b| {
        b.iter(|| governor.check_key(black_box(&key)))
    });
    // The request's key: HMAC-SHA-256 over the bucket and the address (every rate-limited
    // request pays it before the store call).
    let hasher = KeyHasher::new(b"rate-limit-bench-secret-of-32-bytes!");
    let ip = std::net::IpAddr::from([192, 0, 2, 1]);
    g.bench_function("key_hmac_ipv4", |b| {
        b.iter(|| {
            hasher.key(
                black_box("route:/api/public-data"),
                &Subject::Ip(black_box(ip)),
            )
        })
    });
    g.bench_function("memory_gcra_admit_async", |b| {
        b.iter(|| ready(gcra.acquire(black_box(&key), gcra_admit(), 1)))
    });
    g.bench_function("memory_sliding_admit_async", |b| {
        b.iter(|| ready(sliding.acquire(black_box(&key), sliding_admit(), 1)))
    });
    // Sanity: the admitting quotas still admit, so the bench measured what it says.
    assert!(gcra.acquire_now(&key, gcra_admit(), 1).allowed);
    assert!(sliding.acquire_now(&key, sliding_admit(), 1).allowed);
    assert!(governor.check_key(&key).is_ok());

    // Steady refusal at a realistic quota: exhaust it first.
    let per_hour = Quota::per_hour(60);
    let refusing = [
        (
            "memory_gcra_refuse",
            per_hour.with_algorithm(Algorithm::Gcra),
        ),
        ("memory_sliding_refuse", per_hour),
    ];
    for (name, q) in refusing {
        let store = MemoryStore::new();
        while store.acquire_now(&key, q, 1).allowed {}
        g.bench_function(name, |b| {
            b.iter(|| store.acquire_now(black_box(&key), q, 1))
        });
        assert!(!store.acquire_now(&key, q, 1).allowed);
    }
    let governor: DefaultKeyedRateLimiter<RateLimitKey> = RateLimiter::keyed(
        governor::Quota::per_hour(NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN)),
    );
    while governor.check_key(&key).is_ok() {}
    g.bench_function("governor_refuse", |b| {
        b.iter(|| governor.check_key(black_box(&key)))
    });
    assert!(governor.check_key(&key).is_err());
    g.finish();
}

fn random_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("random_keys_100k");
    let keys = keys(RANDOM_KEYS);
    let gcra_store = MemoryStore::new();
    let sliding_store = MemoryStore::new();
    let governor = governor_keyed();
    // Insert every key up front, so the bench measures checks of known keys.
    let start = Instant::now();
    for k in &keys {
        gcra_store.acquire_now(k, gcra_keyed(), 1);
        let _ = governor.check_key(k);
    }
    for k in &keys {
        sliding_store.acquire_now(k, sliding_keyed(), 1);
    }
    eprintln!("random_keys_100k: inserted in {:?}", start.elapsed());
    assert_eq!(gcra_store.len(), RANDOM_KEYS);
    // (A sliding entry lives 500 ms: on a slow machine the first may expire during setup; the
    // bench revisits each key every few ms, so they come back at once.)
    assert!(sliding_store.len() >= RANDOM_KEYS / 2);

    let mut i = 0;
    g.bench_function("memory_gcra", |b| {
        b.iter(|| {
            i = (i + 1) % RANDOM_KEYS;
            gcra_store.acquire_now(&keys[i], gcra_keyed(), 1)
        })
    });
    g.bench_function("memory_sliding", |b| {
        b.iter(|| {
            i = (i + 1) % RANDOM_KEYS;
            sliding_store.acquire_now(&keys[i], sliding_keyed(), 1)
        })
    });
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % RANDOM_KEYS;
            governor.check_key(&keys[i])
        })
    });
    // Sanity: still admitting, and still holding every key.
    assert!(gcra_store.acquire_now(&keys[0], gcra_keyed(), 1).allowed);
    assert!(
        sliding_store
            .acquire_now(&keys[0], sliding_keyed(), 1)
            .allowed
    );
    assert!(governor.check_key(&keys[0]).is_ok());
    assert_eq!(gcra_store.len(), RANDOM_KEYS);
    g.finish();
}

/// Runs `check(thread, i)` for `iters` checks in total, split over two threads; returns the
/// wall time.
fn two_threads(iters: u64, check: impl Fn(usize, u64) + Sync) -> Duration {
    let half = iters / 2;
    let start = Instant::now();
    std::thread::scope(|s| {
        let check = &check;
        s.spawn(move || (0..half).for_each(|i| check(0, i)));
        s.spawn(move || (0..iters - half).for_each(|i| check(1, i)));
    });
    start.elapsed()
}

fn contended(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    let keys = keys(RANDOM_KEYS);
    let hot = keys[0];
    let gcra_store = MemoryStore::new();
    let sliding_store = MemoryStore::new();
    let governor = governor_admit();

    g.bench_function("hot_key/memory_gcra", |b| {
        b.iter_custom(|n| {
            two_threads(n, |_, _| {
                black_box(gcra_store.acquire_now(&hot, gcra_admit(), 1));
            })
        })
    });
    g.bench_function("hot_key/memory_sliding", |b| {
        b.iter_custom(|n| {
            two_threads(n, |_, _| {
                black_box(sliding_store.acquire_now(&hot, sliding_admit(), 1));
            })
        })
    });
    g.bench_function("hot_key/governor", |b| {
        b.iter_custom(|n| {
            two_threads(n, |_, _| {
                let _ = black_box(governor.check_key(&hot));
            })
        })
    });

    // Each thread walks its own half of the keys, with the many-keys quotas.
    let (keyed_gcra, keyed_sliding) = (MemoryStore::new(), MemoryStore::new());
    let keyed_governor = governor_keyed();
    let key_of = |t: usize, i: u64| {
        &keys[(t * RANDOM_KEYS / 2 + (i as usize % (RANDOM_KEYS / 2))) % RANDOM_KEYS]
    };
    g.bench_function("random_keys/memory_gcra", |b| {
        b.iter_custom(|n| {
            two_threads(n, |t, i| {
                black_box(keyed_gcra.acquire_now(key_of(t, i), gcra_keyed(), 1));
            })
        })
    });
    g.bench_function("random_keys/memory_sliding", |b| {
        b.iter_custom(|n| {
            two_threads(n, |t, i| {
                black_box(keyed_sliding.acquire_now(key_of(t, i), sliding_keyed(), 1));
            })
        })
    });
    g.bench_function("random_keys/governor", |b| {
        b.iter_custom(|n| {
            two_threads(n, |t, i| {
                let _ = black_box(keyed_governor.check_key(key_of(t, i)));
            })
        })
    });
    g.finish();
}

/// The same checks on frozen fake clocks (ours: `FakeClock`, governor: `FakeRelativeClock`), so
/// neither side pays for reading time: the cost of the store itself.
fn hot_key_fake_clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_key_fake_clock");
    let key = keys(1)[0];
    let now = Duration::from_secs(1_700_000_000);
    let store = || MemoryStore::with_clock(Arc::new(FakeClock::new(now)));
    type FakeGovernor = RateLimiter<
        RateLimitKey,
        DefaultKeyedStateStore<RateLimitKey>,
        FakeRelativeClock,
        NoOpMiddleware<governor::nanos::Nanos>,
    >;
    let governor = |q: governor::Quota| -> FakeGovernor {
        RateLimiter::new(
            q,
            DefaultKeyedStateStore::default(),
            FakeRelativeClock::default(),
        )
    };

    // Admitting: burst 1e9 on a frozen clock, more than a run makes.
    let (gcra, gov) = (store(), governor(governor_admit_quota()));
    g.bench_function("memory_gcra_admit", |b| {
        b.iter(|| gcra.acquire_now(black_box(&key), gcra_admit(), 1))
    });
    g.bench_function("governor_admit", |b| {
        b.iter(|| gov.check_key(black_box(&key)))
    });
    assert!(gcra.acquire_now(&key, gcra_admit(), 1).allowed);
    assert!(gov.check_key(&key).is_ok());

    // Refusing at 60 per hour.
    let per_hour = Quota::per_hour(60);
    for (name, q) in [
        (
            "memory_gcra_refuse",
            per_hour.with_algorithm(Algorithm::Gcra),
        ),
        ("memory_sliding_refuse", per_hour),
    ] {
        let store = store();
        while store.acquire_now(&key, q, 1).allowed {}
        g.bench_function(name, |b| {
            b.iter(|| store.acquire_now(black_box(&key), q, 1))
        });
    }
    let gov = governor(governor::Quota::per_hour(
        NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
    ));
    while gov.check_key(&key).is_ok() {}
    g.bench_function("governor_refuse", |b| {
        b.iter(|| gov.check_key(black_box(&key)))
    });
    g.finish();
}

/// What reading the time costs each side, and the pure algorithms alone.
fn parts(c: &mut Criterion) {
    use governor::clock::Clock as _;
    let mut g = c.benchmark_group("parts");
    let system: Arc<dyn Clock> = Arc::new(SystemClock);
    g.bench_function("clock/system_clock", |b| b.iter(|| system.now()));
    let quanta = governor::clock::QuantaClock::default();
    g.bench_function("clock/governor_quanta", |b| b.iter(|| quanta.now()));

    let now = Duration::from_secs(1_700_000_000);
    let mut cell = GcraState::default();
    g.bench_function("pure/gcra_admit", |b| {
        b.iter(|| gcra::acquire(&mut cell, black_box(now), gcra_admit(), 1))
    });
    // Time moves 50 ns per check, so the 1 ms log holds a steady 20 000 stamps.
    let mut log = SlidingLog::default();
    let mut t = now;
    g.bench_function("pure/sliding_admit", |b| {
        b.iter(|| {
            t += Duration::from_nanos(50);
            sliding_window::acquire(&mut log, black_box(t), sliding_admit(), 1)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    hot_key,
    hot_key_fake_clock,
    random_keys,
    contended,
    parts
);
criterion_main!(benches);
