//! The routes every pipeline measurement compares, built once here so the criterion bench
//! (`pipeline.rs`), the instruction-count driver (`instructions.rs`) and the HTTP server of
//! `bench/http_cpu.sh` (`secure-routes-cli/examples/bench_server.rs`, which includes this file
//! by path) measure exactly the same stacks:
//!
//! - `/bare`: the handler alone (the baseline);
//! - `/bare-wire`: the handler with PUBLIC's response header lines, appended as constants by
//!   one tower `MapResponse` (the least any stack that answers with PUBLIC's bytes can cost: what
//!   is left between it and `/public` is the pipeline's own work, not the bytes on the wire);
//! - `/public`: the handler behind the PUBLIC policy;
//! - `/assembled`: the handler behind the stack a user would assemble without secure-routes
//!   (issue 10 part 7): tower_governor (GCRA per peer IP, `use_headers()`), eight
//!   `SetResponseHeaderLayer`s (our eight default security headers, set when absent),
//!   `CorsLayer`, `RequestBodyLimitLayer`, tower-http's `CsrfLayer`, `SetRequestIdLayer` and
//!   `CatchPanicLayer`;
//! - `/authenticated`: the handler behind AUTHENTICATED with an HS256 [`JwtAuthenticator`];
//! - `/assembled-jwt`: `/assembled` plus an axum `from_fn` middleware that verifies the HS256
//!   bearer with `jsonwebtoken`.
//!
//! Quotas on both sides are far beyond what a bench reaches, so every request runs the whole
//! stack (store call and rate-limit headers included) instead of stopping at a 429.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use secure_routes::auth::jwt::JwtAuthenticator;
use secure_routes::rate_limit::Algorithm;
use secure_routes::{Policy, Quota, Security};
use tower::ServiceBuilder;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::csrf::CsrfLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// The HS256 secret of both authenticated routes.
const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret!!";

/// The routes in the order a run interleaves them: (name, path, sends the bearer token).
pub(crate) const ROUTES: [(&str, &str, bool); 6] = [
    ("bare_handler", "/bare", false),
    ("bare_wire", "/bare-wire", false),
    ("public", "/public", false),
    ("assembled", "/assembled", false),
    ("authenticated_hs256", "/authenticated", true),
    ("assembled_jwt_hs256", "/assembled-jwt", true),
];

/// A valid HS256 token for both authenticated routes, valid for a day (long enough for any
/// run, even under valgrind).
pub(crate) fn token() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 86_400;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "alice", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .expect("encode token")
}

fn big_quota() -> Quota {
    Quota::per_second(1_000_000_000).with_algorithm(Algorithm::Gcra)
}

/// All five routes around `handler`, finalized the way `axum::serve` does (`with_state(())`)
/// so the layers are applied once, not on every request.
pub(crate) fn app<H, T>(handler: H) -> Router
where
    H: Handler<T, ()> + Clone,
    T: 'static,
{
    let jwt = JwtAuthenticator::builder()
        .hs256(SECRET)
        .build()
        .expect("jwt authenticator");
    let security = Security::builder()
        .authenticator(jwt)
        .csrf_secret([3u8; 32])
        .build()
        .expect("security");
    let public = Policy::public()
        .to_builder()
        .rate_limit(big_quota())
        .build()
        .expect("public policy");
    let authenticated = Policy::authenticated()
        .to_builder()
        .rate_limit(big_quota())
        .build()
        .expect("authenticated policy");
    Router::new()
        .route("/bare", get(handler.clone()))
        .route("/bare-wire", bare_wire(get(handler.clone())))
        .route(
            "/public",
            get(handler.clone()).layer(security.layer(public).expect("public layer")),
        )
        .route("/assembled", assembled(get(handler.clone()), 1024 * 1024))
        .route(
            "/authenticated",
            get(handler.clone()).layer(security.layer(authenticated).expect("auth layer")),
        )
        .route(
            "/assembled-jwt",
            assembled_jwt(get(handler), 5 * 1024 * 1024),
        )
        .with_state(())
}

/// The eight headers PUBLIC adds by default.
const SECURITY_HEADERS: [(&str, &str); 8] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-xss-protection", "0"),
];

/// The eight headers PUBLIC adds by default, each as its own layer, set only when the handler
/// did not (as `SecurityHeaders::apply` does).
fn security_headers() -> [SetResponseHeaderLayer<HeaderValue>; 8] {
    SECURITY_HEADERS.map(|(name, value)| {
        SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    })
}

/// PUBLIC's header lines on a `/public` answer of this bench, beyond what the bare handler
/// sends (`content-type`, `content-length`, `date`), with the per-request values (remaining,
/// reset, request id) as constants of the same length. `bench_server` checks at start that
/// `/bare-wire` and `/public` answer with the same header names and bytes.
const PUBLIC_WIRE: [(&str, &str); 7] = [
    ("ratelimit-policy", "\"public\";q=1000000000;w=1"),
    ("x-ratelimit-limit", "1000000000"),
    ("ratelimit", "\"public\";r=999999999;t=1"),
    ("x-ratelimit-remaining", "999999999"),
    ("x-ratelimit-reset", "1796417382"),
    ("x-request-id", "01a242d0-128d-711f-9d6d-8130429a2d4d"),
    ("vary", "origin"),
];

/// `route` answering with PUBLIC's header lines (see [`PUBLIC_WIRE`]): appended from a map
/// built once by tower's `MapResponse` (no boxing, no per-request map), the cheapest way a
/// stack can add them.
fn bare_wire(route: MethodRouter) -> MethodRouter {
    let mut wire = http::HeaderMap::new();
    for (name, value) in SECURITY_HEADERS.into_iter().chain(PUBLIC_WIRE) {
        wire.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    let wire = Arc::new(wire);
    route.layer(tower::util::MapResponseLayer::new(
        move |mut res: Response| {
            let h = res.headers_mut();
            h.reserve(wire.len());
            for (name, value) in wire.iter() {
                h.append(name.clone(), value.clone());
            }
            res
        },
    ))
}

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list([HeaderValue::from_static(
            "https://app.example.com",
        )]))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .allow_credentials(true)
        .max_age(Duration::from_secs(600))
}

/// The assembled stack around `route`, as one `ServiceBuilder` (one boxing by axum, as a user
/// writing it idiomatically gets). tower_governor sits innermost because its 429 needs the
/// handler's own `Response<Body>`; `jwt` (when given) sits between CSRF and the body limit
/// because `from_fn` takes a `Request<Body>`.
macro_rules! stack {
    ($route:expr, $limit:expr $(, $jwt:expr)?) => {{
        let governor = GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(u32::MAX)
            .use_headers()
            .finish()
            .expect("governor config");
        let [h1, h2, h3, h4, h5, h6, h7, h8] = security_headers();
        $route.layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(CatchPanicLayer::new())
                .layer(cors())
                .layer(h1)
                .layer(h2)
                .layer(h3)
                .layer(h4)
                .layer(h5)
                .layer(h6)
                .layer(h7)
                .layer(h8)
                .layer(CsrfLayer::new())
                $(.layer($jwt))?
                .layer(RequestBodyLimitLayer::new($limit))
                .layer(GovernorLayer::new(governor)),
        )
    }};
}

fn assembled(route: MethodRouter, limit: usize) -> MethodRouter {
    stack!(route, limit)
}

fn assembled_jwt(route: MethodRouter, limit: usize) -> MethodRouter {
    let keys = Arc::new(JwtKeys {
        key: jsonwebtoken::DecodingKey::from_secret(SECRET),
        validation: jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256),
    });
    stack!(route, limit, from_fn_with_state(keys, verify_bearer))
}

/// What a user's JWT middleware keeps: the key and the validation rules, built once.
struct JwtKeys {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

/// The claims the handler would read.
#[derive(Clone, serde::Deserialize)]
struct Claims {
    #[allow(dead_code)] // read by handlers in a real app; here only decoded
    sub: String,
}

/// A typical hand-written bearer check: `Authorization: Bearer <jwt>`, HS256, `exp` checked;
/// the claims go into the request's extensions, anything else is a 401.
async fn verify_bearer(State(keys): State<Arc<JwtKeys>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match jsonwebtoken::decode::<Claims>(token, &keys.key, &keys.validation) {
        Ok(data) => {
            req.extensions_mut().insert(data.claims);
            next.run(req).await
        }
        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
    }
}

/// A request for `path`, from one peer address, with the bearer `token` when given.
pub(crate) fn request(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut req = b.body(Body::empty()).expect("request");
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            [192, 0, 2, 1],
            40000,
        ))));
    req
}

/// A typical browser request's twelve headers (Firefox 133 fetching JSON from a page, with a
/// three-cookie jar), for the cost of what reads every header (the request fingerprint; the
/// fingerprint bench hashes the same headers).
#[allow(dead_code)] // the pipeline and fingerprint benches'; the instructions bench shares this module
pub(crate) const BROWSER_HEADERS: [(&str, &str); 12] = [
    ("host", "api.example.com"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    ),
    ("accept", "application/json, text/plain, */*"),
    ("accept-language", "en-US,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "https://app.example.com/dashboard"),
    ("connection", "keep-alive"),
    (
        "cookie",
        "theme=dark; consent=1; _ga=GA1.1.123456789.1700000000",
    ),
    ("sec-fetch-dest", "empty"),
    ("sec-fetch-mode", "cors"),
    ("sec-fetch-site", "same-site"),
    ("priority", "u=4"),
];

/// [`request`] with [`BROWSER_HEADERS`].
#[allow(dead_code)] // the pipeline bench's; the instructions bench shares this module
pub(crate) fn browser_request(path: &str) -> Request<Body> {
    let mut req = request(path, None);
    for (name, value) in BROWSER_HEADERS {
        req.headers_mut().append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    req
}
