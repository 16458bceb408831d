//! Fixed-rate load generator for `bench/proxy.sh` (wrk2 is not packaged in Debian): sends GET
//! requests at a constant total rate over a few keep-alive HTTP/1.1 connections and prints
//! the latency percentiles.
//!
//! Request `i` is due at `start + i / rate`, on connection `i % connections`. Latency is
//! counted from the moment the request was due whenever the connection was still busy with
//! the previous answer at that moment (the server held it up: wrk2's correction for
//! coordinated omission, so a stall shows in the tail instead of silently lowering the rate),
//! and from the moment it was actually written otherwise (tokio's timer wakes on 1 ms ticks;
//! that lateness is the load generator's, not the server's). Requests due in the first
//! `warmup` seconds are sent but not counted. A connection the server closed (nginx after
//! `keepalive_requests`) is opened again, in the time of the request that needed it. Any non-2xx answer or connection error is
//! counted as an error and fails the run (exit status 1), so a refused request (429) can never
//! pass for a fast one.
//!
//! Usage: `bench_load URL RATE SECONDS [CONNECTIONS] [WARMUP_SECONDS]`, e.g.
//! `bench_load http://127.0.0.1:3999/bare 2000 10 16 1`. Prints one line:
//! `p50_us P p90_us P p99_us P p999_us P max_us P requests N rate R errors E`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

struct Args {
    uri: http::Uri,
    rate: f64,
    seconds: f64,
    connections: usize,
    warmup: f64,
}

fn args() -> anyhow::Result<Args> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        (3..=5).contains(&a.len()),
        "usage: bench_load URL RATE SECONDS [CONNECTIONS] [WARMUP_SECONDS]"
    );
    let uri: http::Uri = a[0].parse()?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.authority().is_some(),
        "URL must be http://HOST:PORT/PATH"
    );
    let args = Args {
        uri,
        rate: a[1].parse()?,
        seconds: a[2].parse()?,
        connections: a.get(3).map_or(Ok(16), |s| s.parse())?,
        warmup: a.get(4).map_or(Ok(1.0), |s| s.parse())?,
    };
    anyhow::ensure!(args.rate > 0.0 && args.seconds > 0.0 && args.connections > 0);
    anyhow::ensure!(args.warmup >= 0.0);
    Ok(args)
}

/// What one connection measured: latencies (ns) of the counted requests, and errors.
#[derive(Default)]
struct Measured {
    latencies: Vec<u64>,
    errors: u64,
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A new keep-alive connection to `authority`.
async fn open(authority: &str) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let authority = authority.to_owned();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection to {authority} ended: {e}");
        }
    });
    Ok(sender)
}

async fn connection(
    uri: http::Uri,
    first: u64,
    step: u64,
    total: u64,
    counted_from: u64,
    start: tokio::time::Instant,
    interval: Duration,
) -> anyhow::Result<Measured> {
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut sender = open(&authority).await?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut out = Measured::default();
    let mut i = first;
    while i < total {
        let due = start + interval.mul_f64(i as f64);
        let held_up = tokio::time::Instant::now() > due;
        tokio::time::sleep_until(due).await;
        let sent = Instant::now();
        // A server may close a keep-alive connection after some requests (nginx's
        // `keepalive_requests`): a new one is opened, its cost counted in this request.
        if sender.ready().await.is_err() {
            sender = open(&authority).await?;
            sender.ready().await?;
        }
        let from = if held_up { due.into_std() } else { sent };
        let req = http::Request::get(path.as_str())
            .header(http::header::HOST, authority.as_str())
            .body(Empty::<Bytes>::new())?;
        let ok = match sender.send_request(req).await {
            Ok(res) => {
                let success = res.status().is_success();
                success && res.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        };
        let took = from.elapsed();
        if i >= counted_from {
            if ok {
                out.latencies
                    .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            } else {
                out.errors += 1;
            }
        }
        if !ok {
            // The connection may be gone; the rest of its share is errors.
            out.errors += (total.saturating_sub(i + step)).div_ceil(step);
            break;
        }
        i += step;
    }
    Ok(out)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank: the smallest value with at least p of the samples at or below it.
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (sorted, errors, rate) = rt.block_on(async move {
        let interval = Duration::from_secs_f64(1.0 / a.rate);
        let total = ((a.warmup + a.seconds) * a.rate) as u64;
        let counted_from = (a.warmup * a.rate) as u64;
        let step = a.connections as u64;
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let tasks: Vec<_> = (0..step)
            .map(|k| {
                tokio::spawn(connection(
                    a.uri.clone(),
                    k,
                    step,
                    total,
                    counted_from,
                    start,
                    interval,
                ))
            })
            .collect();
        let mut all = Measured::default();
        for t in tasks {
            match t.await? {
                Ok(m) => {
                    all.latencies.extend(m.latencies);
                    all.errors += m.errors;
                }
                Err(e) => {
                    eprintln!("connection failed: {e}");
                    all.errors += (total - counted_from) / step;
                }
            }
        }
        let counted = start + interval.mul_f64(counted_from as f64);
        let rate =
            (all.latencies.len() as u64 + all.errors) as f64 / counted.elapsed().as_secs_f64();
        all.latencies.sort_unstable();
        anyhow::Ok((all.latencies, all.errors, rate))
    })?;
    println!(
        "p50_us {:.1} p90_us {:.1} p99_us {:.1} p999_us {:.1} max_us {:.1} requests {} rate {:.0} errors {}",
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.90),
        percentile(&sorted, 0.99),
        percentile(&sorted, 0.999),
        percentile(&sorted, 1.0),
        sorted.len(),
        rate,
        errors
    );
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}
