//! Hot-key GCRA check against governor, robust to a shared machine: the variants run in
//! interleaved rounds in one process and each reports its fastest and median round, so a
//! neighbour's compile slows both sides alike instead of whichever ran during it. Also a
//! fixed-iteration driver for instruction counts under callgrind.
//!
//! Run (timing): `cargo bench -p secure-routes --bench hot_key_rounds`
//!
//! Run (instructions, one variant):
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/hot_key_rounds-* --only memory_gcra --iters 1000000`
//! (subtract a run with `--iters 0` to drop the setup; callgrind counts a clock read that is
//! a system call under valgrind as a few instructions, so compare the fake-clock variants for
//! the store itself and the timing rounds for the clock).
//!
//! Variants, all admitting (a quota of 1e9 per second, never exhausted), one key:
//! * `memory_gcra`: `MemoryStore::new()`, as shipped (its own monotonic clock);
//! * `memory_gcra_system_clock`: the same store reading `SystemClock` on every check (the
//!   default before this bench was written);
//! * `governor`: `governor`'s keyed limiter as shipped (quanta clock, DashMap);
//! * `memory_gcra_fake_clock`, `governor_fake_clock`: both on frozen fake clocks (no clock
//!   read: the stores alone).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use secure_routes::clock::{FakeClock, SystemClock};
use secure_routes::rate_limit::{Algorithm, KeyHasher, MemoryStore, Quota, RateLimitKey, Subject};

const ROUNDS: usize = 41;
const CHECKS_PER_ROUND: u64 = 200_000;

type FakeGovernor = RateLimiter<
    RateLimitKey,
    DefaultKeyedStateStore<RateLimitKey>,
    FakeRelativeClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

/// One way of checking the hot key; returns whether the check admitted.
enum Variant {
    Memory(MemoryStore),
    Governor(DefaultKeyedRateLimiter<RateLimitKey>),
    FakeGovernor(FakeGovernor),
}

impl Variant {
    fn check(&self, key: &RateLimitKey) -> bool {
        match self {
            Self::Memory(store) => store.acquire_now(key, quota(), 1).allowed,
            Self::Governor(g) => g.check_key(key).is_ok(),
            Self::FakeGovernor(g) => g.check_key(key).is_ok(),
        }
    }
}

fn quota() -> Quota {
    Quota::per_second(1_000_000_000).with_algorithm(Algorithm::Gcra)
}

fn variants() -> Vec<(&'static str, Variant)> {
    let gq = governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MIN));
    let fake = FakeClock::new(Duration::from_secs(1_700_000_000));
    vec![
        ("memory_gcra", Variant::Memory(MemoryStore::new())),
        (
            "memory_gcra_system_clock",
            Variant::Memory(MemoryStore::with_clock(Arc::new(SystemClock))),
        ),
        ("governor", Variant::Governor(RateLimiter::keyed(gq))),
        (
            "memory_gcra_fake_clock",
            Variant::Memory(MemoryStore::with_clock(Arc::new(fake))),
        ),
        (
            "governor_fake_clock",
            Variant::FakeGovernor(RateLimiter::new(
                gq,
                DefaultKeyedStateStore::default(),
                FakeRelativeClock::default(),
            )),
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let key = KeyHasher::new(b"hot-key-rounds-bench-secret-32-bytes")
        .key("route:/api/hot", &Subject::Custom("client".into()));
    let mut variants = variants();

    if let Some(only) = value_of("--only") {
        let iters: u64 = value_of("--iters")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let (_, v) = variants
            .iter()
            .find(|(name, _)| *name == only)
            .unwrap_or_else(|| panic!("unknown variant {only}"));
        let admitted = (0..iters).filter(|_| v.check(black_box(&key))).count();
        assert_eq!(admitted as u64, iters, "every check admits");
        return;
    }

    // `cargo test --benches` runs this once as a smoke test.
    let (rounds, per_round) = if args.iter().any(|a| a == "--test") {
        (3, 1_000)
    } else {
        (ROUNDS, CHECKS_PER_ROUND)
    };
    // Warm up: the key exists in every store, caches and branch predictors are warm.
    for (_, v) in &variants {
        for _ in 0..per_round {
            assert!(v.check(black_box(&key)));
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); variants.len()];
    for round in 0..rounds {
        // Rotate the order so no variant always runs first (or right after another).
        variants.rotate_left(usize::from(round > 0));
        samples.rotate_left(usize::from(round > 0));
        for ((_, v), s) in variants.iter().zip(samples.iter_mut()) {
            let start = Instant::now();
            for _ in 0..per_round {
                black_box(v.check(black_box(&key)));
            }
            s.push(start.elapsed().as_nanos() as f64 / per_round as f64);
        }
    }
    let stats: Vec<(&str, f64, f64)> = variants
        .iter()
        .zip(samples.iter_mut())
        .map(|((name, _), s)| {
            s.sort_by(f64::total_cmp);
            (*name, s[0], s[s.len() / 2])
        })
        .collect();
    let of = |name: &str| {
        stats
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, min, median)| (min, median))
            .unwrap_or_else(|| unreachable!("{name} is a variant"))
    };
    println!("hot_key_rounds: {rounds} interleaved rounds of {per_round} checks, ns per check");
    for base in ["governor", "governor_fake_clock"] {
        let (bmin, bmed) = of(base);
        for (name, min, median) in &stats {
            if name.starts_with("memory")
                && name.ends_with("fake_clock") == base.ends_with("fake_clock")
            {
                println!(
                    "{name:<26} min {min:>6.1}  median {median:>6.1}   vs {base}: min {:.2}x  median {:.2}x",
                    min / bmin,
                    median / bmed
                );
            }
        }
        println!("{base:<26} min {bmin:>6.1}  median {bmed:>6.1}");
    }
}
