//! Time: the clock read at most once per pick, and time arithmetic that never panics.
//!
//! [`LazyNow`] reads the clock on first use and then keeps the reading, so that one pick, with
//! all the health checks it makes, costs at most one clock read (and none on a healthy pool).
//! [`later`] adds a duration to an instant and saturates instead of panicking, so that a
//! setting of `Duration::MAX` (a common way to say "no limit") means "never" rather than a
//! panic; [`nanos`] converts a duration for the latency estimates without 128-bit arithmetic.

use std::{cell::Cell, time::Duration};

use tokio::time::Instant;

/// The clock, read at most once per pick and only if something needs it.
#[derive(Debug, Default, Clone)]
pub(crate) struct LazyNow(Cell<Option<Instant>>);

impl LazyNow {
    /// Reads the clock on first use.
    pub(crate) fn new() -> Self {
        Self(Cell::new(None))
    }

    /// A fixed time, for simulations.
    pub(crate) fn at(now: Instant) -> Self {
        Self(Cell::new(Some(now)))
    }

    /// The time.
    #[inline]
    pub(crate) fn get(&self) -> Instant {
        match self.0.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.0.set(Some(t));
                t
            }
        }
    }
}

/// About thirty years: what "never" comes to when an instant cannot go further.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + after`, or as far ahead as an instant can go (at least thirty years, if the platform
/// allows it) when that overflows: never a panic.
#[inline]
pub(crate) fn later(at: Instant, after: Duration) -> Instant {
    at.checked_add(after).unwrap_or_else(|| far_from(at))
}

#[cold]
fn far_from(at: Instant) -> Instant {
    at.checked_add(FAR).unwrap_or(at)
}

/// `d` scaled by `factor` (a jitter around 1), saturating at `Duration::MAX` where
/// `Duration::mul_f64` would panic: an interval of `Duration::MAX` means "never".
pub(crate) fn scaled(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(if factor > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// A duration in nanoseconds as a float, without `as_nanos`'s 128-bit conversion.
#[inline]
pub(crate) fn nanos(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn adding_any_duration_never_panics() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let never = later(now, Duration::MAX);
        assert!(never >= now + Duration::from_secs(86_400 * 365));
        assert!(later(never, Duration::MAX) >= never);
    }

    #[test]
    fn a_lazy_clock_reads_once() {
        let now = LazyNow::new();
        let first = now.get();
        assert_eq!(now.get(), first);
        let fixed = Instant::now() + Duration::from_secs(3);
        assert_eq!(LazyNow::at(fixed).get(), fixed);
    }
}
