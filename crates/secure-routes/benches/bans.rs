//! Cost of one ban check in process (issue 12 part 7's budget: 100 ns per request with nothing
//! banned), for the memory store.
//!
//! Run: `cargo bench -p secure-routes --bench bans -- --warm-up-time 1 --measurement-time 3`
//!
//! * `check_not_banned/empty`: a key never struck, in an empty table (the common case).
//! * `check_not_banned/10k_keys`: the same among 10 000 keys with points but no ban.
//! * `check_banned`: a banned key (the refusal path: the ban is cloned out).
//! * `key_from_ip`: building the `BanKey` from the resolved address (a `format!`).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use secure_routes::bans::{BanKey, BanPolicy, MemoryBans};

fn bench(c: &mut Criterion) {
    let now = Duration::from_secs(1_700_000_000);
    let policy = BanPolicy::default();
    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    let key = BanKey::ip(ip);

    let empty = MemoryBans::new();
    let mut g = c.benchmark_group("check_not_banned");
    g.bench_function("empty", |b| {
        b.iter(|| black_box(empty.check_now(black_box(&key), now)))
    });
    let busy = MemoryBans::new();
    for i in 0..10_000u32 {
        let k = BanKey::ip(IpAddr::from(i.to_be_bytes()));
        busy.strike_now(&k, 1, &policy, now);
    }
    g.bench_function("10k_keys", |b| {
        b.iter(|| black_box(busy.check_now(black_box(&key), now)))
    });
    g.finish();

    let banned = MemoryBans::new();
    banned.strike_now(&key, 50, &policy, now);
    c.bench_function("check_banned", |b| {
        b.iter(|| black_box(banned.check_now(black_box(&key), now)))
    });
    c.bench_function("key_from_ip", |b| {
        b.iter(|| black_box(BanKey::ip(black_box(ip))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
