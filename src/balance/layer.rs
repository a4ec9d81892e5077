use std::time::Duration;

use tower_layer::Layer;

use super::Balance;
use crate::{pick::Strategy, pool::Pool};

/// What a request does when every eligible endpoint is at its concurrency limit: wait for a
/// slot, at most `timeout`, with at most `max_waiting` requests waiting at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// How many requests may wait at once; one more fails at once.
    pub max_waiting: usize,
    /// How long one request may wait.
    pub timeout: Duration,
}

/// Builds a [`Balance`] over a [`Pool`]: `ServiceBuilder::new().layer(BalanceLayer::new()).service(pool)`.
#[derive(Debug, Clone, Default)]
pub struct BalanceLayer {
    pub(crate) strategy: Strategy,
    pub(crate) queue: Option<Queue>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
}

impl BalanceLayer {
    /// Power of two choices, no queue: a request that finds every endpoint full fails with
    /// [`Overloaded`](crate::error::Overloaded).
    pub fn new() -> Self {
        Self::default()
    }

    /// The picking strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Fails an attempt whose endpoint has not answered (response headers) within `timeout`
    /// of being picked, with an [`EndpointError`](crate::error::EndpointError) around a
    /// [`Timeout`](crate::error::Timeout), so the health layer counts it against that endpoint.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ends a response body that sends nothing for `idle` (a stalled stream) with a
    /// [`Stalled`](crate::error::Stalled) error, releases its load and counts it as the
    /// endpoint's failure.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Lets requests wait for a slot when every endpoint is full.
    pub fn queue(mut self, max_waiting: usize, timeout: Duration) -> Self {
        self.queue = Some(Queue {
            max_waiting,
            timeout,
        });
        self
    }
}

impl<S: Clone> Layer<Pool<S>> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, pool: Pool<S>) -> Balance<S> {
        Balance::with_config(pool, self.clone())
    }
}
