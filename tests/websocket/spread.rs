//! Sessions spread by load, each holding its endpoint's slot for its whole life; keyed
//! sessions back on their server, where HTTP requests with the same key go too.

use std::{collections::HashMap, sync::atomic::Ordering::SeqCst};

use futures_util::future::join_all;
use http::HeaderName;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_ai_balance::{hints::Served, websocket::Proxy, BalanceLayer, StreamAffinityLayer};

use super::{
    close, eventually, model_server::chat_request, open, pool_of, realtime::spawn_gateway,
    server_of, servers, within,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_sessions_spread_by_load_and_hold_their_slots_until_they_close() {
    let servers = servers(3).await;
    let pool = pool_of(&servers, |_, c| c);
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (addr, gateway) = spawn_gateway(proxy.clone(), None).await;

    let opened = within(join_all((0..30).map(|_| async move {
        let (mut ws, _) = open(addr, &[]).await.expect("the session opens");
        let server = server_of(&mut ws).await;
        (server, ws)
    })))
    .await;
    let mut sessions: Vec<(String, _)> = opened;
    assert_eq!(proxy.sessions(), 30);

    // In flight equals open sessions, per endpoint, at every check as they close.
    let check = |sessions: &[(String, _)]| {
        let mut open: HashMap<String, usize> = HashMap::new();
        for (server, _) in sessions {
            *open.entry(server.clone()).or_default() += 1;
        }
        for e in pool.endpoints() {
            let n = open.get(e.key().as_str()).copied().unwrap_or(0);
            assert_eq!(
                e.in_flight(),
                n,
                "{}: in flight against open sessions",
                e.key()
            );
        }
        open
    };
    let per_server = check(&sessions);
    assert_eq!(
        per_server.len(),
        3,
        "every server got sessions: {per_server:?}"
    );
    for (server, n) in &per_server {
        assert!(*n <= 12, "{server} got {n} of 30 sessions: {per_server:?}");
    }
    // The servers saw the same: each session is one request in flight there.
    for s in &servers {
        assert_eq!(
            s.stats.in_flight.load(SeqCst),
            per_server[&s.spec.name],
            "{}",
            s.spec.name
        );
    }

    // A session that works: a response streamed back through the gateway.
    let (_, ws) = &mut sessions[0];
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"response.create","tokens":3}"#,
    ))
    .await
    .unwrap();
    let mut deltas = 0;
    loop {
        let event = super::next_event(ws).await.expect("an event");
        match event["type"].as_str() {
            Some("response.delta") => deltas += 1,
            Some("response.done") => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(deltas, 3);

    while !sessions.is_empty() {
        let keep = sessions.len().saturating_sub(7);
        for (_, ws) in sessions.drain(keep..) {
            within(close(ws)).await;
        }
        check(&sessions);
    }
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
    assert_eq!(
        pool.endpoints().iter().map(|e| e.requests()).sum::<u64>(),
        30
    );
    assert_eq!(
        pool.endpoints().iter().map(|e| e.failures()).sum::<u64>(),
        0
    );
    assert!(
        eventually(|| servers.iter().all(|s| s.stats.in_flight.load(SeqCst) == 0)).await,
        "the servers saw every session end"
    );
    assert!(eventually(|| proxy.sessions() == 0).await);
    gateway.abort();
}

#[tokio::test]
async fn a_keyed_session_returns_to_its_server_where_its_http_requests_go() {
    let servers = servers(4).await;
    let pool = pool_of(&servers, |_, c| c);
    let session_id = HeaderName::from_static("x-session-id");
    let proxy = Proxy::builder()
        .affinity_header(session_id.clone())
        .build(BalanceLayer::new().layer(pool.clone()))
        .unwrap();
    let (addr, gateway) = spawn_gateway(proxy, None).await;
    let http = ServiceBuilder::new()
        .layer(StreamAffinityLayer::header(session_id))
        .layer(BalanceLayer::new())
        .service(pool.clone());

    let mut homes = HashMap::new();
    for key in ["chat-1", "chat-2", "chat-3", "chat-4", "chat-5", "chat-6"] {
        let mut home = None;
        for _ in 0..4 {
            let (mut ws, _) = open(addr, &[("x-session-id", key)]).await.unwrap();
            let server = server_of(&mut ws).await;
            close(ws).await;
            assert_eq!(*home.get_or_insert(server.clone()), server, "{key} moved");
        }
        let home = home.unwrap();
        // An HTTP request with the same key goes to the same endpoint.
        let mut request = chat_request(2, false);
        request
            .headers_mut()
            .insert("x-session-id", key.parse().unwrap());
        let response = http.clone().oneshot(request).await.unwrap();
        let served = response.extensions().get::<Served>().unwrap().endpoint();
        assert_eq!(served.key().as_str(), home, "{key}: HTTP went elsewhere");
        homes.insert(key, home);
    }
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert!(distinct.len() > 1, "keys spread over servers: {homes:?}");
    gateway.abort();
}
