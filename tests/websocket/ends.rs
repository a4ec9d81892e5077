//! How sessions end: an upstream dying mid-session, an upstream's own close, a client that
//! vanishes, the idle timeout, a shutdown and the gateway dropped; every slot comes back and
//! no task is left running.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tower::Layer;
use tower_ai_balance::{
    classify::Outcome,
    websocket::{EndCause, Proxy},
    BalanceLayer,
};

use super::{
    close_frame, ended, eventually, model_server::Mode, next_event, open, pool_of,
    realtime::spawn_gateway, server_of, servers, within,
};

#[tokio::test]
async fn a_server_dying_mid_session_closes_the_client_with_the_cause() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, gateway) = spawn_gateway(proxy, Some(tx)).await;

    // A crash after the first frames.
    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    servers[0].crash();
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1011);
    assert!(
        frame.reason.starts_with("upstream failed"),
        "{}",
        frame.reason
    );
    let end = ended(&mut rx).await;
    assert_eq!(end.cause(), &EndCause::UpstreamFailed);
    assert_eq!(end.verdict(), Some(Outcome::Failure));
    let e = pool.get("gpu-0").unwrap();
    assert_eq!((e.in_flight(), e.failures()), (0, 1));

    // A connection dropped without a close frame after one event.
    servers[0].restart().await.unwrap();
    servers[0].set_mode(Mode::ResetMidStream);
    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1011);
    assert_eq!(ended(&mut rx).await.cause(), &EndCause::UpstreamFailed);
    assert_eq!((e.in_flight(), e.failures()), (0, 2));
    gateway.abort();
}

#[tokio::test]
async fn an_upstream_close_reaches_the_client_and_is_judged_by_its_code() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, gateway) = spawn_gateway(proxy, Some(tx)).await;
    let e = pool.get("gpu-0").unwrap();

    for (code, verdict) in [
        (1000, Outcome::Success),
        (1011, Outcome::Failure),
        (4001, Outcome::ClientError),
    ] {
        let (mut ws, _) = open(addr, &[]).await.unwrap();
        server_of(&mut ws).await;
        let ask = format!(r#"{{"type":"close","code":{code}}}"#);
        ws.send(Message::text(ask)).await.unwrap();
        let frame = within(close_frame(&mut ws))
            .await
            .expect("the server's close");
        assert_eq!(u16::from(frame.code), code);
        assert_eq!(frame.reason.as_str(), "server closed");
        let end = ended(&mut rx).await;
        assert_eq!(end.cause(), &EndCause::UpstreamClosed { code: Some(code) });
        assert_eq!(end.verdict(), Some(verdict), "{code}");
        assert_eq!(e.in_flight(), 0);
    }
    assert_eq!(e.failures(), 1, "only the 1011 counted");
    gateway.abort();
}

#[tokio::test]
async fn a_client_vanishing_releases_the_slot_and_tells_the_upstream() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, gateway) = spawn_gateway(proxy.clone(), Some(tx)).await;

    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    // The TCP connection goes, no close frame.
    drop(ws);
    let end = ended(&mut rx).await;
    assert_eq!(end.cause(), &EndCause::ClientGone);
    assert_eq!(end.verdict(), None, "a cancellation: nobody's failure");
    let e = pool.get("gpu-0").unwrap();
    assert_eq!((e.in_flight(), e.failures(), e.requests()), (0, 0, 0));
    let stats = &servers[0].stats;
    assert!(eventually(|| stats.in_flight.load(SeqCst) == 0).await);
    assert_eq!(
        *stats.ws_closes.lock(),
        [Some(1001)],
        "the upstream was told"
    );
    assert!(eventually(|| proxy.sessions() == 0).await);
    gateway.abort();
}

#[test]
fn dropping_the_gateway_ends_every_session_and_leaves_no_task() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let servers = servers(2).await;
        let pool = pool_of(&servers, |_, c| c);
        let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (addr, gateway) = spawn_gateway(proxy, Some(tx)).await;
        let mut clients = Vec::new();
        for _ in 0..6 {
            let (mut ws, _) = open(addr, &[]).await.unwrap();
            server_of(&mut ws).await;
            clients.push(ws);
        }
        assert_eq!(
            pool.endpoints()
                .iter()
                .map(|e| e.in_flight())
                .sum::<usize>(),
            6
        );

        // The gateway goes: its listener, and with it the last handle on the proxy.
        gateway.abort();
        let _ = gateway.await;
        for ws in &mut clients {
            let frame = within(close_frame(ws)).await.expect("a close frame");
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "the gateway is shutting down");
        }
        for _ in 0..6 {
            assert_eq!(ended(&mut rx).await.cause(), &EndCause::Shutdown);
        }
        assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
        for s in &servers {
            let stats = &s.stats;
            assert!(eventually(|| stats.in_flight.load(SeqCst) == 0).await);
        }

        drop((clients, servers, pool));
        let metrics = tokio::runtime::Handle::current().metrics();
        let mut alive = metrics.num_alive_tasks();
        for _ in 0..200 {
            if alive == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            alive = metrics.num_alive_tasks();
        }
        assert_eq!(alive, 0, "tasks left running");
    });
}

#[tokio::test]
async fn an_upstream_that_stalls_is_ended_by_the_idle_timeout() {
    let servers = servers(1).await;
    servers[0].set_mode(Mode::StallAfterFirst);
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::builder()
        .idle_timeout(Some(Duration::from_millis(200)))
        .close_timeout(Duration::from_millis(300))
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, gateway) = spawn_gateway(proxy, Some(tx)).await;

    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "idle timeout");
    let end = ended(&mut rx).await;
    assert_eq!(end.cause(), &EndCause::Idle);
    assert_eq!(end.verdict(), Some(Outcome::ClientError));
    let e = pool.get("gpu-0").unwrap();
    assert_eq!((e.in_flight(), e.failures()), (0, 0));
    assert!(next_event(&mut ws).await.is_none());
    gateway.abort();
}

#[tokio::test]
async fn shutdown_ends_open_sessions_and_those_opened_after_it() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, gateway) = spawn_gateway(proxy.clone(), Some(tx)).await;
    let e = pool.get("gpu-0").unwrap();

    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    assert_eq!(e.in_flight(), 1);
    proxy.shutdown();
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    let end = ended(&mut rx).await;
    assert_eq!(end.cause(), &EndCause::Shutdown);
    assert_eq!(end.verdict(), None);
    assert_eq!((e.in_flight(), e.failures()), (0, 0));

    // A session opened after the shutdown ends as soon as it is served.
    let (mut ws, _) = open(addr, &[]).await.unwrap();
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(ended(&mut rx).await.cause(), &EndCause::Shutdown);
    assert!(eventually(|| e.in_flight() == 0).await);
    assert_eq!(*servers[0].stats.ws_closes.lock(), [Some(1001), Some(1001)]);
    gateway.abort();
}
