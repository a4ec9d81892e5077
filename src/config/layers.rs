//! Each layer's settings from a file, and the builder calls they map onto.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::{
    affinity::{Header, StreamAffinityLayer},
    balance::BalanceLayer,
    engines::ScrapeConfig,
    error::ConfigError,
    failover::{FailoverLayer, Hedge, RetryBudget},
    health::ProbeConfig,
    pick::Strategy,
};

fn invalid(name: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting { name, reason }
}

/// Refuses a zero duration, naming the setting.
fn longer_than_zero(name: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(name, "must be longer than zero"));
    }
    Ok(())
}

/// A picking strategy by name: `"power_of_two_choices"` (or `"p2c"`), `"least_loaded"`,
/// `"peak_ewma"`, `"round_robin"`, `"random"`, `"weighted"`, `"least_work"`,
/// `"least_work_scan"`, or `{"cost_aware": {"max_load": 0.8}}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StrategySetting {
    /// [`Strategy::PowerOfTwoChoices`].
    #[default]
    #[serde(alias = "p2c")]
    PowerOfTwoChoices,
    /// [`Strategy::LeastLoaded`].
    LeastLoaded,
    /// [`Strategy::PeakEwma`].
    PeakEwma,
    /// [`Strategy::RoundRobin`].
    RoundRobin,
    /// [`Strategy::Random`].
    Random,
    /// [`Strategy::Weighted`].
    Weighted,
    /// [`Strategy::LeastWork`].
    LeastWork,
    /// [`Strategy::LeastWorkScan`].
    LeastWorkScan,
    /// [`Strategy::CostAware`].
    CostAware {
        /// In-flight requests per unit of concurrency limit (or of weight).
        max_load: f64,
    },
}

impl StrategySetting {
    /// The strategy.
    pub fn strategy(self) -> Strategy {
        match self {
            Self::PowerOfTwoChoices => Strategy::PowerOfTwoChoices,
            Self::LeastLoaded => Strategy::LeastLoaded,
            Self::PeakEwma => Strategy::PeakEwma,
            Self::RoundRobin => Strategy::RoundRobin,
            Self::Random => Strategy::Random,
            Self::Weighted => Strategy::Weighted,
            Self::LeastWork => Strategy::LeastWork,
            Self::LeastWorkScan => Strategy::LeastWorkScan,
            Self::CostAware { max_load } => Strategy::CostAware { max_load },
        }
    }
}

/// Balance's wait queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    /// How many requests may wait at once.
    pub max_waiting: usize,
    /// How long one may wait.
    #[serde(deserialize_with = "duration::required")]
    pub timeout: Duration,
}

/// [`BalanceLayer`]'s settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BalanceSettings {
    /// The strategy (default power of two choices).
    pub strategy: StrategySetting,
    /// The wait queue (default none: fail fast with `Overloaded`).
    pub queue: Option<QueueSettings>,
    /// The per-attempt timeout to the response head.
    #[serde(deserialize_with = "duration::optional")]
    pub timeout: Option<Duration>,
    /// The longest a response body may go without a frame.
    #[serde(deserialize_with = "duration::optional")]
    pub idle_timeout: Option<Duration>,
}

impl BalanceSettings {
    /// The layer these settings describe, or why they are refused.
    pub fn layer(&self) -> Result<BalanceLayer, ConfigError> {
        let mut layer = BalanceLayer::builder().strategy(self.strategy.strategy());
        if let Some(q) = self.queue {
            layer = layer.queue(q.max_waiting, q.timeout);
        }
        if let Some(t) = self.timeout {
            layer = layer.timeout(t);
        }
        if let Some(t) = self.idle_timeout {
            layer = layer.idle_timeout(t);
        }
        layer.build()
    }
}

/// Failover's retry budget (see [`RetryBudget::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// Retries allowed per request, as a ratio.
    pub ratio: f64,
    /// Retries allowed each second whatever the ratio.
    pub min_per_sec: u32,
    /// The most retries banked.
    pub max_banked: Option<u32>,
}

/// When to hedge: `{"after": "800ms"}` or `{"percentile": {"p": 0.95, "floor": "50ms"}}`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum HedgeSettings {
    /// [`Hedge::After`].
    After(#[serde(deserialize_with = "duration::required")] Duration),
    /// [`Hedge::Percentile`].
    Percentile {
        /// The percentile, in (0, 1).
        p: f64,
        /// The least delay.
        #[serde(deserialize_with = "duration::required")]
        floor: Duration,
    },
}

/// [`FailoverLayer`]'s settings.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FailoverSettings {
    /// Attempts per request, the first included (default 3).
    pub attempts: usize,
    /// The whole request's deadline.
    #[serde(deserialize_with = "duration::optional")]
    pub deadline: Option<Duration>,
    /// Waits for the first chunk of the body, at most this long, before committing.
    #[serde(deserialize_with = "duration::optional")]
    pub first_chunk: Option<Duration>,
    /// The retry budget (default [`RetryBudget::default`]).
    pub budget: Option<BudgetSettings>,
    /// Hedging (default none).
    pub hedge: Option<HedgeSettings>,
    /// Re-sends an attempt that timed out after its request was sent (default `false`; see
    /// [`FailoverBuilder::retry_timeouts`](crate::failover::FailoverBuilder::retry_timeouts)).
    pub retry_timeouts: bool,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        Self {
            attempts: 3,
            deadline: None,
            first_chunk: None,
            budget: None,
            hedge: None,
            retry_timeouts: false,
        }
    }
}

impl FailoverSettings {
    /// The layer these settings describe, or why they are refused.
    pub fn layer(&self) -> Result<FailoverLayer, ConfigError> {
        let mut layer = FailoverLayer::builder()
            .attempts(self.attempts)
            .retry_timeouts(self.retry_timeouts);
        if let Some(d) = self.deadline {
            layer = layer.deadline(d);
        }
        if let Some(t) = self.first_chunk {
            layer = layer.first_chunk(t);
        }
        if let Some(b) = self.budget {
            let mut budget = RetryBudget::new(b.ratio, b.min_per_sec)?;
            if let Some(max) = b.max_banked {
                budget = budget.max_banked(max);
            }
            layer = layer.budget(budget);
        }
        match self.hedge {
            None => {}
            Some(HedgeSettings::After(d)) => layer = layer.hedge(Hedge::After(d)),
            Some(HedgeSettings::Percentile { p, floor }) => {
                if !(p > 0.0 && p < 1.0) {
                    return Err(invalid("hedge.percentile.p", "must be in (0, 1)"));
                }
                layer = layer.hedge(Hedge::Percentile { p, floor });
            }
        }
        layer.build()
    }
}

/// StreamAffinity's table of remembered keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RememberSettings {
    /// The most keys remembered.
    pub capacity: usize,
    /// A key is forgotten after this long without a request.
    #[serde(deserialize_with = "duration::required")]
    pub idle: Duration,
}

/// [`StreamAffinityLayer`]'s settings, keyed by a header.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AffinitySettings {
    /// The header that carries the session key (default `x-session-id`).
    pub header: String,
    /// The load bound, at least 1 (default 1.25).
    pub bound: f64,
    /// Strict stickiness with a remembering table (default stateless).
    pub remember: Option<RememberSettings>,
}

impl Default for AffinitySettings {
    fn default() -> Self {
        Self {
            header: "x-session-id".into(),
            bound: 1.25,
            remember: None,
        }
    }
}

impl AffinitySettings {
    /// The layer these settings describe, or why they are refused.
    pub fn layer(&self) -> Result<StreamAffinityLayer<Header>, ConfigError> {
        let name = http::HeaderName::try_from(self.header.as_str())
            .map_err(|_| invalid("header", "must be a valid header name"))?;
        let mut layer = StreamAffinityLayer::builder(Header(name)).bound(self.bound);
        if let Some(r) = self.remember {
            layer = layer.remember(r.capacity, r.idle);
        }
        layer.build()
    }
}

/// Active health probes' settings (see [`ProbeConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProbeSettings {
    /// Time between rounds.
    #[serde(deserialize_with = "duration::optional")]
    pub interval: Option<Duration>,
    /// A probe that takes longer fails.
    #[serde(deserialize_with = "duration::optional")]
    pub timeout: Option<Duration>,
    /// Successes in a row that bring an endpoint back.
    pub healthy_threshold: Option<u32>,
    /// Failures in a row that eject one.
    pub unhealthy_threshold: Option<u32>,
}

impl ProbeSettings {
    /// The probe config these settings describe (defaults where left out), or why they are
    /// refused: a zero interval (the probes would run without a pause), a zero timeout (every
    /// probe would fail) or a threshold of 0.
    pub fn config(&self) -> Result<ProbeConfig, ConfigError> {
        let mut c = ProbeConfig::default();
        c.interval = self.interval.unwrap_or(c.interval);
        c.timeout = self.timeout.unwrap_or(c.timeout);
        c.healthy_threshold = self.healthy_threshold.unwrap_or(c.healthy_threshold);
        c.unhealthy_threshold = self.unhealthy_threshold.unwrap_or(c.unhealthy_threshold);
        longer_than_zero("interval", c.interval)?;
        longer_than_zero("timeout", c.timeout)?;
        if c.healthy_threshold == 0 {
            return Err(invalid("healthy_threshold", "must be at least 1"));
        }
        if c.unhealthy_threshold == 0 {
            return Err(invalid("unhealthy_threshold", "must be at least 1"));
        }
        Ok(c)
    }
}

/// The load report scraper's settings (see [`ScrapeConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ScrapeSettings {
    /// Time between rounds.
    #[serde(deserialize_with = "duration::optional")]
    pub interval: Option<Duration>,
    /// The share of the interval a round may move at random, in `0..=1`.
    pub jitter: Option<f64>,
    /// A scrape that takes longer fails.
    #[serde(deserialize_with = "duration::optional")]
    pub timeout: Option<Duration>,
    /// The longest body read, in bytes.
    pub max_body: Option<usize>,
    /// Endpoints scraped at once.
    pub concurrency: Option<usize>,
}

impl ScrapeSettings {
    /// The scrape config these settings describe, or why they are refused: a jitter outside
    /// `0..=1`, a zero interval, timeout, body limit or concurrency.
    pub fn config(&self) -> Result<ScrapeConfig, ConfigError> {
        let mut c = ScrapeConfig::default();
        c.interval = self.interval.unwrap_or(c.interval);
        c.timeout = self.timeout.unwrap_or(c.timeout);
        c.max_body = self.max_body.unwrap_or(c.max_body);
        c.concurrency = self.concurrency.unwrap_or(c.concurrency);
        if let Some(j) = self.jitter {
            if !(0.0..=1.0).contains(&j) {
                return Err(invalid("jitter", "must be in [0, 1]"));
            }
            c.jitter = j;
        }
        longer_than_zero("interval", c.interval)?;
        longer_than_zero("timeout", c.timeout)?;
        if c.max_body == 0 {
            return Err(invalid("max_body", "must be at least 1 byte"));
        }
        if c.concurrency == 0 {
            return Err(invalid("concurrency", "must be at least 1"));
        }
        Ok(c)
    }
}
