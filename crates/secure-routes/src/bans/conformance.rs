//! The conformance suite every [`BanStore`] must pass (feature `conformance`).
//!
//! Store crates run [`run_all`] from their tests (the memory store always; SQLite, Redis and
//! Postgres when reachable), as with `rate_limit::conformance`. Time is passed to every call,
//! so no scenario sleeps: the suite moves `now` by days in microseconds.
//!
//! `make_store()` must build a **fresh, empty** store (a store on a shared server needs its
//! own prefix or schema per call: [`BanStore::list`] is checked whole). `make_shared()` must
//! build **three handles on one fresh store** (three connections or clients: the three
//! "instances" of a deployment), used concurrently.
//!
//! What is checked: the threshold is reached at exactly 50 points (not 49), weighted, within
//! a sliding window; ban lengths double 15 min, 30 min, 1 h, ... up to the 24 h cap; history
//! is forgotten 7 days after the last ban; allow-listed addresses are never banned; a strike
//! during a ban changes nothing; `lift`, `add` and `list`; 150 concurrent strikes through
//! three handles issue exactly one ban.
//!
//! ```
//! use secure_routes::bans::{MemoryBans, conformance};
//! use std::sync::Arc;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! conformance::run_all(
//!     || async { MemoryBans::new() },
//!     || async {
//!         let one = Arc::new(MemoryBans::new());
//!         vec![Arc::clone(&one), Arc::clone(&one), one]
//!     },
//! ).await;
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Ban, BanKey, BanPolicy, BanStore, StrikeOutcome};

/// Where the suite's time starts: 2023-11-14T22:13:20Z.
pub const START: Duration = Duration::from_secs(1_700_000_000);

const MIN: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);
const MS: Duration = Duration::from_millis(1);

/// Runs every scenario.
///
/// # Panics
///
/// On the first difference from the expected behaviour, naming the scenario.
pub async fn run_all<S, F, Fut, G, GFut, H>(make_store: F, make_shared: G)
where
    S: BanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    G: Fn() -> GFut,
    GFut: Future<Output = Vec<H>>,
    H: std::ops::Deref + Send + Sync + 'static,
    H::Target: BanStore,
{
    threshold_is_reached_exactly(&make_store).await;
    bans_double_up_to_the_cap(&make_store).await;
    history_is_forgotten_after_seven_days(&make_store).await;
    allow_listed_addresses_are_never_banned(&make_store).await;
    lift_add_and_list(&make_store).await;
    concurrent_strikes_issue_one_ban(&make_shared).await;
}

async fn strike<S: BanStore + ?Sized>(
    store: &S,
    key: &BanKey,
    weight: u32,
    policy: &BanPolicy,
    now: Duration,
) -> StrikeOutcome {
    store
        .strike(key, weight, policy, now)
        .await
        .unwrap_or_else(|e| panic!("store {}: strike failed: {e}", store.name()))
}

async fn check<S: BanStore + ?Sized>(store: &S, key: &BanKey, now: Duration) -> Option<Ban> {
    store
        .check(key, now)
        .await
        .unwrap_or_else(|e| panic!("store {}: check failed: {e}", store.name()))
}

async fn list<S: BanStore + ?Sized>(store: &S, now: Duration) -> Vec<(String, Duration)> {
    store
        .list(now)
        .await
        .unwrap_or_else(|e| panic!("store {}: list failed: {e}", store.name()))
        .into_iter()
        .map(|b| (b.key.as_str().to_owned(), b.until))
        .collect()
}

fn new_ban(outcome: &StrikeOutcome) -> Option<&Ban> {
    match outcome {
        StrikeOutcome::Banned { ban, new: true } => Some(ban),
        _ => None,
    }
}

/// Bans `key` at `now` with one strike of the threshold's weight, returning the ban.
async fn ban_now<S: BanStore>(store: &S, key: &BanKey, policy: &BanPolicy, now: Duration) -> Ban {
    ban_now_weight(store, key, policy.threshold(), policy, now).await
}

/// 49 points are not a ban, the 50th point is; weights add; the window slides (points 10
/// minutes old no longer count); a strike while banned changes nothing.
///
/// # Panics
///
/// If the store decides otherwise.
pub async fn threshold_is_reached_exactly<S, F, Fut>(make_store: &F)
where
    S: BanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = make_store().await;
    let name = store.name();
    let p = BanPolicy::default();
    let now = START;
    let k = BanKey::ip("203.0.113.7".parse().expect("address"));
    for i in 1..=49 {
        assert_eq!(
            strike(&store, &k, 1, &p, now).await,
            StrikeOutcome::Counted { points: i },
            "{name}: strike {i}"
        );
    }
    assert_eq!(
        check(&store, &k, now).await,
        None,
        "{name}: banned at 49 points"
    );
    let ban = ban_now_weight(&store, &k, 1, &p, now).await;
    assert_eq!(
        (ban.until, ban.strikes, ban.reason.as_str()),
        (now + 15 * MIN, 1, super::REASON_THRESHOLD),
        "{name}: first ban"
    );
    assert_eq!(
        check(&store, &k, now + 15 * MIN - MS).await,
        Some(ban.clone()),
        "{name}: check"
    );
    assert_eq!(
        check(&store, &k, now + 15 * MIN).await,
        None,
        "{name}: ban over"
    );
    // A strike while banned is not counted and does not lengthen the ban.
    assert_eq!(
        strike(&store, &k, 50, &p, now + MIN).await,
        StrikeOutcome::Banned {
            ban: ban.clone(),
            new: false
        },
        "{name}: strike while banned"
    );
    // After the ban the points start from zero.
    assert_eq!(
        strike(&store, &k, 1, &p, now + 15 * MIN).await,
        StrikeOutcome::Counted { points: 1 },
        "{name}: points after a ban"
    );

    // Weighted: 24 CSRF failures (2 points) are 48, the 25th bans.
    let k = BanKey::subject("weighted");
    for i in 1..=24 {
        assert_eq!(
            strike(&store, &k, 2, &p, now).await,
            StrikeOutcome::Counted { points: 2 * i },
            "{name}: weighted strike {i}"
        );
    }
    ban_now_weight(&store, &k, 2, &p, now).await;

    // The window slides: 49 points at t, one more at t + 10 min - 1 ms bans...
    let k = BanKey::subject("inside-window");
    strike(&store, &k, 49, &p, now).await;
    ban_now_weight(&store, &k, 1, &p, now + 10 * MIN - MS).await;
    // ...at t + 10 min the 49 have left the window.
    let k = BanKey::subject("window-passed");
    strike(&store, &k, 49, &p, now).await;
    assert_eq!(
        strike(&store, &k, 1, &p, now + 10 * MIN).await,
        StrikeOutcome::Counted { points: 1 },
        "{name}: points older than the window"
    );
    // A weight of zero counts nothing.
    assert_eq!(
        strike(&store, &BanKey::subject("zero"), 0, &p, now).await,
        StrikeOutcome::Counted { points: 0 },
        "{name}: zero weight"
    );
}

/// Bans `key` at `now` with one strike of `weight`, returning the ban.
async fn ban_now_weight<S: BanStore>(
    store: &S,
    key: &BanKey,
    weight: u32,
    policy: &BanPolicy,
    now: Duration,
) -> Ban {
    let out = strike(store, key, weight, policy, now).await;
    new_ban(&out).cloned().unwrap_or_else(|| {
        panic!(
            "store {}: {key} at {now:?}: expected a new ban, got {out:?}",
            store.name()
        )
    })
}

/// Each ban in a row lasts twice the previous one: 15 min, 30 min, 1 h, 2 h, 4 h, 8 h, 16 h,
/// then the 24 h cap.
///
/// # Panics
///
/// If a ban has another length.
pub async fn bans_double_up_to_the_cap<S, F, Fut>(make_store: &F)
where
    S: BanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = make_store().await;
    let name = store.name();
    let p = BanPolicy::default();
    let k = BanKey::ip("2001:db8:5:6::1".parse().expect("address"));
    let mut now = START;
    let minutes = [15, 30, 60, 120, 240, 480, 960, 1440, 1440];
    for (i, m) in minutes.into_iter().enumerate() {
        let ban = ban_now(&store, &k, &p, now).await;
        assert_eq!(ban.until - now, m * MIN, "{name}: ban {}", i + 1);
        assert_eq!(ban.strikes as usize, i + 1, "{name}: ban {}", i + 1);
        assert_eq!(ban.key.as_str(), "ip:2001:db8:5:6::/64", "{name}: key");
        now = ban.until;
    }
}

/// A ban issued 7 days (less 1 ms) after the last one is a repeat; one issued 7 days after
/// starts again at 15 minutes.
///
/// # Panics
///
/// If the store remembers too little or too much.
pub async fn history_is_forgotten_after_seven_days<S, F, Fut>(make_store: &F)
where
    S: BanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = make_store().await;
    let name = store.name();
    let p = BanPolicy::default();
    let (a, b) = (BanKey::subject("repeat"), BanKey::subject("forgiven"));
    ban_now(&store, &a, &p, START).await;
    ban_now(&store, &b, &p, START).await;
    let later = START + 7 * DAY;
    let ban = ban_now(&store, &a, &p, later - MS).await;
    assert_eq!(
        (ban.until - (later - MS), ban.strikes),
        (30 * MIN, 2),
        "{name}: repeat"
    );
    let ban = ban_now(&store, &b, &p, later).await;
    assert_eq!(
        (ban.until - later, ban.strikes),
        (15 * MIN, 1),
        "{name}: forgotten"
    );
}

/// Addresses in the allow-list are never banned, and nothing is stored for them.
///
/// # Panics
///
/// If one is banned or listed.
pub async fn allow_listed_addresses_are_never_banned<S, F, Fut>(make_store: &F)
where
    S: BanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = make_store().await;
    let name = store.name();
    let p = BanPolicy::builder()
        .allow("10.0.0.0/8")
        .allow("2001:db8:aaaa::/48")
        .build()
        .expect("policy");
    for ip in ["10.1.2.3", "2001:db8:aaaa:1::9"] {
        let k = BanKey::ip(ip.parse().expect("address"));
        for _ in 0..3 {
            assert_eq!(
                strike(&store, &k, 50, &p, START).await,
                StrikeOutcome::Exempt,
                "{name}: {ip}"
            );
        }
        assert_eq!(check(&store, &k, START).await, None, "{name}: {ip}");
    }
    let outside = BanKey::ip("11.0.0.1".parse().expect("address"));
    ban_now(&store, &outside, &p, START).await;
    assert_eq!(
        list(&store, START).await,
        [("ip:11.0.0.1".to_owned(), START + 15 * MIN)],
        "{name}"
    );
}

/// `add` bans by hand (keeping the key's escalation), `list` gives the bans in force soonest
/// end first, `lift` ends a ban and forgets the key (its next ban is a first ban again).
///
/// # Panics
///
/// If a call answers otherwise.
pub async fn lift_add_and_list<S, F, Fut>(make_store: &F)
where
    S: BanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let store = make_store().await;
    let name = store.name();
    let p = BanPolicy::default();
    let now = START;
    assert_eq!(list(&store, now).await, [], "{name}: empty store");
    let a = BanKey::parse("198.51.100.1").expect("key");
    let b = BanKey::parse("ip:2001:db8:1:2::/64").expect("key");
    let c = BanKey::subject("carol");
    let added = store
        .add(&a, now + 60 * MIN, "manual", now)
        .await
        .unwrap_or_else(|e| panic!("{name}: add failed: {e}"));
    assert_eq!(
        added,
        Ban {
            key: a.clone(),
            until: now + 60 * MIN,
            strikes: 0,
            reason: "manual".into()
        },
        "{name}: add"
    );
    store
        .add(&b, now + 120 * MIN, "abuse report #7", now)
        .await
        .unwrap_or_else(|e| panic!("{name}: add failed: {e}"));
    ban_now(&store, &c, &p, now).await;
    assert_eq!(
        list(&store, now).await,
        [
            ("sub:carol".to_owned(), now + 15 * MIN),
            ("ip:198.51.100.1".to_owned(), now + 60 * MIN),
            ("ip:2001:db8:1:2::/64".to_owned(), now + 120 * MIN),
        ],
        "{name}: list"
    );
    let listed = store
        .list(now)
        .await
        .unwrap_or_else(|e| panic!("{name}: list failed: {e}"));
    assert_eq!(listed[2].reason, "abuse report #7", "{name}: reason kept");
    assert_eq!(listed[0].strikes, 1, "{name}: strikes listed");
    assert_eq!(
        list(&store, now + 15 * MIN).await.len(),
        2,
        "{name}: ended bans are not listed"
    );
    // Strikes against a ban added by hand change nothing.
    assert!(
        matches!(
            strike(&store, &a, 50, &p, now).await,
            StrikeOutcome::Banned { new: false, .. }
        ),
        "{name}: strike during a manual ban"
    );
    // `add` over an automatic ban keeps its escalation.
    let ban = store
        .add(&c, now + 180 * MIN, "extended", now)
        .await
        .unwrap_or_else(|e| panic!("{name}: add failed: {e}"));
    assert_eq!(
        (ban.strikes, ban.until),
        (1, now + 180 * MIN),
        "{name}: add over a ban"
    );
    // Lift: the ban ends, the history goes.
    assert!(
        store
            .lift(&c)
            .await
            .unwrap_or_else(|e| panic!("{name}: lift failed: {e}"))
    );
    assert_eq!(check(&store, &c, now).await, None, "{name}: lifted");
    assert!(
        !store
            .lift(&c)
            .await
            .unwrap_or_else(|e| panic!("{name}: lift failed: {e}")),
        "{name}: lift twice"
    );
    let ban = ban_now(&store, &c, &p, now + MIN).await;
    assert_eq!(
        (ban.strikes, ban.until),
        (1, now + 16 * MIN),
        "{name}: first ban after a lift"
    );
    assert!(
        store
            .lift(&a)
            .await
            .unwrap_or_else(|e| panic!("{name}: lift failed: {e}"))
    );
    assert_eq!(
        list(&store, now + MIN).await.len(),
        2,
        "{name}: list after lift"
    );
}

/// 150 strikes of one point at one instant through three handles on one store (three
/// instances): exactly one issues the ban, 49 are counted, the other 100 meet the ban.
///
/// # Panics
///
/// If the counts differ or a handle does not see the ban.
pub async fn concurrent_strikes_issue_one_ban<G, GFut, H>(make_shared: &G)
where
    G: Fn() -> GFut,
    GFut: Future<Output = Vec<H>>,
    H: std::ops::Deref + Send + Sync + 'static,
    H::Target: BanStore,
{
    let handles: Vec<Arc<H>> = make_shared().await.into_iter().map(Arc::new).collect();
    assert_eq!(handles.len(), 3, "make_shared must give three handles");
    let name = handles[0].name();
    let policy = Arc::new(BanPolicy::default());
    let key = BanKey::ip("192.0.2.99".parse().expect("address"));
    let tasks: Vec<_> = (0..150)
        .map(|i| {
            let h = Arc::clone(&handles[i % 3]);
            let (policy, key) = (Arc::clone(&policy), key.clone());
            tokio::spawn(async move { (**h).strike(&key, 1, &policy, START).await })
        })
        .collect();
    let (mut counted, mut new, mut banned) = (Vec::new(), 0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(StrikeOutcome::Counted { points }) => counted.push(points),
            Ok(StrikeOutcome::Banned { new: true, .. }) => new += 1,
            Ok(StrikeOutcome::Banned { new: false, .. }) => banned += 1,
            Ok(StrikeOutcome::Exempt) => panic!("{name}: exempt"),
            Err(e) => panic!("{name}: strike failed: {e}"),
        }
    }
    counted.sort_unstable();
    assert_eq!(
        (new, counted.len(), banned),
        (1, 49, 100),
        "{name}: 150 concurrent strikes"
    );
    assert_eq!(
        counted,
        (1..=49).collect::<Vec<u32>>(),
        "{name}: each point counted once"
    );
    for h in &handles {
        let ban = (**h).check(&key, START).await.expect("check");
        assert_eq!(
            ban.map(|b| b.until),
            Some(START + 15 * MIN),
            "{name}: every handle sees it"
        );
    }
}

/// Three [`Security`](crate::Security) instances (three routers, each with its own [`Bans`]
/// and so its own snapshot) on `handles`, three handles on one fresh shared store: a loop of
/// bad tokens through instance A bans the client there at once (401, 401, 401, then 403 with
/// `Retry-After`); B and C refuse it after one sync; a lift through A is honoured by A at once
/// and by B and C after their next sync. Syncs are [`Bans::sync_now`] (what the background
/// task does every sync interval, at most 1 s), so nothing sleeps.
///
/// # Panics
///
/// If an instance answers otherwise.
///
/// [`Bans`]: super::Bans
/// [`Bans::sync_now`]: super::Bans::sync_now
pub async fn three_instances(handles: Vec<Arc<dyn BanStore>>) {
    use crate::auth::{AuthError, Authenticator, CredentialSource, Principal};
    use crate::clock::{Clock, FakeClock, SystemClock};
    use crate::{Policy, Security};
    use axum::extract::ConnectInfo;
    use tower::ServiceExt as _;

    /// `Bearer good` is alice; anything else is an invalid credential.
    struct GoodToken;
    impl Authenticator for GoodToken {
        fn authenticate<'a>(
            &'a self,
            parts: &'a http::request::Parts,
        ) -> super::BoxFuture<'a, Result<Principal, AuthError>> {
            let good = parts
                .headers
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| v == "Bearer good");
            Box::pin(std::future::ready(if good {
                Ok(Principal::new("alice", CredentialSource::Header))
            } else {
                Err(AuthError::Invalid("bad token"))
            }))
        }
    }

    assert_eq!(handles.len(), 3, "three handles on one store");
    let name = handles[0].name();
    // The wall clock's time (a shared store may keep server-side expiries), then frozen.
    let clock = FakeClock::new(SystemClock.now());
    let policy = BanPolicy::builder().threshold(3).build().expect("policy");
    let peer: std::net::IpAddr = "198.51.100.23".parse().expect("address");
    let mut apps = Vec::new();
    let mut bans = Vec::new();
    for store in handles {
        let b = super::Bans::new(store, policy.clone());
        let security = Security::builder()
            .csrf_secret([9u8; 32])
            .authenticator(GoodToken)
            .clock(Arc::new(clock.clone()))
            .bans(b.clone())
            .build()
            .expect("security");
        let layer = security.layer(Policy::authenticated()).expect("layer");
        let app = axum::Router::new().route(
            "/private",
            axum::routing::get(|| async { "ok" }).layer(layer),
        );
        apps.push(app);
        bans.push(b);
    }
    let send = |app: &axum::Router, token: &str| {
        let mut req = http::Request::builder()
            .uri("/private")
            .header(http::header::AUTHORIZATION, token)
            .body(axum::body::Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(ConnectInfo(std::net::SocketAddr::new(peer, 40_000)));
        let app = app.clone();
        async move {
            let res = app.oneshot(req).await.expect("infallible");
            let retry = res
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (res.status().as_u16(), retry)
        }
    };
    let (a, b, c) = (&apps[0], &apps[1], &apps[2]);
    for i in 0..3 {
        assert_eq!(send(a, "Bearer bad").await.0, 401, "{name}: bad token {i}");
        // The strike is off the response path: wait for it before the next request.
        bans[0].flush().await;
    }
    let banned = (403, Some((15 * MIN).as_secs().to_string()));
    assert_eq!(
        send(a, "Bearer good").await,
        banned,
        "{name}: A bans at once"
    );
    // B and C have not synced yet; after one sync they refuse too.
    for (i, app) in [(1, b), (2, c)] {
        bans[i].sync_now().await.expect("sync");
        assert_eq!(
            send(app, "Bearer good").await,
            banned,
            "{name}: instance {i} after a sync"
        );
    }
    let key = BanKey::ip(peer);
    assert!(bans[0].lift(&key).await.expect("lift"), "{name}: lifted");
    assert_eq!(
        send(a, "Bearer good").await.0,
        200,
        "{name}: A after the lift"
    );
    for (i, app) in [(1, b), (2, c)] {
        bans[i].sync_now().await.expect("sync");
        assert_eq!(
            send(app, "Bearer good").await.0,
            200,
            "{name}: instance {i} after the lift"
        );
    }
    // A second ban through B expires by the clock everywhere.
    for _ in 0..3 {
        assert_eq!(
            send(b, "Bearer bad").await.0,
            401,
            "{name}: bad token via B"
        );
        bans[1].flush().await;
    }
    for (i, app) in [(0, a), (2, c)] {
        bans[i].sync_now().await.expect("sync");
        assert_eq!(
            send(app, "Bearer good").await.0,
            403,
            "{name}: instance {i}, second ban"
        );
    }
    clock.advance(15 * MIN);
    for app in [a, b, c] {
        assert_eq!(
            send(app, "Bearer good").await.0,
            200,
            "{name}: the ban ended by the clock"
        );
    }
    for b in &bans {
        let _ = b.lift(&key).await;
    }
}
