use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{BalanceLayer, EndpointConfig, Overloaded, Pool};

use crate::{
    model_server::{chat_request, ModelServer, Spec, Upstream},
    support::{empty_request, finish, ms, read_to_end, served, total_in_flight, Held},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_is_never_exceeded_and_the_queue_serves_everyone() {
    let pool = Pool::new();
    let client = Upstream::client();
    let mut servers = Vec::new();
    for i in 0..3 {
        let s = ModelServer::spawn(Spec::new(format!("m{i}"), ms(2), ms(3))).await;
        pool.insert(
            EndpointConfig::new(format!("m{i}")).max_concurrency(2),
            Upstream::new(client.clone(), s.uri()),
        )
        .unwrap();
        servers.push(s);
    }
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(1000, Duration::from_secs(30))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = svc.oneshot(chat_request(5, i % 2 == 0)).await.unwrap();
                read_to_end(r.into_body()).await.unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for s in &servers {
        let peak = s.stats.peak_in_flight.load(SeqCst);
        assert!(
            peak <= 2,
            "{} saw {peak} requests at once with a limit of 2",
            s.spec.name
        );
    }
    let served: u64 = servers.iter().map(|s| s.stats.completed.load(SeqCst)).sum();
    assert_eq!(served, 60, "every queued request was served");
    assert_eq!(total_in_flight(&pool), 0);
}

#[tokio::test]
async fn without_a_queue_a_full_pool_fails_at_once_with_overloaded() {
    let held = Held::default();
    let pool = Pool::new();
    for name in ["a", "b"] {
        pool.insert(
            EndpointConfig::new(name).max_concurrency(3),
            held.service(name),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut bodies = Vec::new();
    let mut overloaded = 0;
    for _ in 0..10 {
        match svc.clone().oneshot(empty_request()).await {
            Ok(r) => bodies.push(r.into_body()),
            Err(e) => {
                let e = e.downcast_ref::<Overloaded>().expect("Overloaded");
                assert_eq!(e.waited(), None);
                overloaded += 1;
            }
        }
    }
    assert_eq!((bodies.len(), overloaded), (6, 4));
    assert_eq!(total_in_flight(&pool), 6);
    held.release("a");
    held.release("b");
    for b in bodies {
        finish(b).await;
    }
    assert_eq!(total_in_flight(&pool), 0);
}

#[tokio::test(start_paused = true)]
async fn the_queue_times_out_is_bounded_and_hands_over_freed_slots() {
    let held = Held::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").max_concurrency(1),
        held.service("a"),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(1, Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let first = svc.clone().oneshot(empty_request()).await.unwrap();

    // Waits its 2 s, then fails with how long it waited.
    let started = tokio::time::Instant::now();
    let err = crate::support::call_err(svc.clone().oneshot(empty_request())).await;
    let waited = err
        .downcast_ref::<Overloaded>()
        .expect("Overloaded")
        .waited()
        .unwrap();
    assert!(waited >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(3));

    // One waits; a second finds the queue full and fails at once.
    let waiter = tokio::spawn(svc.clone().oneshot(empty_request()));
    tokio::time::sleep(ms(100)).await;
    let err = crate::support::call_err(svc.clone().oneshot(empty_request())).await;
    assert_eq!(
        err.downcast_ref::<Overloaded>()
            .expect("Overloaded")
            .waited(),
        None
    );

    // Freeing the slot hands it to the waiter.
    held.release_one("a");
    finish(first.into_body()).await;
    let second = tokio::time::timeout(ms(500), waiter)
        .await
        .expect("woken")
        .unwrap()
        .unwrap();
    assert_eq!(served(&second).key().as_str(), "a");
    held.release("a");
    finish(second.into_body()).await;
    assert_eq!(total_in_flight(&pool), 0);
}

#[tokio::test]
async fn the_lowest_tier_with_room_wins_and_traffic_spills_to_the_next() {
    let held = Held::default();
    let pool = Pool::new();
    pool.insert(EndpointConfig::new("paid").tier(1), held.service("paid"))
        .unwrap();
    pool.insert(
        EndpointConfig::new("gpu-0").tier(0).max_concurrency(1),
        held.service("gpu-0"),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("gpu-1").tier(0).max_concurrency(1),
        held.service("gpu-1"),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut keys = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let r = svc.clone().oneshot(empty_request()).await.unwrap();
        keys.push(served(&r).key().to_string());
        bodies.push(r.into_body());
    }
    keys[..2].sort();
    assert_eq!(keys, ["gpu-0", "gpu-1", "paid", "paid"]);
    held.release("gpu-0");
    held.release("gpu-1");
    held.release("paid");
    for b in bodies {
        finish(b).await;
    }
    let r = svc.oneshot(empty_request()).await.unwrap();
    assert!(
        served(&r).key().as_str().starts_with("gpu-"),
        "back to tier 0 once it has room"
    );
    held.release("gpu-0");
    held.release("gpu-1");
    finish(r.into_body()).await;
}

#[tokio::test]
async fn the_exclude_hint_is_honoured() {
    let held = Held::default();
    let pool = Pool::new();
    for name in ["a", "b", "c"] {
        pool.insert(name, held.service(name)).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut exclude = tower_ai_balance::hints::Exclude::new();
    exclude.insert(&pool.get("a").unwrap());
    exclude.insert(&pool.get("c").unwrap());
    for _ in 0..100 {
        let mut req = crate::support::quick_request();
        req.extensions_mut().insert(exclude.clone());
        let r = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(served(&r).key().as_str(), "b");
        finish(r.into_body()).await;
    }
}

/// An endpoint that never answers fails the attempt with `Timeout`, naming the endpoint and
/// releasing its slot, at the pick's time plus the timeout: time spent before the future is
/// first polled counts.
#[tokio::test(start_paused = true)]
async fn the_per_attempt_timeout_runs_from_the_pick_and_releases_the_slot() {
    let pool = Pool::new();
    let never = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| {
        std::future::pending::<
            Result<http::Response<http_body_util::Empty<bytes::Bytes>>, std::convert::Infallible>,
        >()
    });
    pool.insert(EndpointConfig::new("stuck"), never).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let start = tokio::time::Instant::now();
    let future = svc.ready().await.unwrap().call(empty_request());
    assert_eq!(total_in_flight(&pool), 1, "the slot is taken at the pick");
    tokio::time::advance(Duration::from_secs(3)).await;
    let error = future.await.unwrap_err();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "5 s after the pick, not the poll"
    );
    let failed = error
        .downcast_ref::<tower_ai_balance::EndpointError>()
        .expect("the error names the endpoint");
    assert_eq!(failed.endpoint().key().as_str(), "stuck");
    assert!(failed.inner().is::<tower_ai_balance::Timeout>());
    assert_eq!(total_in_flight(&pool), 0, "the slot came back");
}
