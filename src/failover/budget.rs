//! The retry budget, [`RetryBudget`]: retries held to a share of requests plus a floor a
//! second, across every clone of a layer.

use tokio::time::Instant;

use crate::{
    error::ConfigError,
    sync::{AtomicU64, Ordering::SeqCst},
};

/// One retry, in thousandths: deposits are fractions of a retry.
const ONE: u64 = 1000;

/// Limits retries to a share of requests, plus a small floor per second, across every clone of
/// a layer, so that retries cannot multiply the load of an outage (tower's `retry::budget` and
/// Finagle's idea).
///
/// Each request deposits `ratio` of a retry; each retry withdraws a whole one. When the
/// deposits are spent, `min_per_sec` retries a second are still allowed, so that a quiet
/// service can retry at all. Deposits are capped, so a long healthy spell does not bank an
/// unbounded burst. Lock-free: one compare-and-swap per deposit or withdrawal.
#[derive(Debug)]
pub struct RetryBudget {
    deposit: u64,
    cap: u64,
    min_per_sec: u64,
    tokens: AtomicU64,
    /// The second (since `epoch`) in the upper 32 bits; floor retries used in it below.
    floor: AtomicU64,
    epoch: Instant,
}

impl Default for RetryBudget {
    /// 20% of requests plus 10 retries a second, up to 100 banked: tower's defaults.
    fn default() -> Self {
        Self::new(0.2, 10).expect("valid defaults")
    }
}

impl RetryBudget {
    /// Retries for at most `ratio` of requests (0.2 is 20%) plus `min_per_sec` a second.
    /// Refuses a negative or non-finite ratio.
    pub fn new(ratio: f64, min_per_sec: u32) -> Result<Self, ConfigError> {
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(ConfigError::InvalidSetting {
                name: "ratio",
                reason: "must be a finite number of at least 0",
            });
        }
        Ok(Self {
            deposit: (ratio * ONE as f64).round() as u64,
            cap: 100 * ONE,
            min_per_sec: u64::from(min_per_sec),
            tokens: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Sets how many retries a healthy spell may bank at most (100 by default).
    pub fn max_banked(mut self, retries: u32) -> Self {
        self.cap = u64::from(retries) * ONE;
        self
    }

    /// Records a request.
    pub fn deposit(&self) {
        let _ = self.tokens.fetch_update(SeqCst, SeqCst, |t| {
            (t < self.cap).then(|| t.saturating_add(self.deposit).min(self.cap))
        });
    }

    /// Takes one retry if the budget allows it.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    pub(crate) fn withdraw_at(&self, now: Instant) -> bool {
        if self
            .tokens
            .fetch_update(SeqCst, SeqCst, |t| t.checked_sub(ONE))
            .is_ok()
        {
            return true;
        }
        let second = now.saturating_duration_since(self.epoch).as_secs() & 0xffff_ffff;
        self.floor
            .fetch_update(SeqCst, SeqCst, |packed| {
                let (at, used) = (packed >> 32, packed & 0xffff_ffff);
                if at != second {
                    (self.min_per_sec > 0).then_some((second << 32) | 1)
                } else {
                    (used < self.min_per_sec).then(|| packed + 1)
                }
            })
            .is_ok()
    }

    /// Retries the deposits would allow now, floor aside.
    pub fn available(&self) -> u64 {
        self.tokens.load(SeqCst) / ONE
    }
}

/// For tests: a budget that starts with `retries` banked.
#[cfg(all(test, not(loom)))]
pub(crate) fn banked(retries: u64) -> RetryBudget {
    let b = RetryBudget::new(0.0, 0).unwrap();
    b.tokens.store(retries * ONE, SeqCst);
    b
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_are_held_to_the_ratio_plus_the_floor() {
        let budget = RetryBudget::new(0.2, 3).unwrap();
        let t0 = Instant::now();
        let mut retries = 0;
        for i in 0..1000u64 {
            budget.deposit();
            // Every request wants two retries, spread over 10 seconds.
            let now = t0 + Duration::from_millis(i * 10);
            retries += u64::from(budget.withdraw_at(now)) + u64::from(budget.withdraw_at(now));
        }
        // 20% of 1000, plus 3 a second for 10 (or 11, straddling) seconds.
        assert!(retries <= 200 + 3 * 11, "{retries} retries");
        assert!(retries >= 200, "{retries} retries");
    }

    #[test]
    fn a_quiet_service_still_gets_its_floor_and_the_bank_is_capped() {
        let budget = RetryBudget::new(0.5, 2).unwrap().max_banked(5);
        let now = Instant::now();
        assert!(budget.withdraw_at(now) && budget.withdraw_at(now));
        assert!(!budget.withdraw_at(now), "the floor is per second");
        assert!(budget.withdraw_at(now + Duration::from_secs(1)));
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 5);
        assert!(RetryBudget::new(f64::NAN, 1).is_err());
        assert!(RetryBudget::new(-0.1, 1).is_err());
        let _ = banked(1);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::{sync::Arc, thread};

    #[test]
    fn concurrent_withdrawals_never_overspend() {
        loom::model(|| {
            let budget = Arc::new(RetryBudget::new(0.0, 1).unwrap());
            budget.tokens.store(ONE, SeqCst);
            let now = Instant::now();
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let b = Arc::clone(&budget);
                    thread::spawn(move || {
                        u32::from(b.withdraw_at(now)) + u32::from(b.withdraw_at(now))
                    })
                })
                .collect();
            let taken: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            // One banked retry and a floor of one a second: two in all, never three.
            assert_eq!(taken, 2);
        });
    }
}
