//! The `Metering` layer: the tokens each answer used, counted at the endpoint that gave it.
//!
//! [`Metering`] wraps each answer's body in a [`MeteredBody`], which reads the token usage
//! as the body passes (a [`UsageReader`](crate::usage::UsageReader): the `usage` object of an
//! OpenAI or Anthropic answer, streamed or not; nothing is buffered or changed) and, when
//! the body ends, counts it at the endpoint [`Served`](crate::hints::Served) names, per
//! model ([`Endpoint::tokens`](crate::Endpoint::tokens); in
//! [`PoolMetrics`](crate::metrics::PoolMetrics) and its Prometheus text as
//! `ai_balance_input_tokens_total`, `ai_balance_output_tokens_total` and
//! `ai_balance_cached_input_tokens_total`), and records `gen_ai.usage.input_tokens` and
//! `gen_ai.usage.output_tokens` on the span current when the request was sent (under
//! `Failover`, its request or attempt span, which declare them).
//!
//! Place it above `Balance` (which names the endpoint) and below `Route` (which names the
//! model) and `Failover` (so that each attempt counts at its own endpoint). The model is the
//! one the request was sent as: what its [`Require`](crate::capability::Require) hint names,
//! or for an alias the model of the endpoint that took it. A stack without this layer reads
//! nothing and pays nothing. OpenAI streams report usage only when the request asks for it
//! (`"stream_options": {"include_usage": true}`); a stream without it counts no tokens.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{metering::MeteringLayer, BalanceLayer, EndpointConfig, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let answer = r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":4}}"#;
//! let server = service_fn(move |_: Request<Full<Bytes>>| async move {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
//! });
//! let pool = Pool::new();
//! pool.insert(EndpointConfig::new("gpu-0").model("llama"), server)?;
//! let stack = ServiceBuilder::new()
//!     .layer(MeteringLayer::new())
//!     .layer(BalanceLayer::new())
//!     .service(pool.clone());
//! let response = stack.oneshot(Request::new(Full::new(Bytes::new()))).await?;
//! response.into_body().collect().await?;
//!
//! let tokens = pool.endpoints()[0].tokens();
//! assert_eq!((&*tokens[0].model, tokens[0].input, tokens[0].output), ("llama", 30, 4));
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod meter;
mod model;
mod service;
#[cfg(all(test, not(loom)))]
mod tests;

pub use self::{future::ResponseFuture, layer::MeteringLayer, meter::Meter, service::Metering};

/// An answer's body read for its usage by [`Metering`].
pub type MeteredBody<B> = crate::usage::UsageBody<B, Meter>;
