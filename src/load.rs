//! Load held from pick to completion.
//!
//! A [`LoadGuard`] holds one in-flight slot (and the request's [`Cost`](crate::hints::Cost)) on
//! an endpoint. It is created when [`Balance`](crate::balance::Balance) picks and released in
//! `Drop`, so a cancelled, failed or panicking request never leaks a count. [`TrackLoad`] moves
//! the guard into the response: for an `http::Response` into a [`ResponseBody`] that releases
//! it when the stream ends, fails or is dropped.

use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::{
    endpoint::Endpoint,
    hints::{Served, WithHints},
    sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
};

/// An endpoint's load counters: requests in flight, their outstanding cost, and whether the
/// endpoint was removed (so the last release can announce the drain). Pure atomics, modelled
/// under loom.
#[derive(Debug)]
pub(crate) struct Slots {
    in_flight: AtomicUsize,
    outstanding: AtomicU64,
    removed: AtomicBool,
}

/// The outcome of [`Slots::try_acquire`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired {
    Yes,
    Full,
    /// The endpoint was removed meanwhile; the slot was given back. `drained` if that made it
    /// empty.
    Removed { drained: bool },
}

impl Slots {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            outstanding: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        }
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.load(SeqCst)
    }

    #[inline]
    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(SeqCst)
    }

    /// Takes a slot unless `max` are taken. One `fetch_add` without a limit, a CAS loop with
    /// one, so the limit is never exceeded, not even for an instant.
    #[inline]
    pub(crate) fn try_acquire(&self, max: usize, cost: u64) -> Acquired {
        if max == usize::MAX {
            self.in_flight.fetch_add(1, SeqCst);
        } else if self
            .in_flight
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            return Acquired::Full;
        }
        self.outstanding.fetch_add(cost, SeqCst);
        // Removal stores `removed` then reads `in_flight`; we add to `in_flight` then read
        // `removed` (all SeqCst): at least one side sees the other, so a slot taken on a
        // removed endpoint is always given back, and the drain is always announced.
        if self.removed.load(SeqCst) {
            return Acquired::Removed {
                drained: self.release(cost),
            };
        }
        Acquired::Yes
    }

    /// Gives a slot back. Returns whether this emptied a removed endpoint.
    #[inline]
    pub(crate) fn release(&self, cost: u64) -> bool {
        self.outstanding.fetch_sub(cost, SeqCst);
        let before = self.in_flight.fetch_sub(1, SeqCst);
        debug_assert!(before > 0, "in-flight underflow");
        before == 1 && self.removed.load(SeqCst)
    }

    /// Marks the endpoint removed. Returns whether it is already empty.
    pub(crate) fn remove(&self) -> bool {
        self.removed.store(true, SeqCst);
        self.in_flight.load(SeqCst) == 0
    }
}

/// One in-flight slot on an endpoint, released on drop.
#[derive(Debug)]
pub struct LoadGuard {
    endpoint: Arc<Endpoint>,
    cost: u64,
    start: Instant,
    first_byte: bool,
    failed: bool,
}

impl LoadGuard {
    /// Wraps a slot already taken with `try_acquire`.
    pub(crate) fn new(endpoint: Arc<Endpoint>, cost: u64) -> Self {
        Self {
            endpoint,
            cost,
            start: Instant::now(),
            first_byte: false,
            failed: false,
        }
    }

    /// The endpoint whose slot this is.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Marks the request as failed: its completion feeds the latency estimate a penalty.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Records the first byte of the response body (once).
    pub fn first_byte(&mut self) {
        if !self.first_byte && !self.failed {
            self.first_byte = true;
            let now = Instant::now();
            self.endpoint.observe_ttfb(now - self.start, now);
        }
    }

    /// Records the request's completion and releases the slot.
    pub fn complete(mut self) {
        self.first_byte();
        let now = Instant::now();
        self.endpoint
            .observe_completion(now - self.start, self.failed, now);
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.endpoint.release(self.cost);
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

impl<B: Body> TrackLoad for http::Response<B> {
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
    /// dropped.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<LoadGuard>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// Wraps `inner`; an already finished body releases the guard at once.
    pub fn new(inner: B, guard: LoadGuard) -> Self {
        let guard = if inner.is_end_stream() {
            guard.complete();
            None
        } else {
            Some(guard)
        };
        Self { inner, guard }
    }

    /// The endpoint serving this body, while it still holds its load.
    pub fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        self.guard.as_ref().map(LoadGuard::endpoint)
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll_frame(cx));
        match &result {
            None => {
                if let Some(g) = this.guard.take() {
                    g.complete();
                }
            }
            Some(Err(_)) => {
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

    #[test]
    fn limit_is_never_exceeded_and_counts_return_to_zero() {
        loom::model(|| {
            let slots = Arc::new(Slots::new());
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
            let slots = Arc::new(Slots::new());
            let announced = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
            let worker = {
                let (slots, announced) = (Arc::clone(&slots), Arc::clone(&announced));
                thread::spawn(move || match slots.try_acquire(usize::MAX, 1) {
                    Acquired::Yes => {
                        if slots.release(1) {
                            announced.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Acquired::Removed { drained } => {
                        if drained {
                            announced.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Acquired::Full => unreachable!("no limit"),
                })
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
}
