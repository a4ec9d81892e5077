//! Bad input: each case has a documented typed outcome, never a panic or a hang.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    affinity::StreamAffinityLayer, BalanceLayer, EndpointConfig, Health, NoEndpoints, Pool,
};

use crate::support::{echo, served, Echo};

#[tokio::test]
async fn a_hundred_thousand_endpoints_are_balanced_without_a_hang() {
    let pool: Pool<Echo> = Pool::new();
    let service = echo("e");
    // One snapshot for the lot: inserting one at a time would copy the snapshot each time.
    let batch = (0..100_000).map(|i| {
        (
            EndpointConfig::new(format!("e{i}")).max_concurrency(4),
            service.clone(),
        )
    });
    pool.extend(batch).unwrap();
    assert_eq!(pool.len(), 100_000);
    // A batch with a duplicate changes nothing.
    let dup = [
        (EndpointConfig::new("new"), service.clone()),
        (EndpointConfig::new("e3"), service.clone()),
    ];
    assert!(matches!(
        pool.extend(dup),
        Err(tower_ai_balance::ConfigError::DuplicateKey { .. })
    ));
    assert!(pool.get("new").is_none());
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let run = async {
        for _ in 0..1_000 {
            svc.clone()
                .oneshot(Request::new(Full::new(Bytes::new())))
                .await
                .unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("no hang");
    // Changes to a large pool still publish whole snapshots.
    pool.remove("e500").unwrap();
    pool.set_weight("e7", 0.0).unwrap();
    assert_eq!(pool.len(), 99_999);
}

#[tokio::test]
async fn a_one_megabyte_affinity_key_routes_like_any_other() {
    let pool: Pool<Echo> = Pool::new();
    for name in ["a", "b", "c", "d"] {
        pool.insert(name, echo(name)).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(StreamAffinityLayer::header(http::HeaderName::from_static(
            "x-session-id",
        )))
        .layer(BalanceLayer::new())
        .service(pool);
    let key = "k".repeat(1 << 20);
    let request = || {
        Request::builder()
            .header("x-session-id", key.as_str())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let first = served(&svc.clone().oneshot(request()).await.unwrap())
        .key()
        .clone();
    for _ in 0..10 {
        assert_eq!(
            served(&svc.clone().oneshot(request()).await.unwrap()).key(),
            &first
        );
    }
}

#[tokio::test]
async fn every_endpoint_ejected_without_panic_mode_is_a_typed_error() {
    let pool: Pool<Echo> = Pool::new();
    for name in ["a", "b"] {
        let e = pool.insert(name, echo(name)).unwrap();
        e.set_health(Health::Ejected {
            until: tokio::time::Instant::now() + Duration::from_secs(9),
        });
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool);
    let e = svc
        .oneshot(Request::new(Full::new(Bytes::new())))
        .await
        .expect_err("none available");
    let e = e.downcast_ref::<NoEndpoints>().expect("NoEndpoints");
    assert!(e.retry_after().unwrap() > Duration::from_secs(8));
}

#[tokio::test]
async fn every_endpoint_cooling_down_is_a_typed_rate_limit_whatever_panic_mode_says() {
    for panic_mode in [false, true] {
        let pool: Pool<Echo> = Pool::new();
        for name in ["a", "b"] {
            let e = pool.insert(name, echo(name)).unwrap();
            e.set_health(Health::CoolingDown {
                until: tokio::time::Instant::now() + Duration::from_secs(9),
            });
        }
        let svc = ServiceBuilder::new()
            .layer(
                BalanceLayer::builder()
                    .panic_mode(panic_mode)
                    .build()
                    .unwrap(),
            )
            .service(pool);
        let e = svc
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .expect_err("none available");
        let e = e
            .downcast_ref::<tower_ai_balance::RateLimited>()
            .unwrap_or_else(|| panic!("{e}"));
        assert!(e.retry_after() > Duration::from_secs(8));
    }
}
