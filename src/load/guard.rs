//! [`LoadGuard`]: one in-flight slot on an endpoint, released on drop, and the request's
//! completion recorded on the endpoint.

use std::{borrow::Borrow, sync::Arc};

use tokio::time::Instant;

use super::first_byte::{FirstByteHook, Held};
use crate::{
    classify::Outcome,
    clock::nanos,
    endpoint::{Endpoint, Reservation},
};

/// One in-flight slot on an endpoint, released on drop.
///
/// It holds its endpoint as `E`: by default an `Arc`, so that it can travel with a response
/// for as long as the body lasts. A `LoadGuard<&Endpoint>` is the same accounting for a
/// caller that keeps its endpoints alive itself (a simulation, a dispatcher that serves within
/// one scope), without the reference count.
#[derive(Debug)]
pub struct LoadGuard<E: Borrow<Endpoint> = Arc<Endpoint>> {
    endpoint: E,
    cost: u64,
    start: Instant,
    first_byte: bool,
    failed: bool,
    /// Holds one of the endpoint's half-open trial permits.
    trial: bool,
    /// The completion was recorded; dropped without it, the request was cancelled.
    completed: bool,
    /// A layer above judges the response's first chunk before the caller sees it, so a body
    /// that ends with that chunk waits for the judgment before it completes (set by `Balance`).
    pub(crate) defer_first_end: bool,
    /// Completes the request when dropped: its body ended, and the verdict waited for a
    /// layer above that may never give it.
    pub(crate) complete_on_drop: bool,
    /// Work held elsewhere until the first byte (a prefix placement's prefill).
    held: Option<Held>,
    /// What the request holds of its endpoint's quota: given back if it fails or is dropped,
    /// kept as estimated if it completes (until a usage settles it).
    reservation: Option<Reservation>,
}

impl<E: Borrow<Endpoint> + Clone> LoadGuard<E> {
    /// Takes a slot on `endpoint` for a request of `cost`, timed from now; `None` if the
    /// endpoint is at its concurrency limit or was removed.
    #[inline]
    pub fn acquire(endpoint: &E, cost: u64) -> Option<Self> {
        let trial = endpoint.borrow().try_acquire(cost)?;
        Some(Self::held(endpoint.clone(), cost, Instant::now(), trial))
    }

    /// As [`acquire`](Self::acquire), timed from `start`: for simulations in virtual time.
    #[inline]
    pub fn acquire_at(endpoint: &E, cost: u64, start: Instant) -> Option<Self> {
        let trial = endpoint.borrow().try_acquire(cost)?;
        Some(Self::held(endpoint.clone(), cost, start, trial))
    }

    /// Takes a slot whatever the endpoint's health (panic mode).
    pub(crate) fn acquire_any_at(endpoint: &E, cost: u64, start: Instant) -> Option<Self> {
        endpoint
            .borrow()
            .try_acquire_any(cost)
            .then(|| Self::held(endpoint.clone(), cost, start, false))
    }

    /// The guard of a slot already taken (for a waiting request, by the wait queue).
    pub(crate) fn granted(endpoint: E, cost: u64, start: Instant, trial: bool) -> Self {
        Self::held(endpoint, cost, start, trial)
    }

    fn held(endpoint: E, cost: u64, start: Instant, trial: bool) -> Self {
        Self {
            endpoint,
            cost,
            start,
            first_byte: false,
            failed: false,
            trial,
            completed: false,
            defer_first_end: false,
            complete_on_drop: false,
            held: None,
            reservation: None,
        }
    }
}

impl<E: Borrow<Endpoint>> LoadGuard<E> {
    /// The endpoint whose slot this is.
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// When the slot was taken: the request's start.
    pub(crate) fn started(&self) -> Instant {
        self.start
    }

    /// Marks the request as failed: its completion counts a failure and feeds the latency
    /// estimates a penalty.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Marks the request as failed if `verdict` says the endpoint failed or is rate-limiting
    /// (what another endpoint might have served).
    pub fn judge(&mut self, verdict: Outcome) {
        if verdict.is_retriable() {
            self.failed = true;
        }
    }

    /// Holds `amount` on `hook` until the first byte, the end of the request, or the guard's
    /// drop, whichever comes first (`first`: the first byte came already).
    pub(crate) fn hold(
        &mut self,
        hook: Arc<dyn FirstByteHook>,
        amount: u64,
        first: Option<Instant>,
    ) {
        self.held = Some(Held::new(hook, amount, first));
    }

    /// Holds `reservation` (of this guard's endpoint's quota) until the request ends.
    pub(crate) fn hold_quota(&mut self, reservation: Option<Reservation>) {
        self.reservation = reservation;
    }

    /// The request's reservation of its endpoint's quota, if the endpoint has one.
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// Gives the quota reservation back at once: the request failed before the upstream
    /// counted it.
    pub(crate) fn release_quota(&mut self) {
        if let Some(r) = self.reservation.take() {
            r.release();
        }
    }

    /// Records the first byte of the response body (once). The clock is read only while
    /// something still waits for the first byte: a stream's later frames read none.
    #[inline]
    pub fn first_byte(&mut self) {
        if self.times_first_byte() || self.held.as_ref().is_some_and(Held::waits) {
            self.first_byte_at(Instant::now());
        }
    }

    /// Whether the first byte is still to be timed: none came yet and the request has not
    /// failed.
    #[inline]
    fn times_first_byte(&self) -> bool {
        !self.first_byte && !self.failed
    }

    /// As [`first_byte`](Self::first_byte), at `at`.
    pub fn first_byte_at(&mut self, at: Instant) {
        if let Some(held) = self.held.as_mut() {
            held.first_byte(at);
        }
        if self.times_first_byte() {
            self.first_byte = true;
            self.endpoint.borrow().observe_ttfb(at - self.start, at);
        }
    }

    /// Records the request's completion and releases the slot.
    pub fn complete(self) {
        self.complete_at(Instant::now());
    }

    /// As [`complete`](Self::complete), at `at`. The first byte is recorded too if none was;
    /// the elapsed time and the estimates' time stamp are worked out once for both.
    pub fn complete_at(mut self, at: Instant) {
        self.record_completion(at);
    }

    /// Completes a request whose body ended while its verdict waited (see `complete_on_drop`).
    #[cold]
    #[inline(never)]
    fn complete_late(&mut self) {
        self.record_completion(Instant::now());
    }

    fn record_completion(&mut self, at: Instant) {
        self.complete_on_drop = false;
        self.completed = true;
        if let Some(held) = self.held.take() {
            held.complete(at, self.failed);
        }
        if let Some(r) = self.reservation.take() {
            if self.failed {
                r.release();
            } else {
                r.keep();
            }
        }
        let elapsed = nanos(at.saturating_duration_since(self.start));
        let stamp = self.endpoint.borrow().nanos_at(at);
        if !self.first_byte && !self.failed {
            self.first_byte = true;
            self.endpoint.borrow().observe_ttfb_at(elapsed, stamp);
        }
        self.endpoint
            .borrow()
            .observe_completion_at(elapsed, self.failed, stamp);
    }
}

impl<E: Borrow<Endpoint>> Drop for LoadGuard<E> {
    fn drop(&mut self) {
        if self.complete_on_drop {
            self.complete_late();
        }
        if let Some(r) = self.reservation.take() {
            // Cancelled before it finished: as if it had never been sent.
            r.release();
        }
        let endpoint = self.endpoint.borrow();
        if !self.completed {
            endpoint.count_cancelled();
        }
        // The permit first: the release offers the slot to a waiting request, which may need
        // it.
        if self.trial {
            endpoint.return_trial();
        }
        endpoint.release(self.cost);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::EndpointConfig;

    #[test]
    fn a_borrowed_guard_keeps_the_same_accounting_without_the_reference_count() {
        let e = Endpoint::new(EndpointConfig::new("a").max_concurrency(1)).unwrap();
        let before = Arc::strong_count(&e);
        let start = Instant::now();
        let guard = LoadGuard::acquire_at(&&*e, 3, start).expect("a free slot");
        assert_eq!(Arc::strong_count(&e), before, "no reference taken");
        assert_eq!((e.in_flight(), e.outstanding()), (1, 3));
        assert!(
            LoadGuard::acquire_at(&&*e, 1, start).is_none(),
            "the limit holds"
        );
        guard.complete_at(start + Duration::from_millis(5));
        assert_eq!((e.in_flight(), e.outstanding()), (0, 0));
        assert_eq!(e.requests(), 1);
        // Dropped without completing (a cancellation): released, not counted as served.
        drop(LoadGuard::acquire_at(&&*e, 1, start).unwrap());
        assert_eq!((e.in_flight(), e.requests(), e.cancelled()), (0, 1, 1));
        assert_eq!(e.duration_histogram().count(), 1);
        assert_eq!(e.duration_histogram().counts[0], 1, "5 ms is at most 5 ms");
        assert_eq!(e.ttfb_histogram().sum_nanos, 5_000_000);
    }
}
