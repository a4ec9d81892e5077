//! Ejects failing endpoints, cools down rate-limited ones, and brings them back.
//!
//! [`HealthFilter`] wraps a [`Balance`](crate::balance::Balance) (or a stack around one), whose
//! responses carry the serving endpoint and the verdict on them. It classifies nothing itself:
//! it reads the verdict `Balance` took with the stack's one classifier (the head's in
//! [`Served`](crate::hints::Served), the end of the body's through
//! [`Judged`](crate::hints::Judged), an error's in
//! [`EndpointError`](crate::error::EndpointError)), and updates that endpoint's health, which
//! every pick reads:
//!
//! - **Passive outlier detection**: an endpoint with 5 failures in a row, or a failure rate of
//!   50% over a 10 s window with at least 20 requests, is ejected for 30 s, doubled at each
//!   repeat up to 300 s (Envoy's defaults where it has them; see [`HealthPolicy`]).
//! - **Half-open**: when the ejection ends, only 3 trial requests run at once; 3 successes
//!   bring it back, one failure ejects it again for longer.
//! - **Rate limits**: a 429 (or a 503 with `Retry-After`) cools the endpoint down for as long
//!   as `Retry-After` says (seconds or an HTTP date, clamped; 5 s if missing or malformed),
//!   without counting it as broken. A new cooldown never shortens one in force.
//! - **Bounds**: outlier detection never ejects more than half the pool (but always at least
//!   one endpoint), counting the endpoints awaiting their trial; the endpoints of a pool share
//!   that count, so the layer needs no pool. An endpoint it may not eject is held back instead for the ejection time:
//!   picked only when no other endpoint (in any tier) can serve, and then at 5% of its weight,
//!   then ramped back. Failing fast, it would otherwise look idle to a least-loaded picker and
//!   draw most of the traffic. If health would leave no endpoint at all, `Balance` routes to
//!   all of them (its panic mode, on by default), with a tracing event.
//! - **Active probes** ([`HealthFilterLayer::spawn_probes`], given the pool to watch): a
//!   background task checks every endpoint at an interval with jitter; 2 successes bring an ejected endpoint back even while
//!   no traffic flows, 3 failures eject a serving one.
//! - **Slow start**: a returning endpoint's weight ramps up over 10 s.
//!
//! Every change of state emits a tracing event; [`Endpoint::health`](crate::Endpoint::health)
//! shows the current one.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{health::HealthFilterLayer, BalanceLayer, Health, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let broken = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let mut response = Response::new(Full::new(Bytes::new()));
//!     *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
//!     Ok::<_, Infallible>(response)
//! });
//! let pool = Pool::new();
//! let endpoint = pool.insert("gpu-0", broken)?;
//! pool.insert("gpu-1", broken)?;
//!
//! let svc = ServiceBuilder::new()
//!     .layer(HealthFilterLayer::new())
//!     .layer(BalanceLayer::new())
//!     .service(pool.clone());
//! for _ in 0..10 {
//!     svc.clone().oneshot(Request::new(Full::new(Bytes::new()))).await?;
//! }
//! // One of the two was ejected (never more than half the pool).
//! let ejected = pool.endpoints().iter().filter(|e| matches!(e.health(), Health::Ejected { .. })).count();
//! assert_eq!(ejected, 1);
//! # Ok(())
//! # }
//! ```

mod body;
mod future;
mod layer;
mod outlier;
mod policy;
mod probe;
mod service;

pub use self::{
    body::ResponseBody,
    future::ResponseFuture,
    layer::{HealthFilterBuilder, HealthFilterLayer},
    policy::HealthPolicy,
    probe::{Probe, ProbeConfig},
    service::HealthFilter,
};
