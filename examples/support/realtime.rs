//! A realtime gateway on loopback (axum, `WebSocketUpgrade`) over a `websocket::Proxy`,
//! shared by the `realtime` example and the WebSocket tests (included with `#[path]`; not
//! part of the library).
//!
//! `GET /v1/realtime` opens a session through the proxy before the client's upgrade is
//! answered (a pool with no upstream that takes it answers with the OpenAI-format error),
//! answers with the upstream's subprotocol, and serves axum's socket, its messages mapped to
//! tungstenite's both ways.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use axum::{
    extract::{
        ws::{self, WebSocket, WebSocketUpgrade},
        State,
    },
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::request::Parts;
use tokio::{net::TcpListener, task::JoinHandle};
use tower_ai_balance::{
    http_error::openai_response,
    websocket::{
        tokio_tungstenite::tungstenite::{self as ts, protocol::frame::coding::CloseCode},
        Proxy, SessionEnd, Target,
    },
};

/// axum's message, as tungstenite's.
pub fn from_axum(message: ws::Message) -> ts::Message {
    match message {
        ws::Message::Text(text) => ts::Message::text(text.as_str()),
        ws::Message::Binary(bytes) => ts::Message::Binary(bytes),
        ws::Message::Ping(bytes) => ts::Message::Ping(bytes),
        ws::Message::Pong(bytes) => ts::Message::Pong(bytes),
        ws::Message::Close(frame) => ts::Message::Close(frame.map(|f| ts::protocol::CloseFrame {
            code: CloseCode::from(f.code),
            reason: f.reason.as_str().into(),
        })),
    }
}

/// tungstenite's message, as axum's (a raw frame, which no reader yields, as an empty ping).
pub fn to_axum(message: ts::Message) -> ws::Message {
    match message {
        ts::Message::Text(text) => ws::Message::text(text.as_str()),
        ts::Message::Binary(bytes) => ws::Message::Binary(bytes),
        ts::Message::Ping(bytes) => ws::Message::Ping(bytes),
        ts::Message::Pong(bytes) => ws::Message::Pong(bytes),
        ts::Message::Close(frame) => ws::Message::Close(frame.map(|f| ws::CloseFrame {
            code: f.code.into(),
            reason: f.reason.as_str().into(),
        })),
        ts::Message::Frame(_) => ws::Message::Ping(Default::default()),
    }
}

/// axum's socket as a stream and sink of tungstenite's messages.
pub fn tungstenite_socket(
    socket: WebSocket,
) -> impl Stream<Item = Result<ts::Message, axum::Error>>
       + Sink<ts::Message, Error = axum::Error>
       + Unpin
       + Send {
    socket
        .map(|m| m.map(from_axum))
        .with(|m: ts::Message| std::future::ready(Ok::<_, axum::Error>(to_axum(m))))
}

/// The route's handler.
async fn realtime<S>(
    State((proxy, ended)): State<(Proxy<S>, Ended)>,
    head: Parts,
    mut upgrade: WebSocketUpgrade,
) -> Response
where
    S: Target + Clone + Send + Sync + 'static,
{
    let session = match proxy.connect(&head).await {
        Ok(session) => session,
        Err(error) => return openai_response(&error).into_response(),
    };
    if let Some(protocol) = session.protocol() {
        upgrade.set_selected_protocol(protocol.clone());
    }
    let config = session.config();
    upgrade
        .max_message_size(config.max_message_size.unwrap_or(usize::MAX))
        .max_frame_size(config.max_frame_size.unwrap_or(usize::MAX))
        .on_upgrade(move |socket| async move {
            let end = session.serve(tungstenite_socket(socket)).await;
            if let Some(ended) = ended {
                let _ = ended.send(end);
            }
        })
}

/// Where each session's end is reported, if anywhere.
pub type Ended = Option<tokio::sync::mpsc::UnboundedSender<SessionEnd>>;

/// A gateway serving `GET /v1/realtime` through `proxy` on an ephemeral loopback port; each
/// session's end is sent to `ended`. Dropping the handle's task (abort) stops accepting; the
/// sessions end when the last clone of the proxy is dropped.
pub async fn spawn_gateway<S>(proxy: Proxy<S>, ended: Ended) -> (SocketAddr, JoinHandle<()>)
where
    S: Target + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/v1/realtime", get(realtime::<S>))
        .with_state((proxy, ended));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}
