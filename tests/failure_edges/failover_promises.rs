//! What Failover promises across attempts: a caller's own exclusions hold, both sides of a
//! lost hedge race are excluded and named, and a dead tier does not take every attempt.

use std::{convert::Infallible, sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    error::AttemptsFailed,
    failover::{FailoverLayer, Hedge},
    health::HealthFilterLayer,
    hints::Exclude,
    BalanceLayer, EndpointConfig, Pool,
};

use crate::{
    model_server::{chat_request, Mode, ModelServer, Spec, Upstream},
    support::{ms, read_to_end, served, HttpService},
};

/// A pool of real servers on loopback: `(key, tier)` each; the servers in the same order.
async fn tiered(endpoints: &[(&str, u32)]) -> (Pool<HttpService>, Vec<ModelServer>) {
    let pool = Pool::new();
    let client = Upstream::client();
    let mut servers = Vec::new();
    for &(key, tier) in endpoints {
        let s = ModelServer::spawn(Spec::new(key, ms(1), ms(1))).await;
        pool.insert(
            EndpointConfig::new(key).tier(tier),
            Upstream::new(client.clone(), s.uri()),
        )
        .unwrap();
        servers.push(s);
    }
    (pool, servers)
}

fn received(s: &ModelServer) -> u64 {
    s.stats.received.load(SeqCst)
}

#[tokio::test]
async fn a_dead_tier_does_not_take_every_attempt_the_first_request_succeeds() {
    let (pool, servers) = tiered(&[("a", 0), ("b", 0), ("c", 0), ("provider", 1)]).await;
    for s in &servers[..3] {
        s.crash(); // connections refused
    }
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let response = svc
        .oneshot(chat_request(1, false))
        .await
        .expect("the last attempt goes on to tier 1");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(served(&response).key().as_str(), "provider");
    read_to_end(response.into_body()).await.unwrap();
}

#[tokio::test]
async fn one_bad_endpoint_among_good_ones_is_retried_within_its_tier() {
    let (pool, servers) = tiered(&[("bad", 0), ("good", 0), ("provider", 1)]).await;
    servers[0].set_mode(Mode::Fail);
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    for _ in 0..10 {
        let response = svc.clone().oneshot(chat_request(1, false)).await.unwrap();
        assert_eq!(served(&response).key().as_str(), "good");
        read_to_end(response.into_body()).await.unwrap();
    }
    assert!(received(&servers[0]) > 0, "the bad endpoint was tried");
    assert_eq!(received(&servers[2]), 0, "no retry left tier 0");
}

#[tokio::test]
async fn a_callers_own_exclusion_survives_retries() {
    let (pool, servers) = tiered(&[("a", 0), ("b", 0), ("c", 0)]).await;
    servers[0].set_mode(Mode::Fail);
    servers[1].set_mode(Mode::Fail);
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone());
    let c = pool
        .endpoints()
        .into_iter()
        .find(|e| e.key().as_str() == "c")
        .unwrap();
    let mut request = chat_request(1, false);
    let mut exclude = Exclude::new();
    exclude.insert(&c);
    request.extensions_mut().insert(exclude);
    let error = svc
        .oneshot(request)
        .await
        .expect_err("a and b fail; c is excluded");
    assert!(error.is::<AttemptsFailed>(), "{error}");
    assert_eq!(received(&servers[2]), 0, "the caller excluded c");
    assert_eq!((received(&servers[0]), received(&servers[1])), (1, 1));
}

/// An in-process endpoint that answers 500 after `delay`, counting its calls.
fn failing_after(
    delay: Duration,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible> {
    BoxCloneSyncService::new(tower::service_fn(move |_: Request<Full<Bytes>>| {
        calls.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            Ok::<_, Infallible>(r)
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn both_sides_of_a_lost_hedge_race_are_excluded_and_named() {
    let pool = Pool::new();
    let calls: Vec<_> = (0..2).map(|_| std::sync::Arc::default()).collect();
    for (key, calls) in ["a", "b"].into_iter().zip(&calls) {
        pool.insert(
            EndpointConfig::new(key),
            failing_after(ms(100), std::sync::Arc::clone(calls)),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .attempts(2)
                .hedge(Hedge::After(ms(10)))
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone());
    let request = Request::new(Full::new(Bytes::from_static(b"{}")));
    let error = svc.oneshot(request).await.expect_err("both fail");
    let failed = error
        .downcast_ref::<AttemptsFailed>()
        .unwrap_or_else(|| panic!("{error}"));
    let mut named: Vec<String> = failed
        .attempts()
        .iter()
        .map(|a| a.endpoint.as_ref().unwrap().as_str().to_owned())
        .collect();
    named.sort();
    assert_eq!(named, ["a", "b"], "{error}");
    let calls: Vec<usize> = calls.iter().map(|c| c.load(SeqCst)).collect();
    assert_eq!(calls, [1, 1], "neither side of the race was tried again");
}
