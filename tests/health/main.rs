//! The HealthFilter layer over real HTTP on loopback: ejection, recovery, rate limits,
//! probes, slow start, and a pool where most endpoints fail.
#![allow(unreachable_pub)]

mod ejection_cap;
#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::StatusCode;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    health::{HealthFilterLayer, ProbeConfig},
    Balance, BalanceLayer, BoxError, EndpointError, Health, HealthFilter, HealthPolicy,
    NoEndpoints, Overloaded, Pool,
};

use crate::{
    model_server::{chat_request, http_probe, Mode, Upstream},
    support::{http_pool, ms, read_to_end, served, HttpService},
};

fn policy() -> HealthPolicy {
    let mut p = HealthPolicy::default();
    p.base_ejection = ms(300);
    p.max_ejection = Duration::from_secs(2);
    p.slow_start = None;
    p
}

type Stack = HealthFilter<Balance<HttpService>>;

fn stack(pool: &Pool<HttpService>, policy: HealthPolicy) -> Stack {
    ServiceBuilder::new()
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .service(pool.clone())
}

/// Sends one short request; returns the endpoint that answered and the status.
async fn send<S, B>(svc: &S) -> Result<(String, StatusCode), BoxError>
where
    S: Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
            Error = BoxError,
        > + Clone,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = svc.clone().oneshot(chat_request(1, false)).await?;
    let key = served_key(&response);
    let status = response.status();
    read_to_end(response.into_body()).await.unwrap();
    Ok((key, status))
}

fn served_key<B>(r: &http::Response<B>) -> String {
    served(r).key().to_string()
}

#[tokio::test]
async fn an_endpoint_returning_500s_is_ejected_after_the_threshold_and_returns_when_it_heals() {
    let (pool, servers) = http_pool(3, ms(1), ms(1)).await;
    // An ejection long enough that the 60 requests end inside it on a slow machine too.
    let mut long = policy();
    long.base_ejection = Duration::from_secs(2);
    long.max_ejection = Duration::from_secs(4);
    let svc = stack(&pool, long);
    servers[0].set_mode(Mode::Fail);
    let mut keys = Vec::new();
    for _ in 0..60 {
        keys.push(send(&svc).await.unwrap());
    }
    let on_m0: Vec<_> = keys.iter().filter(|(k, _)| k == "m0").collect();
    assert_eq!(
        on_m0.len(),
        5,
        "m0 took exactly its 5 consecutive failures, then no more"
    );
    assert!(on_m0
        .iter()
        .all(|(_, s)| *s == StatusCode::INTERNAL_SERVER_ERROR));
    assert!(matches!(
        pool.get("m0").unwrap().health(),
        Health::Ejected { .. }
    ));

    // It heals; once the ejection ends, trial requests bring it back.
    servers[0].set_mode(Mode::Normal);
    tokio::time::sleep(ms(2050)).await;
    let mut back = 0;
    for _ in 0..60 {
        let (key, status) = send(&svc).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        back += usize::from(key == "m0");
    }
    assert!(back >= 10, "m0 served {back} of 60 after healing");
    assert_eq!(pool.get("m0").unwrap().health(), Health::Healthy);
}

#[tokio::test]
async fn retry_after_2_takes_the_endpoint_out_for_about_2_seconds_and_no_longer() {
    let (pool, servers) = http_pool(2, ms(1), ms(1)).await;
    let svc = stack(&pool, policy());
    servers[0].set_mode(Mode::RateLimit(2));
    let limited_at = loop {
        let (key, status) = send(&svc).await.unwrap();
        if key == "m0" {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            break Instant::now();
        }
    };
    servers[0].set_mode(Mode::Normal);
    assert!(matches!(
        pool.get("m0").unwrap().health(),
        Health::CoolingDown { .. }
    ));
    let back_at = loop {
        let (key, _) = send(&svc).await.unwrap();
        if key == "m0" {
            break Instant::now();
        }
        assert!(
            limited_at.elapsed() < Duration::from_secs(5),
            "m0 never came back"
        );
        tokio::time::sleep(ms(20)).await;
    };
    let out = back_at - limited_at;
    eprintln!("Retry-After: 2 kept m0 out for {out:?}");
    assert!(out >= ms(1950) && out <= ms(2600), "out for {out:?}");
    // A cooldown is not a failure: m0 was never ejected.
    assert_eq!(
        pool.get("m0").unwrap().failures(),
        1,
        "only the 429 counted against its latency"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_3_of_4_failing_every_request_ends_in_a_response_or_a_typed_error() {
    let (pool, servers) = http_pool(4, ms(1), ms(1)).await;
    let svc = stack(&pool, policy());
    for s in &servers[..3] {
        s.set_mode(Mode::Fail);
    }
    let tally: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(0..400), 16, |_| {
        let (svc, tally) = (svc.clone(), Arc::clone(&tally));
        async move {
            let label = match send(&svc).await {
                Ok((key, StatusCode::OK)) => format!("ok {key}"),
                Ok((key, status)) => format!("{} {key}", status.as_u16()),
                Err(e) if e.is::<EndpointError>() => "endpoint error".into(),
                Err(e) if e.is::<NoEndpoints>() => "no endpoints".into(),
                Err(e) if e.is::<Overloaded>() => "overloaded".into(),
                Err(e) => panic!("untyped error: {e}"),
            };
            *tally.lock().unwrap().entry(label).or_default() += 1;
        }
    })
    .await;
    let tally = tally.lock().unwrap();
    eprintln!("3 of 4 failing, 400 requests: {tally:?}");
    assert_eq!(tally.values().sum::<usize>(), 400, "{tally:?}");
    let ok: usize = tally
        .iter()
        .filter(|(k, _)| k.starts_with("ok"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        ok,
        tally.get("ok m3").copied().unwrap_or(0),
        "only m3 answers 200: {tally:?}"
    );
    assert!(
        ok >= 200,
        "the healthy endpoint served most requests: {tally:?}"
    );
    let ejected = pool
        .endpoints()
        .iter()
        .filter(|e| matches!(e.health(), Health::Ejected { .. }))
        .count();
    assert!(ejected <= 2, "never more than half the pool ejected");
}

#[tokio::test]
async fn probes_bring_an_ejected_endpoint_back_while_no_traffic_flows_and_stop_with_the_pool() {
    let (pool, servers) = http_pool(3, ms(1), ms(1)).await;
    let mut slow_policy = policy();
    slow_policy.base_ejection = Duration::from_secs(60);
    slow_policy.max_ejection = Duration::from_secs(60);
    let layer = HealthFilterLayer::builder()
        .policy(slow_policy)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(BalanceLayer::new())
        .service(pool.clone());

    servers[0].set_mode(Mode::Fail);
    while !matches!(pool.get("m0").unwrap().health(), Health::Ejected { .. }) {
        send(&svc).await.unwrap();
    }
    servers[0].set_mode(Mode::Normal);
    let mut config = ProbeConfig::default();
    config.interval = ms(50);
    config.timeout = ms(500);
    let probes = layer.spawn_probes(&pool, http_probe(Upstream::client()), config);

    // No traffic: the probes alone bring m0 back, long before its 60 s ejection ends.
    let start = Instant::now();
    while matches!(pool.get("m0").unwrap().health(), Health::Ejected { .. }) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "probes did not bring m0 back"
        );
        tokio::time::sleep(ms(10)).await;
    }
    // And eject one whose health check fails, still without traffic.
    servers[1].set_mode(Mode::Fail);
    while !matches!(pool.get("m1").unwrap().health(), Health::Ejected { .. }) {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "probes did not eject m1"
        );
        tokio::time::sleep(ms(10)).await;
    }

    // The task ends by itself once the pool and the layers are gone.
    drop((svc, layer, pool));
    tokio::time::timeout(Duration::from_secs(2), probes)
        .await
        .expect("the probe task ended")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_the_returning_endpoints_share() {
    let (pool, servers) = http_pool(3, ms(5), ms(5)).await;
    let mut p = policy();
    p.base_ejection = ms(200);
    p.slow_start = Some(ms(1600));
    let svc = stack(&pool, p);
    servers[0].set_mode(Mode::Fail);
    while !matches!(pool.get("m0").unwrap().health(), Health::Ejected { .. }) {
        send(&svc).await.unwrap();
    }
    servers[0].set_mode(Mode::Normal);
    tokio::time::sleep(ms(250)).await;

    // 24 callers send 50 ms streams without pause for 2 s; count m0's share per 400 ms.
    let start = Instant::now();
    let seen: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let workers: Vec<_> = (0..24)
        .map(|_| {
            let (svc, seen) = (svc.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                while start.elapsed() < Duration::from_secs(2) {
                    let r = svc.clone().oneshot(chat_request(10, true)).await.unwrap();
                    let on_m0 = served_key(&r) == "m0";
                    read_to_end(r.into_body()).await.unwrap();
                    seen.lock().unwrap().push((start.elapsed(), on_m0));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let share = |from: u64, to: u64| {
        let bucket: Vec<_> = seen
            .iter()
            .filter(|(t, _)| *t >= ms(from) && *t < ms(to))
            .collect();
        bucket.iter().filter(|(_, m0)| *m0).count() as f64 / bucket.len().max(1) as f64
    };
    let (first, last) = (share(0, 400), share(1600, 2000));
    eprintln!(
        "m0's share by 400 ms bucket: {:.2} {:.2} {:.2} {:.2} {:.2}",
        first,
        share(400, 800),
        share(800, 1200),
        share(1200, 1600),
        last
    );
    assert!(first < 0.2, "m0 started at {first:.2} of the traffic");
    assert!(last > 0.25, "m0 ended at {last:.2} of the traffic");
    assert!(
        last > first * 1.5,
        "m0's share rose from {first:.2} to {last:.2}"
    );
}

/// One probe that panics (when called, or while it runs) or hangs fails that endpoint's
/// probe and nothing else: probing goes on, and an ejected endpoint whose probes succeed
/// comes back.
#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_or_hangs_fails_its_endpoint_and_probing_goes_on() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use tower_ai_balance::Endpoint;

    let pool: Pool<()> = Pool::new();
    for key in [
        "back",
        "panics",
        "panics-at-call",
        "hangs",
        "fine-0",
        "fine-1",
        "fine-2",
    ] {
        pool.insert(key, ()).unwrap();
    }
    let back = pool.get("back").unwrap();
    back.set_health(Health::Ejected {
        until: Instant::now() + Duration::from_secs(3600),
    });
    let mut p = policy();
    p.max_ejected_fraction = 1.0;
    let layer = HealthFilterLayer::builder().policy(p).build().unwrap();
    let rounds = Arc::new(AtomicUsize::new(0));
    let probe = {
        let rounds = Arc::clone(&rounds);
        move |e: Arc<Endpoint>| {
            let key = e.key().to_string();
            if key == "panics-at-call" {
                panic!("a probe with a bug");
            }
            if key == "fine-0" {
                rounds.fetch_add(1, SeqCst);
            }
            async move {
                match key.as_str() {
                    "panics" => panic!("a probe with a bug"),
                    "hangs" => std::future::pending().await,
                    _ => true,
                }
            }
        }
    };
    let mut config = ProbeConfig::default();
    config.interval = ms(100);
    config.timeout = ms(50);
    let task = layer.spawn_probes(&pool, probe, config);

    let start = Instant::now();
    while matches!(back.health(), Health::Ejected { .. })
        || !["panics", "panics-at-call", "hangs"]
            .iter()
            .all(|k| matches!(pool.get(k).unwrap().health(), Health::Ejected { .. }))
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "probing stopped: after {} rounds, back is {:?}",
            rounds.load(SeqCst),
            back.health()
        );
        tokio::time::sleep(ms(20)).await;
    }
    let now = rounds.load(SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rounds.load(SeqCst) > now, "probing goes on");
    for key in ["fine-0", "fine-1", "fine-2"] {
        assert_eq!(pool.get(key).unwrap().health(), Health::Healthy);
    }
    assert!(!task.is_finished());
    drop(pool);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the probe task ends with the pool")
        .unwrap();
}

/// An in-process endpoint that answers every request with the status it is set to (a 429
/// with `Retry-After: 1`).
fn answering(
    status: &Arc<std::sync::atomic::AtomicU16>,
) -> tower::util::BoxCloneSyncService<
    http::Request<http_body_util::Full<bytes::Bytes>>,
    http::Response<http_body_util::Full<bytes::Bytes>>,
    std::convert::Infallible,
> {
    let status = Arc::clone(status);
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
            let code = status.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                *r.status_mut() = StatusCode::from_u16(code).unwrap();
                if code == 429 {
                    r.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("1"));
                }
                Ok::<_, std::convert::Infallible>(r)
            }
        },
    ))
}

/// A rate limit never ends a hold (a soft ejection at 5% of the weight) or a slow start's
/// ramp: once its cooldown is over the endpoint is back where the hold or the ramp would have
/// had it, and a success does not make it healthy early.
#[tokio::test(start_paused = true)]
async fn a_cooldown_composes_with_a_hold_and_with_a_ramp() {
    use std::sync::atomic::{AtomicU16, Ordering::SeqCst};

    let pool = Pool::new();
    let (x, y) = (Arc::new(AtomicU16::new(500)), Arc::new(AtomicU16::new(200)));
    pool.insert("x", answering(&x)).unwrap();
    pool.insert("y", answering(&y)).unwrap();
    let mut p = HealthPolicy::default();
    p.base_ejection = Duration::from_secs(30);
    p.slow_start = Some(Duration::from_secs(10));
    let svc = ServiceBuilder::new()
        .layer(HealthFilterLayer::builder().policy(p).build().unwrap())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let call = || async {
        let r = svc.clone().oneshot(support::empty_request()).await.unwrap();
        let key = served_key(&r);
        read_to_end(r.into_body()).await.unwrap();
        key
    };
    // x fails until it is ejected: half of two endpoints, the most that may be.
    while !matches!(pool.get("x").unwrap().health(), Health::Ejected { .. }) {
        call().await;
    }
    // y fails too, and is held at the floor of its weight instead: 30 s, then a 10 s ramp.
    y.store(500, SeqCst);
    while pool.get("y").unwrap().health() == Health::Healthy {
        assert_eq!(call().await, "y");
    }
    let Health::SlowStart { until: held_until } = pool.get("y").unwrap().health() else {
        panic!("y is {:?}", pool.get("y").unwrap().health())
    };
    // From here on only y serves (x's trials would otherwise take requests).
    pool.remove("x").unwrap();

    // A 429 cools y down for 1 s; then y succeeds: it is back in its hold, not healthy.
    y.store(429, SeqCst);
    assert_eq!(call().await, "y");
    assert!(matches!(
        pool.get("y").unwrap().health(),
        Health::CoolingDown { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    y.store(200, SeqCst);
    for _ in 0..10 {
        assert_eq!(call().await, "y");
    }
    assert_eq!(
        pool.get("y").unwrap().health(),
        Health::SlowStart { until: held_until },
        "the hold goes on after the cooldown"
    );

    // The same for a ramp: y ends its hold and ramps; a cooldown in the ramp ends in it.
    tokio::time::sleep_until(held_until - Duration::from_secs(5)).await;
    y.store(429, SeqCst);
    assert_eq!(call().await, "y");
    assert!(matches!(
        pool.get("y").unwrap().health(),
        Health::CoolingDown { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    y.store(200, SeqCst);
    assert_eq!(call().await, "y");
    assert_eq!(
        pool.get("y").unwrap().health(),
        Health::SlowStart { until: held_until },
        "the ramp goes on after the cooldown"
    );
    tokio::time::sleep_until(held_until).await;
    assert_eq!(call().await, "y");
    assert_eq!(pool.get("y").unwrap().health(), Health::Healthy);
}
