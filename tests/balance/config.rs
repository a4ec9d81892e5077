use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{BalanceLayer, ConfigError, EndpointConfig, Health, NoEndpoints, Pool};

use crate::support::{echo, empty_request, Echo};

#[tokio::test]
async fn an_empty_pool_is_a_typed_error_not_a_hang() {
    let pool: Pool<Echo> = Pool::new();
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let err = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(empty_request()))
        .await
        .expect("no hang")
        .unwrap_err();
    let err = err.downcast_ref::<NoEndpoints>().expect("NoEndpoints");
    assert!(err.pool_was_empty());

    // Every endpoint removed: the same.
    pool.insert("a", echo("a")).unwrap();
    pool.remove("a").unwrap();
    let err = crate::support::call_err(svc.oneshot(empty_request())).await;
    assert!(err.is::<NoEndpoints>());
}

#[tokio::test]
async fn every_endpoint_ejected_says_when_the_first_returns() {
    let pool = Pool::new();
    let now = tokio::time::Instant::now();
    for (name, secs) in [("a", 30), ("b", 5)] {
        let e = pool.insert(name, echo(name)).unwrap();
        e.set_health(Health::Ejected {
            until: now + Duration::from_secs(secs),
        });
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool);
    let err = crate::support::call_err(svc.oneshot(empty_request())).await;
    let err = err.downcast_ref::<NoEndpoints>().expect("NoEndpoints");
    assert!(!err.pool_was_empty());
    let back = err.retry_after().expect("a time to come back");
    assert!(
        back <= Duration::from_secs(5) && back > Duration::from_secs(4),
        "{back:?}"
    );
}

#[test]
fn bad_configuration_is_refused_with_a_typed_error() {
    let pool: Pool<Echo> = Pool::new();
    let refused = |config: EndpointConfig| pool.insert(config, echo("x")).unwrap_err();
    assert!(matches!(
        refused(EndpointConfig::new("n").weight(-1.0)),
        ConfigError::NegativeWeight { .. }
    ));
    assert!(matches!(
        refused(EndpointConfig::new("n").weight(f64::NAN)),
        ConfigError::NonFiniteWeight { .. }
    ));
    assert!(matches!(
        refused(EndpointConfig::new("n").weight(f64::INFINITY)),
        ConfigError::NonFiniteWeight { .. }
    ));
    assert!(matches!(
        refused(EndpointConfig::new("n").max_concurrency(0)),
        ConfigError::ZeroMaxConcurrency { .. }
    ));
    assert!(pool.is_empty(), "nothing refused was added");

    pool.insert("a", echo("a")).unwrap();
    assert!(matches!(
        refused(EndpointConfig::new("a")),
        ConfigError::DuplicateKey { .. }
    ));
    assert!(matches!(
        pool.set_weight("a", f64::NAN),
        Err(ConfigError::NonFiniteWeight { .. })
    ));
    assert!(matches!(
        pool.set_weight("a", -0.5),
        Err(ConfigError::NegativeWeight { .. })
    ));
    assert!(matches!(
        pool.set_weight("zz", 1.0),
        Err(ConfigError::UnknownEndpoint { .. })
    ));
    assert_eq!(
        pool.get("a").unwrap().weight(),
        1.0,
        "a refused weight changes nothing"
    );
    assert!(pool.remove("zz").is_none());
    // -0.0 is zero, not negative: it drains.
    pool.set_weight("a", -0.0).unwrap();
    assert_eq!(pool.get("a").unwrap().weight(), 0.0);
    let message = refused(EndpointConfig::new("n").weight(-2.0)).to_string();
    assert!(
        message.contains("n") && message.contains("negative"),
        "{message}"
    );
}
