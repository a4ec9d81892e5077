use std::{sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{Continuation, Failover, Hedge, RetryBudget, Shared};
use crate::{
    classify::{Classify, DefaultClassifier},
    error::ConfigError,
};

/// Builds a [`Failover`]. All services built from one layer (and their clones) share its retry
/// budget.
#[derive(Clone)]
pub struct FailoverLayer {
    shared: Shared,
}

impl std::fmt::Debug for FailoverLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverLayer")
            .field("attempts", &self.shared.attempts)
            .field("deadline", &self.shared.deadline)
            .field("first_chunk", &self.shared.first_chunk)
            .field("hedge", &self.shared.hedge)
            .field("budget", &self.shared.budget)
            .finish_non_exhaustive()
    }
}

impl Default for FailoverLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl FailoverLayer {
    /// Three attempts, the default [`RetryBudget`], no deadline, the boundary at the response
    /// head, no hedging.
    pub fn new() -> Self {
        Self {
            shared: Shared {
                attempts: 3,
                deadline: None,
                budget: Arc::new(RetryBudget::default()),
                first_chunk: None,
                error_event: super::openai_error_event,
                hedge: None,
                latencies: Arc::new(super::hedge::Latencies::new()),
                classify: Arc::new(DefaultClassifier),
                continuation: None,
            },
        }
    }

    /// At most `attempts` attempts per request (the first included); at least 1.
    pub fn attempts(mut self, attempts: usize) -> Result<Self, ConfigError> {
        if attempts == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "attempts",
                reason: "must be at least 1",
            });
        }
        self.shared.attempts = attempts;
        Ok(self)
    }

    /// Gives up on a request, attempts and all, after `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.shared.deadline = Some(deadline);
        self
    }

    /// The retry budget, shared by every service this layer builds.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.shared.budget = Arc::new(budget);
        self
    }

    /// Moves the failover boundary from the response head to the first chunk of the body:
    /// providers often answer 200 and then fail, or send an error event, before the first
    /// token. The response is held until its first data frame (at most `timeout`); if the
    /// stream fails, stalls or opens with an error event before then, the request goes to
    /// another endpoint. Once the first chunk has reached the caller nothing is replayed.
    pub fn first_chunk(mut self, timeout: Duration) -> Self {
        self.shared.first_chunk = Some(timeout);
        self
    }

    /// Decides whether a first chunk is an error event (with [`first_chunk`](Self::first_chunk));
    /// by default, an SSE `event: error` or a `data:` object whose first key is `"error"`.
    pub fn error_event(mut self, is_error: fn(&[u8]) -> bool) -> Self {
        self.shared.error_event = is_error;
        self
    }

    /// Sends a second copy of a slow attempt to another endpoint; the first to answer is kept,
    /// the other cancelled (its slot released). Hedges are retries: they spend the budget.
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.shared.hedge = Some(hedge);
        self
    }

    /// Carries a stream that breaks after its first chunk on from another endpoint, with a
    /// request `policy` builds from what was already streamed (each continuation spends an
    /// attempt and the budget). Needs a body that gives its bytes ([`Replay::bytes`]).
    ///
    /// [`Replay::bytes`]: super::Replay::bytes
    pub fn continuation(mut self, policy: impl Continuation) -> Self {
        self.shared.continuation = Some(Arc::new(policy));
        self
    }

    /// Judges which outcomes call for another endpoint.
    pub fn classifier(mut self, classify: impl Classify) -> Self {
        self.shared.classify = Arc::new(classify);
        self
    }

    /// The retry budget.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }
}

impl<S: Clone> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Failover<S> {
        Failover::new(inner, Arc::new(self.shared.clone()))
    }
}
