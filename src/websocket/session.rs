//! [`Session`]: an upstream that took a session, holding its endpoint's slot until the
//! session ends, and the serving of it.

use std::{fmt, sync::Arc, time::Duration};

use futures_core::Stream;
use futures_util::{Sink, SinkExt, StreamExt};
use http::HeaderValue;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tokio_tungstenite::{
    tungstenite::{
        protocol::{CloseFrame, Role, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};

use super::{
    dial::UpstreamSocket,
    end::{frame, judge, SessionEnd},
    pipe::{pump, Ending},
};
use crate::{
    classify::Classify, endpoint::Endpoint, error::BoxError, health::HealthPolicy, load::LoadGuard,
};

/// What every session of one proxy shares.
pub(crate) struct Settings {
    pub(crate) config: WebSocketConfig,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) close_timeout: Duration,
    pub(crate) classify: Arc<dyn Classify>,
    pub(crate) health: Option<HealthPolicy>,
}

/// An upstream that took a session, and the endpoint's slot, held until the session ends.
///
/// Made by [`Proxy::connect`](super::Proxy::connect) before the client's upgrade is
/// answered; answer it with [`protocol`](Self::protocol), then [`serve`](Self::serve) the
/// client's socket. The slot is released however the session ends, and when a `Session` or
/// its `serve` future is dropped (a cancellation: nothing is counted).
pub struct Session {
    pub(crate) upstream: UpstreamSocket,
    pub(crate) guard: LoadGuard,
    pub(crate) protocol: Option<HeaderValue>,
    pub(crate) settings: Arc<Settings>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("endpoint", self.guard.endpoint().key())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The endpoint that serves the session.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        self.guard.endpoint()
    }

    /// The subprotocol the upstream chose, one of those the client offered: the
    /// `Sec-WebSocket-Protocol` to answer the client's upgrade with.
    pub fn protocol(&self) -> Option<&HeaderValue> {
        self.protocol.as_ref()
    }

    /// The limits a client socket made by the caller should have (those
    /// [`serve_io`](Self::serve_io) gives the one it makes).
    pub fn config(&self) -> WebSocketConfig {
        self.settings.config
    }

    /// Serves a client's upgraded connection (hyper's `Upgraded` in `TokioIo`, or any
    /// byte stream whose `101 Switching Protocols` was sent): see [`serve`](Self::serve).
    pub async fn serve_io<T>(self, io: T) -> SessionEnd
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let client =
            WebSocketStream::from_raw_socket(io, Role::Server, Some(self.settings.config)).await;
        self.serve(client).await
    }

    /// Pipes messages both ways (pings and pongs too) until the session ends, then closes
    /// both sides, judges the endpoint and releases its slot.
    ///
    /// `client` is the client's side: a `WebSocketStream`, or any stream and sink of
    /// messages (axum's `WebSocket`, mapped). A close frame from either side goes on to the
    /// other. An upstream that breaks without one gets the client a 1011 (internal error) with a
    /// reason that says so; a client that vanishes gets the upstream a 1001 (going away).
    pub async fn serve<C, E>(self, mut client: C) -> SessionEnd
    where
        C: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin,
        E: Into<BoxError>,
    {
        let Session {
            mut upstream,
            mut guard,
            settings,
            mut shutdown,
            ..
        } = self;
        let ending = pump(
            &mut client,
            &mut upstream,
            settings.idle_timeout,
            async move {
                // Shutting down, or the proxy is gone.
                let _ = shutdown.wait_for(|down| *down).await;
            },
            || guard.first_byte(),
        )
        .await;
        let end = judge(&ending, &*settings.classify, Arc::clone(guard.endpoint()));
        tracing::debug!(endpoint = %end.endpoint().key(), cause = ?end.cause(), "session ended");
        // The slot is released now, whatever the closing handshakes take.
        match end.verdict() {
            Some(verdict) => {
                guard.judge(verdict);
                guard.complete();
                if let Some(health) = &settings.health {
                    health.judge(end.endpoint(), verdict);
                }
            }
            None => drop(guard),
        }
        let closing = close(ending, &mut client, &mut upstream);
        let _ = tokio::time::timeout(settings.close_timeout, closing).await;
        end
    }
}

/// Ends both sides as `ending` calls for: the close frame that ended the session goes on to
/// the other side, each side is sent its close frame (or has its reply to the peer's
/// flushed), and each is read until it closes.
async fn close<C, U, CE, UE>(ending: Ending, client: &mut C, upstream: &mut U)
where
    C: Stream<Item = Result<Message, CE>> + Sink<Message, Error = CE> + Unpin,
    U: Stream<Item = Result<Message, UE>> + Sink<Message, Error = UE> + Unpin,
{
    let going_away = |why: &str| Some(frame(1001, why));
    // For each side: `Some(frame)` to send it, `None` when it closed first and only awaits
    // the reply its library queued.
    let (to_client, to_upstream): (Option<Option<CloseFrame>>, Option<Option<CloseFrame>>) =
        match ending {
            Ending::ClientClosed(f) => (None, Some(f)),
            Ending::UpstreamClosed(f) => (Some(f), None),
            Ending::ClientGone => (Some(None), Some(going_away("the client went away"))),
            Ending::UpstreamBroken(why) => (
                Some(Some(frame(1011, &format!("upstream failed: {why}")))),
                Some(None),
            ),
            Ending::ClientTooBig => (
                Some(Some(frame(1009, "message over the size limit"))),
                Some(going_away("the client sent a message over the size limit")),
            ),
            Ending::UpstreamTooBig => (
                Some(Some(frame(1009, "upstream message over the size limit"))),
                Some(Some(frame(1009, "message over the size limit"))),
            ),
            Ending::Idle => (
                Some(going_away("idle timeout")),
                Some(going_away("idle timeout")),
            ),
            Ending::Shutdown => (
                Some(going_away("the gateway is shutting down")),
                Some(going_away("the gateway is shutting down")),
            ),
        };
    futures_util::future::join(end_side(client, to_client), end_side(upstream, to_upstream)).await;
}

/// Sends `frame` as a close (or, for `None`, completes the peer's close), then reads until the
/// side's connection ends.
async fn end_side<S, E>(side: &mut S, frame: Option<Option<CloseFrame>>)
where
    S: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin,
{
    let sent = match frame {
        Some(frame) => side.send(Message::Close(frame)).await,
        None => side.close().await,
    };
    if sent.is_ok() {
        while let Some(Ok(_)) = side.next().await {}
    }
}
