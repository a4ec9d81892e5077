//! A realtime gateway (axum) over three simulated WebSocket model servers on loopback, in the
//! shape of OpenAI's Realtime API. Sessions are spread by load and each holds its server's
//! slot for its whole life; a keyed session reconnects to its server; a server that refuses
//! handshakes is failed over and ejected; a server that dies mid-session gets its clients a
//! close frame that says so; and every slot comes back.
//!
//! ```sh
//! cargo run --example realtime
//! ```

#[path = "support/model_server.rs"]
mod model_server;
#[path = "support/realtime.rs"]
mod realtime;

use std::time::Duration;

use futures_util::{future::join_all, SinkExt, StreamExt};
use http::HeaderName;
use model_server::{Mode, ModelServer, Spec};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
use tower::Layer;
use tower_ai_balance::{
    client::{UpstreamConfig, Upstreams},
    websocket::Proxy,
    BalanceLayer, BoxError, Health, HealthFilterLayer, HealthPolicy, Pool,
};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut servers = Vec::new();
    for i in 0..3 {
        let spec = Spec::new(
            format!("gpu-{i}"),
            Duration::from_millis(5),
            Duration::from_millis(10),
        );
        servers.push(ModelServer::spawn(spec).await);
    }

    // ---- What a user writes: the upstreams, the proxy, the route. ----
    let mut upstreams = Upstreams::new();
    for s in &servers {
        let base = format!("http://{}/v1", s.addr);
        upstreams = upstreams.add(
            UpstreamConfig::new(&base)?
                .name(s.spec.name.clone())
                .api_key("sk-gateway"),
        );
    }
    let pool = upstreams.build_pool()?;
    // Ejects a server after two handshakes in a row fail.
    let mut policy = HealthPolicy::default();
    policy.consecutive_failures = 2;
    let health = HealthFilterLayer::builder().policy(policy).build()?;
    let proxy = Proxy::builder()
        .affinity_header(HeaderName::from_static("x-session-id"))
        .health(&health)
        .idle_timeout(Some(Duration::from_secs(60)))
        .build(BalanceLayer::new().layer(pool.clone()))?;
    let (addr, gateway) = realtime::spawn_gateway(proxy.clone(), None).await;
    // ----
    println!("realtime gateway on ws://{addr}/v1/realtime over gpu-0, gpu-1, gpu-2\n");

    // Nine sessions at once, spread by load; each holds its server's slot while it runs.
    let sessions = join_all((0..9).map(|i| async move {
        let mut ws = open(addr, None).await.expect("a session");
        let server = created(&mut ws).await;
        let tokens = respond(&mut ws, 4 + i).await;
        (server, tokens, ws)
    }))
    .await;
    for (i, (server, tokens, _)) in sessions.iter().enumerate() {
        println!("session {i}: on {server}, streamed {tokens} deltas");
    }
    report("nine sessions open", &pool);

    // A keyed session comes back to its server.
    let mut homes = Vec::new();
    for _ in 0..3 {
        let mut ws = open(addr, Some("chat-42")).await?;
        homes.push(created(&mut ws).await);
        ws.close(None).await?;
    }
    println!("\nx-session-id: chat-42 opened on {homes:?}");

    // gpu-0 refuses handshakes: each session it is picked for opens elsewhere, and gpu-0 is
    // ejected after two refusals.
    servers[0].set_mode(Mode::Fail);
    let gpu0 = pool.get("gpu-0").expect("gpu-0");
    let mut opened = 0;
    while matches!(gpu0.health(), Health::Healthy) && opened < 50 {
        let mut ws = open(addr, None).await?;
        let server = created(&mut ws).await;
        ws.close(None).await?;
        opened += 1;
        println!("gpu-0 refuses: a new session opened on {server}");
    }
    let ejected = matches!(gpu0.health(), Health::Ejected { .. });
    println!("gpu-0: ejected {ejected}, {} failures", gpu0.failures());

    // gpu-1 dies mid-session: its clients get a close frame that names the cause.
    servers[1].crash();
    let mut closes = Vec::new();
    for (server, _, mut ws) in sessions {
        if server == "gpu-1" {
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(Some(frame)) = message {
                    closes.push(format!("{} {}", u16::from(frame.code), frame.reason));
                }
            }
        } else {
            ws.close(None).await?;
            while let Some(Ok(_)) = ws.next().await {}
        }
    }
    println!("\ngpu-1 crashed; its clients were told: {closes:?}");
    // The gateway's side ends as the closing handshakes finish.
    for _ in 0..200 {
        if pool.endpoints().iter().all(|e| e.in_flight() == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report("every session closed", &pool);
    gateway.abort();
    Ok(())
}

async fn open(addr: std::net::SocketAddr, key: Option<&str>) -> Result<Ws, BoxError> {
    let mut request =
        format!("ws://{addr}/v1/realtime?model=gpt-realtime").into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "realtime".parse()?);
    if let Some(key) = key {
        request.headers_mut().insert("x-session-id", key.parse()?);
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

/// The server a session opened on, from its `session.created` event.
async fn created(ws: &mut Ws) -> String {
    match ws.next().await {
        Some(Ok(Message::Text(text))) => {
            let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            event["server"].as_str().unwrap_or("?").to_owned()
        }
        other => format!("no session: {other:?}"),
    }
}

/// Asks for a response of `tokens` deltas and counts them.
async fn respond(ws: &mut Ws, tokens: u64) -> u64 {
    let ask = format!(r#"{{"type":"response.create","tokens":{tokens}}}"#);
    if ws.send(Message::text(ask)).await.is_err() {
        return 0;
    }
    let mut deltas = 0;
    while let Some(Ok(Message::Text(text))) = ws.next().await {
        let event: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match event["type"].as_str() {
            Some("response.delta") => deltas += 1,
            _ => break,
        }
    }
    deltas
}

fn report<S: Clone>(when: &str, pool: &Pool<S>) {
    println!("\n{when}:");
    for e in pool.endpoints() {
        println!(
            "  {}: {} in flight, {} sessions served, {} failed",
            e.key(),
            e.in_flight(),
            e.requests(),
            e.failures()
        );
    }
}
