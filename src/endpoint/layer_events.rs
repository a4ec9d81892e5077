//! What the layers above the pick did for the requests of one pool, counted: retries,
//! fail-overs to another tier, hedges sent and won, retries the budget refused, and
//! continuations. The layers reach the counters through an endpoint the request involved
//! (every endpoint of a pool shares them), so no layer needs a handle of its own, and a
//! `/metrics` route that holds the pool sees them all.

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// The layers' counts for one pool, as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerCounts {
    /// Attempts sent again after a failed one (`Failover`).
    pub retries: u64,
    /// Requests served by a tier other than that of their first failed attempt.
    pub failovers: u64,
    /// Second copies sent of a slow attempt.
    pub hedges: u64,
    /// Hedges whose copy answered first and was kept.
    pub hedges_won: u64,
    /// Retries, hedges and continuations the retry budget refused.
    pub budget_exhausted: u64,
    /// Broken streams carried on from another endpoint.
    pub continuations: u64,
}

/// The counters behind [`LayerCounts`].
#[derive(Debug, Default)]
pub(crate) struct LayerEvents {
    retries: AtomicU64,
    failovers: AtomicU64,
    hedges: AtomicU64,
    hedges_won: AtomicU64,
    budget_exhausted: AtomicU64,
    continuations: AtomicU64,
}

impl LayerEvents {
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn failed_over(&self) {
        self.failovers.fetch_add(1, Relaxed);
    }

    pub(crate) fn hedged(&self) {
        self.hedges.fetch_add(1, Relaxed);
    }

    pub(crate) fn hedge_won(&self) {
        self.hedges_won.fetch_add(1, Relaxed);
    }

    pub(crate) fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Relaxed);
    }

    pub(crate) fn continued(&self) {
        self.continuations.fetch_add(1, Relaxed);
    }

    pub(crate) fn read(&self) -> LayerCounts {
        LayerCounts {
            retries: self.retries.load(Relaxed),
            failovers: self.failovers.load(Relaxed),
            hedges: self.hedges.load(Relaxed),
            hedges_won: self.hedges_won.load(Relaxed),
            budget_exhausted: self.budget_exhausted.load(Relaxed),
            continuations: self.continuations.load(Relaxed),
        }
    }
}
