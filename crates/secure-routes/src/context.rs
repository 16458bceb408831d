//! What the pipeline knows while it runs: per route ([`RouteState`], built once by the
//! layer) and per request ([`Ctx`], the audit context every decision is recorded from).
//!
//! Why a module of its own: the steps (`guard::*`), the responders (`respond`) and the service
//! all read these two types, and none of them should depend on another to do so. This module
//! depends only on the shared state and leaf types, never on the steps, the layer or the
//! service.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, header};
use tower::ServiceExt as _;
use tower_http::cors::CorsLayer;
use tower_layer::Layer;
use tower_service::Service;

use crate::audit::{AuditEvent, Outcome};
use crate::auth::Principal;
use crate::client_ip;
use crate::fingerprint::Fingerprint;
use crate::policy::{CsrfMode, Policy};
use crate::rate_limit::Decision;
use crate::rate_limit::headers::{LimitHeaders, VARYING};
use crate::request_id::X_REQUEST_ID;
use crate::response::problem::RejectionInfo;
use crate::security::Shared;

/// One policy with the shared state: what every request on the route reads.
pub(crate) struct RouteState {
    /// The policy's CORS rules (tower-http's), asked per answer: see
    /// [`RouteState::cors_headers`].
    pub(crate) cors: CorsLayer,
    /// The CORS headers for an answer to a request without `Origin` (a same-origin or
    /// non-browser client): constant per policy, computed once from `cors`.
    pub(crate) cors_without_origin: HeaderMap,
    pub(crate) shared: Arc<Shared>,
    pub(crate) policy: Policy,
    /// `bucket:<name>` when the policy shares one budget across routes.
    pub(crate) fixed_bucket: Option<Arc<str>>,
    /// `policy:<name>`, the bucket when the layer is applied outside routing.
    pub(crate) fallback_bucket: Arc<str>,
    /// `route:<template>` for the first route template this layer saw, formatted once: a
    /// layer on one route (the usual `.route(path, handler.layer(..))`) then formats nothing
    /// per request; a layer over several routes formats the others each time.
    pub(crate) route_bucket: std::sync::OnceLock<(Box<str>, Arc<str>)>,
    /// The policy's rate-limit headers, formatted once.
    pub(crate) limit_headers: Option<LimitHeaders>,
    /// Dry-run only: tower-http's Fetch Metadata check on its own, asked with a stand-in
    /// request (the real one goes through a bypassed copy), so its refusal is recorded
    /// without being answered.
    pub(crate) fetch_probe: Option<FetchProbe>,
    /// Step 10's headers that never change on this route, set once.
    pub(crate) decoration: Decoration,
    /// Whether events are recorded beyond a `tracing` line: by the audit writer (and its
    /// observers) or by bans (a strike's event). The `tracing` line an event becomes without a
    /// writer carries neither the fingerprint nor the `User-Agent`, so without these they
    /// are not read from the request.
    pub(crate) events_recorded: bool,
    /// Whether anything reads a request's [`Fingerprint`]: recorded events, or a rate-limit
    /// key with [`KeyPart::Fingerprint`](crate::KeyPart). It is computed only then.
    pub(crate) fingerprint_read: bool,
}

/// The request's path, kept for the audit trail: an event may be written after the request
/// has moved into the handler (a refusal from inside the stack).
///
/// Copied into the audit context when it fits, as most paths do, rather than kept as a copy
/// of the request's `Uri`: that copy shares the bytes hyper read the request into, and takes
/// and drops a reference count to them, two atomic instructions per request (issue 10 part
/// 7). Both forms hold the same text.
pub(crate) enum RequestPath {
    /// The path, when at most [`RequestPath::INLINE`] bytes.
    Inline {
        len: u8,
        bytes: [u8; RequestPath::INLINE],
    },
    /// A longer path: the request's `Uri`.
    Uri(http::Uri),
}

impl RequestPath {
    /// The longest path kept inline (an `http::Uri` is as large).
    const INLINE: usize = 80;

    pub(crate) fn of(uri: &http::Uri) -> Self {
        let path = uri.path().as_bytes();
        match u8::try_from(path.len()) {
            Ok(len) if path.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..path.len()].copy_from_slice(path);
                Self::Inline { len, bytes }
            }
            _ => Self::Uri(uri.clone()),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // The bytes of a `&str`, whole: never invalid.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Uri(uri) => uri.path(),
        }
    }
}

/// Which route identity (rate-limit bucket) a request counts against: one of its
/// [`RouteState`]'s own, named without copying it (an `Arc` copied and dropped per request is
/// two atomic instructions; issue 10 part 7), or one of its own.
pub(crate) enum Bucket {
    /// [`RouteState::fixed_bucket`] (only when the policy has one).
    Fixed,
    /// [`RouteState::route_bucket`] (only once it is set: the request's template is the one
    /// it holds).
    Route,
    /// [`RouteState::fallback_bucket`].
    Fallback,
    /// Another route template under the same layer, formatted for this request.
    Own(Arc<str>),
}

impl RouteState {
    /// The route identity `bucket` names.
    pub(crate) fn bucket<'a>(&'a self, bucket: &'a Bucket) -> &'a Arc<str> {
        match bucket {
            Bucket::Own(name) => name,
            // Neither falls back in fact: each variant exists only once its bucket does.
            Bucket::Fixed => self.fixed_bucket.as_ref().unwrap_or(&self.fallback_bucket),
            Bucket::Route => self
                .route_bucket
                .get()
                .map_or(&self.fallback_bucket, |(_, name)| name),
            Bucket::Fallback => &self.fallback_bucket,
        }
    }
}

/// The headers step 10 adds that are the same for every answer of a policy: a response's
/// headers start as a copy of one of these maps, and the handler's own go over them (a copy
/// costs less than inserting a dozen names one by one; issue 10 part 7).
pub(crate) struct Decoration {
    /// The security headers (and HSTS when serving HTTPS), in a map no larger than they need:
    /// the start of every answer that does not fit a [`Template`] (a refusal, a preflight, a
    /// handler that sets a header step 10 or CORS decide).
    ///
    /// Why small: a copy's entry table is exactly as long as the map (`Vec::clone`), 104
    /// bytes an entry, and with the default eight (nine with HSTS) it stays under the 1 KiB
    /// glibc serves from its per-thread cache. The answer then grows it once, by
    /// [`HeaderMap::reserve`] (which grows the entries only when the index table must grow,
    /// hence the small index table too).
    pub(crate) base: HeaderMap,
    /// A handler's whole answer head but for the values of this request, one per
    /// combination of "authenticated" (`Cache-Control: no-store`) and "no `Origin`" (the
    /// policy's constant CORS headers): see [`Template`] and [`Decoration::template`].
    /// `None` when a security header of the policy has a name the templates set themselves
    /// (a configuration no default makes): every answer is decorated the general way then.
    templates: Option<[Template; 4]>,
}

/// Step 10's headers for a handler's answer in their wire order, with a placeholder where
/// a value changes per request (`Content-Type`, the rate-limit numbers, the request id).
///
/// An answer copies the map, writes its values into the placeholders by position (no name
/// is hashed; `HeaderMap` keeps entries in insertion order) and inserts the handler's other
/// headers, if any; a handler's `Content-Type` alone goes into its placeholder by position
/// too. Why: inserting the seven names step 10 and CORS add into a copy of the
/// security headers hashed each custom name, and the copy then had to grow its index table;
/// the template took PUBLIC from 19,495 to 18,222 instructions per request (issue 10 part 7;
/// BENCHMARKS.md, stop 20).
///
/// Why `Content-Type` has a place: nearly every handler sets it, and an answer that only
/// fills placeholders never grows the copy (an insert into a copy of exactly this many
/// entries would reallocate them, another allocation over 1 KiB per answer). An answer
/// without one is decorated the general way.
pub(crate) struct Template {
    pub(crate) map: HeaderMap,
    /// The position of the `Content-Type` placeholder; the rate-limit numbers follow it
    /// (when the policy has a rate limit), in [`VARYING`]'s order.
    pub(crate) content_type: usize,
    /// The position of the request id's placeholder.
    pub(crate) request_id: usize,
    /// Whether the map ends with a spare entry (`Content-Length`), removed from each copy
    /// at once: the copy's entry table then has room for the one header axum adds after
    /// every layer (`Content-Length`, from the body's size), which would otherwise
    /// reallocate it (`Vec::clone` makes it exactly as long as the map). Only in the
    /// templates with the constant CORS headers: with the request's own, merging them grows
    /// the table anyway.
    pub(crate) spare: bool,
}

impl Decoration {
    /// `limit`: the policy's rate-limit headers; `cors_without_origin`: what tower-http's
    /// rules add to an answer for a request without `Origin`.
    pub(crate) fn new(
        policy: &Policy,
        https: bool,
        limit: Option<&LimitHeaders>,
        cors_without_origin: &HeaderMap,
    ) -> Self {
        let mut base = HeaderMap::new();
        policy.security_headers().apply(&mut base, https);
        intern_values(&mut base);
        let template = |no_store, cors| Template::new(&base, limit, no_store, cors);
        let templates = (!base
            .keys()
            .any(|name| *name == header::CONTENT_TYPE || Template::sets(name)))
        .then(|| {
            [
                template(false, None),
                template(true, None),
                template(false, Some(cors_without_origin)),
                template(true, Some(cors_without_origin)),
            ]
        });
        Self { base, templates }
    }

    /// The template for an answer: authenticated or not, and with the constant CORS headers
    /// (a request without `Origin`) or without any (the caller merges the request's own).
    pub(crate) fn template(&self, authenticated: bool, constant_cors: bool) -> Option<&Template> {
        let t = self.templates.as_ref()?;
        Some(&t[usize::from(authenticated) | usize::from(constant_cors) << 1])
    }
}

impl Template {
    fn new(
        base: &HeaderMap,
        limit: Option<&LimitHeaders>,
        no_store: bool,
        cors: Option<&HeaderMap>,
    ) -> Self {
        let placeholder = HeaderValue::from_static("");
        let mut map = base.clone();
        if let Some(limit) = limit {
            limit.apply_constant(&mut map);
        }
        // `keys_len`: positions count entries, and every name so far has one value.
        let content_type = map.keys_len();
        map.insert(header::CONTENT_TYPE, placeholder.clone());
        if limit.is_some() {
            for name in VARYING {
                map.insert(name, placeholder.clone());
            }
        }
        if no_store {
            // Authenticated answers are per-user: no shared cache may keep them.
            map.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        let request_id = map.keys_len();
        map.insert(X_REQUEST_ID, placeholder);
        // Positions count values (`values_mut`) as entries: one value each up to here.
        debug_assert_eq!(map.len(), map.keys_len());
        let spare = cors.is_some();
        if let Some(cors) = cors {
            crate::response::cors::merge_cors(&mut map, cors);
            map.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        intern_values(&mut map);
        Self {
            map,
            content_type,
            request_id,
            spare,
        }
    }

    /// Whether step 10 or CORS decide the value of `name` on a handler's answer (a handler
    /// that sets one is decorated the general way, which settles who wins name by name).
    pub(crate) fn sets(name: &HeaderName) -> bool {
        *name == header::CACHE_CONTROL
            || *name == header::VARY
            || *name == X_REQUEST_ID
            || LimitHeaders::is_limit_header(name)
            || name.as_str().starts_with("access-control-")
    }
}

/// Gives every value of `map` `'static` bytes (see [`interned`]), in place: the entries,
/// their order and the map's size stay as they were.
fn intern_values(map: &mut HeaderMap) {
    for value in map.values_mut() {
        *value = interned(value);
    }
}

/// The most bytes [`interned`] keeps for the life of the process.
const INTERNED_MAX_BYTES: usize = 1 << 20;

/// The values [`interned`] has kept.
static INTERNED: std::sync::Mutex<Interner> = std::sync::Mutex::new(Interner::new());

/// `value` with `'static` bytes: the same bytes, kept for the life of the process and shared
/// by every policy that sets them.
///
/// Why: every answer starts as a copy of a [`Template`] or of [`Decoration::base`], and a
/// copy of a value built at run time (a policy's `RateLimit-Policy` and `X-RateLimit-Limit`,
/// tower-http's `Vary`, a security header the user set) takes and drops a reference count,
/// an atomic instruction each, where a copy of `'static` bytes takes none. Three such values
/// were six of PUBLIC's 44 atomic instructions per request, and a reference count taken and
/// dropped costs about what an allocation does (issue 10 part 7; BENCHMARKS.md, stop 22).
///
/// Bounded: only a policy's own header values come here (never a request's), each kept once
/// however many policies set it (building the same policies again, as a gateway reload
/// does, keeps nothing new), and past [`INTERNED_MAX_BYTES`] in all a value is copied as it
/// is, reference counted. A value marked sensitive is not kept past its policy either: it is
/// copied as it is.
fn interned(value: &HeaderValue) -> HeaderValue {
    if value.is_sensitive() {
        return value.clone();
    }
    let kept = match INTERNED.lock() {
        Ok(mut interner) => interner.keep(value.as_bytes(), INTERNED_MAX_BYTES),
        Err(_) => None,
    };
    let static_value = kept
        .and_then(|bytes| HeaderValue::from_maybe_shared(bytes::Bytes::from_static(bytes)).ok());
    match static_value {
        Some(v) => v,
        None => value.clone(),
    }
}

/// Byte strings kept for the life of the process, each once.
struct Interner {
    kept: std::collections::BTreeSet<&'static [u8]>,
    bytes: usize,
}

impl Interner {
    const fn new() -> Self {
        Self {
            kept: std::collections::BTreeSet::new(),
            bytes: 0,
        }
    }

    /// `bytes`, kept: the copy kept before, or a new one while the total stays within
    /// `max_bytes`; `None` past it.
    fn keep(&mut self, bytes: &[u8], max_bytes: usize) -> Option<&'static [u8]> {
        if let Some(kept) = self.kept.get(bytes) {
            return Some(kept);
        }
        if self.bytes + bytes.len() > max_bytes {
            return None;
        }
        let kept: &'static [u8] = Box::leak(bytes.into());
        self.kept.insert(kept);
        self.bytes += kept.len();
        Some(kept)
    }
}

/// tower-http's Fetch Metadata check around a service that always passes; its answer carries
/// a [`RejectionInfo`] when the check refuses.
pub(crate) type FetchProbe = tower::util::BoxCloneSyncService<
    Request<()>,
    http::Response<axum::body::Body>,
    std::convert::Infallible,
>;

impl RouteState {
    /// The CORS response headers tower-http would add, for an answer that does not pass
    /// through its layer: a preflight (`preflight`), or a rejection the core answers itself
    /// (so a browser app can read the problem body). See [`cors_headers`].
    pub(crate) fn cors_headers(&self, headers: &HeaderMap, preflight: bool) -> HeaderMap {
        cors_headers(&self.cors, headers, preflight)
    }
}

/// The CORS response headers `cors` (tower-http's rules) gives a request with `headers`.
/// tower-http decides whether a request is a preflight by its method alone, so it is asked
/// with a stand-in request: `OPTIONS` for a preflight, `GET` otherwise, carrying the headers
/// CORS reads.
pub(crate) fn cors_headers(cors: &CorsLayer, headers: &HeaderMap, preflight: bool) -> HeaderMap {
    let mut probe = Request::new(());
    *probe.method_mut() = if preflight {
        Method::OPTIONS
    } else {
        Method::GET
    };
    for name in [
        header::ORIGIN,
        header::ACCESS_CONTROL_REQUEST_METHOD,
        header::ACCESS_CONTROL_REQUEST_HEADERS,
    ] {
        for v in headers.get_all(&name) {
            probe.headers_mut().append(name.clone(), v.clone());
        }
    }
    // tower-http's rules here are all synchronous (a fixed origin list), so the answer is
    // ready at once.
    match cors.layer(CorsProbe).oneshot(probe).now_or_never() {
        Some(Ok(res)) => res.into_parts().0.headers,
        _ => HeaderMap::new(),
    }
}

/// The stand-in inner service of [`cors_headers`].
#[derive(Clone, Copy)]
struct CorsProbe;

impl Service<Request<()>> for CorsProbe {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

/// What the audit step needs to know about the request, filled in as the steps pass.
pub(crate) struct Ctx {
    pub(crate) state: Arc<RouteState>,
    pub(crate) method: Method,
    pub(crate) path: RequestPath,
    /// The route identity: see [`Ctx::route`].
    pub(crate) bucket: Bucket,
    pub(crate) request_id: HeaderValue,
    /// The pipeline's clock when the request arrived: the rate-limit decision is made then, so
    /// its `X-RateLimit-Reset` counts from then (and the clock is read once per request).
    pub(crate) now: Duration,
    pub(crate) ip: IpAddr,
    pub(crate) user_agent: Option<HeaderValue>,
    /// Computed before the headers move into the handler: a refusal from inside the stack is
    /// audited after that, and must carry it too. `None` when nothing reads it
    /// ([`RouteState::fingerprint_read`]).
    pub(crate) fingerprint: Option<Fingerprint>,
    /// The request's `Origin`, for the CORS headers of a rejection.
    pub(crate) origin: Option<HeaderValue>,
    pub(crate) subject: Option<Principal>,
    pub(crate) limit: Option<Decision>,
    /// A store failure let through (fail-open): audited with the final status.
    pub(crate) failed_open: Option<RejectionInfo>,
}

impl Ctx {
    /// The route identity the request counts against: `route:<template>`, `bucket:<name>`
    /// or `policy:<name>`.
    pub(crate) fn route(&self) -> &Arc<str> {
        self.state.bucket(&self.bucket)
    }

    /// The session binding the CSRF token must carry, or `None` when this request needs no
    /// token: the policy turns it off, or the credential was an explicit header (not ambient,
    /// so nothing for a cross-site page to ride on).
    pub(crate) fn csrf_binding(&self) -> Option<&str> {
        let needs_token = match self.state.policy.csrf() {
            CsrfMode::Off => false,
            CsrfMode::Always => true,
            CsrfMode::Auto => self.subject.as_ref().is_none_or(Principal::is_ambient),
        };
        needs_token.then(|| self.subject.as_ref().map_or("", Principal::csrf_binding))
    }

    pub(crate) fn event(&self, info: RejectionInfo, status: u16, outcome: Outcome) -> AuditEvent {
        let shared = &self.state.shared;
        let ip = if shared.truncate_ips {
            client_ip::truncate(self.ip)
        } else {
            self.ip
        };
        let mut e = AuditEvent::new(info.kind.audit_action())
            .with_outcome(outcome)
            .with_status(status)
            .with_client_ip(ip)
            .with_request(self.method.as_str(), self.route(), self.path.as_str())
            .with_reason(info.reason.as_str())
            .with_request_id(self.request_id.to_str().unwrap_or(""))
            .with_metadata(serde_json::json!({ "policy": self.state.policy.name() }));
        if let Some(f) = &self.fingerprint {
            e = e.with_fingerprint(f.as_str());
        }
        if let Some(p) = &self.subject {
            e = e.with_subject(p.subject());
        }
        if let Some(ua) = &self.user_agent {
            // Not `to_str`: a non-ASCII User-Agent is kept (the sanitizer escapes it), not
            // dropped, so a client cannot erase itself from the trail with one stray byte.
            e = e.with_user_agent(&String::from_utf8_lossy(ua.as_bytes()));
        }
        e
    }

    /// Records one decision: a metric, and an audit event (to the writer, else `tracing`).
    ///
    /// The metric's labels are all bounded (the policy names come from the configuration,
    /// outcome and reason from fixed lists): never a client address or a path, which would
    /// let a client create series at will.
    pub(crate) async fn audit(&self, info: RejectionInfo, status: u16, outcome: Outcome) {
        metrics::counter!(
            "secure_routes_decisions_total",
            "policy" => self.state.policy.name().to_owned(),
            "outcome" => outcome.as_str(),
            "reason" => info.reason.as_str(),
        )
        .increment(1);
        let event = self.event(info, status, outcome);
        match &self.state.shared.audit {
            // Boxed: the writer's future (back-pressure wait, observers' events) is about
            // 3.5 KB, and unboxed it would sit in every request's pipeline future, audited or
            // not (issue 10 part 7). Only audited requests pay this allocation.
            Some(w) => Box::pin(w.record(event)).await,
            None => tracing::info!(
                target: "secure_routes::audit",
                action = event.action.as_str(),
                reason = %event.reason,
                status = event.status,
                route = %event.route,
                request_id = %event.request_id,
                "security event"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;

    #[test]
    fn a_request_path_is_kept_whole_inline_or_not() {
        for len in [1, 79, 80, 81, 300] {
            let path = format!("/{}", "a".repeat(len - 1));
            let uri: http::Uri = format!("{path}?q=1").parse().unwrap();
            let kept = RequestPath::of(&uri);
            assert_eq!(kept.as_str(), path);
            assert_eq!(
                matches!(kept, RequestPath::Inline { .. }),
                len <= RequestPath::INLINE
            );
        }
    }

    #[test]
    fn the_interner_keeps_each_value_once_and_stops_at_its_bound() {
        let mut interner = Interner::new();
        let abc = interner.keep(b"abc", 10).unwrap();
        assert_eq!(abc, b"abc");
        let again = interner.keep(b"abc", 10).unwrap();
        assert!(std::ptr::eq(abc, again), "kept once, then shared");
        assert_eq!(interner.keep(b"defghijk", 10), None, "3 + 8 bytes > 10");
        assert_eq!(interner.keep(b"defg", 10).unwrap(), b"defg");
        assert_eq!(interner.bytes, 7);
        assert!(
            interner.keep(b"abc", 0).is_some(),
            "a kept value is shared past the bound"
        );
    }

    #[test]
    fn a_sensitive_value_is_copied_not_kept() {
        let mut sensitive = HeaderValue::from_str("made at run time, sensitive").unwrap();
        sensitive.set_sensitive(true);
        let v = interned(&sensitive);
        assert_eq!(v, sensitive);
        assert!(v.is_sensitive());
        assert_eq!(
            v.as_bytes().as_ptr(),
            sensitive.as_bytes().as_ptr(),
            "a copy, not kept"
        );
        let plain = HeaderValue::from_str("made at run time, plain").unwrap();
        let kept = interned(&plain);
        assert_eq!(kept, plain);
        assert!(!kept.is_sensitive());
        assert_ne!(kept.as_bytes().as_ptr(), plain.as_bytes().as_ptr(), "kept");
    }

    /// Every value of a template and of the base is interned: two decorations of one policy
    /// (as a reload builds) share every value's bytes, the ones made at run time too.
    #[test]
    fn a_policys_decorations_share_interned_values() {
        let policy = Policy::public();
        // Each built anew, as a reload does: without interning, the values made at run time
        // would have bytes of their own.
        let decoration = || {
            let limit = LimitHeaders::new("public", Quota::per_minute(100));
            let mut cors = HeaderMap::new();
            let vary = HeaderValue::from_str("origin, made-at-run-time").unwrap();
            cors.insert(header::VARY, vary);
            Decoration::new(&policy, true, Some(&limit), &cors)
        };
        let (a, b) = (decoration(), decoration());
        let same = |x: &HeaderMap, y: &HeaderMap| {
            assert_eq!(x, y);
            for (v, w) in x.values().zip(y.values()) {
                assert_eq!(v.as_bytes().as_ptr(), w.as_bytes().as_ptr(), "{v:?}");
            }
        };
        same(&a.base, &b.base);
        for (authenticated, constant_cors) in
            [(false, false), (true, false), (false, true), (true, true)]
        {
            let (x, y) = (
                a.template(authenticated, constant_cors).unwrap(),
                b.template(authenticated, constant_cors).unwrap(),
            );
            same(&x.map, &y.map);
        }
        let policy_value = a.template(false, true).unwrap().map.get("ratelimit-policy");
        assert!(
            policy_value.is_some(),
            "the run-time value is in the template"
        );
    }
}
