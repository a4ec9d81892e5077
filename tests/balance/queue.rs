//! The wait queue: first come, first served; one waiter woken per freed slot; waiters served
//! as soon as any endpoint can serve them, time passing included.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    hints::Exclude,
    report::{LoadReport, ReportPolicy},
    Balance, BalanceLayer, EndpointConfig, Health, HealthFilterLayer, HealthPolicy, Pool,
};

use crate::support::{empty_request, finish, ms, served, total_in_flight, Held};

type HeldService = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    http::Response<crate::support::HeldBody>,
    std::convert::Infallible,
>;

/// A pool of `endpoints` (each a `Held` service with a limit of one) behind a queue.
fn queued(held: &Held, endpoints: &[&'static str]) -> (Pool<HeldService>, Balance<HeldService>) {
    let pool = Pool::new();
    for &name in endpoints {
        pool.insert(
            EndpointConfig::new(name).max_concurrency(1),
            held.service(name),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(64, Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    (pool, svc)
}

/// An endpoint whose cooldown ends serves a waiting request then, not when the request's own
/// queue timeout fires.
#[tokio::test(start_paused = true)]
async fn a_cooldown_that_ends_serves_a_waiting_request() {
    let held = Held::default();
    let (pool, svc) = queued(&held, &["a", "b"]);
    let b = pool.get("b").unwrap();
    b.set_health(Health::CoolingDown {
        until: Instant::now() + Duration::from_secs(1),
    });
    let first = svc.clone().oneshot(empty_request()).await.unwrap();
    assert_eq!(served(&first).key().as_str(), "a");

    let start = Instant::now();
    let second = svc.clone().oneshot(empty_request()).await.unwrap();
    assert_eq!(served(&second).key().as_str(), "b");
    let waited = start.elapsed();
    assert!(
        waited >= ms(990) && waited < ms(1010),
        "served {waited:?} after it queued; b's cooldown ended after 1 s"
    );
    held.release("a");
    held.release("b");
    finish(first.into_body()).await;
    finish(second.into_body()).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// An endpoint whose load report shows it saturated serves a waiting request once that
/// report goes stale, not when the request's own queue timeout fires.
#[tokio::test(start_paused = true)]
async fn a_saturated_report_that_goes_stale_serves_a_waiting_request() {
    let held = Held::default();
    let (pool, svc) = queued(&held, &["a", "b"]);
    let mut policy = ReportPolicy::default();
    policy.max_age = Some(Duration::from_secs(3));
    policy.max_waiting = Some(4);
    pool.set_report_policy(policy).unwrap();
    let b = pool.get("b").unwrap();
    // b's engine says 9 requests wait: saturated for the next 3 s, and no newer report comes.
    b.report(&LoadReport::new(Instant::now()).waiting(9).running(8));
    let first = svc.clone().oneshot(empty_request()).await.unwrap();
    assert_eq!(served(&first).key().as_str(), "a");

    let start = Instant::now();
    let second = svc.clone().oneshot(empty_request()).await.unwrap();
    assert_eq!(served(&second).key().as_str(), "b");
    let waited = start.elapsed();
    // The report's freshness is kept in ticks of about 2 ms, rounded down.
    assert!(
        waited >= ms(2990) && waited <= Duration::from_secs(3),
        "served {waited:?} after it queued; b's saturated report went stale after 3 s"
    );
    held.release("a");
    held.release("b");
    finish(first.into_body()).await;
    finish(second.into_body()).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// `inner`, but answering 500 with an empty body while `failing` is set.
fn fails_while(failing: &Arc<AtomicBool>, inner: HeldService) -> HeldService {
    let failing = Arc::clone(failing);
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let (failing, inner) = (failing.load(SeqCst), inner.clone());
            async move {
                if failing {
                    let empty = futures_util::StreamExt::boxed(futures_util::stream::empty());
                    let mut r = http::Response::new(http_body_util::StreamBody::new(empty));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    return Ok(r);
                }
                inner.oneshot(req).await
            }
        },
    ))
}

/// The same when the health layer's ejection ends: the waiting request is the endpoint's
/// trial.
#[tokio::test(start_paused = true)]
async fn an_ejection_that_ends_serves_a_waiting_request() {
    let held = Held::default();
    let failing = Arc::new(AtomicBool::new(true));
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").max_concurrency(1),
        held.service("a"),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("b").max_concurrency(1),
        fails_while(&failing, held.service("b")),
    )
    .unwrap();
    let mut policy = HealthPolicy::default();
    policy.base_ejection = Duration::from_secs(2);
    policy.slow_start = None;
    let svc = ServiceBuilder::new()
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(
            BalanceLayer::builder()
                .queue(64, Duration::from_secs(10))
                .panic_mode(false)
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    // b fails until the health layer ejects it, for 2 s.
    let b = pool.get("b").unwrap();
    while !matches!(b.health(), Health::Ejected { .. }) {
        let mut request = empty_request();
        let mut exclude = Exclude::new();
        exclude.insert(&pool.get("a").unwrap());
        request.extensions_mut().insert(exclude);
        let r = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(r.status(), 500);
        finish(r.into_body()).await;
    }
    failing.store(false, SeqCst);

    let first = svc.clone().oneshot(empty_request()).await.unwrap();
    assert_eq!(served(&first).key().as_str(), "a");
    let start = Instant::now();
    let second = svc.clone().oneshot(empty_request()).await.unwrap();
    assert_eq!(served(&second).key().as_str(), "b");
    let waited = start.elapsed();
    assert!(
        waited >= ms(1990) && waited < ms(2010),
        "served {waited:?} after it queued; b's ejection ended after 2 s"
    );
    held.release("a");
    held.release("b");
    finish(first.into_body()).await;
    finish(second.into_body()).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// A request that arrives while older requests wait queues behind them, even when it arrives
/// just as a slot frees: the slot goes to the oldest waiter.
#[tokio::test(start_paused = true)]
async fn a_new_request_queues_behind_older_waiters() {
    let held = Held::default();
    let (pool, svc) = queued(&held, &["a"]);
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut running = svc.clone().oneshot(empty_request()).await.unwrap();
    // Ten waiters, queued in turn.
    let mut waiters = Vec::new();
    for i in 0..10 {
        let (svc, order) = (svc.clone(), Arc::clone(&order));
        waiters.push(tokio::spawn(async move {
            let r = svc.oneshot(empty_request()).await.unwrap();
            order.lock().push(format!("w{i}"));
            r
        }));
        tokio::time::sleep(ms(1)).await;
    }
    // Each time the running request ends, a newcomer arrives at once.
    let mut newcomers = Vec::new();
    for i in 0..10 {
        assert!(held.release_one("a"));
        finish(running.into_body()).await;
        let mut newcomer = Box::pin(svc.clone().oneshot(empty_request()));
        if let Poll::Ready(r) = futures_util::poll!(&mut newcomer) {
            r.unwrap();
            order.lock().push(format!("newcomer {i}"));
            panic!(
                "a newcomer took the slot before ten older waiters: {:?}",
                order.lock()
            );
        }
        newcomers.push(newcomer);
        running = waiters.remove(0).await.unwrap();
    }
    assert_eq!(
        *order.lock(),
        (0..10).map(|i| format!("w{i}")).collect::<Vec<_>>()
    );
    // Then the newcomers, in their order.
    for newcomer in newcomers {
        assert!(held.release_one("a"));
        finish(running.into_body()).await;
        running = newcomer.await.unwrap();
    }
    assert!(held.release_one("a"));
    finish(running.into_body()).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// Counts the times it is woken.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

type Call = Pin<
    Box<
        tower_ai_balance::balance::ResponseFuture<
            HeldService,
            http::Request<http_body_util::Full<bytes::Bytes>>,
        >,
    >,
>;

/// Polls each queued call once with a waker of its own; the responses of those served are
/// kept in `served`, so that their slots stay taken.
fn poll_all(
    calls: &mut [Call],
    wakers: &[Arc<CountingWaker>],
    served: &mut Vec<<Call as Future>::Output>,
) -> Vec<bool> {
    calls
        .iter_mut()
        .zip(wakers)
        .map(|(call, w)| {
            let waker = Waker::from(Arc::clone(w));
            match call.as_mut().poll(&mut Context::from_waker(&waker)) {
                Poll::Ready(response) => {
                    assert!(response.is_ok(), "served");
                    served.push(response);
                    true
                }
                Poll::Pending => false,
            }
        })
        .collect()
}

/// A freed slot wakes one waiter, the oldest, not every waiter; a waiter that is woken but
/// dropped passes the slot on.
#[tokio::test]
async fn a_freed_slot_wakes_the_oldest_waiter_only_and_a_dropped_one_passes_it_on() {
    let held = Held::default();
    let (pool, mut svc) = queued(&held, &["a"]);
    let running = svc.clone().oneshot(empty_request()).await.unwrap();
    let mut calls: Vec<Call> = (0..8)
        .map(|_| Box::pin(svc.call(empty_request())))
        .collect();
    let wakers: Vec<_> = (0..8).map(|_| Arc::new(CountingWaker::default())).collect();
    let mut served = Vec::new();
    assert!(poll_all(&mut calls, &wakers, &mut served)
        .iter()
        .all(|ready| !ready));

    assert!(held.release_one("a"));
    finish(running.into_body()).await;
    let woken: Vec<usize> = wakers.iter().map(|w| w.0.load(SeqCst)).collect();
    assert_eq!(
        woken,
        [1, 0, 0, 0, 0, 0, 0, 0],
        "one wake-up, for the oldest"
    );

    // The oldest is dropped before it runs: the next one gets the slot.
    drop(calls.remove(0));
    let wakers = &wakers[1..];
    let woken: Vec<usize> = wakers.iter().map(|w| w.0.load(SeqCst)).collect();
    assert_eq!(woken, [1, 0, 0, 0, 0, 0, 0], "passed on to the next");
    let ready = poll_all(&mut calls, wakers, &mut served);
    assert_eq!(ready, [true, false, false, false, false, false, false]);
    assert_eq!(total_in_flight(&pool), 1, "the one served holds its slot");
    drop(calls);
    held.release("a");
    drop(served);
    assert_eq!(total_in_flight(&pool), 0);
}

/// A freed slot goes to the oldest waiter that can use it: a waiter that excludes the
/// endpoint lets it go to the next, and keeps its place for a slot it can use.
#[tokio::test(start_paused = true)]
async fn a_waiter_that_cannot_use_the_freed_slot_lets_it_go_to_the_next() {
    let held = Held::default();
    let (pool, svc) = queued(&held, &["a", "b"]);
    let on_a = svc.clone().oneshot(empty_request()).await.unwrap();
    let on_b = svc.clone().oneshot(empty_request()).await.unwrap();
    let (on_a, on_b) = if served(&on_a).key().as_str() == "a" {
        (on_a, on_b)
    } else {
        (on_b, on_a)
    };
    let mut not_a = empty_request();
    let mut exclude = Exclude::new();
    exclude.insert(&pool.get("a").unwrap());
    not_a.extensions_mut().insert(exclude);
    let picky = tokio::spawn(svc.clone().oneshot(not_a));
    tokio::time::sleep(ms(1)).await;
    let anyone = tokio::spawn(svc.clone().oneshot(empty_request()));
    tokio::time::sleep(ms(1)).await;

    assert!(held.release_one("a"));
    finish(on_a.into_body()).await;
    let second = tokio::time::timeout(ms(100), anyone)
        .await
        .expect("the freed slot on a reaches the second waiter")
        .unwrap()
        .unwrap();
    assert_eq!(served(&second).key().as_str(), "a");
    assert!(!picky.is_finished());
    assert!(held.release_one("b"));
    finish(on_b.into_body()).await;
    let first = tokio::time::timeout(ms(100), picky)
        .await
        .expect("b's slot reaches the first waiter")
        .unwrap()
        .unwrap();
    assert_eq!(served(&first).key().as_str(), "b");
    held.release("a");
    held.release("b");
    finish(first.into_body()).await;
    finish(second.into_body()).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// When a request arrived (its place in arrival order), carried to the endpoint's service.
#[derive(Clone, Copy)]
struct Arrival(usize);

/// What the endpoints saw: for each request served, its arrival and when it reached them.
type Log = Arc<parking_lot::Mutex<Vec<(usize, std::time::Instant)>>>;

type Body = http_body_util::StreamBody<
    futures_util::stream::BoxStream<
        'static,
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >,
>;
type Timed = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    http::Response<Body>,
    std::convert::Infallible,
>;

/// When the last body ended, and the time from each body's end to the next call.
#[derive(Default)]
struct Handovers {
    freed: Option<std::time::Instant>,
    took: Vec<Duration>,
}

/// An endpoint that logs each request's arrival as it is called, streams for `hold`, and
/// notes when its body ends, just before the slot is released, and how long after that the
/// next request reached it.
fn timed(log: &Log, handovers: &Arc<parking_lot::Mutex<Handovers>>, hold: Duration) -> Timed {
    let (log, freed) = (Arc::clone(log), Arc::clone(handovers));
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let now = std::time::Instant::now();
            let arrival = req
                .extensions()
                .get::<Arrival>()
                .map_or(usize::MAX, |a| a.0);
            log.lock().push((arrival, now));
            {
                let mut h = freed.lock();
                if let Some(at) = h.freed.take() {
                    h.took.push(now.duration_since(at));
                }
            }
            let freed = Arc::clone(&freed);
            let body = futures_util::stream::unfold(0, move |step| {
                let freed = Arc::clone(&freed);
                async move {
                    match step {
                        0 => {
                            tokio::time::sleep(hold).await;
                            Some((
                                Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x"))),
                                1,
                            ))
                        }
                        _ => {
                            freed.lock().freed = Some(std::time::Instant::now());
                            None
                        }
                    }
                }
            });
            let body = futures_util::StreamExt::boxed(body);
            async move { Ok(http::Response::new(http_body_util::StreamBody::new(body))) }
        },
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Of requests served in this order (by arrival), the share served while an earlier arrival
/// still waited.
fn out_of_order(served: &[usize], arrivals: usize) -> f64 {
    let mut done = vec![false; arrivals];
    let mut oldest = 0;
    let mut overtook = 0;
    for &a in served {
        if a > oldest {
            overtook += 1;
        }
        done[a] = true;
        while oldest < arrivals && done[oldest] {
            oldest += 1;
        }
    }
    overtook as f64 / served.len() as f64
}

/// Fairness and wake-up latency under saturation, on a multi-thread runtime in real time.
/// Prints its figures (`cargo test --test balance queue::fairness -- --nocapture`); asserts
/// only that every request is served and every slot returned, since timings on a shared
/// machine are not the test's to judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fairness_and_wake_up_latency_under_saturation() {
    // 1. Arrival order: 64 callers keep 4 endpoints of 4 slots saturated.
    let log: Log = Arc::default();
    let unused = Arc::default();
    let pool = Pool::new();
    for i in 0..4 {
        let config = EndpointConfig::new(format!("e{i}")).max_concurrency(4);
        pool.insert(config, timed(&log, &unused, ms(1))).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(1024, Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let arrived: Arc<parking_lot::Mutex<Vec<Option<std::time::Instant>>>> =
        Arc::new(parking_lot::Mutex::new(vec![None; 4000]));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let (svc, next, arrived) = (svc.clone(), Arc::clone(&next), Arc::clone(&arrived));
            tokio::spawn(async move {
                loop {
                    let mut svc = svc.clone();
                    let mut request = empty_request();
                    let n = next.fetch_add(1, SeqCst);
                    if n >= 4000 {
                        return;
                    }
                    request.extensions_mut().insert(Arrival(n));
                    arrived.lock()[n] = Some(std::time::Instant::now());
                    let r = svc.call(request).await.unwrap();
                    finish(r.into_body()).await;
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!(total_in_flight(&pool), 0);
    let log = std::mem::take(&mut *log.lock());
    assert_eq!(log.len(), 4000, "every request was served");
    let arrived = std::mem::take(&mut *arrived.lock());
    let order: Vec<usize> = log.iter().map(|(a, _)| *a).collect();
    let mut waits: Vec<Duration> = log
        .iter()
        .map(|(a, at)| at.duration_since(arrived[*a].unwrap()))
        .collect();
    waits.sort();
    eprintln!(
        "saturation, 4 endpoints x 4 slots, 64 callers, 4000 requests of 1 ms: \
         {:.2}% served while an earlier arrival waited; wait p50 {:?}, p99 {:?}, oldest {:?}",
        100.0 * out_of_order(&order, 4000),
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.last().unwrap()
    );

    // 2. Hand-over latency: one slot, 16 callers; from the end of a body (just before its
    // slot is released) to the next request reaching the endpoint.
    let log: Log = Arc::default();
    let handovers: Arc<parking_lot::Mutex<Handovers>> = Arc::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("one").max_concurrency(1),
        timed(&log, &handovers, ms(1)),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(1024, Duration::from_secs(60))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..40 {
                    let r = svc.clone().oneshot(empty_request()).await.unwrap();
                    finish(r.into_body()).await;
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!(total_in_flight(&pool), 0);
    assert_eq!(log.lock().len(), 640);
    let mut handovers = std::mem::take(&mut handovers.lock().took);
    handovers.sort();
    eprintln!(
        "hand-over of a freed slot to a waiter (1 slot, 16 callers, {} hand-overs): p50 {:?}, p99 {:?}, max {:?}",
        handovers.len(),
        percentile(&handovers, 0.5),
        percentile(&handovers, 0.99),
        handovers.last().unwrap()
    );

    // 3. A cooldown that ends: from its end to the waiting request reaching the endpoint.
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let held = Held::default();
        let (pool, svc) = queued(&held, &["a", "b"]);
        let until = Instant::now() + ms(30);
        pool.get("b")
            .unwrap()
            .set_health(Health::CoolingDown { until });
        let first = svc.clone().oneshot(empty_request()).await.unwrap();
        let second = svc.clone().oneshot(empty_request()).await.unwrap();
        latencies.push(Instant::now().saturating_duration_since(until));
        assert_eq!(served(&second).key().as_str(), "b");
        held.release("a");
        held.release("b");
        finish(first.into_body()).await;
        finish(second.into_body()).await;
    }
    latencies.sort();
    eprintln!(
        "a waiter served after a 30 ms cooldown ends (20 runs): p50 {:?}, max {:?} after its end",
        percentile(&latencies, 0.5),
        latencies.last().unwrap()
    );
}
