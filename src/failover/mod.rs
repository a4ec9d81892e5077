//! Retries elsewhere, across providers, within a budget.
//!
//! [`Failover`] wraps a [`Balance`](crate::balance::Balance) (or a stack around one). When an
//! attempt fails in a way another endpoint might not (a connect error, a timeout, a 5xx, a
//! 429), it sends the request again with every endpoint already tried in an
//! [`Exclude`](crate::hints::Exclude) hint, so `Balance` picks elsewhere; endpoints carry tiers
//! (0 self-hosted, 1 a provider, 2 another), and since `Balance` takes the lowest tier with an
//! available endpoint, excluding a tier's endpoints walks down the tiers.
//!
//! - **Limits**: at most 3 attempts by default, each with `Balance`'s per-attempt timeout, all
//!   within an optional overall deadline.
//! - **Budget**: retries draw on a [`RetryBudget`] shared by every clone of the layer (20% of
//!   requests plus 10 a second by default), so a failing provider cannot double the load on
//!   the rest.
//! - **Replay**: a buffered body ([`Replay`]: `Full`, `Empty`, `String`, `Bytes`) is sent again;
//!   a retry of a streamed one ([`NoReplay`]) fails with
//!   [`NotReplayable`](crate::error::NotReplayable), never sent empty.
//! - **First chunk** ([`FailoverLayer::first_chunk`]): providers often answer 200 and then
//!   fail, or open the stream with an error event; with this the boundary is the first data
//!   frame, not the headers. After the first chunk reaches the caller, nothing is replayed: a
//!   later failure reaches the caller as an error in the body.
//! - **Stalls**: `BalanceLayer::idle_timeout` ends a stream that stopped sending, releases its
//!   load and counts it as the endpoint's failure.
//! - **Mid-stream continuation** ([`FailoverLayer::continuation`], opt-in): when a stream
//!   breaks after its first chunk, a [`Continuation`] policy builds a request from what was
//!   already streamed (for chat completions, `OpenAiChat` with the `openai` feature: the
//!   original messages plus the partial answer as an assistant prefill), and the caller's
//!   stream carries on from another endpoint. Off by default: unsafe for tool calls.
//! - **Hedging** ([`FailoverLayer::hedge`]): a slow attempt gets a copy on another endpoint
//!   after a fixed delay or a percentile of recent answers; the first answer is kept and the
//!   other cancelled, its slot released.
//! - **Errors**: when every attempt fails, one
//!   [`AttemptsFailed`](crate::error::AttemptsFailed) lists each attempt's endpoint and
//!   failure, and when every endpoint is cooling down, when the first comes back.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{failover::FailoverLayer, hints::Served, BalanceLayer, EndpointConfig, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let answer = |status: u16| service_fn(move |_req: Request<Full<Bytes>>| async move {
//!     let mut response = Response::new(Full::new(Bytes::new()));
//!     *response.status_mut() = StatusCode::from_u16(status).unwrap();
//!     Ok::<_, Infallible>(response)
//! });
//! let pool = Pool::new();
//! pool.insert(EndpointConfig::new("self-hosted").tier(0), answer(503))?;
//! pool.insert(EndpointConfig::new("provider").tier(1), answer(200))?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(FailoverLayer::new().deadline(Duration::from_secs(60)))
//!     .layer(BalanceLayer::new())
//!     .service(pool);
//! let response = svc.oneshot(Request::new(Full::new(Bytes::from("{}")))).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<Served>().unwrap().0.key().as_str(), "provider");
//! # Ok(())
//! # }
//! ```

mod body;
mod budget;
mod continuation;
mod hedge;
mod layer;
mod replay;
mod service;

use std::{sync::Arc, time::Duration};

#[cfg(feature = "openai")]
pub use self::continuation::OpenAiChat;
pub use self::{
    body::ResponseBody,
    budget::RetryBudget,
    continuation::Continuation,
    hedge::Hedge,
    layer::FailoverLayer,
    replay::{NoReplay, Replay},
    service::{Failover, ResponseFuture},
};
use crate::classify::Classify;

/// What every service built by one layer shares.
#[derive(Clone)]
pub(crate) struct Shared {
    attempts: usize,
    deadline: Option<Duration>,
    budget: Arc<RetryBudget>,
    first_chunk: Option<Duration>,
    error_event: fn(&[u8]) -> bool,
    hedge: Option<Hedge>,
    latencies: Arc<hedge::Latencies>,
    classify: Arc<dyn Classify>,
    continuation: Option<Arc<dyn Continuation>>,
}

impl Shared {
    /// Whether a request needs nothing after its first response head but a retry: no hedge,
    /// deadline, first-chunk wait or continuation. Such requests take the unboxed path.
    fn head_is_enough(&self) -> bool {
        self.hedge.is_none()
            && self.deadline.is_none()
            && self.first_chunk.is_none()
            && self.continuation.is_none()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("attempts", &self.attempts)
            .field("deadline", &self.deadline)
            .field("first_chunk", &self.first_chunk)
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}

/// Whether a first chunk is an error event: an SSE `event: error` line, or a first `data:`
/// line (or bare JSON) whose object opens with an `"error"` key, as OpenAI-compatible servers
/// send when a generation fails before its first token.
pub fn openai_error_event(chunk: &[u8]) -> bool {
    for line in chunk.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b":") {
            continue;
        }
        if let Some(event) = line.strip_prefix(b"event:") {
            if event.trim_ascii() == b"error" {
                return true;
            }
            continue;
        }
        let data = line.strip_prefix(b"data:").unwrap_or(line).trim_ascii();
        return data
            .strip_prefix(b"{")
            .is_some_and(|object| object.trim_ascii_start().starts_with(b"\"error\""));
    }
    false
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::openai_error_event;

    #[test]
    fn error_events_are_recognised() {
        assert!(openai_error_event(
            b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n"
        ));
        assert!(openai_error_event(
            b"event: error\ndata: {\"type\":\"overloaded_error\"}\n\n"
        ));
        assert!(openai_error_event(
            b": keep-alive\n\ndata: { \"error\":1}\n\n"
        ));
        assert!(openai_error_event(b"{\"error\":\"bad\"}"));
        assert!(!openai_error_event(
            b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"error\"}}]}\n\n"
        ));
        assert!(!openai_error_event(b"data: [DONE]\n\n"));
        assert!(!openai_error_event(b""));
    }
}
