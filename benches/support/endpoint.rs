//! The endpoint and the stack the benches share.

use std::{
    convert::Infallible,
    future::{ready, Ready},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tower::Service;
use tower_ai_balance::{
    affinity::{Header, StreamAffinityLayer},
    failover::{Failover, FailoverLayer},
    health::HealthFilterLayer,
    Balance, BalanceLayer, HealthFilter, Pool, StreamAffinity,
};

/// An endpoint that is always ready and answers at once with an empty body.
#[derive(Clone, Copy)]
pub(crate) struct Instant200;

impl Service<Request<()>> for Instant200 {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// A pool of `n` such endpoints.
pub(crate) fn pool(n: usize) -> Pool<Instant200> {
    pool_of(n, || Instant200)
}

/// A pool of `n` endpoints made by `make`.
pub(crate) fn pool_of<S: Clone>(n: usize, make: impl Fn() -> S) -> Pool<S> {
    let pool = Pool::new();
    for i in 0..n {
        pool.insert(format!("e{i}"), make()).unwrap();
    }
    pool
}

/// The header the benches' affinity keys on (the realistic request carries it).
pub(crate) fn session_header() -> http::HeaderName {
    http::HeaderName::from_static("x-session-id")
}

/// The four layers, with their defaults: Failover, StreamAffinity, HealthFilter, Balance.
pub(crate) type FourLayers<S = Instant200> =
    Failover<StreamAffinity<HealthFilter<Balance<S>>, Header>>;

pub(crate) fn four_layers<S: Clone>(pool: Pool<S>) -> FourLayers<S> {
    tower::ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(StreamAffinityLayer::header(session_header()))
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool)
}
