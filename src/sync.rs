//! The atomics the lock-free parts use, swapped for loom's under `cfg(loom)`.
//!
//! Everything in the crate that is shared between threads without a lock imports its atomics
//! from here, so that `RUSTFLAGS="--cfg loom" cargo test --release --lib loom` model-checks it.
//! (`arc-swap` and tokio's `Notify` are invisible to loom; the snapshot swap is covered by a
//! stress test instead: `tests/balance/swap.rs`.)

#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
