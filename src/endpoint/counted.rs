//! What an endpoint has counted, as metrics read it: requests, failures and cancellations,
//! the latency histograms, the health events, and (with `openai`) the tokens of its answers.

use super::{EjectionCause, Endpoint, HistogramSnapshot};

/// What the endpoint has counted.
impl Endpoint {
    /// Requests that completed or failed here.
    pub fn requests(&self) -> u64 {
        self.completions.counters.requests()
    }

    /// Requests that succeeded here.
    pub fn successes(&self) -> u64 {
        self.completions.counters.successes()
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

    /// Counts the tokens of an answer it gave for `model` (the model the request was served
    /// as; `None` when the request named none): `input` (cached ones included), `output`, and
    /// `cached_input` of the input read from a prompt cache. The
    /// [`MeteringLayer`](crate::metering::MeteringLayer) calls it with the usage it reads.
    #[cfg(feature = "openai")]
    pub fn count_tokens(&self, model: Option<&str>, input: u64, output: u64, cached_input: u64) {
        let counts = super::tokens::Counts {
            input,
            output,
            cached_input,
        };
        self.tokens.count(model, &counts);
    }

    /// The tokens its answers used, per model: each of its configured models (or, when it
    /// has none, each model learned as it was counted, at most
    /// [`LEARNED_MODELS`](super::LEARNED_MODELS)), then the rest as
    /// [`OTHER_MODEL`](super::OTHER_MODEL).
    #[cfg(feature = "openai")]
    pub fn tokens(&self) -> Vec<super::ModelTokens> {
        self.tokens.read()
    }
}
