//! WebSocket sessions (feature `websocket`): a client's upgrade proxied to an endpoint of the
//! pool, the endpoint's load held for the whole session.
//!
//! A realtime session (OpenAI's Realtime API, a voice agent, live transcription) holds one
//! upstream connection for minutes. Through `Balance` as an HTTP request, its
//! `101 Switching Protocols` would end at once and release the endpoint's slot while the
//! session runs. A [`Proxy`] instead picks with the pool's own pick
//! ([`Balance::pick`](crate::Balance::pick)), so tiers, health, concurrency limits and
//! affinity apply as for a request, and keeps the endpoint's
//! [`LoadGuard`](crate::load::LoadGuard) in the [`Session`] that pipes the frames: the slot
//! is held until the session ends, however it ends (either side closes, a connection breaks,
//! the idle timeout, the serving task is dropped, the proxy shuts down or is dropped).
//!
//! - **Before the session starts** ([`Proxy::connect`], before the client's upgrade is
//!   answered): the upstream is connected (`ws://`, or `wss://` with the `client` feature's
//!   rustls settings) and its handshake completed within a timeout. A refused connection, a
//!   failed handshake, or a status that calls for another endpoint counts against that
//!   endpoint and the next is tried, within a number of attempts.
//! - **During it** ([`Session::serve`]): messages go both ways as they come, pings and pongs
//!   too (the WebSocket library on each side also answers a ping itself, so a pinger may see
//!   two pongs, which RFC 6455 allows), each side's back-pressure kept. A close frame from
//!   either side goes on to the other. An upstream that breaks without one gets the client
//!   a close frame with 1011 (internal error) and a reason that says so, and counts as the
//!   endpoint's failure (not 1014, bad gateway: RFC 6455 does not list it, and tungstenite's
//!   clients take it for a protocol violation and report 1002 instead). A clean close is a
//!   success; an upstream's own close code is judged by
//!   [`Classify::classify_close`](crate::classify::Classify::classify_close). No frame either
//!   way for the idle timeout, or a message over the size limit, ends the session as
//!   nobody's failure.
//! - **One verdict**: the session's outcome goes where a response's does, judged with the
//!   stack's one classifier (the one set on [`BalanceLayer`](crate::BalanceLayer)): to the
//!   load guard (the endpoint's counters and latency estimates; time to first byte is the
//!   upstream's first message) and, with [`ProxyBuilder::health`], to the health policy.
//!   A session the client abandons or the gateway ends is a cancellation: released, not
//!   counted.
//! - **Credentials**: the upstream's handshake carries the upstream's credentials, never the
//!   client's: headers go by an allow-list ([`FORWARDED`]), and subprotocols that carry a key
//!   (OpenAI's `openai-insecure-api-key.<key>`, and any prefix given to
//!   [`ProxyBuilder::hide_subprotocol`]) are dropped from the offer. The rest of the client's
//!   subprotocols are offered to the upstream, and its choice is the one to answer the client
//!   with ([`Session::protocol`]).
//!
//! With the `client` feature, a pool of [`client::Upstream`](crate::client::Upstream)s serves
//! both HTTP requests and sessions (each upstream's base URL with `ws` for `http` and `wss`
//! for `https`, its credentials and its TLS settings), and both count in its load. Without
//! it, a pool of this module's [`Upstream`]s serves sessions (plain `ws://`).
//!
//! A session key from a header ([`ProxyBuilder::affinity_header`]) is hashed as
//! [`StreamAffinity`](crate::StreamAffinity) hashes one for HTTP, so a session and the HTTP
//! requests with the same key go to the same endpoint; an [`Affinity`](crate::hints::Affinity),
//! [`Require`](crate::hints::Require) or [`Cost`](crate::hints::Cost) hint in the upgrade
//! request's extensions is read as `Balance` reads it.
//!
//! # With hyper (or axum, taking the upgrade itself)
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use hyper_util::rt::TokioIo;
//! use tower_ai_balance::{client::Upstream, http_error::openai_response, websocket};
//!
//! async fn realtime<B>(
//!     proxy: websocket::Proxy<Upstream>,
//!     mut request: Request<B>,
//! ) -> Response<Full<Bytes>> {
//!     let upgrade = hyper::upgrade::on(&mut request);
//!     let (head, _) = request.into_parts();
//!     if let Err(not) = websocket::accept(&head, None) {
//!         return not.response().map(|()| Full::default());
//!     }
//!     // Picks, connects and fails over before the client's upgrade is answered.
//!     let session = match proxy.connect(&head).await {
//!         Ok(session) => session,
//!         Err(error) => return openai_response(&error),
//!     };
//!     let response = websocket::accept(&head, session.protocol()).expect("checked above");
//!     tokio::spawn(async move {
//!         if let Ok(upgraded) = upgrade.await {
//!             // Holds the endpoint's slot until the session ends.
//!             session.serve_io(TokioIo::new(upgraded)).await;
//!         }
//!     });
//!     response.map(|()| Full::default())
//! }
//! ```
//!
//! # With axum's `WebSocketUpgrade`
//!
//! Connect first, answer with the upstream's subprotocol, and serve axum's socket: it
//! carries axum's own message type, so map it to tungstenite's ([`Message`]) both ways
//! (`examples/support/model_server.rs` does it in a few lines; `cargo run --example
//! realtime` runs a gateway built this way).
//!
//! ```ignore
//! async fn realtime(State(proxy): State<Proxy<Upstream>>, head: Parts, mut ws: WebSocketUpgrade) -> Response {
//!     let session = match proxy.connect(&head).await {
//!         Ok(session) => session,
//!         Err(error) => return openai_response(&error).into_response(),
//!     };
//!     if let Some(protocol) = session.protocol() {
//!         ws.set_selected_protocol(protocol.clone());
//!     }
//!     ws.max_message_size(session.config().max_message_size.unwrap_or(usize::MAX))
//!         .on_upgrade(move |socket| async move { session.serve(axum_to_tungstenite(socket)).await; })
//! }
//! ```
//!
//! [`Message`]: tokio_tungstenite::tungstenite::Message

mod builder;
mod dial;
mod end;
mod handshake;
mod headers;
mod pipe;
mod proxy;
mod session;
mod upstream;

pub use tokio_tungstenite;

pub(crate) use self::session::Settings;
pub use self::{
    builder::ProxyBuilder,
    end::{EndCause, SessionEnd},
    handshake::{accept, NotUpgrade},
    headers::FORWARDED,
    proxy::Proxy,
    session::Session,
    upstream::{Target, Upstream},
};
