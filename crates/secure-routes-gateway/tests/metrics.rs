//! The metrics a scrape shows after real requests through the pipeline: the process-wide
//! recorder installed (once: this binary has one test), a PUBLIC policy limited to 2 per
//! minute over a [`TimedStore`], three requests, and the text read back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, StatusCode};
use secure_routes::clock::FakeClock;
use secure_routes::rate_limit::MemoryStore;
use secure_routes::{Policy, Quota, Security};
use secure_routes_gateway::metrics::{GatewayMetrics, MetricsError, TimedStore};
use tower::ServiceExt;

#[tokio::test]
async fn a_rate_limited_request_shows_in_the_scrape_as_prometheus_text() {
    let metrics = GatewayMetrics::install().expect("the first install");
    assert!(matches!(
        GatewayMetrics::install(),
        Err(MetricsError::AlreadyInstalled)
    ));

    // The store's time stands still, so the three requests share one window however slowly
    // the test runs.
    let clock = Arc::new(FakeClock::new(Duration::from_secs(1_000_000)));
    let security = Security::builder()
        .csrf_secret([7u8; 32])
        .clock(clock.clone())
        .rate_limit_store(TimedStore::new(MemoryStore::with_clock(clock)))
        .build()
        .expect("valid security");
    let policy = Policy::public()
        .to_builder()
        .rate_limit(Quota::per_minute(2))
        .build()
        .expect("valid policy");
    let layer = security.layer(policy).expect("policy fits");
    let app = Router::new().route("/public", get(|| async { "ok" }).layer(layer));

    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut request = Request::get("/public").body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40_000))));
        let response = app.clone().oneshot(request).await.unwrap();
        statuses.push(response.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );

    let text = metrics.render();
    let denied = text
        .lines()
        .filter(|l| l.starts_with("secure_routes_decisions_total{"))
        .find(|l| l.contains("outcome=\"denied\"") && l.contains("reason=\"quota_exhausted\""))
        .unwrap_or_else(|| panic!("no quota_exhausted refusal in\n{text}"));
    assert!(denied.contains("policy=\"public\""), "{denied}");
    assert!(denied.ends_with("} 1"), "{denied}");
    assert!(
        text.lines().any(|l| l.starts_with(
            "secure_routes_store_call_seconds_bucket{store=\"memory\",outcome=\"allowed\",le=\""
        )),
        "no store call bucket in\n{text}"
    );
    assert!(
        text.contains(
            "secure_routes_store_call_seconds_count{store=\"memory\",outcome=\"allowed\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "secure_routes_store_call_seconds_count{store=\"memory\",outcome=\"denied\"} 1"
        ),
        "{text}"
    );
    check_exposition_format(&text);
}

/// Every line is a `#` comment (`# HELP name text` or `# TYPE name kind`) or a sample,
/// `name{label="value",...} number` (labels optional), as the Prometheus text format 0.0.4
/// says.
fn check_exposition_format(text: &str) {
    assert!(!text.is_empty());
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let kind = words.next();
            let name = words.next().unwrap_or_default();
            assert!(matches!(kind, Some("HELP" | "TYPE")), "{line}");
            assert!(is_metric_name(name), "{line}");
            if kind == Some("TYPE") {
                assert!(
                    matches!(
                        words.next(),
                        Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                    ),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert!(
            value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"),
            "value of {line}"
        );
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                Some(rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"))),
            ),
            None => (series, None),
        };
        assert!(is_metric_name(name), "{line}");
        if let Some(labels) = labels {
            check_labels(labels, line);
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name="value"` pairs separated by commas; values escape `\`, `"` and newlines.
fn check_labels(mut labels: &str, line: &str) {
    while !labels.is_empty() {
        let (name, rest) = labels.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        assert!(is_metric_name(name) && !name.contains(':'), "{line}");
        let mut end = None;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, '\n') => panic!("raw newline in {line}"),
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated label value in {line}"));
        labels = &rest[end + 1..];
        labels = labels.strip_prefix(',').unwrap_or(labels);
    }
}
