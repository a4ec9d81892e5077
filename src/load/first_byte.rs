//! Work a request holds somewhere else until its response's first byte, carried by its load
//! guard: the [`FirstByteHook`] it tells, and the [`Held`] amount.
//!
//! A prefix-aware pick counts a request's prefill in its endpoint's backlog until the first
//! token comes back; the guard that already sees the first byte and the end of the response
//! releases it then, or when the request fails or is cancelled. The hook is shared (one per
//! endpoint), so holding work costs no allocation: a reference count and a number.

use std::{fmt, sync::Arc};

use tokio::time::Instant;

/// Told when a request that holds work on it gets its first byte, and when it ends.
pub(crate) trait FirstByteHook: Send + Sync + fmt::Debug + 'static {
    /// The request's `amount` is done with: its first byte came at `at`, or (`None`) it ended
    /// or was dropped without one.
    fn release(&self, amount: u64, at: Option<Instant>);

    /// The request completed at `at`, having had its first byte at `first`.
    fn completed(&self, first: Instant, at: Instant);
}

/// An amount held on a hook until the first byte; released at most once, and on drop.
#[derive(Debug)]
pub(crate) struct Held {
    hook: Arc<dyn FirstByteHook>,
    amount: u64,
    pending: bool,
    first: Option<Instant>,
}

impl Held {
    pub(crate) fn new(hook: Arc<dyn FirstByteHook>, amount: u64, first: Option<Instant>) -> Self {
        Self {
            hook,
            amount,
            pending: first.is_none(),
            first,
        }
    }

    /// Whether the first byte is still awaited.
    pub(crate) fn waits(&self) -> bool {
        self.pending
    }

    /// The first byte came at `at`.
    pub(crate) fn first_byte(&mut self, at: Instant) {
        if std::mem::take(&mut self.pending) {
            self.first = Some(at);
            self.hook.release(self.amount, Some(at));
        }
    }

    /// The request ended at `at`; a successful one that had its first byte tells the hook how
    /// long it ran after it.
    pub(crate) fn complete(mut self, at: Instant, failed: bool) {
        self.release();
        if let (Some(first), false) = (self.first, failed) {
            self.hook.completed(first, at);
        }
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.hook.release(self.amount, None);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}
