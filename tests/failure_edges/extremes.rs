//! Settings at their extremes: `Duration::MAX` as "no limit", an absurd `Retry-After`, a
//! retry budget of 1e300. None panics or wraps, in debug or release.

use std::time::Duration;

use http::{Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    failover::{FailoverLayer, RetryBudget},
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
