//! An endpoint's latency estimates: lock-free peak-EWMAs of time to first byte and of time to
//! completion, that a failure can never make look fast.

use std::time::Duration;

use crate::{
    clock::nanos,
    sync::{AtomicU64, Ordering::SeqCst},
};

/// How fast the latency estimates forget: tower's default.
const DECAY: Duration = Duration::from_secs(10);
/// The least a failed request counts as, so an endpoint that fails fast never looks fast.
pub(crate) const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Lock-free peak-EWMA estimate: a sample above the estimate replaces it at once, one below
/// is blended in with a weight that decays with the time since the last sample.
#[derive(Debug)]
struct PeakEwma {
    nanos: AtomicU64,
    stamp: AtomicU64,
}

impl PeakEwma {
    fn new() -> Self {
        Self {
            nanos: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
        }
    }

    fn observe(&self, sample: f64, at: u64) {
        let last = self.stamp.swap(at.max(1), SeqCst);
        let weight = if last == 0 {
            0.0
        } else {
            decay_weight(at.saturating_sub(last) as f64, decay_nanos())
        };
        let mut old = self.nanos.load(SeqCst);
        loop {
            let prev = f64::from_bits(old);
            let next = if last == 0 || sample > prev {
                sample
            } else {
                prev * weight + sample * (1.0 - weight)
            };
            match self
                .nanos
                .compare_exchange_weak(old, next.to_bits(), SeqCst, SeqCst)
            {
                Ok(_) => return,
                Err(actual) => old = actual,
            }
        }
    }

    /// The estimate decayed to `now`, or `None` before the first sample.
    fn get(&self, now: u64) -> Option<f64> {
        let stamp = self.stamp.load(SeqCst);
        if stamp == 0 {
            return None;
        }
        let est = f64::from_bits(self.nanos.load(SeqCst));
        Some(est * decay_weight(now.saturating_sub(stamp) as f64, decay_nanos()))
    }
}

/// `e^(-elapsed / decay)`, the weight an estimate keeps after `elapsed`. A busy endpoint's
/// samples come much closer together than the decay time, so below 1% of it a cubic Taylor
/// polynomial stands in for libm's `exp` (within 5e-10 of it, for a fraction of the work).
#[inline]
fn decay_weight(elapsed: f64, decay: f64) -> f64 {
    let x = elapsed / decay;
    if x < 0.01 {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0)))
    } else {
        (-x).exp()
    }
}

fn decay_nanos() -> f64 {
    nanos(DECAY)
}

/// Time to first byte and time to completion, in nanoseconds, each at a time stamp in
/// nanoseconds since the endpoint was made (0 meaning "no sample yet").
#[derive(Debug)]
pub(crate) struct LatencyEstimates {
    ttfb: PeakEwma,
    completion: PeakEwma,
}

impl LatencyEstimates {
    pub(crate) fn new() -> Self {
        Self {
            ttfb: PeakEwma::new(),
            completion: PeakEwma::new(),
        }
    }

    pub(crate) fn observe_ttfb(&self, ttfb_nanos: f64, stamp: u64) {
        self.ttfb.observe(ttfb_nanos, stamp);
    }

    /// Records a finished request. A failure is recorded as at least twice the current
    /// time-to-first-byte estimate and at least [`FAILURE_PENALTY`], in both estimates, never
    /// as its (often short) round trip.
    pub(crate) fn observe_completion(&self, elapsed_nanos: f64, failed: bool, stamp: u64) {
        if failed {
            let current = self.ttfb.get(stamp).unwrap_or(0.0);
            let penalty = elapsed_nanos.max(current * 2.0).max(nanos(FAILURE_PENALTY));
            self.ttfb.observe(penalty, stamp);
            self.completion.observe(penalty, stamp);
        } else {
            self.completion.observe(elapsed_nanos, stamp);
        }
    }

    pub(crate) fn ttfb(&self, stamp: u64) -> Option<f64> {
        self.ttfb.get(stamp)
    }

    pub(crate) fn completion(&self, stamp: u64) -> Option<f64> {
        self.completion.get(stamp)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_decay_weight_matches_exp_on_both_sides_of_its_shortcut() {
        let decay = decay_nanos();
        let mut worst = 0.0f64;
        for i in 0..=20_000u32 {
            // 0 to 2% of the decay time finely, across the switch at 1%, then to 10 decays.
            let elapsed = if i <= 10_000 {
                f64::from(i) * decay * 2e-6
            } else {
                f64::from(i - 10_000) * decay * 1e-3
            };
            let exact = (-elapsed / decay).exp();
            worst = worst.max((decay_weight(elapsed, decay) - exact).abs());
        }
        assert!(worst < 5e-10, "worst error {worst:e}");
        assert_eq!(decay_weight(0.0, decay), 1.0);
    }
}
