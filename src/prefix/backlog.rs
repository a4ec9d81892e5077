//! An endpoint's queue of prefill work as one router sees it: the prompts it sent there that
//! have not produced a first token yet, and the engine's last report of its queue.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    endpoint::Endpoint,
    report::LoadReport,
    sync::{AtomicU64, Ordering::Relaxed},
};

/// What an engine reports of its queue (vLLM's `num_requests_waiting` and
/// `num_requests_running`; SGLang's `num_queue_reqs` and `num_running_reqs`), scraped from its
/// metrics or read from a load-report header. The policy counts the requests other routers
/// have there: the report's, less this router's own at the time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Requests waiting to be scheduled.
    pub waiting: u32,
    /// Requests running (prefilling or decoding).
    pub running: u32,
    /// Prompt tokens the engine has scheduled for prefill and not computed yet, 0 when it does
    /// not say. No engine reports it as one gauge; two counters give it: the prompt tokens a
    /// scheduled request did not find cached, less those computed. In vLLM,
    /// `prefix_cache_queries_total − prefix_cache_hits_total` (counted when a request is
    /// scheduled) less `prompt_tokens_by_source_total{source="local_compute"}` (counted when
    /// its prefill ends). The running count says a request is there; this says how long the
    /// prefill unit stays taken by another router's prompt.
    pub prefilling: u64,
}

/// A load report's figures; those it does not give count as 0.
impl From<&LoadReport> for EngineLoad {
    fn from(report: &LoadReport) -> Self {
        Self {
            waiting: report.waiting.unwrap_or(0),
            running: report.running.unwrap_or(0),
            prefilling: report.prefilling.unwrap_or(0),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// Prefill tokens of this router's requests there that have no first token yet.
    tokens: AtomicU64,
    /// How many such requests.
    requests: AtomicU64,
    /// The engine's last report, packed: waiting (32 bits), running (32 bits).
    report: AtomicU64,
    /// When it came, in nanoseconds after the index's epoch plus one (0: never).
    reported_at: AtomicU64,
    /// This router's own requests there when the report came, packed: without a first token
    /// (32 bits), in flight (32 bits); the report counts them already.
    own_at_report: AtomicU64,
    /// The report's prefill tokens beyond this router's own pending ones at the time.
    others_prefilling: AtomicU64,
    /// The stamp of the endpoint's own report last read ([`Backlog::adopt`]).
    adopted: AtomicU64,
}

/// What a pick reads of an endpoint's backlog.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Seen {
    /// Prefill tokens this router placed there that have not started producing output.
    pub(crate) tokens: u64,
    /// Requests other routers have waiting there, by the engine's last fresh report.
    pub(crate) others_waiting: u64,
    /// Requests other routers have there in all, by the same report.
    pub(crate) others_in_flight: u64,
    /// Prefill tokens other routers' requests had scheduled there, by the same report.
    pub(crate) others_prefilling: u64,
    /// The report's age, in nanoseconds.
    pub(crate) age: u64,
}

const LOW: u64 = 0xffff_ffff;

impl Backlog {
    pub(crate) fn add(&self, tokens: u64) {
        self.tokens.fetch_add(tokens, Relaxed);
        self.requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn release(&self, tokens: u64) {
        self.tokens.fetch_sub(tokens, Relaxed);
        self.requests.fetch_sub(1, Relaxed);
    }

    pub(crate) fn report(&self, load: EngineLoad, own_in_flight: usize, at: u64) {
        let packed = u64::from(load.waiting) | u64::from(load.running) << 32;
        let pending = self.requests.load(Relaxed).min(LOW);
        let own = pending | (own_in_flight as u64).min(LOW) << 32;
        // The prefill running may be this router's own: what it has pending covers that.
        let others = load.prefilling.saturating_sub(self.tokens.load(Relaxed));
        self.others_prefilling.store(others, Relaxed);
        self.own_at_report.store(own, Relaxed);
        self.report.store(packed, Relaxed);
        self.reported_at.store(at.saturating_add(1), Relaxed);
    }

    /// Takes the endpoint's latest load report ([`Endpoint::report`]) if it is newer than the
    /// one this backlog holds: a report that gives a queue (waiting or running) becomes the
    /// backlog's report, as [`report`](Self::report) takes one, with the report's own count of
    /// this router's requests in flight when it gives one. One atomic load when nothing is
    /// new; never waits, never allocates. `epoch` is the index's.
    #[inline]
    pub(crate) fn adopt(&self, endpoint: &Endpoint, epoch: Instant) {
        let stamp = endpoint.report_stamp();
        if stamp > self.adopted.load(Relaxed) {
            self.adopt_new(endpoint, epoch);
        }
    }

    #[cold]
    fn adopt_new(&self, endpoint: &Endpoint, epoch: Instant) {
        let Some((report, stamp)) = endpoint.try_latest_report() else {
            return;
        };
        // Another pick may be taking the same report: one does.
        if self.adopted.fetch_max(stamp, Relaxed) >= stamp || report.requests().is_none() {
            return;
        }
        let at = nanos(report.measured_at.saturating_duration_since(epoch));
        // A report given to the policy directly may be as new.
        if self.reported_at.load(Relaxed) > at {
            return;
        }
        let own = report
            .local_in_flight
            .map_or_else(|| endpoint.in_flight(), |n| n as usize);
        self.report(EngineLoad::from(&report), own, at);
    }

    /// The backlog as seen at `now` (nanoseconds after the epoch), with the report if it is
    /// younger than `max_age`.
    #[inline]
    pub(crate) fn seen(&self, now: u64, max_age: u64) -> Seen {
        let mut seen = Seen {
            tokens: self.tokens.load(Relaxed),
            ..Seen::default()
        };
        let at = self.reported_at.load(Relaxed);
        if at != 0 && now.saturating_sub(at - 1) <= max_age {
            let packed = self.report.load(Relaxed);
            let own = self.own_at_report.load(Relaxed);
            let (waiting, running) = (packed & LOW, packed >> 32);
            let (own_pending, own_in_flight) = (own & LOW, own >> 32);
            seen.others_waiting = waiting.saturating_sub(own_pending);
            seen.others_in_flight = (waiting + running).saturating_sub(own_in_flight);
            seen.others_prefilling = self.others_prefilling.load(Relaxed);
            seen.age = now.saturating_sub(at - 1);
        }
        seen
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}
