//! [`BalanceLayer`] and its [`BalanceBuilder`]: the picking strategy, the queue, the
//! timeouts, panic mode, and the stack's one classifier, validated once.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{config::Config, Balance, Queue};
use crate::{
    classify::{Classify, DefaultClassifier},
    error::ConfigError,
    pick::{Picker, Strategy},
    pool::Pool,
    prefix::PrefixPolicy,
};

/// Builds a [`Balance`] over a [`Pool`]:
/// `ServiceBuilder::new().layer(BalanceLayer::new()).service(pool)`. Settings other than the
/// defaults go through [`BalanceLayer::builder`].
#[derive(Debug, Clone)]
pub struct BalanceLayer {
    config: Arc<Config>,
}

impl Default for BalanceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl BalanceLayer {
    /// Power of two choices, no queue (a request that finds every endpoint full fails with
    /// [`Overloaded`](crate::error::Overloaded)), no timeouts, panic mode on, and the
    /// [`DefaultClassifier`].
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config::default()),
        }
    }

    /// Settings other than the defaults.
    pub fn builder() -> BalanceBuilder {
        BalanceBuilder::default()
    }
}

/// The settings of a [`BalanceLayer`], checked by [`build`](Self::build).
#[derive(Clone)]
pub struct BalanceBuilder {
    strategy: Strategy,
    queue: Option<Queue>,
    timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    panic_mode: bool,
    classify: Arc<dyn Classify>,
    prefix: Option<PrefixPolicy>,
}

impl Default for BalanceBuilder {
    fn default() -> Self {
        Self {
            strategy: Strategy::default(),
            queue: None,
            timeout: None,
            idle_timeout: None,
            panic_mode: true,
            classify: Arc::new(DefaultClassifier),
            prefix: None,
        }
    }
}

impl fmt::Debug for BalanceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceBuilder")
            .field("strategy", &self.strategy)
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("panic_mode", &self.panic_mode)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn invalid(name: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting { name, reason }
}

impl BalanceBuilder {
    /// The picking strategy (power of two choices by default).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Fails an attempt whose endpoint has not answered (response headers) within `timeout`
    /// of being picked, with an [`EndpointError`](crate::error::EndpointError) around a
    /// [`Timeout`](crate::error::Timeout), so the health layer counts it against that endpoint.
    /// A request's own [`AttemptTimeout`](crate::hints::AttemptTimeout) takes its place.
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

    /// Panic mode (on by default): when health would leave no endpoint at all for a request,
    /// it goes to every endpoint that could serve it but for its health, rather than fail. A
    /// tracing event marks entering and leaving the mode.
    pub fn panic_mode(mut self, on: bool) -> Self {
        self.panic_mode = on;
        self
    }

    /// Judges every response and error with this classifier: the one verdict that the load
    /// guard, `HealthFilter` and `Failover` all read (carried in
    /// [`Served`](crate::hints::Served) and [`EndpointError`](crate::error::EndpointError)).
    pub fn classifier(mut self, classify: impl Classify) -> Self {
        self.classify = Arc::new(classify);
        self
    }

    /// Picks requests that carry a [`PromptBlocks`](crate::prefix::PromptBlocks) hint (put
    /// there by [`PrefixKeys`](crate::prefix::PrefixKeys)) with `policy`: where their
    /// prompt's prefix is cached, against the work queued there. The pick obeys the same
    /// filters as every other (health, exclusions, limits, tiers, requirements), and the
    /// request's prefill counts in its endpoint's backlog until the response's first byte.
    /// An [`Affinity`](crate::hints::Affinity) hint takes precedence; requests without a hint
    /// are picked with the [`strategy`](Self::strategy).
    pub fn prefix(mut self, policy: PrefixPolicy) -> Self {
        self.prefix = Some(policy);
        self
    }

    /// The layer, or the setting it refuses: a zero timeout or idle timeout, or a cost-aware
    /// strategy whose load threshold is not a number of at least 0.
    pub fn build(self) -> Result<BalanceLayer, ConfigError> {
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid("timeout", "must be longer than zero"));
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid("idle_timeout", "must be longer than zero"));
        }
        if let Strategy::CostAware { max_load } = self.strategy {
            if max_load.is_nan() || max_load < 0.0 {
                return Err(invalid("max_load", "must be a number of at least 0"));
            }
        }
        Ok(self.finish())
    }

    fn finish(self) -> BalanceLayer {
        BalanceLayer {
            config: Arc::new(Config {
                picker: Picker::new(self.strategy),
                queue: self.queue,
                timeout: self.timeout,
                idle_timeout: self.idle_timeout,
                panic_mode: self.panic_mode,
                classify: self.classify,
                prefix: self.prefix,
            }),
        }
    }
}

impl<S: Clone> Layer<Pool<S>> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, pool: Pool<S>) -> Balance<S> {
        Balance::with_config(pool, Arc::clone(&self.config))
    }
}
