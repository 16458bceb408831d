//! The service a [`SecurityLayer`](crate::SecurityLayer) produces: [`SecurityService`] and
//! its named [`ResponseFuture`]. The pipeline is a list of steps in DESIGN's order, each a
//! function in `guard::*` returning `Result<_, Rejection>`, and every refusal becomes a
//! response in one place (`respond`).
//!
//! The list is walked twice over, once per kind of request. `front` takes the steps that
//! need no waiting, in `SecurityService::call` itself; a request they pass calls the handler
//! at once, and its future (`ResponseFuture`) only waits for the handler and decorates the
//! answer. Where a step must wait (an audit event, a store or an authenticator that is not
//! ready, a dry-run policy), `run` resumes the same list in one boxed `async` block (an
//! `async` block has no name to store unboxed on stable Rust). The future is a named type
//! (as tower-http names its futures) so users can name the service's.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::CatchUnwind;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, header};
use http::{Method, Request};
use tower::{BoxError, ServiceExt as _};
use tower_http::csrf::Csrf;
use tower_service::Service;

use crate::audit::{Outcome, Reason};
use crate::context::{Ctx, RequestPath, RouteState};
use crate::fingerprint::Fingerprint;
use crate::guard::body::{LimitedBody, SharedBodyState};
use crate::guard::client::Client;
use crate::guard::{auth, authz, body, client, csrf, method, rate_limit};
use crate::rate_limit::BoxFuture;
use crate::request_id::RequestId;
use crate::respond::{self, CsrfProblem};
use crate::response::cors::merge_cors;
use crate::response::problem::{Rejection, RejectionInfo};

/// What the pipeline calls once its checks pass: tower-http's Fetch Metadata check, then the
/// handler. A panic in either is caught by the pipeline itself (`run`, step 9).
type Inner<S> = Csrf<IntoBody<S>, CsrfProblem>;

/// The handler with its answer's body as axum's [`Body`], so the Fetch Metadata refusal can
/// answer in the same type. `Body::new` takes an axum handler's own `Body` as it is (no
/// allocation); only another body type is boxed, once.
///
/// `pub` in a private module: unreachable from outside the crate, but the service's
/// [`ResponseFuture`] holds the inner future unboxed, and a public type's parameter may not
/// name a crate-private type (E0446).
#[derive(Clone)]
#[allow(unreachable_pub)]
pub struct IntoBody<S>(pub(crate) S);

impl<S, Req, B> Service<Req> for IntoBody<S>
where
    S: Service<Req, Response = http::Response<B>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures_util::future::MapOk<S::Future, fn(http::Response<B>) -> Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        use futures_util::TryFutureExt as _;
        self.0.call(req).map_ok(|res| res.map(Body::new))
    }
}

/// The service a [`SecurityLayer`](crate::SecurityLayer) produces.
///
/// The CORS response headers are added here, by tower-http's rules, rather than by wrapping
/// the handler in tower-http's `Cors`: that layer treats every `OPTIONS` as a preflight (a
/// plain one would never reach the method check or the handler), and it builds its headers
/// anew for every request, while for a request without `Origin` they are a constant of the
/// policy (see `RouteState::cors_without_origin`).
#[derive(Clone)]
pub struct SecurityService<S> {
    state: Arc<RouteState>,
    inner: Inner<S>,
}

impl<S> SecurityService<S> {
    pub(crate) fn new(state: Arc<RouteState>, inner: Inner<S>) -> Self {
        Self { state, inner }
    }
}

impl<S> fmt::Debug for SecurityService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecurityService")
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityService<S>
where
    S: Service<Request<LimitedBody<ReqBody>>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<<Inner<S> as Service<Request<LimitedBody<ReqBody>>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// The pipeline (DESIGN.md, "The pipeline"), steps 1 to 10 for one request.
    ///
    /// What can be decided without waiting is decided here, before any future exists: the
    /// client, the ban, a preflight, and for an enforced policy steps 4 to 8b when the
    /// authenticator and the store answer at once (a pinned key or an API key, a cache hit,
    /// the memory store). A request that passes them calls the inner service (made ready by
    /// `poll_ready`) directly, and its future only waits for the handler and decorates the
    /// answer. Anything that must wait (an audit event, a store or an authenticator not
    /// ready, a dry-run policy) continues in one boxed future, `run`, from where this left
    /// off. Why: the common request then costs no boxed pipeline future, no clone of the inner
    /// service and no `oneshot` (issue 10 part 7; BENCHMARKS.md, stop 19).
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // Borrowed: the audit context takes the one reference this request holds (a
        // reference count is an atomic instruction; issue 10 part 7).
        let state = &self.state;
        let (mut parts, body) = req.into_parts();
        // The headers as the client sent them (step 1 sets `x-request-id`).
        let fingerprint = state
            .fingerprint_read
            .then(|| Fingerprint::of(&parts.method, parts.version, &parts.headers));
        // 1. The client (a server without a socket peer is a configuration error: 500).
        let client = match client::resolve(state, &mut parts) {
            Ok(c) => c,
            Err(r) => return ResponseFuture::ready(respond::unaudited(state, r)),
        };
        // Boxed: the audit context outlives this call in every path, and moves into the
        // future whole.
        let mut ctx = Box::new(context(state, &parts, client, fingerprint));
        let from = match front(state, &mut ctx, &parts) {
            Front::Passed => return self.call_handler(ctx, parts, body),
            Front::Preflight => return ResponseFuture::ready(ctx.preflight(&parts.headers)),
            Front::Refused(r) => {
                return ResponseFuture::boxed(async move { Ok(ctx.reject(r).await) });
            }
            Front::Later(from) => from,
        };
        // The clone is not ready; the one poll_ready prepared is taken (tower's usual swap).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(run(ctx.state.clone(), ctx, parts, body, inner, from))
    }
}

impl<S> SecurityService<S> {
    /// Steps 8a and 9 for a request that passed the checks here: the inner service (ready)
    /// called at once, its future wrapped to catch a panic and to decorate the answer.
    fn call_handler<ReqBody, ResBody>(
        &mut self,
        ctx: Box<Ctx>,
        parts: Parts,
        body: ReqBody,
    ) -> ResponseFuture<<Inner<S> as Service<Request<LimitedBody<ReqBody>>>>::Future>
    where
        S: Service<Request<LimitedBody<ReqBody>>, Response = http::Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: http_body::Body,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let (req, cors, body_state) = handler_request(&ctx, parts, body);
        let after = After {
            ctx,
            cors,
            body_state,
        };
        // A panic in the call itself (tower-http's Fetch Metadata check runs there) is
        // answered like one in the handler's future (step 9).
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture {
                state: State::Handler {
                    future: AssertUnwindSafe(future).catch_unwind(),
                    after: Some(after),
                },
            },
            Err(payload) => {
                ResponseFuture::boxed(after.finish_ok(respond::handler_panicked(payload)))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`SecurityService`]: the pipeline's answer, or the inner service's
    /// error. `F` is the inner service's future (tower-http's Fetch Metadata check around the
    /// handler's), held inline: a request that passes the checks at once costs no boxed future
    /// of ours (issue 10 part 7).
    pub struct ResponseFuture<F: Future> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F: Future> {
        // The answer, decided without waiting (a preflight, a refusal before the audit
        // context).
        Ready { res: Option<Response> },
        // The handler's future (with a panic caught), then step 10.
        Handler {
            #[pin]
            future: CatchUnwind<AssertUnwindSafe<F>>,
            after: Option<After>,
        },
        // The rest of the pipeline, where it must wait (see [`SecurityService::call`]).
        Boxed { future: BoxFuture<'static, F::Output> },
    }
}

impl<F: Future> ResponseFuture<F> {
    fn ready(res: Response) -> Self {
        Self {
            state: State::Ready { res: Some(res) },
        }
    }

    fn boxed(future: impl Future<Output = F::Output> + Send + 'static) -> Self {
        Self {
            state: State::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<F: Future> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Send + 'static,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let (res, after) = match state.as_mut().project() {
            StateProj::Ready { res } => {
                return Poll::Ready(Ok(res
                    .take()
                    .expect("ResponseFuture polled after completion")));
            }
            StateProj::Boxed { future } => return future.as_mut().poll(cx),
            StateProj::Handler { future, after } => {
                let res = match ready!(future.poll(cx)) {
                    Ok(Ok(res)) => res,
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(payload) => respond::handler_panicked(payload),
                };
                let after = after
                    .take()
                    .expect("ResponseFuture polled after completion");
                (res, after)
            }
        };
        // Step 10 at once, unless an event must be written first.
        if after.quiet(&res) {
            return Poll::Ready(Ok(after.decorated(res)));
        }
        let mut future: BoxFuture<'static, F::Output> = Box::pin(after.finish_ok(res));
        let polled = future.as_mut().poll(cx);
        state.set(State::Boxed { future });
        polled
    }
}

/// What [`front`] decided.
enum Front {
    /// Every check passed: call the handler.
    Passed,
    /// A CORS preflight, answered without the handler.
    Preflight,
    /// A check refused (the refusal is audited in the future).
    Refused(Rejection),
    /// A step must wait: `run` resumes there.
    Later(Resume),
}

/// Where `run` resumes the pipeline.
enum Resume {
    /// Step 2 (a dry-run policy: every step, each refusal audited, none answered).
    DryRun,
    /// Step 4 (an authenticator that must be waited for).
    Checks,
    /// A bad credential, whose refusal may wait for the store ([`auth::failed`]).
    AuthFailed(Reason),
    /// Step 6, the store's answer; steps 7 to 8b after it.
    Store(rate_limit::Pending),
}

/// Steps 2 to 8b as far as they go without waiting.
fn front(state: &RouteState, ctx: &mut Ctx, parts: &Parts) -> Front {
    if state.policy.is_dry_run() {
        return Front::Later(Resume::DryRun);
    }
    // 2. Bans, on the resolved address (never a header the client wrote).
    if let Err(r) = ip_ban(state, ctx) {
        return Front::Refused(r);
    }
    // 3. CORS preflight, answered without calling the handler.
    if is_preflight(parts) {
        return Front::Preflight;
    }
    // 4 to 8b: method, authentication, rate limit, authorization, declared body, CSRF token.
    if let Err(r) = method::check(state.policy.methods(), &parts.method) {
        return Front::Refused(r);
    }
    let subject = match auth::authenticate_now(state, parts) {
        None => return Front::Later(Resume::Checks),
        Some(auth::Now::Failed(reason)) => return Front::Later(Resume::AuthFailed(reason)),
        Some(auth::Now::Done(Err(r))) => return Front::Refused(r),
        Some(auth::Now::Done(Ok(subject))) => subject,
    };
    ctx.subject = subject;
    if let Err(r) = subject_ban(state, ctx) {
        return Front::Refused(r);
    }
    let (route, subject) = (ctx.route(), ctx.subject.as_ref());
    match rate_limit::check(state, route, ctx.ip, subject, ctx.fingerprint.as_ref()) {
        Ok(Ok(limited)) => record_limit(ctx, limited),
        Ok(Err(r)) => return Front::Refused(r),
        Err(pending) => return Front::Later(Resume::Store(pending)),
    }
    // Enforced, the authentication step passed to get here (with a principal or, where the
    // policy allows it, without).
    match after_limit(state, ctx, parts, true, &mut Refusals(None)) {
        Ok(()) => Front::Passed,
        Err(r) => Front::Refused(r),
    }
}

/// The rest of the pipeline for a request that must wait somewhere (see
/// [`SecurityService::call`]): from where [`front`] stopped, to the answer.
///
/// Its future is boxed for each request that gets here, and sized by the awaits held
/// inline: the paths most requests never take are boxed where they are awaited (see the
/// size test below).
// Not an `async fn` (clippy's `manual_async_fn`): an `async fn` keeps its arguments and its
// locals' copies of them side by side, which made this future 1,288 bytes against 992.
#[allow(clippy::manual_async_fn)]
fn run<I, ReqBody>(
    state: Arc<RouteState>,
    mut ctx: Box<Ctx>,
    parts: Parts,
    body: ReqBody,
    inner: I,
    from: Resume,
) -> impl Future<Output = Result<Response, I::Error>>
where
    I: Service<Request<LimitedBody<ReqBody>>, Response = Response>,
    ReqBody: http_body::Body,
{
    async move {
        let checked = match from {
            Resume::DryRun => {
                // Boxed: its future (every step plus the Fetch Metadata probe) would
                // otherwise size this one.
                Box::pin(dry_run(&state, &mut ctx, &parts)).await;
                None
            }
            Resume::Checks => checks(&state, &mut ctx, &parts, &mut Refusals(None))
                .await
                .err(),
            Resume::AuthFailed(reason) => {
                Some(auth::failed(&state, ctx.route(), ctx.ip, reason).await)
            }
            Resume::Store(pending) => {
                match Box::pin(rate_limit::check_async(&state, pending)).await {
                    Ok(limited) => {
                        record_limit(&mut ctx, limited);
                        after_limit(&state, &ctx, &parts, true, &mut Refusals(None)).err()
                    }
                    Err(r) => Some(r),
                }
            }
        };
        if let Some(r) = checked {
            return Ok(ctx.reject(r).await);
        }
        if is_preflight(&parts) {
            // Only a dry-run policy gets here with a preflight (`front` answers the rest).
            return Ok(ctx.preflight(&parts.headers));
        }
        let (req, cors, body_state) = handler_request(&ctx, parts, body);
        // 9. A panic in the handler (or in the check before it) is answered with a 500
        // problem, audited like any refusal from inside the stack, instead of dropping the
        // connection. Caught here rather than by tower-http's `CatchPanic`, which boxes
        // every response body once more (issue 10 part 7).
        let called = AssertUnwindSafe(inner.oneshot(req));
        let res = match called.catch_unwind().await {
            Ok(res) => res?,
            Err(payload) => respond::handler_panicked(payload),
        };
        let after = After {
            ctx,
            cors,
            body_state,
        };
        Ok(after.finish(res).await)
    }
}

/// Steps 2 and 3 for a dry-run policy, then its checks: a ban is audited as `would_deny` and
/// the request goes on.
async fn dry_run(state: &RouteState, ctx: &mut Ctx, parts: &Parts) {
    if let Err(r) = ip_ban(state, ctx) {
        ctx.audit(r.audit_info(), 403, Outcome::WouldDeny).await;
    }
    if !is_preflight(parts) {
        dry_run_checks(state, ctx, parts).await;
    }
}

/// The request the handler gets (8a + 9): the principal and the request id in its
/// extensions, the body limited; and what step 10 needs after it (the CORS headers for a
/// request with `Origin`, the body's state).
fn handler_request<ReqBody: http_body::Body>(
    ctx: &Ctx,
    mut parts: Parts,
    body: ReqBody,
) -> (
    Request<LimitedBody<ReqBody>>,
    Option<HeaderMap>,
    SharedBodyState,
) {
    let state = &ctx.state;
    if let Some(p) = &ctx.subject {
        parts.extensions.insert(p.clone());
    }
    parts.extensions.insert(RequestId(ctx.request_id.clone()));
    // tower-http's CORS rules for this request; constant when it has no `Origin` (read
    // once, into the audit context).
    let cors = ctx
        .origin
        .is_some()
        .then(|| state.cors_headers(&parts.headers, false));
    // Dry-run passes the body whole (see `PolicyBuilder::dry_run`).
    let limit = state
        .policy
        .max_body_bytes()
        .filter(|_| !state.policy.is_dry_run());
    let (body, body_state) = LimitedBody::new(body, limit);
    (Request::from_parts(parts, body), cors, body_state)
}

/// What step 10 needs once the handler has answered.
struct After {
    ctx: Box<Ctx>,
    /// tower-http's CORS headers for a request with `Origin`.
    cors: Option<HeaderMap>,
    body_state: SharedBodyState,
}

impl After {
    /// Whether nothing is left to audit, so step 10 can run at once: a failed-open store, a
    /// refusal from inside the stack (Fetch Metadata, a handler panic) and a streamed body
    /// over the limit each write an event first ([`finish`](Self::finish)).
    fn quiet(&self, res: &Response) -> bool {
        self.ctx.failed_open.is_none()
            && res.extensions().get::<RejectionInfo>().is_none()
            && body::check_streamed(self.body_state.get()).is_ok()
    }

    /// [`finish`](Self::finish) as the future's last state, in its output type.
    async fn finish_ok<E>(self, res: Response) -> Result<Response, E> {
        Ok(self.finish(res).await)
    }

    /// Step 9's events, then step 10.
    async fn finish(self, res: Response) -> Response {
        let ctx = &self.ctx;
        // 7, streamed: whatever the handler made of the body error, the answer is ours.
        if let Err(r) = body::check_streamed(self.body_state.get()) {
            return ctx.reject(r).await;
        }
        let status = res.status().as_u16();
        if let Some(info) = ctx.failed_open {
            ctx.audit(info, status, Outcome::Allowed).await;
        }
        // A refusal from inside the stack (Fetch Metadata, a handler panic) is audited here.
        if let Some(info) = res.extensions().get::<RejectionInfo>().copied() {
            ctx.audit(info, status, Outcome::Denied).await;
            ctx.strike(info, status);
        }
        self.decorated(res)
    }

    /// Step 10: from the policy's template when the answer fits one (see
    /// `context::Template`), else the general way; then the CORS headers (names step 10 never
    /// sets; merged into the decorated map, instead of growing the handler's).
    fn decorated(mut self, mut res: Response) -> Response {
        // The audit context ends here (`self` is consumed): its request id moves into the
        // answer rather than being copied (a reference count fewer).
        let id = std::mem::replace(&mut self.ctx.request_id, HeaderValue::from_static(""));
        // Without `Origin`, the policy's constant CORS headers are in the template.
        let id = match self
            .ctx
            .decorate_from_template(&mut res, self.cors.is_none(), id)
        {
            Ok(()) => {
                if let Some(cors) = &self.cors {
                    merge_cors(res.headers_mut(), cors);
                }
                return res;
            }
            Err(id) => id,
        };
        self.ctx.decorate(&mut res, id);
        let cors = self
            .cors
            .as_ref()
            .unwrap_or(&self.ctx.state.cors_without_origin);
        merge_cors(res.headers_mut(), cors);
        res
    }
}

/// Where the steps' refusals go: enforced, the first one ends the checks; dry-run, each is
/// kept and the checks go on.
struct Refusals(Option<Vec<Rejection>>);

impl Refusals {
    /// A step's result: `Ok(Some(value))` when it passed, `Ok(None)` when it refused in
    /// dry-run (the refusal kept), `Err` when it refused an enforced request.
    fn step<T>(&mut self, result: Result<T, Rejection>) -> Result<Option<T>, Rejection> {
        match (result, &mut self.0) {
            (Ok(v), _) => Ok(Some(v)),
            (Err(r), Some(kept)) => {
                kept.push(r);
                Ok(None)
            }
            (Err(r), None) => Err(r),
        }
    }
}

/// Steps 4 to 8b in DESIGN's order, one list for both modes, waiting where a step must
/// ([`front`] is the same list for an enforced request that need not wait). Enforced
/// (`refusals` holds no list), the first refusal ends the request; dry-run, every step runs
/// and its refusals are kept (the request goes on as the principal when authentication
/// passed, anonymous otherwise). What a step learns (the principal, the rate-limit decision)
/// goes into the audit context.
async fn checks(
    state: &RouteState,
    ctx: &mut Ctx,
    parts: &Parts,
    refusals: &mut Refusals,
) -> Result<(), Rejection> {
    refusals.step(method::check(state.policy.methods(), &parts.method))?;
    let subject = refusals.step(auth::authenticate(state, parts, ctx.route(), ctx.ip).await)?;
    let authenticated = subject.is_some();
    ctx.subject = subject.flatten();
    refusals.step(subject_ban(state, ctx))?;
    let (route, subject) = (ctx.route(), ctx.subject.as_ref());
    let limited = match rate_limit::check(state, route, ctx.ip, subject, ctx.fingerprint.as_ref()) {
        Ok(answer) => answer,
        // A store that must be waited for: boxed, so its future does not size every
        // request's (the memory store never gets here).
        Err(pending) => Box::pin(rate_limit::check_async(state, pending)).await,
    };
    if let Some(limited) = refusals.step(limited)? {
        record_limit(ctx, limited);
    }
    after_limit(state, ctx, parts, authenticated, refusals)
}

/// What the rate-limit step learned, into the audit context: the decision (for the headers)
/// and a store failure let through (audited with the final status).
fn record_limit(ctx: &mut Ctx, limited: rate_limit::Limited) {
    (ctx.limit, ctx.failed_open) = (limited.decision, limited.failed_open);
}

/// Step 2 for the address: a banned client address is refused.
fn ip_ban(state: &RouteState, ctx: &Ctx) -> Result<(), Rejection> {
    let Some(bans) = &state.shared.bans else {
        return Ok(());
    };
    bans.refuse_ip(ctx.ip, &*state.shared.clock)
        .map_or(Ok(()), Err)
}

/// Step 2 for the subject: a banned account is refused from any address.
fn subject_ban(state: &RouteState, ctx: &Ctx) -> Result<(), Rejection> {
    let (Some(bans), Some(p)) = (&state.shared.bans, &ctx.subject) else {
        return Ok(());
    };
    bans.refuse_subject(p.subject(), &*state.shared.clock)
        .map_or(Ok(()), Err)
}

/// Steps 6b to 8b, after the rate limit: authorization, the declared body, the CSRF token.
/// `authenticated`: the authentication step passed (always for an enforced request here).
fn after_limit(
    state: &RouteState,
    ctx: &Ctx,
    parts: &Parts,
    authenticated: bool,
    refusals: &mut Refusals,
) -> Result<(), Rejection> {
    // After a failed authentication (dry-run only gets here), authorization has no
    // principal to judge: one refusal per request for the same cause, as enforced.
    if authenticated {
        refusals.step(authz::check(&state.policy, ctx.subject.as_ref()))?;
    }
    refusals.step(body::check(state.policy.max_body_bytes(), &parts.headers))?;
    let shared = &state.shared;
    refusals.step(csrf::check(
        &shared.csrf,
        shared.csrf_cookie_name(),
        &parts.method,
        &parts.headers,
        ctx.csrf_binding(),
    ))?;
    Ok(())
}

/// Steps 4 to 8b for a dry-run policy: each refusal is audited as `would_deny` and none is
/// answered. The Fetch Metadata check, which runs inside the stack for an enforced policy, is
/// asked here on a stand-in request.
async fn dry_run_checks(state: &RouteState, ctx: &mut Ctx, parts: &Parts) {
    let mut refusals = Refusals(Some(Vec::new()));
    // Dry-run never ends the checks early: every refusal is in the list.
    let _ = checks(state, ctx, parts, &mut refusals).await;
    for r in refusals.0.unwrap_or_default() {
        let status = r.info().kind.status().as_u16();
        ctx.audit(r.audit_info(), status, Outcome::WouldDeny).await;
    }
    if let Some(probe) = &state.fetch_probe {
        let mut stand_in = Request::new(());
        *stand_in.method_mut() = parts.method.clone();
        *stand_in.uri_mut() = parts.uri.clone();
        *stand_in.headers_mut() = parts.headers.clone();
        if let Ok(res) = probe.clone().oneshot(stand_in).await
            && let Some(info) = res.extensions().get::<RejectionInfo>().copied()
        {
            let status = res.status().as_u16();
            ctx.audit(info, status, Outcome::WouldDeny).await;
        }
    }
}

/// A CORS preflight (Fetch standard): `OPTIONS` with `Access-Control-Request-Method`. A plain
/// `OPTIONS` is an ordinary request and meets the method check like any other.
fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The audit context of a request whose client is known.
fn context(
    state: &Arc<RouteState>,
    parts: &Parts,
    client: Client,
    fingerprint: Option<Fingerprint>,
) -> Ctx {
    Ctx {
        state: state.clone(),
        method: parts.method.clone(),
        path: RequestPath::of(&parts.uri),
        bucket: client.bucket,
        request_id: client.request_id,
        now: client.now,
        ip: client.ip,
        user_agent: state
            .events_recorded
            .then(|| parts.headers.get(header::USER_AGENT).cloned())
            .flatten(),
        fingerprint,
        origin: parts.headers.get(header::ORIGIN).cloned(),
        subject: None,
        limit: None,
        failed_open: None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::routing::Route;
    use tower_layer::Layer;

    use super::*;
    use crate::{Policy, Security, SecurityLayer};

    /// Applies the pipeline to axum's `Route`, as `MethodRouter::layer` does, and notes the
    /// size of the future `run` makes for it.
    #[derive(Clone)]
    struct Probe(SecurityLayer, Arc<AtomicUsize>);

    impl Layer<Route> for Probe {
        type Service = SecurityService<Route>;

        fn layer(&self, route: Route) -> Self::Service {
            let service = self.0.layer(route);
            let state = service.state.clone();
            let (parts, body) = Request::new(Body::empty()).into_parts();
            let client = Client {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                request_id: http::HeaderValue::from_static("id"),
                now: std::time::Duration::ZERO,
                bucket: crate::context::Bucket::Own(Arc::from("route")),
            };
            let fingerprint = Fingerprint::of(&parts.method, parts.version, &parts.headers);
            let ctx = Box::new(context(&state, &parts, client, Some(fingerprint)));
            let inner = service.inner.clone();
            let future = run(state, ctx, parts, body, inner, Resume::Checks);
            self.1
                .store(std::mem::size_of_val(&future), Ordering::SeqCst);
            service
        }
    }

    /// An HS256 authenticator, a CSRF secret and these allowed origins.
    fn security(origins: &[&str]) -> Security {
        let jwt = crate::auth::jwt::JwtAuthenticator::builder()
            .hs256(b"a test secret of thirty-two bytes")
            .build()
            .unwrap();
        Security::builder()
            .authenticator(jwt)
            .csrf_secret([9u8; 32])
            .allowed_origins(origins.iter().copied())
            .build()
            .unwrap()
    }

    /// A request refused before it has an audit context (no socket peer) gets a request id
    /// made at the pipeline's clock, like every other id the policy makes.
    #[test]
    fn an_unaudited_refusal_takes_its_id_time_from_the_pipelines_clock() {
        let at = std::time::Duration::from_millis(1_700_000_000_123);
        let security = Security::builder()
            .csrf_secret([9u8; 32])
            .clock(Arc::new(crate::clock::FakeClock::new(at)))
            .build()
            .unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async { "ok" }).layer(security.layer(Policy::public()).unwrap()),
        );
        // No `ConnectInfo`: refused before step 1 has a client.
        let res = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(tower::ServiceExt::oneshot(app, Request::new(Body::empty())))
            .unwrap();
        assert_eq!(res.status(), 500);
        let id = res.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .replace('-', "");
        let ms = u64::from_str_radix(&id[..12], 16).unwrap();
        assert_eq!(ms, 1_700_000_000_123, "UUIDv7's 48-bit Unix milliseconds");
    }

    /// The pipeline's future for a request that must wait (`run`, boxed once for it) stays
    /// within the 1,024 bytes glibc serves from its per-thread cache: a larger allocation takes the arena path, which on
    /// a busy server also consolidates freed small chunks first (`malloc_consolidate`, about
    /// 0.1 µs per request in issue 10 part 7's HTTP profile). It was 5,360 bytes before stop
    /// 18.
    #[test]
    fn the_pipeline_future_fits_the_allocators_per_thread_cache() {
        let security = security(&[]);
        for policy in [Policy::public(), Policy::authenticated(), Policy::strict()] {
            let size = Arc::new(AtomicUsize::new(0));
            let probe = Probe(security.layer(policy).unwrap(), size.clone());
            let _route: axum::routing::MethodRouter =
                axum::routing::get(|| async { "ok" }).layer(probe);
            let size = size.load(Ordering::SeqCst);
            assert!(
                size > 0 && size <= 1024,
                "the pipeline future is {size} bytes"
            );
        }
    }

    /// The service's own future, which axum boxes for every request on a route (its `Route`
    /// is a boxed service), stays within the per-thread cache too, with room for axum's
    /// wrappers around it: it holds the inner future inline since stop 21 (440 bytes around
    /// axum's `Route` when this test was written).
    #[test]
    fn the_response_future_fits_the_allocators_per_thread_cache() {
        type Future = <SecurityService<Route> as Service<Request<Body>>>::Future;
        let size = std::mem::size_of::<Future>();
        assert!(size <= 512, "the response future is {size} bytes");
    }

    /// An answer's header lines, as text.
    type Lines = Vec<(String, String)>;

    /// One answer of `handler`'s headers decorated both ways: from the template (when it
    /// fits one) and the general way, each followed by the CORS merge `After::decorated`
    /// does. The header lines of each, sorted (the order differs only for headers a
    /// template does not place); an answer that does not fit gets the general way's.
    fn both_ways(ctx: &Ctx, handler: &HeaderMap, cors: Option<&HeaderMap>) -> (bool, Lines, Lines) {
        let answer = || {
            let mut res = Response::new(Body::from("{}"));
            *res.headers_mut() = handler.clone();
            res
        };
        let lines = |res: Response| {
            let mut l: Vec<_> = res
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            l.sort();
            l
        };
        let mut general = answer();
        ctx.decorate(&mut general, ctx.request_id.clone());
        merge_cors(
            general.headers_mut(),
            cors.unwrap_or(&ctx.state.cors_without_origin),
        );
        let general = lines(general);
        let mut fast = answer();
        if ctx
            .decorate_from_template(&mut fast, cors.is_none(), ctx.request_id.clone())
            .is_err()
        {
            assert_eq!(
                fast.headers(),
                handler,
                "an answer that does not fit is untouched"
            );
            return (false, general.clone(), general);
        }
        if let Some(cors) = cors {
            merge_cors(fast.headers_mut(), cors);
        }
        (true, lines(fast), general)
    }

    /// Step 10 from a template writes the same header lines as the general way, for every
    /// answer that fits one, authenticated or not, with `Origin` or without, on a route with
    /// a rate limit and one without; an answer with a header step 10 or CORS decide, or
    /// without `Content-Type`, is left to the general way.
    #[test]
    fn a_template_answer_has_the_same_header_lines_as_the_general_way() {
        use http::{HeaderName, HeaderValue};
        let v = HeaderValue::from_static;
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (n, val) in pairs {
                m.append(HeaderName::from_static(n), v(val));
            }
            m
        };
        let json = ("content-type", "application/json");
        let answers = [
            (h(&[json]), true),
            (
                h(&[("set-cookie", "a=1"), json, ("set-cookie", "b=2")]),
                true,
            ),
            (h(&[("x-frame-options", "SAMEORIGIN"), json]), true),
            (
                h(&[json, ("content-type", "text/plain"), ("x-custom", "1")]),
                true,
            ),
            (
                h(&[json, ("content-length", "2"), ("retry-after", "5")]),
                true,
            ),
            (h(&[]), false),
            (h(&[("x-custom", "1")]), false),
            (h(&[json, ("vary", "accept-encoding")]), false),
            (h(&[json, ("x-request-id", "mine")]), false),
            (h(&[json, ("ratelimit", "\"own\";r=1;t=1")]), false),
            (h(&[json, ("x-ratelimit-limit", "7")]), false),
            (h(&[json, ("cache-control", "max-age=60")]), false),
            (
                h(&[
                    json,
                    ("access-control-allow-origin", "https://partner.example"),
                ]),
                false,
            ),
        ];
        let security = security(&["https://app.example"]);
        let unlimited = Policy::builder("unlimited").build().unwrap();
        for policy in [Policy::public(), Policy::strict(), unlimited] {
            let quota = policy.rate_limit();
            // The state is all this test reads; the inner service is never called.
            let service = security.layer(policy).unwrap().layer(());
            let state = service.state.clone();
            let (parts, _) = Request::new(()).into_parts();
            let client = Client {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                request_id: HeaderValue::from_static("the-id"),
                now: std::time::Duration::from_secs(1_000),
                bucket: crate::context::Bucket::Own(Arc::from("route")),
            };
            let mut ctx = context(&state, &parts, client, None);
            ctx.limit = quota.map(|q| crate::rate_limit::Decision {
                allowed: true,
                limit: q.limit(),
                remaining: 3,
                reset_after: std::time::Duration::from_millis(1_500),
                retry_after: None,
            });
            let mut with_origin = HeaderMap::new();
            with_origin.insert(header::ORIGIN, v("https://app.example"));
            let origin_cors = state.cors_headers(&with_origin, false);
            assert!(origin_cors.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
            for subject in [None, Some("alice")] {
                ctx.subject = subject
                    .map(|s| crate::auth::Principal::new(s, crate::auth::CredentialSource::Header));
                for cors in [None, Some(&origin_cors)] {
                    for (handler, fits) in &answers {
                        let (used, fast, general) = both_ways(&ctx, handler, cors);
                        let case = format!(
                            "{} {subject:?} origin={} {handler:?}",
                            state.policy.name(),
                            cors.is_some()
                        );
                        assert_eq!(used, *fits, "{case}");
                        assert_eq!(fast, general, "{case}");
                        let ids = fast.iter().filter(|(n, _)| n == "x-request-id");
                        assert_eq!(ids.count(), 1, "{case}");
                    }
                }
            }
        }
    }

    /// The fingerprint (and the `User-Agent`) are read only where something records them:
    /// not on a route whose events go nowhere but `tracing` (no audit writer, no bans) and
    /// whose key has no fingerprint part; the fingerprint always with such a key. (With an
    /// audit writer, events carry both: `tests/fingerprint.rs`, `tests/hardening.rs`.)
    #[test]
    fn the_fingerprint_and_user_agent_are_read_only_where_something_records_them() {
        use crate::rate_limit::KeyPart;
        let security = Security::builder().csrf_secret([9u8; 32]).build().unwrap();
        let read = |policy| {
            let state = security.layer(policy).unwrap().layer(()).state;
            (state.events_recorded, state.fingerprint_read)
        };
        assert_eq!(read(Policy::public()), (false, false));
        let keyed = Policy::public()
            .to_builder()
            .rate_limit_key([KeyPart::Ip, KeyPart::Fingerprint])
            .build()
            .unwrap();
        assert_eq!(read(keyed), (false, true));
    }
}
