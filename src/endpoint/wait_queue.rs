//! The pool-wide queue of requests waiting for a free slot, which endpoints wake when a slot
//! is released or an endpoint becomes able to serve.
//!
//! A waiter takes a [`Place`] (bounded: a full queue turns the request away), arms a
//! notification, looks for a slot, and sleeps until woken. Every release reads the queue's
//! count, so the queue has a cache line of its own: a neighbour's writes would make every
//! release miss. A release with nobody waiting costs that one load.

use std::sync::Arc;

use tokio::sync::{futures::OwnedNotified, Notify};

use crate::sync::{AtomicUsize, Ordering::SeqCst};

/// The requests waiting for capacity. See the [module docs](self).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct WaitQueue {
    notify: Arc<Notify>,
    waiting: AtomicUsize,
}

impl WaitQueue {
    /// Wakes the waiters, if there are any: one load otherwise.
    #[inline]
    pub(crate) fn wake(&self) {
        if self.waiting.load(SeqCst) > 0 {
            self.wake_waiters();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_waiters(&self) {
        self.notify.notify_waiters();
    }

    /// Takes a place in the queue, unless `max` requests already wait.
    pub(crate) fn join(self: &Arc<Self>, max: usize) -> Option<Place> {
        if self.waiting.fetch_add(1, SeqCst) >= max {
            self.waiting.fetch_sub(1, SeqCst);
            return None;
        }
        Some(Place(Arc::clone(self)))
    }
}

/// A place in the [`WaitQueue`], given back on drop.
#[derive(Debug)]
pub(crate) struct Place(Arc<WaitQueue>);

impl Place {
    /// A notification of the next wake-up, to arm before looking for a slot.
    pub(crate) fn notified(&self) -> OwnedNotified {
        Arc::clone(&self.0.notify).notified_owned()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
    }
}
