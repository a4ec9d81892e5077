//! An endpoint's health cell: its [`Health`] in one word that a pick reads with one load,
//! the half-open trial permits, and the slow-start ramp.
//!
//! The word holds two bits of state (healthy, ejected, cooling down, slow start) and 62 bits
//! of "until", in milliseconds since the endpoint was made, rounded up so that an endpoint is
//! never back early. The permits and the ramp's window are read only when the state calls for
//! them. [`HealthCell`] is the view that reads and writes all three; the endpoint keeps the
//! pick's gate in step with it.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    clock::{later, LazyNow},
    sync::{AtomicU32, AtomicU64, Ordering::SeqCst},
};

/// An endpoint's health, as the health layer sets it and the pick reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes traffic.
    Healthy,
    /// Failing: takes no traffic until `until`; then, if the health layer set trial requests,
    /// only that many until it decides (half-open).
    Ejected {
        /// When it may be tried again.
        until: Instant,
    },
    /// Rate-limited: takes no traffic until `until`, then returns without trial.
    CoolingDown {
        /// When the cooldown ends.
        until: Instant,
    },
    /// Back after an ejection: takes traffic, with its weight ramping up to full at `until`.
    SlowStart {
        /// When the ramp ends.
        until: Instant,
    },
}

const HEALTHY: u64 = 0;
const EJECTED: u64 = 1;
const COOLING: u64 = 2;
const RAMPING: u64 = 3;
/// Trial permits meaning "no limit": set by a plain `set_health`, so an ejection set by hand
/// simply expires. Otherwise the low 16 bits are the permits left, the high 16 the most there
/// may be.
const UNLIMITED: u32 = u32::MAX;
/// The least share of its weight a slow-starting endpoint gets.
const RAMP_FLOOR: f64 = 0.05;

/// The health word, in the line of the endpoint that every pick reads.
#[derive(Debug)]
pub(crate) struct HealthWord(AtomicU64);

impl HealthWord {
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(HEALTHY))
    }
}

/// What an ejection or a slow start needs besides the word: the trial permits, the ramp's
/// window, and the ramp a cooldown interrupted.
#[derive(Debug)]
pub(crate) struct Recovery {
    trials: AtomicU32,
    ramp_ms: AtomicU64,
    /// While cooling down: the `until` (as the word keeps it) of the hold or ramp the cooldown
    /// interrupted, which goes on once the cooldown is over; 0 for none. Read only when the
    /// word says cooling down, so a healthy pick never touches it.
    resume_ms: AtomicU64,
}

impl Recovery {
    pub(crate) fn new() -> Self {
        Self {
            trials: AtomicU32::new(UNLIMITED),
            ramp_ms: AtomicU64::new(0),
            resume_ms: AtomicU64::new(0),
        }
    }

    #[cfg(all(test, loom))]
    pub(crate) fn permits(&self) -> u32 {
        self.trials.load(SeqCst)
    }
}

/// The health cell: the word, the permits, the ramp, and the instant the word's times count
/// from.
#[derive(Clone, Copy)]
pub(crate) struct HealthCell<'a> {
    pub(crate) word: &'a HealthWord,
    pub(crate) recovery: &'a Recovery,
    pub(crate) born: &'a Instant,
}

impl HealthCell<'_> {
    /// Whether the health is `Healthy`: one load, no time decoded.
    #[inline]
    pub(crate) fn is_healthy(self) -> bool {
        self.word.0.load(SeqCst) & 3 == HEALTHY
    }

    /// Whether the endpoint is ejected (due back or not).
    #[inline]
    pub(crate) fn is_ejected(self) -> bool {
        self.word.0.load(SeqCst) & 3 == EJECTED
    }

    pub(crate) fn get(self) -> Health {
        let raw = self.word.0.load(SeqCst);
        let until = self.until(raw);
        match raw & 3 {
            EJECTED => Health::Ejected { until },
            COOLING => Health::CoolingDown { until },
            RAMPING => Health::SlowStart { until },
            _ => Health::Healthy,
        }
    }

    /// Sets the health with no trial limit: an ejection set this way simply expires. A
    /// `SlowStart` ramps over the time from now to its `until`.
    pub(crate) fn set(self, health: Health) {
        self.store(health, UNLIMITED);
    }

    /// Ejects until `until`, then lets `trials` requests through at a time.
    pub(crate) fn eject(self, until: Instant, trials: u16) {
        let trials = u32::from(trials);
        self.store(Health::Ejected { until }, (trials << 16) | trials);
    }

    /// Holds the weight at its floor for `hold`, then ramps it back to full over `window`.
    pub(crate) fn hold_back(self, hold: Duration, window: Duration, now: Instant) {
        let window = window.max(Duration::from_millis(1));
        self.recovery
            .ramp_ms
            .store(window.as_millis().min(u128::from(u64::MAX)) as u64, SeqCst);
        let until = later(later(now, hold), window);
        self.recovery.trials.store(UNLIMITED, SeqCst);
        self.recovery.resume_ms.store(0, SeqCst);
        self.word
            .0
            .store(RAMPING | (self.millis_at(until) << 2), SeqCst);
    }

    /// Ends a cooldown that is over: back in the hold or ramp it interrupted, if that is not
    /// over too, else healthy. Returns whether the endpoint is healthy.
    pub(crate) fn end_cooldown(self, now: Instant) -> bool {
        let raw = self.word.0.load(SeqCst);
        if raw & 3 != COOLING {
            return raw & 3 == HEALTHY;
        }
        let resume = self.recovery.resume_ms.load(SeqCst);
        if resume != 0 && self.until(resume << 2) > now {
            self.recovery.resume_ms.store(0, SeqCst);
            self.word.0.store(RAMPING | (resume << 2), SeqCst);
            false
        } else {
            self.set(Health::Healthy);
            true
        }
    }

    fn store(self, health: Health, trials: u32) {
        let mut resume = 0;
        let raw = match health {
            Health::Healthy => HEALTHY,
            Health::Ejected { until } => EJECTED | (self.millis_at(until) << 2),
            Health::CoolingDown { until } => {
                // A cooldown interrupts a hold or a ramp, and never ends it.
                let now = self.word.0.load(SeqCst);
                resume = match now & 3 {
                    RAMPING => now >> 2,
                    COOLING => self.recovery.resume_ms.load(SeqCst),
                    _ => 0,
                };
                COOLING | (self.millis_at(until) << 2)
            }
            Health::SlowStart { until } => {
                // The window runs from this millisecond (rounded down) to `until` as stored
                // (rounded up): at least the time left, so a ramp set by hand is never taken
                // for a hold (whose time left is longer than its window).
                let until = self.millis_at(until);
                let now = self.millis_since_born(Instant::now());
                let window = until.saturating_sub(now).max(1);
                self.recovery.ramp_ms.store(window, SeqCst);
                RAMPING | (until << 2)
            }
        };
        self.recovery.trials.store(trials, SeqCst);
        self.recovery.resume_ms.store(resume, SeqCst);
        self.word.0.store(raw, SeqCst);
    }

    /// Whether a health just stored lets waiting requests in (healthy or ramping).
    pub(crate) fn admits_waiters(self) -> bool {
        matches!(self.word.0.load(SeqCst) & 3, HEALTHY | RAMPING)
    }

    fn until(self, raw: u64) -> Instant {
        later(*self.born, Duration::from_millis(raw >> 2))
    }

    /// Whole milliseconds from the endpoint's birth to `at`, rounded down.
    fn millis_since_born(self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(*self.born).as_millis();
        ms.min(u128::from(u64::MAX >> 2)) as u64
    }

    fn millis_at(self, at: Instant) -> u64 {
        let born = *self.born;
        let ms = at.saturating_duration_since(born).as_millis();
        // Round up so that an endpoint is never back before its time.
        let ms = ms + u128::from(at > later(born, Duration::from_millis(ms as u64)));
        ms.min(u128::from(u64::MAX >> 2)) as u64
    }

    /// Whether the health lets a request through at this moment; an endpoint held back by a
    /// soft ejection (its weight at the floor, before the ramp back begins) only with
    /// `include_held`. One read of the word; the clock is read only when the endpoint is not
    /// healthy.
    #[inline]
    pub(crate) fn allows(self, now: &LazyNow, include_held: bool) -> bool {
        let raw = self.word.0.load(SeqCst);
        match raw & 3 {
            HEALTHY => true,
            RAMPING => {
                include_held || {
                    let window = Duration::from_millis(self.recovery.ramp_ms.load(SeqCst));
                    self.until(raw).saturating_duration_since(now.get()) <= window
                }
            }
            COOLING => self.until(raw) <= now.get() && self.resumed_allows(now, include_held),
            _ => self.until(raw) <= now.get() && self.recovery.trials.load(SeqCst) & 0xffff > 0,
        }
    }

    /// Whether panic mode may send a request now: whatever the health, unless a cooldown is
    /// in force. Panic mode overrides outlier ejection, a guess about health; a provider's
    /// explicit back-off is honoured, panic or not.
    #[inline]
    pub(crate) fn allows_in_panic(self, now: &LazyNow) -> bool {
        let raw = self.word.0.load(SeqCst);
        raw & 3 != COOLING || self.until(raw) <= now.get()
    }

    /// Whether a request may pass now: in panic mode (`ignore_health`) only a cooldown in
    /// force keeps it out, else [`allows`](Self::allows).
    #[inline]
    pub(crate) fn lets_through(
        self,
        now: &LazyNow,
        ignore_health: bool,
        include_held: bool,
    ) -> bool {
        if ignore_health {
            self.allows_in_panic(now)
        } else {
            self.allows(now, include_held)
        }
    }

    /// Whether a cooldown is in force at `now`; when it ends if so.
    pub(crate) fn cooling_until(self, now: Instant) -> Option<Instant> {
        let raw = self.word.0.load(SeqCst);
        let until = self.until(raw);
        (raw & 3 == COOLING && until > now).then_some(until)
    }

    /// After a cooldown: whether the hold or ramp it interrupted lets a request through.
    fn resumed_allows(self, now: &LazyNow, include_held: bool) -> bool {
        let resume = self.recovery.resume_ms.load(SeqCst);
        include_held || resume == 0 || {
            let window = Duration::from_millis(self.recovery.ramp_ms.load(SeqCst));
            self.until(resume << 2).saturating_duration_since(now.get()) <= window
        }
    }

    /// `weight` as the pick sees it: reduced while slow-starting.
    #[inline]
    pub(crate) fn effective_weight(self, weight: f64, now: &LazyNow) -> f64 {
        let raw = self.word.0.load(SeqCst);
        let ramp_until = match raw & 3 {
            RAMPING => raw,
            // After a cooldown, the hold or ramp it interrupted.
            COOLING => match self.recovery.resume_ms.load(SeqCst) {
                0 => return weight,
                resume => resume << 2,
            },
            _ => return weight,
        };
        let left = self
            .until(ramp_until)
            .saturating_duration_since(now.get())
            .as_millis() as f64;
        let window = self.recovery.ramp_ms.load(SeqCst).max(1) as f64;
        weight * (1.0 - left / window).clamp(RAMP_FLOOR, 1.0)
    }

    /// Takes a half-open trial permit if the endpoint is ejected and due; `Some(true)` if one
    /// was taken, `Some(false)` if none is needed, `None` if none is left.
    #[inline]
    pub(crate) fn take_trial(self) -> Option<bool> {
        if self.word.0.load(SeqCst) & 3 != EJECTED {
            return Some(false);
        }
        match self
            .recovery
            .trials
            .fetch_update(SeqCst, SeqCst, |t| match t {
                UNLIMITED => Some(t),
                t if t & 0xffff == 0 => None,
                t => Some(t - 1),
            }) {
            Ok(UNLIMITED) => Some(false),
            Ok(_) => Some(true),
            Err(_) => None,
        }
    }

    /// Gives back a trial permit when its request ends: never more than the ejection allowed.
    pub(crate) fn return_trial(self) {
        let _ = self.recovery.trials.fetch_update(SeqCst, SeqCst, |t| {
            (t != UNLIMITED && t & 0xffff < t >> 16).then(|| t + 1)
        });
    }
}
