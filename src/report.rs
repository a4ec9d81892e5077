//! A load report: what an inference engine says about its own load.
//!
//! A router sees only the requests that pass through it. The engine behind an endpoint knows
//! more: how many requests wait in its queue, how many run in its batch, how full its KV cache
//! is. A [`LoadReport`] carries that, with the time it was measured, from wherever it came (a
//! scrape of the engine's Prometheus metrics, an ORCA response header, or the application's own
//! code). Every figure is optional: a source says what it knows.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tower_ai_balance::report::LoadReport;
//!
//! let measured = Instant::now();
//! let report = LoadReport::new(measured).waiting(3).running(12).kv_usage(0.81);
//! assert_eq!(report.waiting, Some(3));
//! assert!(report.is_fresh(measured + Duration::from_millis(200), Duration::from_secs(1)));
//! ```
//!
//! A pool reads its endpoints' reports by its [`ReportPolicy`]: how old a report may be before
//! it is ignored, and when a report shows an engine saturated.

use std::time::Duration;

use tokio::time::Instant;

/// What an engine reported about its load, and when it was measured.
///
/// Counts are requests; `kv_usage` is the used share of the KV cache, in `0..=1`. Figures a
/// source did not give are `None`. The setters clamp what they are given to a valid figure
/// (a negative or NaN count is dropped, a usage is clamped into `0..=1`), so a report built
/// from network input never holds a nonsensical value.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LoadReport {
    /// Requests waiting in the engine's queue, not yet scheduled.
    pub waiting: Option<u32>,
    /// Requests the engine is running (in its batch).
    pub running: Option<u32>,
    /// The used share of the KV cache, `0..=1`.
    pub kv_usage: Option<f64>,
    /// The KV cache's size in blocks.
    pub kv_blocks: Option<u64>,
    /// Tokens per KV block.
    pub kv_block_size: Option<u64>,
    /// The KV cache's size in tokens, when the engine says so directly.
    pub kv_tokens: Option<u64>,
    /// This router's own requests in flight at the endpoint when the report was taken (a
    /// scraper records it as it sends the scrape). The engine's counts include them; requests
    /// this router sent later are not in the report, and the picker counts those itself.
    pub local_in_flight: Option<u32>,
    /// Prompt tokens the engine has scheduled for prefill and not computed yet. No engine
    /// gives it as one gauge; vLLM's counters do: the prompt tokens a scheduled request did not
    /// find cached (`prefix_cache_queries_total − prefix_cache_hits_total`) less those computed
    /// (`prompt_tokens_by_source_total{source="local_compute"}`, counted when a prefill ends).
    /// The prefix policy reads it to tell how long another router's prefill keeps the engine.
    pub prefilling: Option<u64>,
    /// When the engine's figures were measured (or, for a scrape, received).
    pub measured_at: Instant,
}

impl LoadReport {
    /// A report measured at `measured_at` that says nothing yet.
    pub fn new(measured_at: Instant) -> Self {
        Self {
            waiting: None,
            running: None,
            kv_usage: None,
            kv_blocks: None,
            kv_block_size: None,
            kv_tokens: None,
            local_in_flight: None,
            prefilling: None,
            measured_at,
        }
    }

    /// Sets the number of waiting requests.
    pub fn waiting(mut self, n: u32) -> Self {
        self.waiting = Some(n);
        self
    }

    /// Sets the number of running requests.
    pub fn running(mut self, n: u32) -> Self {
        self.running = Some(n);
        self
    }

    /// Sets the KV cache usage, clamped into `0..=1` (NaN is dropped).
    pub fn kv_usage(mut self, usage: f64) -> Self {
        self.kv_usage = (!usage.is_nan()).then(|| usage.clamp(0.0, 1.0));
        self
    }

    /// Sets the KV cache's size in blocks and the tokens per block.
    pub fn kv_blocks(mut self, blocks: u64, block_size: u64) -> Self {
        self.kv_blocks = Some(blocks);
        self.kv_block_size = Some(block_size);
        self
    }

    /// Sets the KV cache's size in tokens.
    pub fn kv_tokens(mut self, tokens: u64) -> Self {
        self.kv_tokens = Some(tokens);
        self
    }

    /// Sets this router's requests in flight at the endpoint when the report was taken.
    pub fn local_in_flight(mut self, n: u32) -> Self {
        self.local_in_flight = Some(n);
        self
    }

    /// Sets the prompt tokens scheduled for prefill and not computed yet.
    pub fn prefilling(mut self, tokens: u64) -> Self {
        self.prefilling = Some(tokens);
        self
    }

    /// The KV cache's size in tokens: as reported, or blocks times block size.
    pub fn kv_capacity_tokens(&self) -> Option<u64> {
        self.kv_tokens.or_else(|| {
            self.kv_blocks
                .zip(self.kv_block_size)
                .map(|(b, s)| b.saturating_mul(s))
        })
    }

    /// How old the report is at `now` (zero if it was measured after `now`).
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.measured_at)
    }

    /// Whether the report is at most `max_age` old at `now`: a consumer ignores older ones.
    pub fn is_fresh(&self, now: Instant, max_age: Duration) -> bool {
        self.age(now) <= max_age
    }

    /// The requests the engine holds from every router, as it reported them (waiting plus
    /// running; `None` if it reported neither).
    pub fn requests(&self) -> Option<u32> {
        match (self.waiting, self.running) {
            (None, None) => None,
            (w, r) => Some(w.unwrap_or(0).saturating_add(r.unwrap_or(0))),
        }
    }

    /// The requests other routers had at the endpoint when the report was taken: what the
    /// engine holds less this router's own requests then (never below zero).
    pub fn others(&self) -> Option<u32> {
        self.requests()
            .map(|n| n.saturating_sub(self.local_in_flight.unwrap_or(0)))
    }
}

/// How a pool reads its endpoints' load reports: how old one may be, and when one shows the
/// engine saturated. Set with [`Pool::set_report_policy`](crate::Pool::set_report_policy);
/// a change applies from each endpoint's next report.
///
/// ```
/// use std::time::Duration;
/// use tower_ai_balance::report::ReportPolicy;
///
/// let policy = ReportPolicy::default()
///     .max_age(Duration::from_millis(300))
///     .max_waiting(32)
///     .max_kv_usage(0.97);
/// assert_eq!(policy.max_waiting, Some(32));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct ReportPolicy {
    /// A report older than this is ignored: the endpoint is then judged by this router's own
    /// count alone, as without reports. `None` (the default): three of the
    /// [`Scraper`](crate::engines::Scraper)'s intervals when one feeds the pool, else three
    /// seconds.
    pub max_age: Option<Duration>,
    /// A fresh report of more waiting requests than this shows the engine saturated: it is
    /// treated as full, as at its concurrency limit. `None` (the default): never.
    pub max_waiting: Option<u32>,
    /// A fresh report of a KV-cache usage above this (`0..=1`) shows the engine saturated.
    /// `None` (the default): never.
    pub max_kv_usage: Option<f64>,
}

impl ReportPolicy {
    /// How old a report may be.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Saturated above this many waiting requests.
    pub fn max_waiting(mut self, n: u32) -> Self {
        self.max_waiting = Some(n);
        self
    }

    /// Saturated above this KV-cache usage.
    pub fn max_kv_usage(mut self, usage: f64) -> Self {
        self.max_kv_usage = Some(usage);
        self
    }

    /// Whether `report` shows the engine saturated.
    pub fn saturated(&self, report: &LoadReport) -> bool {
        let over = |max: Option<u32>, n: Option<u32>| max.zip(n).is_some_and(|(m, n)| n > m);
        over(self.max_waiting, report.waiting)
            || self
                .max_kv_usage
                .zip(report.kv_usage)
                .is_some_and(|(m, kv)| kv > m)
    }

    /// Refuses a KV-usage threshold that is NaN or negative: why, if so.
    pub(crate) fn invalid(&self) -> Option<&'static str> {
        self.max_kv_usage
            .is_some_and(|m| m.is_nan() || m < 0.0)
            .then_some("a KV-cache usage threshold must be a number from 0 up")
    }
}

/// A gauge's value as a count: rounded, negative or non-finite values dropped, saturating at
/// `u32::MAX`.
pub(crate) fn count(value: f64) -> Option<u32> {
    (value.is_finite() && value >= 0.0).then(|| value.round().min(f64::from(u32::MAX)) as u32)
}

/// A gauge's value as a size: like [`count`] but 64 bits wide.
pub(crate) fn size(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0).then(|| value.round().min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_clamped_and_combined() {
        let at = Instant::now();
        let r = LoadReport::new(at).kv_usage(1.7).kv_blocks(100, 16);
        assert_eq!(r.kv_usage, Some(1.0));
        assert_eq!(r.kv_capacity_tokens(), Some(1600));
        assert_eq!(LoadReport::new(at).kv_usage(f64::NAN).kv_usage, None);
        assert_eq!(LoadReport::new(at).kv_usage(-0.5).kv_usage, Some(0.0));
        assert_eq!(LoadReport::new(at).requests(), None);
        let r = LoadReport::new(at).waiting(2).running(5).local_in_flight(3);
        assert_eq!((r.requests(), r.others()), (Some(7), Some(4)));
        let r = LoadReport::new(at).running(1).local_in_flight(3);
        assert_eq!(r.others(), Some(0));
        assert_eq!(
            LoadReport::new(at)
                .kv_tokens(9)
                .kv_blocks(1, 1)
                .kv_capacity_tokens(),
            Some(9)
        );
    }

    #[test]
    fn gauges_become_counts_without_nonsense() {
        assert_eq!(count(3.0), Some(3));
        assert_eq!(count(2.6), Some(3));
        assert_eq!(count(-1.0), None);
        assert_eq!(count(f64::NAN), None);
        assert_eq!(count(f64::INFINITY), None);
        assert_eq!(count(1e300), Some(u32::MAX));
        assert_eq!(size(1e300), Some(u64::MAX));
    }

    #[test]
    fn age_saturates() {
        let at = Instant::now();
        let r = LoadReport::new(at + Duration::from_secs(5));
        assert_eq!(r.age(at), Duration::ZERO);
        assert!(!LoadReport::new(at).is_fresh(at + Duration::from_secs(2), Duration::from_secs(1)));
    }
}
