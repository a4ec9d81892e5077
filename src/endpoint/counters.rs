//! An endpoint's outcome counters: requests finished, failures, and the successes its health
//! judge counted without taking its record's lock.

use crate::sync::{AtomicBool, AtomicU64, Ordering::SeqCst};

/// What finished at the endpoint.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Successes, counted apart from failures so that each outcome's count only grows: a
    /// count of requests less one of failures, read one after the other, can go back.
    successes: AtomicU64,
    failures: AtomicU64,
    /// Successes counted without the health record's lock, ever.
    unlocked_successes: AtomicU64,
    /// Whether a success may be counted without the lock: the record holds nothing a success
    /// would change but its count of successes.
    success_skips_lock: AtomicBool,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            unlocked_successes: AtomicU64::new(0),
            success_skips_lock: AtomicBool::new(true),
        }
    }

    pub(crate) fn finished(&self, failed: bool) {
        if failed {
            self.failures.fetch_add(1, SeqCst);
        } else {
            self.successes.fetch_add(1, SeqCst);
        }
    }

    pub(crate) fn requests(&self) -> u64 {
        let failures = self.failures();
        self.successes().saturating_add(failures)
    }

    pub(crate) fn successes(&self) -> u64 {
        self.successes.load(SeqCst)
    }

    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(SeqCst)
    }

    /// Counts a success without the lock if nothing else needs to change; `false` if the
    /// caller must take the lock.
    #[inline]
    pub(crate) fn try_count_unlocked_success(&self) -> bool {
        if !self.success_skips_lock.load(SeqCst) {
            return false;
        }
        self.unlocked_successes.fetch_add(1, SeqCst);
        true
    }

    /// The successes counted without the lock, ever.
    pub(crate) fn unlocked_successes(&self) -> u64 {
        self.unlocked_successes.load(SeqCst)
    }

    /// Says whether the next success may skip the lock.
    pub(crate) fn let_successes_skip_lock(&self, skip: bool) {
        self.success_skips_lock.store(skip, SeqCst);
    }
}
