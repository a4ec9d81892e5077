//! Picks an endpoint from a [`Pool`](crate::Pool) for each request, calls it, and holds the
//! endpoint's load until the response is finished.
//!
//! `Balance` is `Clone` and cheap to clone: share it across tasks as it is, with no `Buffer`.
//! It is always ready; each call picks with the configured
//! [`Strategy`](crate::pick::Strategy) (power of two choices by default), clones the picked
//! endpoint's service, drives it to readiness and calls it.
//!
//! Picking honours tiers (the lowest tier with an eligible endpoint that has room wins), the
//! [`Exclude`](crate::hints::Exclude) hint, health, weight 0 and each endpoint's maximum
//! concurrency. When every eligible endpoint is full, the request fails at once with
//! [`Overloaded`](crate::error::Overloaded), or waits in a bounded queue if one is configured.
//! When health leaves no endpoint at all, panic mode (on by default) routes to all of them.
//!
//! `Balance` judges each response once, where its load guard lives, with the stack's one
//! [`Classify`](crate::classify::Classify) ([`BalanceBuilder::classifier`]): the head when it
//! arrives (the verdict rides in [`Served`](crate::hints::Served)), an error into
//! [`EndpointError`](crate::error::EndpointError), and the end of the body in
//! [`ResponseBody`] ([`Judged`](crate::hints::Judged)). The layers above read that verdict.
//!
//! # Example
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{balance::BalanceLayer, hints::Served, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! // Each endpoint's own service: here a closure; in practice a hyper client or a tonic Channel.
//! let model = |name: &'static str| {
//!     service_fn(move |_req: Request<Full<Bytes>>| async move {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
//!     })
//! };
//! let pool = Pool::new();
//! pool.insert("gpu-0", model("gpu-0"))?;
//! pool.insert("gpu-1", model("gpu-1"))?;
//!
//! let balance = BalanceLayer::builder()
//!     .queue(1024, Duration::from_secs(5))
//!     .timeout(Duration::from_secs(30))
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(balance).service(pool.clone());
//! let response = svc.oneshot(Request::new(Full::new(Bytes::new()))).await?;
//! let served = response.extensions().get::<Served>().unwrap();
//! assert!(served.endpoint().key().as_str().starts_with("gpu-"));
//! assert!(served.verdict().is_success());
//! # Ok(())
//! # }
//! ```

mod body;
mod choose;
mod config;
mod future;
mod layer;
mod service;
mod variants;
mod waiting;

pub use self::{
    body::ResponseBody,
    config::Queue,
    future::ResponseFuture,
    layer::{BalanceBuilder, BalanceLayer},
    service::Balance,
};
