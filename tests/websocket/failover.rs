//! Failover before a session starts: a refused handshake, a hanging one and a rate limit go
//! to another endpoint and count against the first; with none left, the client is refused
//! with the gateway's answer.

use std::time::Duration;

use tower::Layer;
use tower_ai_balance::{
    health::{HealthFilterLayer, HealthPolicy},
    websocket::Proxy,
    BalanceLayer, Health,
};

use super::{
    close, eventually, model_server::Mode, open, pool_of, realtime::spawn_gateway, server_of,
    servers,
};

/// A health policy that ejects at the first failure.
fn strict() -> HealthFilterLayer {
    let mut policy = HealthPolicy::default();
    policy.consecutive_failures = 1;
    HealthFilterLayer::builder().policy(policy).build().unwrap()
}

#[tokio::test]
async fn a_refused_handshake_opens_the_session_elsewhere_and_counts_against_the_server() {
    let servers = servers(3).await;
    // gpu-0 is the first choice (tier 0); it refuses with 500.
    let pool = pool_of(&servers, |i, c| c.tier(u32::from(i > 0)));
    servers[0].set_mode(Mode::Fail);
    let proxy = Proxy::builder()
        .health(&strict())
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, _) = open(addr, &[]).await.expect("the session opens elsewhere");
    let server = server_of(&mut ws).await;
    assert_ne!(server, "gpu-0");
    let first = pool.get("gpu-0").unwrap();
    assert_eq!(first.failures(), 1, "the refusal counted against gpu-0");
    assert!(
        matches!(first.health(), Health::Ejected { .. }),
        "{:?}",
        first.health()
    );
    assert_eq!(first.in_flight(), 0, "the refused attempt's slot came back");
    assert_eq!(pool.get(&server).unwrap().in_flight(), 1);
    close(ws).await;
    gateway.abort();
}

#[tokio::test]
async fn a_hanging_handshake_times_out_and_a_rate_limit_cools_the_server_down() {
    let servers = servers(3).await;
    let pool = pool_of(&servers, |i, c| c.tier(i as u32));
    servers[0].set_mode(Mode::Hang);
    servers[1].set_mode(Mode::RateLimit(30));
    let proxy = Proxy::builder()
        .connect_timeout(Duration::from_millis(300))
        .health(&HealthFilterLayer::new())
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, _) = open(addr, &[]).await.expect("the third server takes it");
    assert_eq!(server_of(&mut ws).await, "gpu-2");
    assert_eq!(
        pool.get("gpu-0").unwrap().failures(),
        1,
        "the timeout counted"
    );
    assert!(matches!(
        pool.get("gpu-1").unwrap().health(),
        Health::CoolingDown { .. }
    ));
    close(ws).await;
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
    gateway.abort();
}

#[tokio::test]
async fn with_every_server_refusing_the_client_gets_the_gateway_answer() {
    let servers = servers(2).await;
    let pool = pool_of(&servers, |_, c| c);
    for s in &servers {
        s.set_mode(Mode::Fail);
    }
    let proxy = Proxy::builder()
        .attempts(5)
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let refused = open(addr, &[]).await.expect_err("no server takes it");
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("{refused}");
    };
    assert_eq!(response.status(), 502);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("upstream"), "{body}");
    assert!(!body.contains("127.0.0.1"), "no address shown: {body}");
    // Each server was tried once: no endpoint is tried twice for one session.
    for s in &servers {
        assert_eq!(
            s.stats.received.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
    gateway.abort();
}

#[tokio::test]
async fn a_connect_abandoned_mid_handshake_releases_its_slot_uncounted() {
    let servers = servers(1).await;
    servers[0].set_mode(Mode::Hang);
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::builder()
        .connect_timeout(Duration::from_secs(600))
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let e = pool.get("gpu-0").unwrap();
    let head = http::Request::get("/v1/realtime")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    // The client goes while the upstream's handshake hangs: the task serving it is dropped.
    let connecting = tokio::spawn(async move { proxy.connect(&head).await.map(drop) });
    assert!(
        eventually(|| e.in_flight() == 1).await,
        "the slot is taken during the handshake"
    );
    let stats = &servers[0].stats;
    assert!(eventually(|| stats.received.load(std::sync::atomic::Ordering::SeqCst) == 1).await);
    connecting.abort();
    assert!(connecting.await.unwrap_err().is_cancelled());
    assert_eq!(
        (e.in_flight(), e.failures(), e.requests()),
        (0, 0, 0),
        "released, and nobody's failure"
    );
}

#[tokio::test]
async fn a_path_with_dot_segments_is_refused_before_any_upstream() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::builder()
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    for path in ["/../admin", "/realtime/%2e%2e/%2e%2e/admin", "/.%2E/x"] {
        let head = http::Request::get(path).body(()).unwrap().into_parts().0;
        let error = proxy.connect(&head).await.map(drop).unwrap_err();
        assert!(
            error.is::<tower_ai_balance::route::BadRequest>(),
            "{path}: {error}"
        );
        let answer = tower_ai_balance::http_error::openai_response(&error);
        assert_eq!(answer.status(), 400, "{path}");
    }
    let stats = &servers[0].stats;
    assert_eq!(stats.received.load(std::sync::atomic::Ordering::SeqCst), 0);
    let e = pool.get("gpu-0").unwrap();
    assert_eq!((e.in_flight(), e.failures(), e.requests()), (0, 0, 0));
}
