//! [`FailoverLayer`] and its [`FailoverBuilder`]: attempts, deadline, budget, first-chunk
//! wait, hedging and continuation, validated once.

use std::{sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{
    hedge::Latencies, openai_error_event, settings::Settings, Continuation, Failover, Hedge,
    RetryBudget,
};
use crate::error::ConfigError;

/// Builds a [`Failover`]. All services built from one layer (and their clones) share its retry
/// budget.
#[derive(Debug, Clone)]
pub struct FailoverLayer {
    settings: Arc<Settings>,
}

impl Default for FailoverLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl FailoverLayer {
    /// Three attempts, the default [`RetryBudget`], no deadline, the boundary at the response
    /// head, no hedging, no continuation.
    pub fn new() -> Self {
        Self {
            settings: Arc::new(FailoverBuilder::default().settings),
        }
    }

    /// Settings other than the defaults.
    pub fn builder() -> FailoverBuilder {
        FailoverBuilder::default()
    }

    /// The retry budget.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.settings.budget
    }
}

/// The settings of a [`FailoverLayer`], checked by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct FailoverBuilder {
    settings: Settings,
}

impl Default for FailoverBuilder {
    fn default() -> Self {
        Self {
            settings: Settings {
                attempts: 3,
                deadline: None,
                budget: Arc::new(RetryBudget::default()),
                first_chunk: None,
                error_event: openai_error_event,
                hedge: None,
                latencies: Arc::new(Latencies::new()),
                continuation: None,
                retry_timeouts: false,
            },
        }
    }
}

fn invalid(name: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting { name, reason }
}

impl FailoverBuilder {
    /// At most `attempts` attempts per request (the first included); at least 1.
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.settings.attempts = attempts;
        self
    }

    /// Gives up on a request, attempts and all, after `deadline`.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.settings.deadline = Some(deadline);
        self
    }

    /// The retry budget, shared by every service the layer builds.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.settings.budget = Arc::new(budget);
        self
    }

    /// Moves the failover boundary from the response head to the first chunk of the body:
    /// providers often answer 200 and then fail, or send an error event, before the first
    /// token. The response is held until its first data frame (at most `timeout`); if the
    /// stream fails, stalls or opens with an error event before then, the request goes to
    /// another endpoint, and the failure counts against the first. Once the first chunk has
    /// reached the caller nothing is replayed.
    pub fn first_chunk(mut self, timeout: Duration) -> Self {
        self.settings.first_chunk = Some(timeout);
        self
    }

    /// Decides whether a first chunk is an error event (with [`first_chunk`](Self::first_chunk));
    /// by default, an SSE `event: error` or a `data:` object whose first key is `"error"`.
    pub fn error_event(mut self, is_error: fn(&[u8]) -> bool) -> Self {
        self.settings.error_event = is_error;
        self
    }

    /// Whether an attempt that ran out of `Balance`'s per-attempt timeout after its request
    /// was sent is sent again elsewhere (default `false`). The upstream may have the request
    /// and be running it: a retry may run the generation twice, billed twice, and repeat any
    /// effect it has. Failures before the request was sent (a refused or timed-out
    /// connection, an endpoint service that never became ready) are retried whatever this
    /// says, and so is a stream that misses its [`first_chunk`](Self::first_chunk) wait, which
    /// is set for exactly that.
    ///
    /// A connection that hangs counts as sent if the per-attempt timeout fires first: keep the
    /// client's connect timeout below the per-attempt timeout, so that it ends as a connect
    /// error and is retried.
    pub fn retry_timeouts(mut self, retry: bool) -> Self {
        self.settings.retry_timeouts = retry;
        self
    }

    /// Sends a second copy of a slow attempt to another endpoint; the first to answer is kept,
    /// the other cancelled (its slot released). Hedges are retries: they spend the budget.
    pub fn hedge(mut self, hedge: Hedge) -> Self {
        self.settings.hedge = Some(hedge);
        self
    }

    /// Carries a stream that breaks after its first chunk on from another endpoint, with a
    /// request `policy` builds from what was already streamed (each continuation spends an
    /// attempt and the budget). Needs a body that gives its bytes ([`Replay::bytes`]).
    ///
    /// [`Replay::bytes`]: super::Replay::bytes
    pub fn continuation(mut self, policy: impl Continuation) -> Self {
        self.settings.continuation = Some(Arc::new(policy));
        self
    }

    /// The layer, or the setting it refuses: no attempts, a zero first-chunk wait or deadline,
    /// a hedge percentile outside (0, 1).
    pub fn build(self) -> Result<FailoverLayer, ConfigError> {
        let s = &self.settings;
        if s.attempts == 0 {
            return Err(invalid("attempts", "must be at least 1"));
        }
        if s.first_chunk.is_some_and(|t| t.is_zero()) {
            return Err(invalid("first_chunk", "must be longer than zero"));
        }
        if s.deadline.is_some_and(|t| t.is_zero()) {
            return Err(invalid("deadline", "must be longer than zero"));
        }
        if let Some(Hedge::Percentile { p, .. }) = s.hedge {
            if !(p > 0.0 && p < 1.0) {
                return Err(invalid("hedge", "the percentile must be in (0, 1)"));
            }
        }
        Ok(FailoverLayer {
            settings: Arc::new(self.settings),
        })
    }
}

impl<S: Clone> Layer<S> for FailoverLayer {
    type Service = Failover<S>;

    fn layer(&self, inner: S) -> Failover<S> {
        Failover::new(inner, Arc::clone(&self.settings))
    }
}
