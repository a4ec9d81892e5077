use std::time::Duration;

use http_body_util::BodyExt;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{pick::Strategy, BalanceLayer};

use crate::{
    model_server::chat_request,
    support::{http_pool, read_to_end, served, total_in_flight},
};

#[tokio::test]
async fn a_streamed_body_holds_its_endpoint_until_the_end_and_releases_on_drop() {
    let (pool, servers) = http_pool(1, Duration::from_millis(5), Duration::from_millis(20)).await;
    let mut svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let endpoint = pool.get("m0").unwrap();

    // Read a 5-token stream frame by frame: the load stays until the last frame.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(chat_request(5, true))
        .await
        .unwrap();
    assert_eq!(served(&response).key().as_str(), "m0");
    assert_eq!(endpoint.in_flight(), 1, "held once the headers arrive");
    let mut body = response.into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
        assert_eq!(endpoint.in_flight(), 1, "held mid-stream");
    }
    let rest = read_to_end(body).await.unwrap();
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(endpoint.in_flight(), 0, "released at the end of the stream");
    assert!(endpoint
        .ttfb_estimate(tokio::time::Instant::now())
        .is_some());

    // A client that drops the body mid-stream releases the load at once, and the server
    // sees the disconnect.
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(chat_request(1000, true))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(endpoint.in_flight(), 1);
    drop(body);
    assert_eq!(
        endpoint.in_flight(),
        0,
        "released when the client drops the stream"
    );
    let stats = &servers[0].stats;
    for _ in 0..200 {
        if stats.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.in_flight.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        stats.disconnected.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// One long stream, then three short requests, forty times: round-robin sends every long
/// stream to the same endpoint; power of two choices spreads them.
async fn pile_up(strategy: Strategy) -> (usize, usize) {
    let (pool, servers) = http_pool(4, Duration::from_millis(1), Duration::from_millis(50)).await;
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::builder().strategy(strategy).build().unwrap())
        .service(pool.clone());
    let mut open = Vec::new();
    for _ in 0..40 {
        let long = svc
            .clone()
            .oneshot(chat_request(10_000, true))
            .await
            .unwrap();
        open.push(long.into_body());
        for _ in 0..3 {
            let short = svc.clone().oneshot(chat_request(1, false)).await.unwrap();
            read_to_end(short.into_body()).await.unwrap();
        }
    }
    let balancer_max = pool
        .endpoints()
        .iter()
        .map(|e| e.in_flight())
        .max()
        .unwrap();
    let server_max = servers
        .iter()
        .map(|s| s.stats.in_flight.load(std::sync::atomic::Ordering::SeqCst))
        .max()
        .unwrap();
    drop(open);
    assert_eq!(total_in_flight(&pool), 0);
    (balancer_max, server_max)
}

#[tokio::test]
async fn p2c_keeps_long_streams_from_piling_up_where_round_robin_does_not() {
    let (rr, rr_server) = pile_up(Strategy::RoundRobin).await;
    let (p2c, p2c_server) = pile_up(Strategy::PowerOfTwoChoices).await;
    // Ideal is 10 per endpoint.
    assert_eq!(rr, 40, "round-robin puts every long stream on one endpoint");
    assert!(p2c <= 13, "p2c let {p2c} long streams pile on one endpoint");
    // The server's own count agrees with the balancer's.
    assert_eq!((rr_server, p2c_server), (rr, p2c));
}
