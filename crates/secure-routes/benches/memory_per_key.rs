//! Resident memory per rate-limit key: how much RSS the memory store (GCRA and sliding window)
//! and, as the baseline, `governor`'s keyed limiter (its default DashMap state store) grow by
//! when `N` distinct clients each make one request.
//!
//! Why RSS and not `size_of`: what an operator sees under a flood of fresh client addresses is
//! the process's resident memory, which includes the hash tables' empty buckets, the
//! allocator's headers and any table left behind by a resize; a type's size includes none of
//! them.
//!
//! Run: `cargo bench -p secure-routes --bench memory_per_key` (N = 1 000 000 by default;
//! `-- --keys 200000` for another N). Each store is measured in its own child process (this
//! binary re-run with `--phase NAME`), so one store's freed memory cannot be reused by the
//! next and flatter its figure. In each child, the keys are generated first (outside the
//! measurement), then VmRSS is read from `/proc/self/statm` before and after the N requests.
//! Linux only.

use std::num::NonZeroU32;
use std::process::Command;
use std::time::Instant;

use governor::{DefaultKeyedRateLimiter, RateLimiter};
use secure_routes::rate_limit::{Algorithm, KeyHasher, MemoryStore, Quota, RateLimitKey, Subject};

/// The stores measured, each in its own process.
const PHASES: [&str; 3] = ["memory_gcra", "memory_sliding", "governor"];
const DEFAULT_KEYS: usize = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n = value_of("--keys")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KEYS);
    if let Some(phase) = value_of("--phase") {
        run_phase(&phase, n);
        return;
    }
    // `cargo test --benches` runs every bench once as a smoke test: keep that cheap.
    let n = if args.iter().any(|a| a == "--test") {
        10_000
    } else {
        n
    };
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("own path: {e}"));
    println!("memory_per_key: N = {n} distinct keys, one request each (RSS growth / keys held)");
    for phase in PHASES {
        let out = Command::new(&exe)
            .args(["--phase", phase, "--keys", &n.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("run phase {phase}: {e}"));
        assert!(
            out.status.success(),
            "phase {phase} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// One store, in this process: inserts `n` keys and prints the RSS growth per key.
fn run_phase(phase: &str, n: usize) {
    let keys = keys(n);
    // A quota no run exhausts or outlives: every key's state stays live, as under a flood.
    let quota = Quota::per_hour(60);
    let before = rss_bytes();
    let start = Instant::now();
    let held = match phase {
        "memory_gcra" => {
            let store = MemoryStore::new();
            let q = quota.with_algorithm(Algorithm::Gcra);
            for k in &keys {
                assert!(store.acquire_now(k, q, 1).allowed);
            }
            report(phase, n, store.len(), before, start);
            store.len()
        }
        "memory_sliding" => {
            let store = MemoryStore::new();
            let q = quota.with_algorithm(Algorithm::SlidingWindow);
            for k in &keys {
                assert!(store.acquire_now(k, q, 1).allowed);
            }
            report(phase, n, store.len(), before, start);
            store.len()
        }
        "governor" => {
            let limiter: DefaultKeyedRateLimiter<RateLimitKey> = RateLimiter::keyed(
                governor::Quota::per_hour(NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN)),
            );
            for k in &keys {
                assert!(limiter.check_key(k).is_ok());
            }
            report(phase, n, limiter.len(), before, start);
            limiter.len()
        }
        other => panic!("unknown phase {other}"),
    };
    assert!(held > 0);
}

fn report(phase: &str, n: usize, held: usize, before: u64, start: Instant) {
    let elapsed = start.elapsed();
    let grown = rss_bytes().saturating_sub(before);
    // Per key held: at the cap, a store holds fewer than it was sent (it evicts).
    let per_key = grown as f64 / held.max(1) as f64;
    println!(
        "{phase:<16} keys sent {n:>9}  held {held:>9}  RSS +{:>7.1} MiB  {per_key:>6.1} B/key  ({:.0} ns/insert)",
        grown as f64 / (1024.0 * 1024.0),
        elapsed.as_nanos() as f64 / n as f64,
    );
}

fn keys(n: usize) -> Vec<RateLimitKey> {
    let h = KeyHasher::new(b"memory-per-key-bench-secret-32-bytes");
    (0..n)
        .map(|i| h.key("route:/api/flood", &Subject::Custom(i.to_string())))
        .collect()
}

/// Resident set size of this process, from `/proc/self/statm` (second field, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm")
        .unwrap_or_else(|e| panic!("this bench needs Linux's /proc: {e}"));
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected /proc/self/statm: {statm}"));
    pages * page_size()
}

fn page_size() -> u64 {
    // The page size is 4 KiB on the platforms this bench runs on (x86-64, aarch64 Linux with
    // 4 KiB pages); `getconf` confirms it without a libc dependency.
    Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}
