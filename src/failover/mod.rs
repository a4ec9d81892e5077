//! Retries elsewhere, across providers, within a budget.
//!
//! [`Failover`] wraps a [`Balance`](crate::balance::Balance) (or a stack around one). When an
//! attempt fails in a way another endpoint might not (a connect error, a timeout, a 5xx, a
//! 429: what the verdict `Balance` took with the stack's classifier calls retriable), it sends
//! the request again with every endpoint already tried in an
//! [`Exclude`](crate::hints::Exclude) hint, so `Balance` picks elsewhere; endpoints carry tiers
//! (0 self-hosted, 1 a provider, 2 another), and since `Balance` takes the lowest tier with an
//! available endpoint, excluding a tier's endpoints walks down the tiers. A caller's own
//! `Exclude` hint holds for every attempt.
//!
//! - **Tiers**: a retry stays in the tier while it has endpoints left to try (one bad endpoint
//!   among good ones is retried on a good one), but the last attempt allowed goes past every
//!   tier tried so far ([`Exclude::tiers_below`](crate::hints::Exclude::tiers_below)) when a
//!   tier beyond has an endpoint that can serve, and stays where it is otherwise. Three dead
//!   tier-0 endpoints and a healthy tier 1: the first request's third attempt is served by
//!   tier 1 (Envoy's priority levels spill over in the same direction).
//! - **Rate limits**: an endpoint that answered 429, 529 or 503 with `Retry-After` is cooling
//!   down and gets no request before its time, panic mode or not. When every endpoint that
//!   could serve is cooling down the request fails at once with
//!   [`RateLimited`](crate::error::RateLimited), which says when the first comes back. When
//!   exactly one attempt was made, it was rate-limited and nothing else could be tried,
//!   `Failover` returns that upstream's own answer unchanged (status, body, `Retry-After`
//!   and rate-limit headers), as the caller would have had it without `Failover`.
//! - **Hedges**: when both sides of a hedge race fail, both endpoints are excluded from the
//!   next attempt and both are named in the error; the pair counts as one attempt.
//!
//! - **Limits**: at most 3 attempts by default, each with `Balance`'s per-attempt timeout, all
//!   within an optional overall deadline.
//! - **Timeouts**: an attempt that runs out of the per-attempt timeout after its request was
//!   sent may still be running upstream, so it is sent elsewhere only with
//!   [`FailoverBuilder::retry_timeouts`]; the request fails with that timeout (or, after
//!   other failed attempts, [`GaveUp::TimedOutAfterSending`](crate::error::GaveUp)).
//!   Connect errors and timeouts (the client's connect timeout) and an endpoint service that
//!   never became ready are retried by default. Whether such a timeout counts against the
//!   endpoint is the health policy's call
//!   ([`HealthPolicy::timeouts_are_failures`](crate::health::HealthPolicy::timeouts_are_failures),
//!   off by default).
//!
//!   Sizing the per-attempt timeout: it ends at the response head. A streamed answer sends
//!   its head early, but a non-streamed generation sends it only when the last token is
//!   done, so for those the timeout must cover the whole generation on the slowest healthy
//!   endpoint under load: queueing, prefill, and `max_tokens` times the time per output token
//!   (4,096 tokens at 40 ms each is 164 s before any queue). Set it per request from
//!   `max_tokens` with an [`AttemptTimeout`](crate::hints::AttemptTimeout) hint, or leave it
//!   unset for non-streamed requests and bound them with the overall deadline. For streams,
//!   the [first-chunk wait](FailoverBuilder::first_chunk) and `Balance`'s idle timeout say
//!   more than the head does.
//! - **Budget**: retries draw on a [`RetryBudget`] shared by every clone of the layer (20% of
//!   requests plus 10 a second by default), so a failing provider cannot double the load on
//!   the rest.
//! - **Replay**: a buffered body ([`Replay`]: `Full`, `Empty`, `String`, `Bytes`) is sent again;
//!   a retry of a streamed one ([`NoReplay`]) fails with
//!   [`NotReplayable`](crate::error::NotReplayable), never sent empty.
//! - **First chunk** ([`FailoverBuilder::first_chunk`]): providers often answer 200 and then
//!   fail, or open the stream with an error event; with this the boundary is the first data
//!   frame, not the headers. After the first chunk reaches the caller, nothing is replayed: a
//!   later failure reaches the caller as an error in the body.
//! - **Stalls**: `BalanceBuilder::idle_timeout` ends a stream that stopped sending, releases its
//!   load and counts it as the endpoint's failure.
//! - **Mid-stream continuation** ([`FailoverBuilder::continuation`], opt-in): when a stream
//!   breaks after its first chunk, a [`Continuation`] policy builds a request from what was
//!   already streamed (for chat completions, `OpenAiChat` with the `openai` feature: the
//!   original messages plus the partial answer as a final assistant message, which vLLM
//!   continues with `continue_final_message`; OpenAI's hosted API does not), and the
//!   caller's stream carries on from another endpoint. The request is sent with the original
//!   head, a `content-length` of its new body and no hop-by-hop headers. Only a 2xx
//!   `text/event-stream` answer is spliced in; any other answer, or a failure to send, ends
//!   the stream with the error that broke it, as without continuation, and counts against
//!   the endpoint that gave it as its verdict says (a 5xx or a 2xx that is not a stream
//!   counts; a 4xx is the request's fault). A stream that breaks after more than 4 MiB is not
//!   continued: only that much is kept, and a continuation built from part of the answer
//!   would repeat the rest. Off by default: unsafe for tool calls.
//! - **Hedging** ([`FailoverBuilder::hedge`]): a slow attempt gets a copy on another endpoint
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
//!     .layer(FailoverLayer::builder().deadline(Duration::from_secs(60)).build()?)
//!     .layer(BalanceLayer::new())
//!     .service(pool);
//! let response = svc.oneshot(Request::new(Full::new(Bytes::from("{}")))).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<Served>().unwrap().endpoint().key().as_str(), "provider");
//! # Ok(())
//! # }
//! ```

mod attempts;
mod body;
mod budget;
mod context;
mod continuation;
mod error_event;
mod first_chunk;
mod future;
mod head_copy;
mod hedge;
mod layer;
mod reconnect;
mod replay;
mod service;
mod settings;
mod span_fields;
mod step;

#[cfg(feature = "openai")]
pub use self::continuation::OpenAiChat;
pub use self::{
    body::ResponseBody,
    budget::RetryBudget,
    continuation::Continuation,
    error_event::openai_error_event,
    future::ResponseFuture,
    hedge::Hedge,
    layer::{FailoverBuilder, FailoverLayer},
    replay::{NoReplay, Replay},
    service::Failover,
};
