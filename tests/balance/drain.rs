use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{BalanceLayer, Pool};

use crate::support::{empty_request, finish, ms, quick_request, served, Held};

#[tokio::test]
async fn a_removed_endpoint_gets_no_new_picks_and_drains_after_its_last_request() {
    let held = Held::default();
    let pool = Pool::new();
    for name in ["a", "b", "c"] {
        pool.insert(name, held.service(name)).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());

    // 30 long requests in flight, about 10 on each endpoint.
    let mut bodies = Vec::new();
    for _ in 0..30 {
        bodies.push(tokio::spawn(finish(
            svc.clone()
                .oneshot(empty_request())
                .await
                .unwrap()
                .into_body(),
        )));
    }
    let a = pool.get("a").unwrap();
    let on_a = a.in_flight();
    assert!(on_a > 0);

    let removed = pool.remove("a").unwrap();
    assert!(removed.is_removed());
    assert!(pool.get("a").is_none());
    let drained = tokio::spawn(async move { removed.drained().await });

    // Mid-traffic: new requests never reach `a`.
    for _ in 0..300 {
        let r = svc.clone().oneshot(quick_request()).await.unwrap();
        assert_ne!(served(&r).key().as_str(), "a");
        finish(r.into_body()).await;
    }
    assert_eq!(
        a.in_flight(),
        on_a,
        "in-flight requests on a removed endpoint keep running"
    );

    // The drain resolves only after the last of them.
    for _ in 1..on_a {
        assert!(held.release_one("a"));
    }
    tokio::time::sleep(ms(20)).await;
    assert!(
        !drained.is_finished(),
        "drained with a request still in flight"
    );
    assert!(held.release_one("a"));
    tokio::time::timeout(ms(2000), drained)
        .await
        .expect("drain resolves")
        .unwrap();
    assert_eq!(a.in_flight(), 0);

    held.release("b");
    held.release("c");
    for b in bodies {
        b.await.unwrap();
    }
}

#[tokio::test]
async fn weight_zero_drains_and_a_weight_brings_it_back() {
    let held = Held::default();
    let pool = Pool::new();
    for name in ["a", "b"] {
        pool.insert(name, held.service(name)).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(
            svc.clone()
                .oneshot(empty_request())
                .await
                .unwrap()
                .into_body(),
        );
    }
    let b = pool.get("b").unwrap();
    let on_b = b.in_flight();
    assert!(on_b > 0);

    pool.set_weight("b", 0.0).unwrap();
    for _ in 0..200 {
        let r = svc.clone().oneshot(quick_request()).await.unwrap();
        assert_eq!(
            served(&r).key().as_str(),
            "a",
            "weight 0 takes no new picks"
        );
        finish(r.into_body()).await;
    }
    assert_eq!(b.in_flight(), on_b, "its in-flight requests carry on");
    held.release("a");
    held.release("b");
    for body in bodies {
        finish(body).await;
    }
    assert_eq!(b.in_flight(), 0, "and finish");

    pool.set_weight("b", 1.0).unwrap();
    let mut on_b_again = 0;
    for _ in 0..200 {
        let r = svc.clone().oneshot(quick_request()).await.unwrap();
        on_b_again += usize::from(served(&r).key().as_str() == "b");
        finish(r.into_body()).await;
    }
    assert!(on_b_again > 50, "b is back: {on_b_again} of 200");
}

#[tokio::test]
async fn a_discover_stream_feeds_the_pool() {
    use tower::discover::Change;
    let held = Held::default();
    let pool: Pool<_> = Pool::new();
    let changes = futures_util::stream::iter(vec![
        Ok::<_, std::convert::Infallible>(Change::Insert("x", held.service("x"))),
        Ok(Change::Insert("y", held.service("y"))),
        Ok(Change::Remove("x")),
        Ok(Change::Insert("y", held.service("y2"))),
    ]);
    pool.discover(changes).await.unwrap();
    let keys: Vec<_> = pool
        .endpoints()
        .iter()
        .map(|e| e.key().to_string())
        .collect();
    assert_eq!(keys, ["y"]);
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let r = svc.oneshot(quick_request()).await.unwrap();
    let body = crate::support::read_to_end(r.into_body()).await.unwrap();
    assert_eq!(
        body, "y2",
        "an insert of a present key replaces its service"
    );
}
