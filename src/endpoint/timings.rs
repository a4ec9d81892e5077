//! An endpoint's latency histograms, [`Timings`]: time to first byte and request duration in
//! fixed buckets suited to LLM traffic, each sample one relaxed add to its bucket and one to
//! the sum, with no lock and no allocation.

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// The buckets' upper bounds, in seconds: from 5 ms (a cached or tiny answer's first byte) to
/// 10 minutes (a long generation), about two to three per decade; a last bucket, `+Inf`,
/// takes the rest.
pub const BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// [`BUCKETS`] in milliseconds, what a sample is compared with (times a million).
const BOUNDS_MS: [u64; 17] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 30_000, 60_000, 120_000,
    300_000, 600_000,
];

/// One histogram's counts: one per bucket, not cumulative (a sample adds to one only).
type Buckets = [AtomicU64; BUCKETS.len() + 1];

/// Adds a sample of `nanos` to the first bucket whose bound is at least that (`le` is
/// inclusive).
#[inline]
fn record(buckets: &Buckets, nanos: u64) {
    let i = BOUNDS_MS.partition_point(|&ms| ms * 1_000_000 < nanos);
    buckets[i].fetch_add(1, Relaxed);
}

fn read(buckets: &Buckets, sum: &AtomicU64) -> HistogramSnapshot {
    let mut counts = [0; BUCKETS.len() + 1];
    for (count, bucket) in counts.iter_mut().zip(buckets) {
        *count = bucket.load(Relaxed);
    }
    HistogramSnapshot {
        counts,
        sum_nanos: sum.load(Relaxed),
    }
}

/// A histogram as read at one moment.
///
/// The buckets and the sum are read one after the other while samples may arrive, so a
/// sample may be in one and not yet in the other; each is exact on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The samples in each bucket, bucket `i` counting those above `BUCKETS[i - 1]` and at
    /// most [`BUCKETS`]`[i]`; the last counts those above 10 minutes. Not cumulative.
    pub counts: [u64; BUCKETS.len() + 1],
    /// The sum of the samples, in nanoseconds.
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// How many samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the samples, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// The cumulative counts, as the Prometheus `_bucket{le=...}` series show them: each
    /// bound of [`BUCKETS`] with the samples at most that long, then `+Inf` with all.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts.iter().scan(0, |total, &n| {
            *total += n;
            Some(*total)
        }))
    }
}

/// An endpoint's time-to-first-byte and duration histograms (the sums in nanoseconds, which
/// wrap after some 584 years of samples), and its count of requests cancelled by their caller.
///
/// Apart from the line that the completion's estimates and counters share. The two sums come
/// first, in one line with the first-byte buckets up to 250 ms, where most first bytes fall,
/// so that a typical completion writes that line and the one of its duration's bucket.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Timings {
    ttfb_sum: AtomicU64,
    duration_sum: AtomicU64,
    ttfb: Buckets,
    duration: Buckets,
    cancelled: AtomicU64,
}

impl Timings {
    pub(crate) fn new() -> Self {
        Self {
            ttfb_sum: AtomicU64::new(0),
            duration_sum: AtomicU64::new(0),
            ttfb: std::array::from_fn(|_| AtomicU64::new(0)),
            duration: std::array::from_fn(|_| AtomicU64::new(0)),
            cancelled: AtomicU64::new(0),
        }
    }

    #[inline]
    pub(crate) fn ttfb(&self, nanos: u64) {
        record(&self.ttfb, nanos);
        self.ttfb_sum.fetch_add(nanos, Relaxed);
    }

    #[inline]
    pub(crate) fn duration(&self, nanos: u64) {
        record(&self.duration, nanos);
        self.duration_sum.fetch_add(nanos, Relaxed);
    }

    #[cold]
    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Relaxed);
    }

    pub(crate) fn read_ttfb(&self) -> HistogramSnapshot {
        read(&self.ttfb, &self.ttfb_sum)
    }

    pub(crate) fn read_duration(&self) -> HistogramSnapshot {
        read(&self.duration, &self.duration_sum)
    }

    pub(crate) fn read_cancelled(&self) -> u64 {
        self.cancelled.load(Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn each_sample_lands_in_the_first_bucket_that_holds_it() {
        let t = Timings::new();
        let ms = 1_000_000;
        for nanos in [0, 5 * ms, 5 * ms + 1, 700 * ms, 600_000 * ms, 600_001 * ms] {
            t.duration(nanos);
        }
        assert_eq!(t.read_ttfb(), HistogramSnapshot::default());
        let read = t.read_duration();
        assert_eq!(read.counts[0], 2, "0 and exactly 5 ms are at most 5 ms");
        assert_eq!(read.counts[1], 1, "just above 5 ms");
        assert_eq!(read.counts[7], 1, "700 ms is in (0.5, 1]");
        assert_eq!(read.counts[16], 1, "exactly 10 minutes");
        assert_eq!(read.counts[17], 1, "beyond 10 minutes is +Inf's");
        assert_eq!(read.count(), 6);
        assert_eq!(read.sum_nanos, 10 * ms + 1 + 700 * ms + 1_200_001 * ms);
        let cumulative: Vec<_> = read.cumulative().collect();
        assert_eq!(cumulative[0], (0.005, 2));
        assert_eq!(cumulative[6], (0.5, 3));
        assert_eq!(cumulative[7], (1.0, 4));
        assert_eq!(cumulative[17], (f64::INFINITY, 6));
    }

    #[test]
    fn the_bounds_are_the_documented_seconds() {
        for (ms, s) in BOUNDS_MS.iter().zip(BUCKETS) {
            assert_eq!(*ms as f64 / 1e3, s);
        }
    }
}
