//! The request fingerprint's cost on a typical browser request (twelve headers, three
//! cookies): it is computed for every request the pipeline sees, so it must stay well under
//! 100 ns (the PUBLIC pipeline's whole budget is about 1.5 µs, issue 10 part 7). Beside it,
//! for the choice of hash, the two SHA-256 digests JA4H would take over the same name lists
//! (aws-lc's, assembly), without the rest of the work.
//!
//! Run: `cargo bench -p secure-routes --bench fingerprint`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Version};
use secure_routes::fingerprint::Fingerprint;

// Only for `BROWSER_HEADERS`: the same browser request the pipeline bench sends.
#[allow(dead_code)]
mod stacks;

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for (name, value) in stacks::BROWSER_HEADERS {
        headers.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let mut g = c.benchmark_group("fingerprint");
    g.bench_function("browser_12_headers", |b| {
        b.iter(|| {
            Fingerprint::of(
                black_box(&Method::GET),
                Version::HTTP_11,
                black_box(&headers),
            )
        });
    });
    // What the two hashes alone would cost as JA4H's truncated SHA-256.
    let names = "host,user-agent,accept,accept-language,accept-encoding,connection,\
                 sec-fetch-dest,sec-fetch-mode,sec-fetch-site,priority";
    let cookies = "_ga,consent,theme";
    g.bench_function("sha256_of_the_two_lists", |b| {
        b.iter(|| {
            let h =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, black_box(names).as_bytes());
            let c = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                black_box(cookies).as_bytes(),
            );
            (h.as_ref()[0], c.as_ref()[0])
        });
    });
    g.bench_function("xxh3_of_the_two_lists", |b| {
        b.iter(|| {
            (
                xxhash_rust::xxh3::xxh3_64(black_box(names).as_bytes()),
                xxhash_rust::xxh3::xxh3_64(black_box(cookies).as_bytes()),
            )
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
