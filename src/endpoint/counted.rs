//! What an endpoint has counted, as metrics read it: requests, failures and cancellations,
//! the latency histograms, and the health events.

use super::{EjectionCause, Endpoint, HistogramSnapshot};

/// What the endpoint has counted.
impl Endpoint {
    /// Requests that completed or failed here.
    pub fn requests(&self) -> u64 {
        self.completions.counters.requests()
    }

    /// Requests that failed here.
    pub fn failures(&self) -> u64 {
        self.completions.counters.failures()
    }

    /// Requests whose caller gave up before they finished (a response body dropped before its
    /// end, a response future dropped before its head): released, neither a success nor a
    /// failure.
    pub fn cancelled(&self) -> u64 {
        self.timings.read_cancelled()
    }

    /// Counts a request its caller gave up.
    pub(crate) fn count_cancelled(&self) {
        self.timings.cancelled();
    }

    /// The histogram of times to first byte of successful responses, as read now.
    pub fn ttfb_histogram(&self) -> HistogramSnapshot {
        self.timings.read_ttfb()
    }

    /// The histogram of durations, from pick to the end of the response, of the requests
    /// that finished here (successes and failures; not those cancelled), as read now.
    pub fn duration_histogram(&self) -> HistogramSnapshot {
        self.timings.read_duration()
    }

    /// How many times the health layer ejected it for `cause`.
    pub fn ejections(&self, cause: EjectionCause) -> u64 {
        self.events.ejections(cause)
    }

    /// How many times the health layer held its weight at the floor instead of ejecting it
    /// (the pool was at its maximum ejected share).
    pub fn holds(&self) -> u64 {
        self.events.holds()
    }

    /// How many times a rate limit made it cool down.
    pub fn cooldowns(&self) -> u64 {
        self.events.cooldowns()
    }
}
