//! Settings at their extremes: `Duration::MAX` as "no limit", an absurd `Retry-After`, a
//! retry budget of 1e300. None panics or wraps, in debug or release.

use std::{
    sync::{atomic::AtomicU16, Arc},
    time::Duration,
};

use http::{HeaderName, HeaderValue, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    affinity::{Header, StreamAffinityLayer},
    failover::{FailoverLayer, Hedge, RetryBudget},
    health::{HealthFilterLayer, HealthPolicy},
    BalanceLayer, Health,
};

use crate::{
    model_server::chat_request,
    support::{http_pool, ms, read_to_end},
};

#[test]
fn an_enormous_retry_budget_neither_panics_nor_wraps() {
    let budget = RetryBudget::new(1e300, 0).expect("a finite ratio");
    for _ in 0..3 {
        budget.deposit();
        assert!(budget.withdraw(), "a deposit of 1e300 retries allows one");
        // A deposit onto a balance short of the cap must not overflow.
        budget.deposit();
    }
    for ratio in [f64::NAN, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(RetryBudget::new(ratio, 0).is_err(), "{ratio} is refused");
    }
}

#[tokio::test]
async fn duration_max_means_no_limit_everywhere() {
    let (pool, _servers) = http_pool(2, ms(1), ms(1)).await;
    let mut policy = HealthPolicy::default();
    policy.max_cooldown = Duration::MAX;
    policy.max_ejection = Duration::MAX;
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .deadline(Duration::MAX)
                .budget(RetryBudget::new(1e300, 0).unwrap())
                .build()
                .unwrap(),
        )
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::MAX)
                .idle_timeout(Duration::MAX)
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    for stream in [false, true] {
        let response = svc.clone().oneshot(chat_request(3, stream)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        read_to_end(response.into_body()).await.unwrap();
    }

    // Failover's own waits and the affinity table's idle time at `Duration::MAX`: a hedge
    // that never fires, a first-chunk wait without end, sessions never forgotten.
    for hedge in [
        Hedge::After(Duration::MAX),
        Hedge::Percentile {
            p: 0.9,
            floor: Duration::MAX,
        },
    ] {
        let svc = ServiceBuilder::new()
            .layer(
                FailoverLayer::builder()
                    .deadline(Duration::MAX)
                    .first_chunk(Duration::MAX)
                    .hedge(hedge)
                    .build()
                    .unwrap(),
            )
            .layer(
                StreamAffinityLayer::builder(Header(HeaderName::from_static("x-session-id")))
                    .remember(16, Duration::MAX)
                    .build()
                    .unwrap(),
            )
            .layer(HealthFilterLayer::new())
            .layer(BalanceLayer::new())
            .service(pool.clone());
        for stream in [false, true, false] {
            let mut request = chat_request(3, stream);
            request
                .headers_mut()
                .insert("x-session-id", HeaderValue::from_static("s"));
            let response = svc.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            read_to_end(response.into_body()).await.unwrap();
        }
    }
}

#[tokio::test]
async fn an_absurd_retry_after_cools_an_endpoint_down_without_overflow() {
    let upstream = tower::service_fn(
        |_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
            let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut()
                .insert("retry-after", "99999999999999999999".parse().unwrap());
            Ok::<_, std::convert::Infallible>(r)
        },
    );
    let p = tower_ai_balance::Pool::new();
    p.insert(tower_ai_balance::EndpointConfig::new("a"), upstream)
        .unwrap();
    let mut policy = HealthPolicy::default();
    policy.max_cooldown = Duration::MAX;
    let svc = ServiceBuilder::new()
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(BalanceLayer::new())
        .service(p.clone());
    let response = svc
        .oneshot(http::Request::new(http_body_util::Full::new(
            bytes::Bytes::new(),
        )))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let a = p.endpoints()[0].clone();
    assert!(
        matches!(a.health(), Health::CoolingDown { .. }),
        "{:?}",
        a.health()
    );
}

type Plain = tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    http::Response<http_body_util::Full<bytes::Bytes>>,
    std::convert::Infallible,
>;

/// An endpoint service that answers `status` (and nothing else) to every request.
fn answering(status: u16) -> Plain {
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_: http::Request<http_body_util::Full<bytes::Bytes>>| async move {
            // A body of one frame: the slot is held until it is read or dropped.
            let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(r)
        },
    ))
}

fn request() -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::new(http_body_util::Full::new(bytes::Bytes::new()))
}

/// NaN, infinite and absurdly large weights are refused where they are set, with a typed
/// error; the largest weight taken, and 0, work with every strategy.
#[tokio::test]
async fn weights_at_their_extremes_are_refused_or_served() {
    use tower_ai_balance::{pick::Strategy, ConfigError, EndpointConfig, Pool};

    let pool: Pool<Plain> = Pool::new();
    for (weight, refused) in [
        (f64::NAN, "NonFiniteWeight"),
        (f64::INFINITY, "NonFiniteWeight"),
        (f64::MAX, "WeightTooLarge"),
        (-0.5, "NegativeWeight"),
    ] {
        let e = pool
            .insert(EndpointConfig::new("x").weight(weight), answering(200))
            .unwrap_err();
        assert!(format!("{e:?}").starts_with(refused), "{weight}: {e:?}");
    }
    let max = EndpointConfig::MAX_WEIGHT;
    pool.insert(EndpointConfig::new("big").weight(max), answering(200))
        .unwrap();
    pool.insert(EndpointConfig::new("also-big").weight(max), answering(200))
        .unwrap();
    pool.insert(EndpointConfig::new("small").weight(1.0), answering(200))
        .unwrap();
    pool.insert(EndpointConfig::new("drained").weight(0.0), answering(200))
        .unwrap();
    assert!(matches!(
        pool.set_weight("small", f64::MAX),
        Err(ConfigError::WeightTooLarge { .. })
    ));
    assert!(matches!(
        pool.set_weight("small", f64::NAN),
        Err(ConfigError::NonFiniteWeight { .. })
    ));
    assert_eq!(
        pool.get("small").unwrap().weight(),
        1.0,
        "a refused weight changes nothing"
    );
    for strategy in [
        Strategy::PowerOfTwoChoices,
        Strategy::LeastLoaded,
        Strategy::PeakEwma,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
        Strategy::LeastWork,
        Strategy::LeastWorkScan,
        Strategy::CostAware { max_load: f64::MAX },
    ] {
        let svc = ServiceBuilder::new()
            .layer(BalanceLayer::builder().strategy(strategy).build().unwrap())
            .service(pool.clone());
        let mut big = 0;
        for _ in 0..200 {
            let r = svc.clone().oneshot(request()).await.unwrap();
            let key = r
                .extensions()
                .get::<tower_ai_balance::hints::Served>()
                .unwrap()
                .endpoint()
                .key()
                .to_string();
            assert_ne!(key, "drained", "{strategy:?}: weight 0 takes no request");
            big += usize::from(key != "small");
        }
        if strategy == Strategy::Weighted {
            // Weighted in proportion: "small" is owed 1 in 2·10¹², so none of 200.
            assert_eq!(big, 200, "the weighted sum stays finite");
        }
    }
}

/// A limit of 0 is refused; `usize::MAX` means no limit.
#[tokio::test]
async fn concurrency_limits_at_their_extremes() {
    use tower_ai_balance::{ConfigError, EndpointConfig, Pool};

    let pool: Pool<Plain> = Pool::new();
    assert!(matches!(
        pool.insert(
            EndpointConfig::new("zero").max_concurrency(0),
            answering(200)
        ),
        Err(ConfigError::ZeroMaxConcurrency { .. })
    ));
    let e = pool
        .insert(
            EndpointConfig::new("unbounded").max_concurrency(usize::MAX),
            answering(200),
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let responses: Vec<_> =
        futures_util::future::join_all((0..64).map(|_| svc.clone().oneshot(request()))).await;
    assert!(responses.iter().all(|r| r.is_ok()));
    assert_eq!(e.in_flight(), 64, "the bodies are still held");
    drop(responses);
    assert_eq!(e.in_flight(), 0);
}

/// A queue of 0 turns every waiting request away at once; a queue of `usize::MAX` with a
/// timeout of `Duration::MAX` waits for the slot, however long.
#[tokio::test(start_paused = true)]
async fn queue_sizes_at_their_extremes() {
    use tower_ai_balance::{EndpointConfig, Overloaded, Pool};

    let pool: Pool<Plain> = Pool::new();
    pool.insert(
        EndpointConfig::new("one").max_concurrency(1),
        answering(200),
    )
    .unwrap();
    for (size, timeout) in [
        (0, Duration::MAX),
        (usize::MAX, Duration::MAX),
        (8, Duration::ZERO),
    ] {
        let svc = ServiceBuilder::new()
            .layer(
                BalanceLayer::builder()
                    .queue(size, timeout)
                    .build()
                    .unwrap(),
            )
            .service(pool.clone());
        let first = svc.clone().oneshot(request()).await.unwrap();
        let second = tokio::spawn(svc.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        if size == usize::MAX {
            assert!(!second.is_finished(), "it waits for the slot");
            drop(first);
            let r = second.await.unwrap().unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        } else {
            let e = second.await.unwrap().unwrap_err();
            assert!(e.is::<Overloaded>(), "{size}, {timeout:?}: {e}");
            drop(first);
        }
    }
}

/// Every duration of a health policy at `Duration::MAX` (the failure window, the first
/// ejection, the default cooldown, the slow start), and a slow start of zero: ejections,
/// trials, cooldowns and ramps run without a panic or a wrapped instant.
#[tokio::test(start_paused = true)]
async fn health_durations_at_their_extremes() {
    use tower_ai_balance::{hints::Exclude, EndpointConfig, Pool};

    for slow_start in [Some(Duration::MAX), Some(Duration::ZERO), None] {
        let failing = Arc::new(AtomicU16::new(500));
        let pool: Pool<Plain> = Pool::new();
        pool.insert(EndpointConfig::new("a"), switching(&failing))
            .unwrap();
        pool.insert(EndpointConfig::new("b"), answering(200))
            .unwrap();
        let mut policy = HealthPolicy::default();
        policy.consecutive_failures = 1;
        policy.window = Duration::MAX;
        policy.base_ejection = Duration::from_secs(1);
        policy.max_ejection = Duration::MAX;
        policy.default_cooldown = Duration::MAX;
        policy.max_cooldown = Duration::MAX;
        policy.trials = 1;
        policy.slow_start = slow_start;
        let svc = ServiceBuilder::new()
            .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
            .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
            .service(pool.clone());
        let a = pool.get("a").unwrap();
        let to_a = || {
            let mut r = request();
            let mut exclude = Exclude::new();
            exclude.insert(&pool.get("b").unwrap());
            r.extensions_mut().insert(exclude);
            r
        };
        let r = svc.clone().oneshot(to_a()).await.unwrap();
        assert_eq!(r.status(), 500);
        read_to_end(r.into_body()).await.unwrap();
        assert!(
            matches!(a.health(), Health::Ejected { .. }),
            "{:?}",
            a.health()
        );
        // The trial succeeds: back, ramping over `slow_start`.
        tokio::time::sleep(Duration::from_secs(2)).await;
        failing.store(200, std::sync::atomic::Ordering::SeqCst);
        let r = svc.clone().oneshot(to_a()).await.unwrap();
        read_to_end(r.into_body()).await.unwrap();
        match slow_start {
            Some(d) if !d.is_zero() => {
                assert!(
                    matches!(a.health(), Health::SlowStart { .. }),
                    "{:?}",
                    a.health()
                )
            }
            _ => assert_eq!(a.health(), Health::Healthy),
        }
        // Still served while ramping.
        for _ in 0..3 {
            let r = svc.clone().oneshot(to_a()).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            read_to_end(r.into_body()).await.unwrap();
        }
        // A 429 without Retry-After cools down for the default: "as long as it can".
        failing.store(429, std::sync::atomic::Ordering::SeqCst);
        let r = svc.clone().oneshot(to_a()).await.unwrap();
        read_to_end(r.into_body()).await.unwrap();
        let Health::CoolingDown { until } = a.health() else {
            panic!("{:?}", a.health());
        };
        assert!(until > tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
        // While it cools down, a request only it could serve fails at once.
        assert!(svc.clone().oneshot(to_a()).await.is_err(), "a cools down");
    }
}

/// A service answering the status in `status` at each call.
fn switching(status: &Arc<AtomicU16>) -> Plain {
    let status = Arc::clone(status);
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let code = status.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut r =
                    Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")));
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                Ok::<_, std::convert::Infallible>(r)
            }
        },
    ))
}
