//! "At most half the pool ejected" at every instant, under many tasks failing requests on
//! every endpoint at once, with ejections that expire into trials, trials that fail and
//! re-eject, and trials that succeed and let another endpoint be ejected.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{BalanceLayer, Endpoint, Health, HealthFilterLayer, HealthPolicy, Pool};

type Service = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    http::Response<http_body_util::Full<bytes::Bytes>>,
    std::convert::Infallible,
>;

/// Fails three requests in four (a 500), the fourth succeeds: enough failures to eject every
/// endpoint over and over, enough successes for trials to bring some back.
fn mostly_failing() -> Service {
    let n = Arc::new(AtomicU64::new(0));
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let fail = n.fetch_add(1, SeqCst) % 4 != 0;
            async move {
                tokio::task::yield_now().await;
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                if fail {
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok::<_, std::convert::Infallible>(r)
            }
        },
    ))
}

/// The health of every endpoint at one instant: two reads in a row that agree. An
/// ejection's end only moves forward, so an endpoint cannot leave a health and come back to
/// the same one between the reads.
fn consistent(endpoints: &[Arc<Endpoint>]) -> Vec<Health> {
    let read = || endpoints.iter().map(|e| e.health()).collect::<Vec<_>>();
    let mut before = read();
    loop {
        let after = read();
        if after == before {
            return after;
        }
        before = after;
    }
}

async fn run(size: usize, bound: usize) {
    let pool = Pool::new();
    for i in 0..size {
        pool.insert(format!("e{i}"), mostly_failing()).unwrap();
    }
    let mut policy = HealthPolicy::default();
    policy.consecutive_failures = 2;
    policy.base_ejection = Duration::from_millis(2);
    policy.max_ejection = Duration::from_millis(16);
    policy.trials = 1;
    policy.slow_start = None;
    let svc = ServiceBuilder::new()
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(BalanceLayer::new())
        .service(pool.clone());

    // The checker samples the count continuously on a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let checker = {
        let (endpoints, stop) = (pool.endpoints(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut samples, mut most, mut seen_trial) = (0u64, 0, false);
            while !stop.load(SeqCst) {
                let now = tokio::time::Instant::now();
                let health = consistent(&endpoints);
                let ejected = health
                    .iter()
                    .filter(|h| matches!(h, Health::Ejected { .. }))
                    .count();
                seen_trial |= health
                    .iter()
                    .any(|h| matches!(h, Health::Ejected { until } if *until <= now));
                assert!(
                    ejected <= bound,
                    "{ejected} of {} ejected at once: {health:?}",
                    endpoints.len()
                );
                most = most.max(ejected);
                samples += 1;
            }
            (samples, most, seen_trial)
        })
    };

    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..400 {
                    let _ = svc
                        .clone()
                        .oneshot(http::Request::new(http_body_util::Full::new(
                            bytes::Bytes::new(),
                        )))
                        .await;
                    if now_and_then() {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, SeqCst);
    let (samples, most, seen_trial) = checker.join().unwrap();
    let ejections: u64 = pool
        .metrics()
        .endpoints
        .iter()
        .map(|m| m.ejections.iter().sum::<u64>())
        .sum();
    assert!(
        samples > 0 && ejections > 0,
        "{samples} samples, {ejections} ejections"
    );
    assert_eq!(most, bound, "the bound was reached ({samples} samples)");
    // The run went through trials, not only first ejections.
    assert!(
        seen_trial || ejections > size as u64,
        "no ejection ever reached its trial"
    );
}

/// Now and then, a short sleep: lets ejections expire into trials while the others run.
fn now_and_then() -> bool {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, SeqCst) % 7 == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_half_of_four_is_ejected_at_every_instant() {
    run(4, 2).await;
}

/// Half of an odd size is rounded down: 2 of 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_two_of_five_are_ejected_at_every_instant() {
    run(5, 2).await;
}

/// At least one may always be ejected: the only endpoint of a pool of one too (panic mode
/// then still routes to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_only_endpoint_may_be_ejected() {
    run(1, 1).await;
}
