//! The size limit, pings passed through, and credentials: the upstream receives its own key
//! and never the client's, in a header or a subprotocol.

use std::sync::atomic::Ordering::SeqCst;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tower::Layer;
use tower_ai_balance::{
    classify::Outcome,
    websocket::{EndCause, Proxy},
    BalanceLayer,
};

use super::{
    close, close_frame, ended, eventually, next_event, open, pool_of, realtime::spawn_gateway,
    server_of, servers, within,
};

#[tokio::test]
async fn messages_over_the_limit_end_the_session_as_nobodys_failure() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::builder()
        .max_message_size(1024)
        .max_frame_size(1024)
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, gateway) = spawn_gateway(proxy, Some(tx)).await;
    let e = pool.get("gpu-0").unwrap();

    // Under the limit, both ways: echoed.
    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    ws.send(Message::text("x".repeat(900))).await.unwrap();
    assert_eq!(next_event(&mut ws).await.unwrap()["type"], "echo");

    // The client's message over the limit: 1009, and it never reaches the upstream.
    ws.send(Message::Binary(Bytes::from(vec![7u8; 4096])))
        .await
        .unwrap();
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    let end = ended(&mut rx).await;
    assert_eq!(end.cause(), &EndCause::ClientTooBig);
    assert_eq!(end.verdict(), Some(Outcome::ClientError));

    // The upstream's over the limit: an echo of 1000 bytes comes back wrapped, past 1024.
    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    ws.send(Message::text("y".repeat(1000))).await.unwrap();
    let frame = within(close_frame(&mut ws)).await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1009);
    assert!(frame.reason.contains("upstream"), "{}", frame.reason);
    assert_eq!(ended(&mut rx).await.cause(), &EndCause::UpstreamTooBig);
    assert_eq!((e.in_flight(), e.failures()), (0, 0));
    gateway.abort();
}

#[tokio::test]
async fn pings_reach_the_upstream_and_pongs_come_back() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::new(BalanceLayer::new().layer(pool));
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, _) = open(addr, &[]).await.unwrap();
    server_of(&mut ws).await;
    for i in 0..3u8 {
        ws.send(Message::Ping(Bytes::from(vec![b'p', i])))
            .await
            .unwrap();
    }
    // Each ping is answered twice: by the gateway's side, and by the upstream, whose pong is
    // passed through (RFC 6455 allows the extra one).
    let mut pongs = Vec::new();
    while pongs.len() < 6 {
        match within(ws.next()).await {
            Some(Ok(Message::Pong(payload))) => pongs.push(payload[1]),
            other => panic!("{other:?}"),
        }
    }
    pongs.sort_unstable();
    assert_eq!(pongs, [0, 0, 1, 1, 2, 2]);
    let stats = &servers[0].stats;
    assert!(
        eventually(|| stats.ws_pings.load(SeqCst) == 3).await,
        "the upstream saw {} pings",
        stats.ws_pings.load(SeqCst)
    );
    close(ws).await;
    gateway.abort();
}

#[tokio::test]
async fn the_upstream_gets_its_own_key_never_the_clients() {
    let servers = servers(1).await;
    let pool = pool_of(&servers, |_, c| {
        c.api_key("sk-gateway").forward_header("x-session-id")
    });
    let proxy = Proxy::new(BalanceLayer::new().layer(pool));
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, response) = open(
        addr,
        &[
            ("authorization", "Bearer sk-client"),
            ("x-api-key", "sk-client"),
            ("cookie", "session=client"),
            ("x-session-id", "s-1"),
            ("x-request-id", "r-1"),
            (
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.sk-client, openai-beta.realtime-v1",
            ),
        ],
    )
    .await
    .unwrap();
    // The upstream's choice reaches the client.
    assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    let created = next_event(&mut ws).await.unwrap();
    assert_eq!(created["protocol"], "realtime");

    let stats = &servers[0].stats;
    let seen = stats.last_headers.lock().clone();
    assert_eq!(seen["authorization"], "Bearer sk-gateway");
    assert_eq!(seen.get_all("authorization").iter().count(), 1);
    assert_eq!(seen["x-session-id"], "s-1");
    assert_eq!(seen["x-request-id"], "r-1");
    for name in ["x-api-key", "cookie"] {
        assert!(!seen.contains_key(name), "{name} was forwarded");
    }
    let offered = stats.ws_protocols.lock().clone().unwrap();
    assert_eq!(offered, "realtime, openai-beta.realtime-v1");
    for (name, value) in &seen {
        let value = value.to_str().unwrap_or_default();
        assert!(!value.contains("sk-client"), "{name}: {value}");
    }
    close(ws).await;
    gateway.abort();
}
