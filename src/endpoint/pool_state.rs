//! What the endpoints of one pool share: the queue of waiting requests, how many endpoints
//! the pool has, and how many of them are ejected.
//!
//! The counts bound outlier ejection without a view of the pool: an ejection first reserves
//! its place in the ejected count with a compare-and-swap, so the bound holds at every
//! instant, however many judges decide at once.

use std::sync::Arc;

use super::{layer_events::LayerEvents, wait_queue::WaitQueue};
use crate::sync::{AtomicUsize, Ordering::SeqCst};

/// The pool-wide state its endpoints share. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    pub(crate) waiters: Arc<WaitQueue>,
    /// What the layers did for the pool's requests.
    pub(crate) layer_events: LayerEvents,
    /// Endpoints in the pool (made and not yet removed).
    members: AtomicUsize,
    /// Endpoints ejected (due back or not: one awaiting its trial still counts).
    ejected: AtomicUsize,
}

impl PoolState {
    pub(crate) fn joined(&self) {
        self.members.fetch_add(1, SeqCst);
    }

    pub(crate) fn left(&self) {
        self.members.fetch_sub(1, SeqCst);
    }

    /// How many endpoints the pool has.
    pub(crate) fn members(&self) -> usize {
        self.members.load(SeqCst)
    }

    /// How many are ejected.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn ejected(&self) -> usize {
        self.ejected.load(SeqCst)
    }

    /// Reserves a place among the ejected if one more keeps them within `max_fraction` of
    /// the members (or if none is ejected: at least one may always be).
    pub(crate) fn reserve_ejection(&self, max_fraction: f64) -> bool {
        let members = self.members() as f64;
        self.ejected
            .fetch_update(SeqCst, SeqCst, |n| {
                (n == 0 || (n + 1) as f64 <= max_fraction * members).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts one more ejected endpoint, bound or not (a health set by hand).
    pub(crate) fn count_ejection(&self) {
        self.ejected.fetch_add(1, SeqCst);
    }

    /// One ejected endpoint is back, or gone.
    pub(crate) fn release_ejection(&self) {
        self.ejected.fetch_sub(1, SeqCst);
    }
}
