//! Hedging: when to send a second copy of a slow attempt ([`Hedge`], from a record of recent
//! answer times), and the race between the two.

use std::{future::Future, pin::pin, time::Duration};

use futures_util::future::{select, Either};
use http_body::Body;
use tokio::time::Instant;

use super::step::Step;
use crate::{
    hints::Served,
    sync::{AtomicU64, Ordering::Relaxed},
};

/// When to send a second copy of a request that has not answered (its first byte, or its first
/// chunk when the layer waits for one) to another endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Hedge {
    /// After a fixed delay.
    After(Duration),
    /// After the given percentile (0.95 for p95) of the time recent attempts took to answer,
    /// but never sooner than `floor`; `floor` alone until 20 answers have been seen.
    Percentile {
        /// The percentile, in (0, 1).
        p: f64,
        /// The least delay.
        floor: Duration,
    },
}

/// Sub-buckets per doubling: the percentile is exact to within 1/8 (12.5%).
const STEPS: usize = 8;
/// Doublings from 1 µs: up to about 18 minutes.
const OCTAVES: usize = 30;
/// After this many samples the counts halve, so the estimate follows change.
const HALF_LIFE: u64 = 4096;

/// Recent answer times, in log-scale buckets of atomic counters.
#[derive(Debug)]
pub(crate) struct Latencies {
    buckets: Box<[AtomicU64]>,
    since_halving: AtomicU64,
}

impl Latencies {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..STEPS * OCTAVES).map(|_| AtomicU64::new(0)).collect(),
            since_halving: AtomicU64::new(0),
        }
    }

    fn bucket(d: Duration) -> usize {
        let micros = d.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
        let octave = 63 - micros.leading_zeros() as usize;
        let step = if octave >= 3 {
            ((micros >> (octave - 3)) & 7) as usize
        } else {
            ((micros << (3 - octave)) & 7) as usize
        };
        (octave * STEPS + step).min(STEPS * OCTAVES - 1)
    }

    fn upper(bucket: usize) -> Duration {
        let (octave, step) = (bucket / STEPS, bucket % STEPS);
        let base = 1u64 << octave;
        Duration::from_micros(base + base * (step as u64 + 1) / STEPS as u64)
    }

    pub(crate) fn record(&self, d: Duration) {
        self.buckets[Self::bucket(d)].fetch_add(1, Relaxed);
        if self.since_halving.fetch_add(1, Relaxed) + 1 >= HALF_LIFE {
            self.since_halving.store(0, Relaxed);
            for b in self.buckets.iter() {
                let _ = b.fetch_update(Relaxed, Relaxed, |n| Some(n / 2));
            }
        }
    }

    /// The `p` percentile, if at least `min` samples are counted.
    pub(crate) fn percentile(&self, p: f64, min: u64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total < min {
            return None;
        }
        let rank = (p * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank.max(1) {
                return Some(Self::upper(i));
            }
        }
        None
    }
}

impl Hedge {
    pub(crate) fn delay(&self, recent: &Latencies) -> Duration {
        match *self {
            Hedge::After(d) => d,
            Hedge::Percentile { p, floor } => {
                recent.percentile(p, 20).map_or(floor, |d| d.max(floor))
            }
        }
    }
}

/// One attempt, hedged: when `first` has not answered within the hedge's delay, `second`
/// may send a copy elsewhere (it says `None` when the body or the budget does not allow), and
/// the first success of the two is kept; the other is dropped, which cancels it and releases
/// its slot.
pub(crate) async fn race<RB, F, G>(
    latencies: &Latencies,
    hedge: Hedge,
    first: F,
    second: impl FnOnce() -> Option<G>,
) -> Step<RB>
where
    RB: Body,
    F: Future<Output = Step<RB>>,
    G: Future<Output = Step<RB>>,
{
    let started = Instant::now();
    let mut first = pin!(first);
    let step = match tokio::time::timeout(hedge.delay(latencies), first.as_mut()).await {
        Ok(step) => step,
        Err(_) => match second() {
            None => first.await,
            Some(second) => match select(first, pin!(second)).await {
                Either::Left((step, other)) => {
                    let (step, other_won) = first_success(step, other).await;
                    if other_won {
                        count_win(&step);
                    }
                    step
                }
                Either::Right((step, other)) => {
                    let (step, other_won) = first_success(step, other).await;
                    if !other_won {
                        count_win(&step);
                    }
                    step
                }
            },
        },
    };
    if matches!(step, Step::Done(_)) {
        latencies.record(started.elapsed());
    }
    step
}

/// The first of two racing attempts to finish: kept if it succeeded, else the other is
/// awaited; and whether the other's step is the one returned.
async fn first_success<RB: Body>(
    step: Step<RB>,
    other: impl Future<Output = Step<RB>>,
) -> (Step<RB>, bool) {
    match step {
        Step::Done(response) => (Step::Done(response), false),
        _ => (other.await, true),
    }
}

/// Counts a hedge won, in the pool of the endpoint that served it, if the hedge's step
/// succeeded.
fn count_win<RB: Body>(step: &Step<RB>) {
    if let Step::Done(response) = step {
        if let Some(served) = response.extensions().get::<Served>() {
            served.endpoint().layer_events().hedge_won();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_within_an_eighth() {
        let l = Latencies::new();
        assert_eq!(l.percentile(0.5, 1), None);
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let p50 = l.percentile(0.5, 20).unwrap().as_secs_f64() * 1e3;
        let p95 = l.percentile(0.95, 20).unwrap().as_secs_f64() * 1e3;
        assert!((50.0..=50.0 * 1.15).contains(&p50), "p50 {p50}");
        assert!((95.0..=95.0 * 1.15).contains(&p95), "p95 {p95}");
        let hedge = Hedge::Percentile {
            p: 0.95,
            floor: Duration::from_millis(200),
        };
        assert_eq!(
            hedge.delay(&l),
            Duration::from_millis(200),
            "never below the floor"
        );
    }
}
