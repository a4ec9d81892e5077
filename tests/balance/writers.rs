//! The pool's writers: a write resolves its key where it applies the change, the tasks that
//! feed a pool from a stream end with the pool, and removed endpoints stay in the metrics
//! while they drain.

use std::{convert::Infallible, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tower::{discover::Change, ServiceBuilder, ServiceExt};
use tower_ai_balance::{BalanceLayer, EndpointConfig, Pool};

use crate::support::{empty_request, finish, Held};

/// An operator's drain (`set_weight(k, 0)`) racing a re-insert of the same key (`upsert`, as
/// a `Discover` refresh does) must weight the endpoint that ends up in the pool, whichever
/// write comes first.
#[test]
fn set_weight_racing_an_upsert_weights_the_endpoint_in_the_pool() {
    let pool: Pool<u32> = Pool::new();
    pool.insert("k", 0).unwrap();
    // Other endpoints make each copy of the snapshot take a little longer, as in a real pool.
    for i in 0..64 {
        pool.insert(format!("other-{i}"), 0).unwrap();
    }
    let mut lost = 0;
    let rounds = 500;
    for round in 0..rounds {
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                pool.upsert("k", round);
            });
            s.spawn(|| {
                barrier.wait();
                pool.set_weight("k", 0.0).unwrap();
            });
        });
        if pool.get("k").unwrap().weight() != 0.0 {
            lost += 1;
        }
        pool.set_weight("k", 1.0).unwrap();
    }
    assert_eq!(lost, 0, "the drain was lost in {lost} of {rounds} rounds");
}

/// A `Discover` stream that never ends, and never wakes again once it has announced its
/// endpoints: dropping every handle to the pool ends the task that feeds it, and frees the
/// pool and its endpoints' services.
#[tokio::test]
async fn the_task_that_drives_discover_ends_with_the_pool() {
    let token = Arc::new(());
    let runtime = tokio::runtime::Handle::current();
    let before = runtime.metrics().num_alive_tasks();
    let pool: Pool<Arc<()>> = Pool::new();
    let changes = futures_util::stream::iter(
        ["a", "b"].map(|k| Ok::<_, Infallible>(Change::Insert(k, Arc::clone(&token)))),
    )
    .chain(futures_util::stream::pending());
    let task = tokio::spawn(pool.discover(changes));
    while pool.len() < 2 {
        tokio::task::yield_now().await;
    }
    assert_eq!(Arc::strong_count(&token), 3, "two services in the pool");
    drop(pool);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends with the pool")
        .unwrap()
        .unwrap();
    assert_eq!(Arc::strong_count(&token), 1, "the services are freed");
    assert_eq!(runtime.metrics().num_alive_tasks(), before);
}

/// The same for `spawn_discovery`, whose stream carries each endpoint's config.
#[tokio::test]
async fn spawn_discovery_ends_with_the_pool_even_if_its_stream_never_wakes() {
    let token = Arc::new(());
    let runtime = tokio::runtime::Handle::current();
    let before = runtime.metrics().num_alive_tasks();
    let pool: Pool<Arc<()>> = Pool::new();
    let changes = futures_util::stream::iter(["a", "b"].map(|k| {
        Ok::<_, Infallible>(Change::Insert(
            k,
            (EndpointConfig::new(k), Arc::clone(&token)),
        ))
    }))
    .chain(futures_util::stream::pending());
    let task = pool.spawn_discovery(changes);
    while pool.len() < 2 {
        tokio::task::yield_now().await;
    }
    drop(pool);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task ends with the pool")
        .unwrap()
        .unwrap();
    assert_eq!(Arc::strong_count(&token), 1, "the services are freed");
    assert_eq!(runtime.metrics().num_alive_tasks(), before);
}

/// A removed endpoint is reported while its requests run (its in-flight count, and the
/// completions that come after its removal), then no more.
#[tokio::test]
async fn metrics_report_a_removed_endpoint_until_it_has_drained() {
    let held = Held::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").max_concurrency(2),
        held.service("a"),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let first = svc.clone().oneshot(empty_request()).await.unwrap();
    let second = svc.clone().oneshot(empty_request()).await.unwrap();
    pool.remove("a").unwrap();
    pool.insert("b", held.service("b")).unwrap();

    let report = |m: &tower_ai_balance::metrics::PoolMetrics| {
        m.endpoints
            .iter()
            .find(|e| e.key == "a")
            .map(|e| (e.in_flight, e.requests))
    };
    let metrics = pool.metrics();
    assert_eq!(report(&metrics), Some((2, 0)), "draining, two in flight");
    assert!(metrics.prometheus().contains("endpoint=\"a\""));

    held.release_one("a");
    finish(first.into_body()).await;
    assert_eq!(
        report(&pool.metrics()),
        Some((1, 1)),
        "a completion after removal"
    );
    held.release_one("a");
    finish(second.into_body()).await;
    assert_eq!(
        report(&pool.metrics()),
        Some((0, 2)),
        "the last completion is reported once"
    );
    assert_eq!(
        report(&pool.metrics()),
        None,
        "then the drained endpoint is gone"
    );
    assert_eq!(pool.metrics().endpoints.len(), 1);
}
