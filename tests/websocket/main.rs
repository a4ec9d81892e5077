//! WebSocket sessions (feature `websocket`) over real WebSocket servers on loopback: sessions
//! spread by load and held for their whole life, keyed sessions back on their server,
//! failover before a session starts, the ends a session can meet (closes either way, an
//! upstream dying, a client vanishing, the gateway dropped, the idle timeout, the size limit),
//! pings, credentials, `wss://` with certificates made at test time, and the hyper
//! integration.
#![allow(unreachable_pub)]

#[allow(dead_code)]
#[path = "../client/support.rs"]
mod client_support;
#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../../examples/support/realtime.rs"]
mod realtime;

mod ends;
mod failover;
mod hyper_direct;
mod limits;
mod spread;
mod tls;

use std::{future::Future, net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use model_server::{ModelServer, Spec};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, protocol::CloseFrame, Message},
    MaybeTlsStream, WebSocketStream,
};
use tower_ai_balance::{
    client::{Upstream, UpstreamConfig, Upstreams},
    websocket::SessionEnd,
    Pool,
};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `n` realtime servers, `gpu-0`...: a token every 2 ms.
async fn servers(n: usize) -> Vec<ModelServer> {
    let mut out = Vec::new();
    for i in 0..n {
        let spec = Spec::new(
            format!("gpu-{i}"),
            Duration::from_millis(1),
            Duration::from_millis(2),
        );
        out.push(ModelServer::spawn(spec).await);
    }
    out
}

/// A pool of the servers as HTTP(S) upstreams (the `client` feature's), each named after its
/// server and set up by `each`.
fn pool_of(
    servers: &[ModelServer],
    each: impl Fn(usize, UpstreamConfig) -> UpstreamConfig,
) -> Pool<Upstream> {
    let mut list = Upstreams::new();
    for (i, s) in servers.iter().enumerate() {
        let config = UpstreamConfig::new(&format!("http://{}/v1", s.addr))
            .unwrap()
            .name(s.spec.name.clone());
        list = list.add(each(i, config));
    }
    list.build_pool().unwrap()
}

/// Opens a session through the gateway at `addr`, with these request headers.
async fn open(
    addr: SocketAddr,
    headers: &[(&'static str, &str)],
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/v1/realtime?model=m")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await
}

/// The next event (a text message, as JSON), skipping pings and pongs; `None` at a close or
/// the end.
async fn next_event(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// The server a session opened on, from its first event.
async fn server_of(ws: &mut Ws) -> String {
    let created = next_event(ws).await.expect("session.created");
    assert_eq!(created["type"], "session.created");
    created["server"].as_str().unwrap().to_owned()
}

/// Reads until the close frame, which it returns (`None` when the connection ended without
/// one), then to the end.
async fn close_frame(ws: &mut Ws) -> Option<CloseFrame> {
    let mut frame = None;
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Close(f)) => frame = f,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    frame
}

/// Closes cleanly and waits for the close handshake to finish.
async fn close(mut ws: Ws) {
    let _ = ws.send(Message::Close(None)).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// Waits until `done` holds, checking every 10 ms for up to 20 s; whether it held.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// The next session end the gateway reports, waiting at most 20 s.
async fn ended(rx: &mut tokio::sync::mpsc::UnboundedReceiver<SessionEnd>) -> SessionEnd {
    within(rx.recv()).await.expect("the session ended")
}

/// `future`, or a panic after 20 s: a test that would hang fails instead.
async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("did not finish in 20 s")
}
