//! An endpoint's load counters, [`Slots`]: requests in flight, their outstanding cost, and
//! two flags in the in-flight word (removed, and the pick's gate).

use crate::sync::{AtomicU64, AtomicUsize, Ordering::SeqCst};

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
        // Saturating: a caller's `Cost` may be anything up to `u64::MAX`.
        self.extra
            .load(SeqCst)
            .saturating_add(self.in_flight() as u64)
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
