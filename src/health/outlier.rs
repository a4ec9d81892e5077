//! The record of an endpoint's recent outcomes, which the health layer judges it by:
//! consecutive failures, a sliding window of successes and failures, how often it was ejected,
//! and the streaks of trial requests and probes.
//!
//! The record lives on the endpoint (which does not know its type) behind a mutex, taken for
//! every outcome but one and never by a pick: a success on a healthy endpoint with nothing to
//! forget (no failure streak, no past ejection) is only counted, in the endpoint's counters,
//! and the next holder of the lock folds that count into the window.

use std::{ops::Deref, ops::DerefMut, time::Duration};

use parking_lot::{MappedMutexGuard, MutexGuard};
use tokio::time::Instant;

use crate::endpoint::Endpoint;

/// An endpoint's outlier record, locked. The successes counted without the lock are folded in
/// when it is taken, and when it is let go the endpoint learns whether the next success may
/// skip it.
pub(crate) struct RecordGuard<'a> {
    endpoint: &'a Endpoint,
    record: MappedMutexGuard<'a, Outliers>,
}

impl<'a> RecordGuard<'a> {
    pub(crate) fn lock(endpoint: &'a Endpoint) -> Self {
        let mut record = MutexGuard::map(endpoint.record(), |slot| {
            if !slot.as_ref().is_some_and(|r| r.is::<Outliers>()) {
                *slot = Some(Box::new(Outliers::default()));
            }
            slot.as_mut()
                .and_then(|r| r.downcast_mut::<Outliers>())
                .expect("an outlier record was just put there")
        });
        record.window.fold(endpoint.counters().unlocked_successes());
        Self { endpoint, record }
    }
}

impl Deref for RecordGuard<'_> {
    type Target = Outliers;
    fn deref(&self) -> &Outliers {
        &self.record
    }
}

impl DerefMut for RecordGuard<'_> {
    fn deref_mut(&mut self) -> &mut Outliers {
        &mut self.record
    }
}

impl Drop for RecordGuard<'_> {
    fn drop(&mut self) {
        let settled = self.record.consecutive_failures == 0 && self.record.last_ejected.is_none();
        self.endpoint.counters().let_successes_skip_lock(settled);
    }
}

/// Successes and failures over the last `len`, as two buckets: the current one and the one
/// before, weighted by how much of it still lies inside the window.
#[derive(Debug, Default, Clone)]
pub(crate) struct Window {
    start: Option<Instant>,
    previous: (u32, u32),
    current: (u32, u32),
    /// The lock-free success count already folded in.
    seen: u64,
}

impl Window {
    fn roll(&mut self, now: Instant, len: Duration) {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= len.saturating_mul(2) {
            self.previous = (0, 0);
            self.current = (0, 0);
            self.start = Some(now);
        } else if elapsed >= len {
            self.previous = self.current;
            self.current = (0, 0);
            self.start = Some(start + len);
        }
    }

    /// Adds the successes counted without the lock since the last fold (`total` is their count
    /// ever) to the current bucket. They happened before now, so they are folded in before the
    /// window rolls.
    fn fold(&mut self, total: u64) {
        let new = total.saturating_sub(self.seen);
        self.seen = total;
        self.current.0 = self
            .current
            .0
            .saturating_add(new.min(u64::from(u32::MAX)) as u32);
    }

    pub(crate) fn record(&mut self, now: Instant, len: Duration, failed: bool) {
        self.roll(now, len);
        if failed {
            self.current.1 = self.current.1.saturating_add(1);
        } else {
            self.current.0 = self.current.0.saturating_add(1);
        }
    }

    /// `(requests, failures)` over the last `len`, estimated.
    pub(crate) fn counts(&mut self, now: Instant, len: Duration) -> (f64, f64) {
        self.roll(now, len);
        let into = self
            .start
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let keep = 1.0 - (into.as_secs_f64() / len.as_secs_f64()).min(1.0);
        let ok = f64::from(self.current.0) + f64::from(self.previous.0) * keep;
        let failed = f64::from(self.current.1) + f64::from(self.previous.1) * keep;
        (ok + failed, failed)
    }

    pub(crate) fn clear(&mut self) {
        *self = Self {
            seen: self.seen,
            ..Self::default()
        };
    }
}

/// What the health layer remembers of one endpoint.
#[derive(Debug, Default, Clone)]
pub(crate) struct Outliers {
    pub(crate) consecutive_failures: u32,
    pub(crate) window: Window,
    /// Ejections so far; the next ejection lasts longer. Forgotten after a long healthy spell.
    pub(crate) ejections: u32,
    pub(crate) last_ejected: Option<Instant>,
    /// Successful trial requests since the ejection expired.
    pub(crate) trial_successes: u32,
    /// Consecutive probe results: above 0 successes, below 0 failures.
    pub(crate) probe_streak: i32,
    /// The end of the latest provider back-off (`Retry-After`): a recovery before it leaves
    /// the endpoint cooling down until then.
    pub(crate) cooled_until: Option<Instant>,
}

impl Outliers {
    /// When the provider's back-off in force at `now` ends, if one is.
    pub(crate) fn backing_off(&self, now: Instant) -> Option<Instant> {
        self.cooled_until.filter(|&until| until > now)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_old_outcomes() {
        let t0 = Instant::now();
        let len = Duration::from_secs(10);
        let mut w = Window::default();
        for _ in 0..10 {
            w.record(t0, len, true);
        }
        assert_eq!(w.counts(t0, len), (10.0, 10.0));
        // Half a window later the old bucket counts half.
        let (n, f) = w.counts(t0 + Duration::from_secs(15), len);
        assert!((n - 5.0).abs() < 0.01 && (f - 5.0).abs() < 0.01, "{n} {f}");
        assert_eq!(w.counts(t0 + Duration::from_secs(31), len), (0.0, 0.0));
    }
}
