//! The frame pump: a session's messages both ways, each side's back-pressure kept, until one
//! side closes or breaks, the session idles out or the gateway shuts down ([`Ending`]).

use std::{
    future::Future,
    pin::{pin, Pin},
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use futures_util::Sink;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::{protocol::CloseFrame, Error as WsError, Message};

use crate::error::BoxError;

/// What ended the pumping.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent a close frame.
    ClientClosed(Option<CloseFrame>),
    /// The upstream sent a close frame.
    UpstreamClosed(Option<CloseFrame>),
    /// The client's connection ended or failed without a close frame.
    ClientGone,
    /// The upstream's connection ended or failed without a close frame: why.
    UpstreamBroken(String),
    /// The client sent a message or frame over the size limit.
    ClientTooBig,
    /// The upstream sent a message or frame over the size limit.
    UpstreamTooBig,
    /// No frame either way for the idle timeout.
    Idle,
    /// The gateway is shutting down.
    Shutdown,
}

/// How one direction ended.
enum LaneEnd {
    /// Its source sent a close frame.
    Closed(Option<CloseFrame>),
    /// Its source ended (`None`: without a close frame) or failed.
    ReadFailed(Option<BoxError>),
    /// Its destination failed.
    WriteFailed,
}

/// One direction: a message read and not yet taken by the other side, and whether the other
/// side has unflushed writes.
#[derive(Default)]
struct Lane {
    pending: Option<Message>,
    flush: bool,
}

/// Pumps both ways until something ends the session. `first_down` is called once, when the
/// first message from the upstream arrives.
pub(crate) async fn pump<C, U, CE, UE>(
    client: &mut C,
    upstream: &mut U,
    idle: Option<Duration>,
    shutdown: impl Future<Output = ()>,
    mut first_down: impl FnMut(),
) -> Ending
where
    C: Stream<Item = Result<Message, CE>> + Sink<Message, Error = CE> + Unpin,
    U: Stream<Item = Result<Message, UE>> + Sink<Message, Error = UE> + Unpin,
    CE: Into<BoxError>,
    UE: Into<BoxError>,
{
    let mut shutdown = pin!(shutdown);
    // Without an idle timeout, a timer that never fires in practice.
    let idle_after = idle.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut timer = pin!(sleep(idle_after));
    let (mut up, mut down) = (Lane::default(), Lane::default());
    let mut seen_down = false;
    std::future::poll_fn(|cx| {
        if shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ending::Shutdown);
        }
        let (mut read_up, mut read_down) = (false, false);
        if let Some(end) = pump_lane(&mut up, client, upstream, cx, &mut read_up) {
            return Poll::Ready(match end {
                LaneEnd::Closed(frame) => Ending::ClientClosed(frame),
                LaneEnd::ReadFailed(e) if too_big(e.as_ref()) => Ending::ClientTooBig,
                LaneEnd::ReadFailed(_) => Ending::ClientGone,
                LaneEnd::WriteFailed => Ending::UpstreamBroken("writing to it failed".into()),
            });
        }
        if let Some(end) = pump_lane(&mut down, upstream, client, cx, &mut read_down) {
            return Poll::Ready(match end {
                LaneEnd::Closed(frame) => Ending::UpstreamClosed(frame),
                LaneEnd::ReadFailed(e) if too_big(e.as_ref()) => Ending::UpstreamTooBig,
                LaneEnd::ReadFailed(e) => Ending::UpstreamBroken(broken(e)),
                LaneEnd::WriteFailed => Ending::ClientGone,
            });
        }
        if read_down && !seen_down {
            seen_down = true;
            first_down();
        }
        if read_up || read_down {
            timer.as_mut().reset(Instant::now() + idle_after);
        }
        if idle.is_some() && timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ending::Idle);
        }
        Poll::Pending
    })
    .await
}

/// Moves messages from `src` to `dst` until either would wait. `read` is set when a message
/// was read.
fn pump_lane<S, D, SE, DE>(
    lane: &mut Lane,
    src: &mut S,
    dst: &mut D,
    cx: &mut Context<'_>,
    read: &mut bool,
) -> Option<LaneEnd>
where
    S: Stream<Item = Result<Message, SE>> + Unpin,
    D: Sink<Message, Error = DE> + Unpin,
    SE: Into<BoxError>,
{
    loop {
        if let Some(message) = lane.pending.take() {
            match Pin::new(&mut *dst).poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if Pin::new(&mut *dst).start_send(message).is_err() {
                        return Some(LaneEnd::WriteFailed);
                    }
                    lane.flush = true;
                }
                Poll::Ready(Err(_)) => return Some(LaneEnd::WriteFailed),
                Poll::Pending => {
                    lane.pending = Some(message);
                    break;
                }
            }
        }
        match Pin::new(&mut *src).poll_next(cx) {
            Poll::Ready(Some(Ok(Message::Close(frame)))) => return Some(LaneEnd::Closed(frame)),
            // A reader never yields raw frames.
            Poll::Ready(Some(Ok(Message::Frame(_)))) => {}
            Poll::Ready(Some(Ok(message))) => {
                *read = true;
                lane.pending = Some(message);
            }
            Poll::Ready(Some(Err(e))) => return Some(LaneEnd::ReadFailed(Some(e.into()))),
            Poll::Ready(None) => return Some(LaneEnd::ReadFailed(None)),
            Poll::Pending => break,
        }
    }
    if lane.flush {
        match Pin::new(&mut *dst).poll_flush(cx) {
            Poll::Ready(Ok(())) => lane.flush = false,
            Poll::Ready(Err(_)) => return Some(LaneEnd::WriteFailed),
            Poll::Pending => {}
        }
    }
    None
}

/// Whether a read failed on the size limit (a tungstenite capacity error, wherever it sits in
/// the error's chain: axum wraps it).
fn too_big(error: Option<&BoxError>) -> bool {
    let Some(error) = error else {
        return false;
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(e) = next {
        if matches!(e.downcast_ref::<WsError>(), Some(WsError::Capacity(_))) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Why an upstream broke, for the client's close reason.
fn broken(error: Option<BoxError>) -> String {
    match error {
        None => "the connection ended without a close frame".into(),
        Some(e) => match e.downcast_ref::<WsError>() {
            Some(WsError::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => "the connection was lost".into(),
            Some(WsError::Io(_)) => "the connection failed".into(),
            Some(WsError::Protocol(_) | WsError::Utf8(_)) => "it broke the protocol".into(),
            _ => "the connection failed".into(),
        },
    }
}
