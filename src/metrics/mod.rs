//! What the pool's endpoints and layers are doing, for dashboards and alerts.
//!
//! [`Pool::metrics`](crate::Pool::metrics) takes a [`PoolMetrics`] of every endpoint's live
//! state and of what the layers did; [`PoolMetrics::prometheus`] renders it in the Prometheus
//! text exposition format, for a `/metrics` endpoint, and with the `metrics` feature
//! [`PoolMetrics::publish`] hands it to the `metrics` crate's recorder. Nothing here needs a
//! metrics library, and nothing is recorded on the request path but atomic adds: the
//! histograms are counts per bucket that the load guard's completion writes.
//!
//! No counter or histogram carries a label whose value changes over an endpoint's life (its
//! health is a gauge of its own), so an ejection never starts a new series. The names, labels
//! and buckets are listed in the README's "Metrics" section.
//!
//! ```
//! use tower_ai_balance::Pool;
//!
//! let pool: Pool<()> = Pool::new();
//! pool.insert("http://gpu-0:8000", ()).unwrap();
//! let text = pool.metrics().prometheus();
//! assert!(text.contains(
//!     "ai_balance_health{endpoint=\"http://gpu-0:8000\",tier=\"0\",state=\"healthy\"} 1"
//! ));
//! assert!(text.contains("ai_balance_request_duration_seconds_bucket{"));
//! ```

mod prometheus;
#[cfg(feature = "metrics")]
mod publish;

use std::time::Duration;

use tokio::time::Instant;

pub use crate::endpoint::{EjectionCause, HistogramSnapshot, LayerCounts, BUCKETS};
use crate::endpoint::{Endpoint, Health, QuotaLevel};
#[cfg(feature = "openai")]
pub use crate::endpoint::{ModelTokens, OTHER_MODEL};

/// The states of the `ai_balance_health` gauge, one series each.
pub const HEALTH_STATES: [&str; 5] = ["healthy", "ejected", "cooling_down", "slow_start", "held"];

/// The outcomes of `ai_balance_requests_total`, one series each.
pub const OUTCOMES: [&str; 3] = ["success", "failure", "cancelled"];

/// One endpoint's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointMetrics {
    /// Its key, without credentials (see [`Key::redacted`](crate::endpoint::Key::redacted)),
    /// and, when that left something out, `#` and six hex digits of the whole key's hash: two
    /// keys that differ only in their credentials or query (two API keys for one provider)
    /// are two series, each the same from scrape to scrape.
    pub key: String,
    /// Its tier.
    pub tier: u32,
    /// Its current weight.
    pub weight: f64,
    /// Requests in flight.
    pub in_flight: usize,
    /// Outstanding work (the `Cost` of the requests in flight).
    pub outstanding: u64,
    /// Peak-EWMA time to first byte, if any response was seen.
    pub ttfb: Option<Duration>,
    /// Peak-EWMA time to completion.
    pub latency: Option<Duration>,
    /// Its health.
    pub health: Health,
    /// Whether a soft ejection holds its weight at the floor (a `SlowStart` whose ramp back
    /// has not begun): shown as the state `held`.
    pub held: bool,
    /// Requests finished here (successes and failures; each attempt of a retried request
    /// counts at its endpoint).
    pub requests: u64,
    /// Requests failed here (the verdict was a failure or a rate limit).
    pub failures: u64,
    /// Requests their caller gave up before they finished.
    pub cancelled: u64,
    /// Times to first byte of successful responses.
    pub ttfb_histogram: HistogramSnapshot,
    /// Durations of the requests that finished, pick to end of body.
    pub duration_histogram: HistogramSnapshot,
    /// Ejections, by cause, in the order of [`EjectionCause::ALL`].
    pub ejections: [u64; 4],
    /// Soft ejections: the weight held at its floor because the pool was at its maximum
    /// ejected share.
    pub holds: u64,
    /// Cooldowns after a rate limit.
    pub cooldowns: u64,
    /// Its provider quota's limits and what is left of them (empty without a quota).
    pub quota: Vec<QuotaLevel>,
    /// Times a pick found its quota spent for a request.
    pub quota_refusals: u64,
    /// The tokens its answers used, per model (counted by the
    /// [`MeteringLayer`](crate::metering::MeteringLayer)).
    #[cfg(feature = "openai")]
    pub tokens: Vec<ModelTokens>,
}

/// The key as the metrics label it (see [`EndpointMetrics::key`]).
fn shown_key(endpoint: &Endpoint) -> String {
    let shown = endpoint.key().to_string();
    if shown == endpoint.key().as_str() {
        return shown;
    }
    format!("{shown}#{:06x}", endpoint.key_hash() >> 40)
}

impl EndpointMetrics {
    /// The state of `endpoint` now.
    pub fn of(endpoint: &Endpoint, now: Instant) -> Self {
        // Each outcome read once, so that `outcomes` never goes back between two reads.
        let failures = endpoint.failures();
        let successes = endpoint.successes();
        Self {
            key: shown_key(endpoint),
            tier: endpoint.tier(),
            weight: endpoint.weight(),
            in_flight: endpoint.in_flight(),
            outstanding: endpoint.outstanding(),
            ttfb: endpoint.ttfb_estimate(now),
            latency: endpoint.latency_estimate(now),
            health: endpoint.health(),
            held: endpoint.is_held(now),
            requests: successes.saturating_add(failures),
            failures,
            cancelled: endpoint.cancelled(),
            ttfb_histogram: endpoint.ttfb_histogram(),
            duration_histogram: endpoint.duration_histogram(),
            ejections: EjectionCause::ALL.map(|cause| endpoint.ejections(cause)),
            holds: endpoint.holds(),
            cooldowns: endpoint.cooldowns(),
            quota: endpoint.quota_levels(now),
            quota_refusals: endpoint.quota_refusals() as u64,
            #[cfg(feature = "openai")]
            tokens: endpoint.tokens(),
        }
    }

    /// Its state as the `ai_balance_health` gauge names it: one of [`HEALTH_STATES`].
    pub fn state(&self) -> &'static str {
        match self.health {
            Health::Healthy => "healthy",
            Health::Ejected { .. } => "ejected",
            Health::CoolingDown { .. } => "cooling_down",
            Health::SlowStart { .. } if self.held => "held",
            Health::SlowStart { .. } => "slow_start",
        }
    }

    /// Its requests by outcome, in the order of [`OUTCOMES`].
    pub fn outcomes(&self) -> [u64; 3] {
        [
            self.requests.saturating_sub(self.failures),
            self.failures,
            self.cancelled,
        ]
    }
}

/// Every endpoint's state, and what the layers did, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolMetrics {
    /// The endpoints, lowest tier first.
    pub endpoints: Vec<EndpointMetrics>,
    /// What the layers did for the pool's requests.
    pub layers: LayerCounts,
}

impl PoolMetrics {
    /// The state of each of `endpoints` at `now`, and the layers' counts.
    pub(crate) fn of<'a>(
        endpoints: impl Iterator<Item = &'a Endpoint>,
        layers: LayerCounts,
        now: Instant,
    ) -> Self {
        Self {
            endpoints: endpoints.map(|e| EndpointMetrics::of(e, now)).collect(),
            layers,
        }
    }
}

/// A token counter family: name, help, and the count of a model's row.
#[cfg(feature = "openai")]
pub(crate) type TokenFamily = (&'static str, &'static str, fn(&ModelTokens) -> u64);

/// The token counters (with `openai`).
#[cfg(feature = "openai")]
pub(crate) const TOKEN_FAMILIES: [TokenFamily; 3] = [
    (
        "input_tokens_total",
        "Input tokens the endpoint's answers reported, cached ones included, by model.",
        |t| t.input,
    ),
    (
        "output_tokens_total",
        "Output tokens the endpoint's answers reported, by model.",
        |t| t.output,
    ),
    (
        "cached_input_tokens_total",
        "Input tokens read from the endpoint's prompt cache, by model.",
        |t| t.cached_input,
    ),
];

/// The pool-wide counters: name, help, and value, for both exports.
pub(crate) fn layer_families(l: &LayerCounts) -> [(&'static str, &'static str, u64); 6] {
    [
        (
            "retries_total",
            "Attempts sent again after a failed one.",
            l.retries,
        ),
        (
            "failovers_total",
            "Requests served by another tier than their first failed attempt's.",
            l.failovers,
        ),
        (
            "hedges_total",
            "Second copies sent of a slow attempt.",
            l.hedges,
        ),
        (
            "hedges_won_total",
            "Hedges whose copy answered first.",
            l.hedges_won,
        ),
        (
            "retry_budget_exhausted_total",
            "Retries, hedges and continuations the retry budget refused.",
            l.budget_exhausted,
        ),
        (
            "continuations_total",
            "Broken streams carried on from another endpoint.",
            l.continuations,
        ),
    ]
}
