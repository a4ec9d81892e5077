//! Announcing a known key again (`Pool::upsert`, or a `Discover` source that re-sends its
//! whole set, as DNS does on every refresh) keeps the endpoint and its live state; new
//! metadata changes only the metadata.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use futures_util::stream;
use tokio::time::Instant;
use tower::{discover::Change, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    hints::Exclude, report::LoadReport, Balance, BalanceLayer, Endpoint, EndpointConfig, Health,
    HealthFilter, HealthFilterLayer, HealthPolicy, Pool,
};

use crate::support::{empty_request, finish, quick_request, served, Held, HeldBody};

type HeldService = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    http::Response<HeldBody>,
    Infallible,
>;

/// `inner`, but answering 500 with an empty body while `failing` is set.
fn fails_while(failing: &Arc<AtomicBool>, inner: HeldService) -> HeldService {
    let failing = Arc::clone(failing);
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let (failing, inner) = (failing.load(SeqCst), inner.clone());
            async move {
                if failing {
                    let mut r = http::Response::new(http_body_util::StreamBody::new(
                        futures_util::StreamExt::boxed(stream::empty()),
                    ));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    return Ok(r);
                }
                inner.oneshot(req).await
            }
        },
    ))
}

/// A request that only `a` may serve (`b` excluded).
fn to_a(
    pool: &Pool<HeldService>,
    mut request: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut exclude = Exclude::new();
    exclude.insert(&pool.get("b").unwrap());
    request.extensions_mut().insert(exclude);
    request
}

/// What must survive a re-announcement, read at `now`.
#[derive(Debug, PartialEq)]
struct Live {
    health: Health,
    in_flight: usize,
    ttfb: Option<Duration>,
    latency: Option<Duration>,
    report: Option<LoadReport>,
    requests: u64,
    failures: u64,
    ejections: u64,
}

fn live(pool: &Pool<HeldService>, e: &Endpoint, now: Instant) -> Live {
    let m = pool.metrics();
    let m = m.endpoints.iter().find(|m| m.key == "a").unwrap();
    Live {
        health: e.health(),
        in_flight: e.in_flight(),
        ttfb: e.ttfb_estimate(now),
        latency: e.latency_estimate(now),
        report: e.latest_report(),
        requests: m.requests,
        failures: m.failures,
        ejections: m.ejections.iter().sum(),
    }
}

type Stack = HealthFilter<Balance<HeldService>>;

fn stack(pool: &Pool<HeldService>) -> Stack {
    let mut policy = HealthPolicy::default();
    policy.consecutive_failures = 1;
    policy.base_ejection = Duration::from_secs(10);
    policy.max_ejection = Duration::from_secs(100);
    policy.trials = 1;
    policy.max_ejected_fraction = 1.0;
    policy.slow_start = None;
    ServiceBuilder::new()
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone())
}

/// Re-announces `a` (and `b`) every way a source can: `upsert`, a plain `Discover` stream
/// re-sending the whole set, and one with the same metadata.
async fn announce_again(pool: &Pool<HeldService>, held: &Held, failing: &Arc<AtomicBool>) {
    pool.upsert("a", fails_while(failing, held.service("a")));
    let whole_set = vec![
        Ok::<_, Infallible>(Change::Insert("a", fails_while(failing, held.service("a")))),
        Ok(Change::Insert("b", held.service("b"))),
    ];
    pool.discover(stream::iter(whole_set)).await.unwrap();
    let with_config = vec![
        Ok::<_, Infallible>(Change::Insert(
            "a",
            (
                EndpointConfig::new("a"),
                fails_while(failing, held.service("a")),
            ),
        )),
        Ok(Change::Insert(
            "b",
            (EndpointConfig::new("b"), held.service("b")),
        )),
    ];
    pool.discover_with_config(stream::iter(with_config))
        .await
        .unwrap();
}

/// Health, ejection count and back-off, trial permits, the in-flight count, estimates,
/// counters and the load report all survive every way of announcing `a` again.
#[tokio::test(start_paused = true)]
async fn announced_again_an_endpoint_keeps_its_live_state() {
    let held = Held::default();
    let failing = Arc::new(AtomicBool::new(false));
    let pool = Pool::new();
    pool.insert("a", fails_while(&failing, held.service("a")))
        .unwrap();
    pool.insert("b", held.service("b")).unwrap();
    let svc = stack(&pool);
    let a = pool.get("a").unwrap();

    // One request in flight on a, one finished, a load report, then a failure: ejected.
    let open = svc
        .clone()
        .oneshot(to_a(&pool, empty_request()))
        .await
        .unwrap();
    assert_eq!(served(&open).key().as_str(), "a");
    let quick = svc
        .clone()
        .oneshot(to_a(&pool, quick_request()))
        .await
        .unwrap();
    finish(quick.into_body()).await;
    a.report(&LoadReport::new(Instant::now()).running(3).waiting(1));
    failing.store(true, SeqCst);
    let failed = svc
        .clone()
        .oneshot(to_a(&pool, quick_request()))
        .await
        .unwrap();
    assert_eq!(failed.status(), 500);
    finish(failed.into_body()).await;
    failing.store(false, SeqCst);
    let Health::Ejected { until } = a.health() else {
        panic!("a failure ejects a: {:?}", a.health());
    };
    let before = live(&pool, &a, Instant::now());
    assert_eq!((before.in_flight, before.ejections), (1, 1));

    announce_again(&pool, &held, &failing).await;
    let again = pool.get("a").unwrap();
    assert!(Arc::ptr_eq(&a, &again), "the same endpoint");
    assert_eq!(live(&pool, &again, Instant::now()), before);

    // Its ejection ends: one trial at a time. The trial runs while a is announced again, and
    // its permit is still taken: no second request gets through.
    tokio::time::sleep_until(until).await;
    let trial = svc
        .clone()
        .oneshot(to_a(&pool, empty_request()))
        .await
        .unwrap();
    assert_eq!(served(&trial).key().as_str(), "a");
    announce_again(&pool, &held, &failing).await;
    let refused = svc.clone().oneshot(to_a(&pool, quick_request())).await;
    assert!(
        refused.is_err(),
        "a second request while the only trial runs"
    );

    // The trial succeeds and a is back; the next ejection is its second: twice as long.
    held.release("a");
    finish(trial.into_body()).await;
    finish(open.into_body()).await;
    assert_eq!(a.health(), Health::Healthy);
    announce_again(&pool, &held, &failing).await;
    failing.store(true, SeqCst);
    let failed = svc
        .clone()
        .oneshot(to_a(&pool, quick_request()))
        .await
        .unwrap();
    finish(failed.into_body()).await;
    let now = Instant::now();
    let Health::Ejected { until } = a.health() else {
        panic!("a failure ejects a again: {:?}", a.health());
    };
    let length = until - now;
    assert!(
        length >= Duration::from_secs(20) && length <= Duration::from_millis(20_001),
        "the second ejection lasts {length:?}, not twice the first's 10 s"
    );
    assert_eq!(a.in_flight(), 0);
}

/// A source re-announces `a` with new metadata: the same endpoint takes it, and a new
/// concurrency limit counts the requests already in flight.
#[tokio::test(start_paused = true)]
async fn new_metadata_changes_only_the_metadata() {
    let held = Held::default();
    let failing = Arc::new(AtomicBool::new(false));
    let pool: Pool<HeldService> = Pool::new();
    pool.insert(
        EndpointConfig::new("a").max_concurrency(2),
        held.service("a"),
    )
    .unwrap();
    pool.insert("b", held.service("b")).unwrap();
    let svc = stack(&pool);
    let a = pool.get("a").unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            svc.clone()
                .oneshot(to_a(&pool, empty_request()))
                .await
                .unwrap(),
        );
    }
    a.set_health(Health::CoolingDown {
        until: Instant::now() + Duration::from_secs(5),
    });
    let cooling = a.health();

    // A new limit of 1, weight, tier; the same key, labels and models.
    let config = EndpointConfig::new("a")
        .max_concurrency(1)
        .weight(2.0)
        .tier(1);
    let changes = vec![
        Ok::<_, Infallible>(Change::Insert(
            "a",
            (config.clone(), fails_while(&failing, held.service("a"))),
        )),
        Ok(Change::Insert(
            "b",
            (EndpointConfig::new("b"), held.service("b")),
        )),
    ];
    pool.discover_with_config(stream::iter(changes))
        .await
        .unwrap();
    let again = pool.get("a").unwrap();
    assert!(Arc::ptr_eq(&a, &again), "the same endpoint");
    assert_eq!(
        (again.max_concurrency(), again.weight(), again.tier()),
        (Some(1), 2.0, 1)
    );
    assert_eq!((again.health(), again.in_flight()), (cooling, 2));
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Two in flight against a limit of 1: a is full until both have ended.
    assert!(svc
        .clone()
        .oneshot(to_a(&pool, quick_request()))
        .await
        .is_err());
    assert!(held.release_one("a"));
    finish(open.remove(0).into_body()).await;
    assert!(
        svc.clone()
            .oneshot(to_a(&pool, quick_request()))
            .await
            .is_err(),
        "one in flight fills a limit of 1"
    );
    assert!(held.release_one("a"));
    finish(open.remove(0).into_body()).await;
    let r = svc
        .clone()
        .oneshot(to_a(&pool, quick_request()))
        .await
        .unwrap();
    assert_eq!(served(&r).key().as_str(), "a");
    finish(r.into_body()).await;
    assert_eq!(a.in_flight(), 0);
}
