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
//! - [`pick`]: the strategies, as plain functions usable without a runtime (for simulations).
//! - [`load`]: the guard that holds an endpoint's load until the response is finished (for
//!   simulations and callers that route by themselves).
//! - [`discovery`]: endpoints found by DNS or Kubernetes, with their metadata.
//! - [`balance`]: the `Balance` service and layer.
//! - [`affinity`]: the `StreamAffinity` layer: sessions and streams back to their instance.
//! - [`failover`]: the `Failover` layer: retries elsewhere, across tiers, within a budget.
//! - [`route`]: the `Route` layer: what each request needs and how much work it brings.
//! - [`prefix`]: prefix-cache-aware routing: block keys, the per-endpoint prefix index, the
//!   policy that trades cached prefix against queued work.
//! - [`capability`]: what an endpoint can serve and what a request requires.
//! - [`health`]: the `HealthFilter` layer: ejection, cooldown, half-open trials, probes.
//! - [`classify`]: how an outcome is judged (HTTP status, gRPC status, errors): one classifier,
//!   set on [`BalanceLayer`], serves the whole stack.
//! - [`hints`]: how layers steer the pick and learn which endpoint served.
//! - `config` (feature `serde`): endpoints, health policy and layer settings from a file.
//! - [`error`]: the typed errors.
//! - [`http_error`]: those errors as the HTTP answers an OpenAI client expects.
//! - [`buffered`]: request bodies (axum's, hyper's) read into replayable ones, within a limit.
//! - [`metrics`]: every endpoint's state at one moment, and its Prometheus text.
//! - `metering` (feature `openai`): the `Metering` layer: the tokens of each answer, counted
//!   at its endpoint per model.
//! - `client` (feature `client`): HTTP(S) upstreams as endpoint services, and a pool from a
//!   list of URLs.
//! - `anthropic` (feature `anthropic`): OpenAI chat completions served by Anthropic Messages
//!   endpoints.
//! - [`report`]: what an engine says about its own load.
//! - [`engines`]: where load reports come from: Prometheus scrapes of vLLM and SGLang, ORCA
//!   response headers.
//! - `usage` (feature `openai`): the token usage of OpenAI and Anthropic answers, read from
//!   their bodies as they pass.
//! - `websocket` (feature `websocket`): WebSocket sessions proxied to endpoints of the pool,
//!   each holding its endpoint's slot for the whole session.
//!
//! # Feature flags
//!
//! - `openai` (off by default): helpers for the OpenAI chat-completions format: the mid-stream
//!   continuation policy [`failover::OpenAiChat`] and the request reader
//!   [`route::OpenAiRules`], and the token usage reader `usage`. Adds `serde_json`.
//! - `metrics` (off by default): [`metrics::PoolMetrics::publish`] writes the pool's state through
//!   the `metrics` crate. Adds `metrics`.
//! - `client` (off by default): `client::Upstream`, an endpoint service for an HTTP(S)
//!   upstream (hyper-util's pooled client, rustls with ring, webpki roots or a custom CA,
//!   HTTP/1.1 and HTTP/2 by ALPN), which sends the upstream's credentials and never the
//!   client's; `client::Upstreams` builds a pool from a list of them. Adds hyper,
//!   hyper-util, hyper-rustls, rustls and webpki-roots, and tokio's `net`.
//! - `anthropic` (off by default): the OpenAI ↔ Anthropic Messages adapter (requests,
//!   answers, event streams, errors), usable on its own; with `client`, an upstream's
//!   `Format::Anthropic`. Adds `serde_json`.
//! - `dns` (off by default): DNS discovery, `discovery::Dns`. Adds `hickory-resolver`.
//! - `kubernetes` (off by default): Kubernetes discovery, `discovery::EndpointSlices`. Adds
//!   `kube` and `k8s-openapi` (whose Kubernetes version feature the application enables).
//! - `serde` (off by default): settings from files, `config`. Adds `serde`.
//! - `websocket` (off by default): WebSocket sessions, `websocket::Proxy`: picked from the
//!   pool, failed over before they start, the endpoint's load held until they end; `wss://`
//!   with `client`. Adds `tokio-tungstenite` (its handshake only) and tokio's `net`.
//!
//! The default build depends on tower, tower-layer, tower-service, tokio (`rt`, `sync`,
//! `time`), http, http-body, http-body-util, bytes, httpdate, arc-swap, parking_lot, rand,
//! futures, pin-project-lite and tracing.

#![forbid(unsafe_code)]

pub mod affinity;
#[cfg(feature = "anthropic")]
pub mod anthropic;
pub mod balance;
pub mod buffered;
pub mod capability;
pub mod classify;
#[cfg(feature = "client")]
pub mod client;
mod clock;
#[cfg(feature = "serde")]
pub mod config;
pub mod discovery;
#[cfg(any(feature = "client", feature = "websocket"))]
mod dot_segments;
pub mod endpoint;
pub mod engines;
pub mod error;
pub mod failover;
mod hash;
pub mod health;
pub mod hints;
pub mod http_error;
mod json;
pub mod load;
#[cfg(feature = "openai")]
pub mod metering;
pub mod metrics;
mod peek;
mod per_clone;
pub mod pick;
pub mod pool;
pub mod prefix;
pub mod report;
mod rng;
pub mod route;
mod sync;
#[cfg(feature = "openai")]
pub mod usage;
#[cfg(feature = "websocket")]
pub mod websocket;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::{
    affinity::{StreamAffinity, StreamAffinityLayer},
    balance::{Balance, BalanceLayer},
    endpoint::{Endpoint, EndpointConfig, Health, Key},
    error::{
        BoxError, ConfigError, EndpointError, NoEndpoints, Overloaded, QuotaExhausted, RateLimited,
        Timeout,
    },
    failover::{Failover, FailoverLayer},
    health::{HealthFilter, HealthFilterLayer, HealthPolicy},
    pool::Pool,
    route::{Route, RouteLayer},
};
