//! Load balancing for AI inference traffic, as [tower] layers.
//!
//! Inference requests differ a thousandfold in length, streams hold an instance for minutes,
//! sessions want the instance that holds their cache, and providers fail and rate-limit. This
//! crate spreads such traffic over a shared [`Pool`] of endpoints with a lock-free,
//! allocation-free least-loaded picker, and holds each endpoint's load until a streamed
//! response's body has ended.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{balance::BalanceLayer, EndpointConfig, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("data: hello\n\n"))))
//! });
//! let pool = Pool::new();
//! pool.insert(EndpointConfig::new("h100-0").weight(2.0).max_concurrency(64), upstream.clone())?;
//! pool.insert(EndpointConfig::new("a10-0").weight(1.0).max_concurrency(16), upstream)?;
//!
//! let balancer = ServiceBuilder::new().layer(BalanceLayer::new()).service(pool.clone());
//! let response = balancer.clone().oneshot(Request::new(Full::new(Bytes::new()))).await?;
//! // The endpoint's load is held until the body is read to its end.
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "data: hello\n\n");
//! assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
//! # Ok(())
//! # }
//! ```
//!
//! # Parts
//!
//! - [`pool`]: the shared endpoint set, changed at run time without blocking a pick.
//! - [`endpoint`]: one endpoint's metadata and live state.
//! - [`pick`]: the strategies, as plain functions usable without a runtime.
//! - [`load`]: the guard that holds an endpoint's load until the response is finished.
//! - [`balance`]: the `Balance` service and layer.
//! - [`affinity`]: the `StreamAffinity` layer: sessions and streams back to their instance.
//! - [`failover`]: the `Failover` layer: retries elsewhere, across tiers, within a budget.
//! - [`route`]: the `Route` layer: what each request needs and how much work it brings.
//! - [`prefix`]: prefix-cache-aware routing: block keys, the per-endpoint prefix index, the
//!   policy that trades cached prefix against queued work.
//! - [`capability`]: what an endpoint can serve and what a request requires.
//! - [`health`]: the `HealthFilter` layer: ejection, cooldown, half-open trials, probes.
//! - [`classify`]: how an outcome is judged (HTTP status, gRPC status, errors).
//! - [`hints`]: how layers steer the pick and learn which endpoint served.
//! - [`error`]: the typed errors.
//! - [`metrics`]: a snapshot of every endpoint, and its Prometheus text.
//!
//! # Feature flags
//!
//! - `openai` (off by default): helpers for the OpenAI chat-completions format: the mid-stream
//!   continuation policy [`failover::OpenAiChat`] and the request reader
//!   [`route::OpenAiRules`]. Adds `serde_json`.
//! - `metrics` (off by default): [`metrics::Snapshot::publish`] writes the pool's state through
//!   the `metrics` crate. Adds `metrics`.
//!
//! The default build depends on tower, tower-layer, tower-service, tokio (`rt`, `sync`,
//! `time`), http, http-body, http-body-util, bytes, httpdate, arc-swap, parking_lot, rand,
//! futures, pin-project-lite and tracing.

#![forbid(unsafe_code)]

pub mod affinity;
pub mod balance;
pub mod capability;
pub mod classify;
pub mod endpoint;
pub mod error;
pub mod failover;
pub mod hash;
pub mod health;
pub mod hints;
pub mod load;
pub mod metrics;
mod outlier;
pub mod peek;
mod per_clone;
pub mod pick;
pub mod pool;
pub mod prefix;
mod rng;
pub mod route;
mod sync;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::{
    affinity::{StreamAffinity, StreamAffinityLayer},
    balance::{Balance, BalanceLayer},
    endpoint::{Endpoint, EndpointConfig, Health, Key},
    error::{BoxError, ConfigError, EndpointError, NoEndpoints, Overloaded, Timeout},
    health::{HealthFilter, HealthFilterLayer, HealthPolicy},
    pool::Pool,
    rng::{FastRng, ThreadRng},
};
