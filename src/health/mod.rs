//! Ejects failing endpoints, cools down rate-limited ones, and brings them back.
//!
//! [`HealthFilter`] wraps any service whose responses carry the serving endpoint (a
//! [`Balance`](crate::balance::Balance), or a stack around one). It judges each outcome with a
//! [`Classify`] rule and updates that endpoint's health in the pool,
//! which every pick reads:
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
//!   one endpoint). An endpoint it may not eject is held back instead for the ejection time:
//!   picked only when no other endpoint (in any tier) can serve, and then at 5% of its weight,
//!   then ramped back. Failing fast, it would otherwise look idle to a least-loaded picker and
//!   draw most of the traffic. If health would leave no endpoint at all, the pool routes to all
//!   of them (panic mode), with a tracing event.
//! - **Active probes** ([`HealthFilterLayer::spawn_probes`]): a background task checks every
//!   endpoint at an interval with jitter; 2 successes bring an ejected endpoint back even while
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
//!     .layer(HealthFilterLayer::new(&pool))
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
mod policy;
mod probe;
mod service;

use std::sync::Arc;

use tokio::time::Instant;

use self::body::Watch;
pub use self::{
    body::ResponseBody,
    future::ResponseFuture,
    layer::HealthFilterLayer,
    policy::HealthPolicy,
    probe::{Probe, ProbeConfig},
    service::HealthFilter,
};
use crate::{
    classify::{Classify, Outcome},
    endpoint::Endpoint,
    pool::Members,
};

/// What one layer's services share: the policy, the rules, the pool's members. A clone that
/// serves many requests holds its own copy ([`PerClone`](crate::per_clone::PerClone)).
#[derive(Clone)]
pub(crate) struct Shared {
    policy: HealthPolicy,
    classify: Arc<dyn Classify>,
    members: Members,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        // The common case, lock-free and without a clock read.
        if outcome == Outcome::Success
            && endpoint.is_healthy()
            && endpoint.quiet().try_count_success()
        {
            return;
        }
        self.policy
            .record(endpoint, outcome, Instant::now(), &self.members);
    }
}
