//! What the policy learns from the requests it placed: how long a request holds its slot after
//! its first token, and how many tokens a request leaves to compute, as moving averages.

use std::time::Duration;

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// The averages, each an `f64` in an atomic word (0 until the first sample).
#[derive(Debug)]
pub(crate) struct Averages {
    /// Seconds a request holds its slot after its first token.
    decode: AtomicU64,
    /// Tokens a request leaves to compute.
    new_tokens: AtomicU64,
}

/// How fast the averages follow new samples.
const ALPHA: f64 = 1.0 / 64.0;

fn ewma(cell: &AtomicU64, sample: f64) {
    // Approximate under races (a sample may be lost), which an average can afford.
    let old = f64::from_bits(cell.load(Relaxed));
    let new = if old == 0.0 {
        sample
    } else {
        old + ALPHA * (sample - old)
    };
    cell.store(new.to_bits(), Relaxed);
}

impl Averages {
    pub(crate) fn new() -> Self {
        Self {
            decode: AtomicU64::new(0),
            new_tokens: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe_decode(&self, d: Duration) {
        ewma(&self.decode, d.as_secs_f64());
    }

    pub(crate) fn observe_new_tokens(&self, tokens: u64) {
        ewma(&self.new_tokens, tokens as f64);
    }

    /// Seconds a request holds its slot after its first token.
    pub(crate) fn decode(&self) -> f64 {
        f64::from_bits(self.decode.load(Relaxed))
    }

    /// Tokens a request leaves to compute.
    pub(crate) fn new_tokens(&self) -> f64 {
        f64::from_bits(self.new_tokens.load(Relaxed))
    }
}
