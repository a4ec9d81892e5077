//! Load held from pick to completion.
//!
//! A [`LoadGuard`] holds one in-flight slot (and the request's [`Cost`](crate::hints::Cost)) on
//! an endpoint. It is created when [`Balance`](crate::balance::Balance) picks and released in
//! `Drop`, so a cancelled, failed or panicking request never leaks a count. [`TrackLoad`] moves
//! the guard into the response: for an `http::Response` into a [`ResponseBody`] that releases
//! it when the stream ends, fails or is dropped.

use std::{
    borrow::Borrow,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{
    endpoint::Endpoint,
    error::{BoxError, Stalled},
    hints::{Served, WithHints},
    sync::{AtomicU64, AtomicUsize, Ordering::SeqCst},
};

/// An endpoint's load counters: requests in flight and their outstanding cost.
///
/// The in-flight word carries two flags above the count. The top bit says the endpoint was
/// removed, so that acquiring, releasing and removing each read and write one atomic in one
/// step: whoever makes a removed endpoint empty learns it from the value its own
/// read-modify-write returns, and the drain is always announced. The next bit, the gate, says
/// the endpoint is not simply open (its health is not `Healthy` or its weight is 0; the
/// endpoint keeps it true to both), so that a pick learns from one load and one comparison
/// with the concurrency limit that an endpoint is open with room, and looks closer only when
/// it is not.
///
/// The outstanding cost is the in-flight count plus the cost above 1 of each request, so a
/// request of cost 1 (every request without a `Cost` hint) touches one word. Pure atomics,
/// modelled under loom.
#[derive(Debug)]
pub(crate) struct Slots {
    in_flight: AtomicUsize,
    /// The sum of `cost - 1` over the requests in flight.
    extra: AtomicU64,
}

const REMOVED: usize = 1 << (usize::BITS - 1);
const GATED: usize = 1 << (usize::BITS - 2);
const COUNT: usize = GATED - 1;
/// The concurrency limit that means none: every count is below it, and no flagged word is.
pub(crate) const NO_LIMIT: usize = GATED;

/// The outcome of [`Slots::try_acquire`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    Yes,
    Full,
    /// The endpoint was removed meanwhile; the slot was given back. `drained` if that made it
    /// empty.
    Removed {
        drained: bool,
    },
}

impl Slots {
    pub(crate) fn new(gated: bool) -> Self {
        Self {
            in_flight: AtomicUsize::new(if gated { GATED } else { 0 }),
            extra: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst) & COUNT
    }

    pub(crate) fn outstanding(&self) -> u64 {
        self.extra.load(SeqCst) + self.in_flight() as u64
    }

    /// The pick's question, from one load and one comparison: the in-flight count if the
    /// endpoint is open (not removed, not gated) with fewer than `max` (at most [`NO_LIMIT`])
    /// in flight. If not, [`gated_room`](Self::gated_room) tells why.
    #[inline(always)]
    pub(crate) fn open(&self, max: usize) -> Option<usize> {
        let word = self.in_flight.load(SeqCst);
        (word < max).then_some(word)
    }

    /// The in-flight count if the endpoint is not removed and has fewer than `max` in flight,
    /// gated or not (health and weight must then decide).
    #[inline]
    pub(crate) fn gated_room(&self, max: usize) -> Option<usize> {
        let word = self.in_flight.load(SeqCst);
        (word & REMOVED == 0 && word & COUNT < max).then_some(word & COUNT)
    }

    #[inline]
    pub(crate) fn is_removed(&self) -> bool {
        self.in_flight.load(SeqCst) & REMOVED != 0
    }

    #[cfg(test)]
    pub(crate) fn is_gated(&self) -> bool {
        self.in_flight.load(SeqCst) & GATED != 0
    }

    /// Sets or clears the gate.
    pub(crate) fn set_gated(&self, gated: bool) {
        if gated {
            self.in_flight.fetch_or(GATED, SeqCst);
        } else {
            self.in_flight.fetch_and(!GATED, SeqCst);
        }
    }

    /// Takes a slot unless `max` are taken: one `fetch_add` without a limit, a CAS loop with
    /// one, so the limit is never exceeded, not even for an instant. A cost of 0 counts as 1.
    #[inline]
    pub(crate) fn try_acquire(&self, max: usize, cost: u64) -> Acquired {
        let before = if max >= NO_LIMIT {
            self.in_flight.fetch_add(1, SeqCst)
        } else {
            match self.in_flight.fetch_update(SeqCst, SeqCst, |n| {
                (n & REMOVED != 0 || n & COUNT < max).then(|| n + 1)
            }) {
                Ok(before) => before,
                Err(_) => return Acquired::Full,
            }
        };
        if cost > 1 {
            self.extra.fetch_add(cost - 1, SeqCst);
        }
        if before & REMOVED != 0 {
            return Acquired::Removed {
                drained: self.release(cost),
            };
        }
        Acquired::Yes
    }

    /// Gives a slot back. Returns whether this emptied a removed endpoint.
    #[inline]
    pub(crate) fn release(&self, cost: u64) -> bool {
        if cost > 1 {
            self.extra.fetch_sub(cost - 1, SeqCst);
        }
        let before = self.in_flight.fetch_sub(1, SeqCst);
        debug_assert!(before & COUNT > 0, "in-flight underflow");
        before & !GATED == REMOVED | 1
    }

    /// Marks the endpoint removed. Returns whether it is already empty.
    pub(crate) fn remove(&self) -> bool {
        self.in_flight.fetch_or(REMOVED, SeqCst) & COUNT == 0
    }
}

/// One in-flight slot on an endpoint, released on drop.
///
/// It holds its endpoint as `E`: by default an `Arc`, so that it can travel with a response
/// for as long as the body lasts. A `LoadGuard<&Endpoint>` is the same accounting for a
/// caller that keeps its endpoints alive itself (a simulation, a dispatcher that serves within
/// one scope), without the reference count.
#[derive(Debug)]
pub struct LoadGuard<E: Borrow<Endpoint> = Arc<Endpoint>> {
    endpoint: E,
    /// How long the response body may go without a frame (set by `Balance`).
    pub(crate) idle_timeout: Option<Duration>,
    cost: u64,
    start: Instant,
    first_byte: bool,
    failed: bool,
    /// Holds one of the endpoint's half-open trial permits.
    trial: bool,
}

impl<E: Borrow<Endpoint> + Clone> LoadGuard<E> {
    /// Takes a slot on `endpoint` for a request of `cost`, timed from now; `None` if the
    /// endpoint is at its concurrency limit or was removed.
    #[inline]
    pub fn acquire(endpoint: &E, cost: u64) -> Option<Self> {
        let trial = endpoint.borrow().try_acquire(cost)?;
        Some(Self::held(endpoint, cost, Instant::now(), trial))
    }

    /// As [`acquire`](Self::acquire), timed from `start`: for simulations in virtual time.
    #[inline]
    pub fn acquire_at(endpoint: &E, cost: u64, start: Instant) -> Option<Self> {
        let trial = endpoint.borrow().try_acquire(cost)?;
        Some(Self::held(endpoint, cost, start, trial))
    }

    /// Takes a slot whatever the endpoint's health (panic mode).
    pub(crate) fn acquire_any_at(endpoint: &E, cost: u64, start: Instant) -> Option<Self> {
        endpoint
            .borrow()
            .try_acquire_any(cost)
            .then(|| Self::held(endpoint, cost, start, false))
    }

    fn held(endpoint: &E, cost: u64, start: Instant, trial: bool) -> Self {
        Self {
            endpoint: endpoint.clone(),
            idle_timeout: None,
            cost,
            start,
            first_byte: false,
            failed: false,
            trial,
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

    /// Marks the request as failed: its completion feeds the latency estimate a penalty.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Records the first byte of the response body (once).
    pub fn first_byte(&mut self) {
        self.first_byte_at(Instant::now());
    }

    /// As [`first_byte`](Self::first_byte), at `at`.
    pub fn first_byte_at(&mut self, at: Instant) {
        if !self.first_byte && !self.failed {
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
        let elapsed = crate::endpoint::nanos(at.saturating_duration_since(self.start));
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
        let endpoint = self.endpoint.borrow();
        endpoint.release(self.cost);
        if self.trial {
            endpoint.return_trial();
        }
    }
}

/// How a response carries its load guard until it is finished.
///
/// Implemented for `http::Response<B>` (until the body ends) and [`WithHints<T>`] (finished
/// when it arrives). Both attach [`Served`] to the response's extensions.
pub trait TrackLoad {
    /// The response with the guard attached.
    type Output;
    /// Attaches the guard.
    fn track(self, guard: LoadGuard) -> Self::Output;
}

impl<B> TrackLoad for http::Response<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = http::Response<ResponseBody<B>>;

    fn track(self, mut guard: LoadGuard) -> Self::Output {
        if crate::classify::status_is_failure(self.status()) {
            guard.fail();
        }
        let (mut parts, body) = self.into_parts();
        parts
            .extensions
            .insert(Served(Arc::clone(guard.endpoint())));
        http::Response::from_parts(parts, ResponseBody::new(body, guard))
    }
}

impl<T> TrackLoad for WithHints<T> {
    type Output = WithHints<T>;

    fn track(mut self, guard: LoadGuard) -> Self::Output {
        self.extensions.insert(Served(Arc::clone(guard.endpoint())));
        guard.complete();
        self
    }
}

pin_project! {
    /// A response body that holds its endpoint's load until the stream ends, fails or is
    /// dropped; with an idle timeout, a stream that stops sending fails with [`Stalled`] and
    /// counts as its endpoint's failure.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<LoadGuard>,
        // Boxed so that the body stays `Unpin` like the bodies it wraps; allocated only when an
        // idle timeout is set.
        idle: Option<Pin<Box<Sleep>>>,
        idle_after: Option<Duration>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// Wraps `inner`; an already finished body releases the guard at once.
    pub fn new(inner: B, guard: LoadGuard) -> Self {
        let idle_after = guard.idle_timeout;
        let guard = if inner.is_end_stream() {
            guard.complete();
            None
        } else {
            Some(guard)
        };
        let idle = idle_after
            .filter(|_| guard.is_some())
            .map(|after| Box::pin(tokio::time::sleep(after)));
        Self {
            inner,
            guard,
            idle,
            idle_after,
        }
    }

    /// The endpoint serving this body, while it still holds its load.
    pub fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        self.guard.as_ref().map(LoadGuard::endpoint)
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else {
                    return Poll::Pending;
                };
                ready!(idle.as_mut().poll(cx));
                // The stream stopped sending: end it as the endpoint's failure.
                *this.idle = None;
                let after = this.idle_after.unwrap_or_default();
                return Poll::Ready(this.guard.take().map(|mut g| {
                    g.fail();
                    g.complete();
                    Err(Stalled::new(after).into())
                }));
            }
        };
        if let (Some(idle), Some(after)) = (this.idle.as_mut(), *this.idle_after) {
            idle.as_mut().reset(Instant::now() + after);
        }
        let result = result.map(|r| r.map_err(Into::into));
        match &result {
            None => {
                if let Some(g) = this.guard.take() {
                    g.complete();
                }
                *this.idle = None;
            }
            Some(Err(_)) => {
                *this.idle = None;
                if let Some(mut g) = this.guard.take() {
                    g.fail();
                    g.complete();
                }
            }
            Some(Ok(frame)) => {
                if let Some(g) = this.guard.as_mut() {
                    if frame.is_data() {
                        g.first_byte();
                    }
                }
                // A consumer may never poll again after the last frame: release now.
                if this.inner.is_end_stream() {
                    if let Some(g) = this.guard.take() {
                        g.complete();
                    }
                    *this.idle = None;
                }
            }
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`

    use super::{Acquired, Slots};
    use loom::{sync::Arc, thread};

    /// The only request: takes a slot under `max` and gives it back, counting each drain
    /// announcement it makes.
    fn one_request(slots: &Slots, max: usize, announced: &loom::sync::atomic::AtomicUsize) {
        match slots.try_acquire(max, 1) {
            Acquired::Yes => {
                assert_eq!(slots.in_flight(), 1);
                if slots.release(1) {
                    announced.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                }
            }
            Acquired::Removed { drained } => {
                if drained {
                    announced.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                }
            }
            Acquired::Full => unreachable!("no other request holds a slot"),
        }
    }

    #[test]
    fn limit_is_never_exceeded_and_counts_return_to_zero() {
        loom::model(|| {
            let slots = Arc::new(Slots::new(false));
            let live = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (slots, live) = (Arc::clone(&slots), Arc::clone(&live));
                    thread::spawn(move || {
                        if slots.try_acquire(1, 5) == Acquired::Yes {
                            let now = live.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                            assert_eq!(now, 0, "two requests in a slot of one");
                            live.fetch_sub(1, loom::sync::atomic::Ordering::SeqCst);
                            slots.release(5);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(slots.in_flight(), 0);
            assert_eq!(slots.outstanding(), 0);
        });
    }

    #[test]
    fn removal_during_traffic_always_announces_the_drain() {
        loom::model(|| {
            let slots = Arc::new(Slots::new(false));
            let announced = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let worker = {
                let (slots, announced) = (Arc::clone(&slots), Arc::clone(&announced));
                thread::spawn(move || one_request(&slots, super::NO_LIMIT, &announced))
            };
            if slots.remove() {
                announced.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
            }
            worker.join().unwrap();
            assert_eq!(slots.in_flight(), 0);
            assert!(
                announced.load(loom::sync::atomic::Ordering::SeqCst) >= 1,
                "the endpoint emptied but nobody announced its drain"
            );
        });
    }

    /// The gate shares the in-flight word: toggling it while requests come and go and the
    /// endpoint is removed neither changes the count, nor loses the drain, nor lets a limit be
    /// exceeded, and `open` never reports a gated or removed endpoint.
    #[test]
    fn the_gate_never_disturbs_the_count_the_limit_or_the_drain() {
        loom::model(|| {
            let slots = Arc::new(Slots::new(false));
            let announced = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let worker = {
                let (slots, announced) = (Arc::clone(&slots), Arc::clone(&announced));
                thread::spawn(move || {
                    if let Some(n) = slots.open(1) {
                        assert_eq!(n, 0, "open reports the bare count");
                    }
                    one_request(&slots, 1, &announced);
                })
            };
            let gate = {
                let slots = Arc::clone(&slots);
                thread::spawn(move || {
                    slots.set_gated(true);
                    assert_eq!(slots.open(super::NO_LIMIT), None, "gated is not open");
                    slots.set_gated(false);
                })
            };
            if slots.remove() {
                announced.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
            }
            worker.join().unwrap();
            gate.join().unwrap();
            assert_eq!(slots.in_flight(), 0);
            assert!(slots.is_removed() && !slots.is_gated());
            assert_eq!(slots.open(super::NO_LIMIT), None, "removed is not open");
            assert!(
                announced.load(loom::sync::atomic::Ordering::SeqCst) >= 1,
                "the endpoint emptied but nobody announced its drain"
            );
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
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
        assert_eq!((e.in_flight(), e.requests()), (0, 1));
    }
}
