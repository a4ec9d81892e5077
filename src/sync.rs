//! The atomics and the lock the lock-free parts use, swapped for loom's under `cfg(loom)`.
//!
//! Everything in the crate that is shared between threads imports its atomics (and the wait
//! queue its mutex) from here, so that `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`
//! model-checks it. (`arc-swap` and tokio's `Notify` are invisible to loom; the snapshot swap
//! is covered by a stress test instead: `tests/balance/swap.rs`.)

#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Orders a `SeqCst` read-modify-write before a `SeqCst` load of another location, as every
/// `SeqCst` access already is: a no-op outside loom.
///
/// A release frees a slot (a `SeqCst` RMW of the endpoint's in-flight word) and then loads the
/// queue's waiter count; a waiter counts itself in (a `SeqCst` RMW) and then loads the slots.
/// The single total order of `SeqCst` accesses means at least one of them sees the other, so a
/// slot freed as a request starts to wait is never missed. loom models `SeqCst` accesses as
/// acquire/release only, which allows both to miss, but it models `SeqCst` fences: in the
/// model, this fence stands for the order the accesses have on every real target.
#[inline(always)]
pub(crate) fn seq_cst_order() {
    #[cfg(all(test, loom))]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// A mutex for the few structures that need one (the wait queue's list): `parking_lot`'s, or
/// loom's in a model.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(
    #[cfg(not(all(test, loom)))] parking_lot::Mutex<T>,
    #[cfg(all(test, loom))] loom::sync::Mutex<T>,
);

#[cfg(not(all(test, loom)))]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(parking_lot::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.0.lock()
    }
}

#[cfg(all(test, loom))]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }
}
