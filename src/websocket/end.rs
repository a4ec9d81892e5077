//! How a session ended ([`SessionEnd`]): the cause, the close frames each side is sent, and
//! the verdict on the endpoint.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};

use super::pipe::Ending;
use crate::{
    classify::{Classify, Outcome},
    endpoint::Endpoint,
};

/// What ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndCause {
    /// The client closed it (its close frame went on to the upstream).
    ClientClosed,
    /// The upstream closed it with this code (its close frame went on to the client).
    UpstreamClosed {
        /// The close code, if the frame had one.
        code: Option<u16>,
    },
    /// The client's connection ended or failed without a close frame; the upstream was sent
    /// 1001 (going away).
    ClientGone,
    /// The upstream's connection ended or failed without a close frame; the client was sent
    /// 1011 (internal error) with a reason that says so.
    UpstreamFailed,
    /// The client sent a message over the size limit; it was sent 1009 (message too big).
    ClientTooBig,
    /// The upstream sent a message over the size limit; both sides were sent 1009.
    UpstreamTooBig,
    /// No frame went either way for the idle timeout; both sides were sent 1001.
    Idle,
    /// The gateway shut down; both sides were sent 1001.
    Shutdown,
}

/// How a session ended: the cause, the endpoint that served it, and the verdict it was given
/// (what the endpoint's load guard and health were told).
#[derive(Debug, Clone)]
pub struct SessionEnd {
    cause: EndCause,
    endpoint: Arc<Endpoint>,
    verdict: Option<Outcome>,
}

impl SessionEnd {
    /// What ended it.
    pub fn cause(&self) -> &EndCause {
        &self.cause
    }

    /// The endpoint that served it.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The verdict on the endpoint: a clean close is a success, a broken upstream a failure,
    /// an upstream's close code as the stack's classifier judges it
    /// ([`Classify::classify_close`]); the idle timeout and the size limit are nobody's
    /// failure ([`Outcome::ClientError`]). `None` for a session that was cancelled (the
    /// client vanished, the gateway shut down): its slot was released and nothing counted.
    pub fn verdict(&self) -> Option<Outcome> {
        self.verdict
    }
}

/// A close frame with a reason of at most 123 bytes (the limit of a control frame).
pub(crate) fn frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].to_owned().into(),
    }
}

/// What the pump's ending means: the cause, and the verdict on the endpoint.
pub(crate) fn judge(
    ending: &Ending,
    classify: &dyn Classify,
    endpoint: Arc<Endpoint>,
) -> SessionEnd {
    let (cause, verdict) = match ending {
        Ending::ClientClosed(_) => (EndCause::ClientClosed, Some(Outcome::Success)),
        Ending::UpstreamClosed(frame) => {
            let code = frame.as_ref().map(|f| u16::from(f.code));
            (
                EndCause::UpstreamClosed { code },
                Some(classify.classify_close(code)),
            )
        }
        Ending::ClientGone => (EndCause::ClientGone, None),
        Ending::UpstreamBroken(_) => (EndCause::UpstreamFailed, Some(Outcome::Failure)),
        Ending::ClientTooBig => (EndCause::ClientTooBig, Some(Outcome::ClientError)),
        Ending::UpstreamTooBig => (EndCause::UpstreamTooBig, Some(Outcome::ClientError)),
        Ending::Idle => (EndCause::Idle, Some(Outcome::ClientError)),
        Ending::Shutdown => (EndCause::Shutdown, None),
    };
    SessionEnd {
        cause,
        endpoint,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let f = frame(1014, &long);
        assert!(f.reason.len() <= 123);
        assert_eq!(u16::from(f.code), 1014);
        assert_eq!(frame(1000, "bye").reason.as_str(), "bye");
    }
}
