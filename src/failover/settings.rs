//! What every service built by one [`FailoverLayer`](super::FailoverLayer) shares: its
//! settings, the retry budget and the hedge's latency record.

use std::{fmt, sync::Arc, time::Duration};

use super::{hedge::Latencies, Continuation, Hedge, RetryBudget};

/// The layer's settings, shared by every service it builds.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) attempts: usize,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) first_chunk: Option<Duration>,
    pub(crate) error_event: fn(&[u8]) -> bool,
    pub(crate) hedge: Option<Hedge>,
    pub(crate) latencies: Arc<Latencies>,
    pub(crate) continuation: Option<Arc<dyn Continuation>>,
    /// Whether a per-attempt timeout after the request was sent is retried.
    pub(crate) retry_timeouts: bool,
}

impl Settings {
    /// Whether a request needs nothing after its first response head but a retry: no hedge,
    /// deadline, first-chunk wait or continuation. Such requests take the unboxed path.
    pub(crate) fn head_is_enough(&self) -> bool {
        self.hedge.is_none()
            && self.deadline.is_none()
            && self.first_chunk.is_none()
            && self.continuation.is_none()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("attempts", &self.attempts)
            .field("deadline", &self.deadline)
            .field("first_chunk", &self.first_chunk)
            .field("hedge", &self.hedge)
            .field("budget", &self.budget)
            .field("retry_timeouts", &self.retry_timeouts)
            .finish_non_exhaustive()
    }
}
