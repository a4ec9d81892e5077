//! What the health layer did to an endpoint, counted: ejections by their [`EjectionCause`],
//! soft ejections (holds) and cooldowns. Written once per such event, never by a request that
//! changes nothing, so they live apart from the lines a completion writes.

use crate::sync::{AtomicU64, Ordering::Relaxed};

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectionCause {
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// Too large a share of failures over the window.
    FailureRate,
    /// Active health checks failed.
    Probe,
    /// A trial request after an ejection failed.
    TrialFailed,
}

impl EjectionCause {
    /// Every cause, in the order of their series.
    pub const ALL: [EjectionCause; 4] = [
        EjectionCause::ConsecutiveFailures,
        EjectionCause::FailureRate,
        EjectionCause::Probe,
        EjectionCause::TrialFailed,
    ];

    /// Its name as a label value: `consecutive_failures`, `failure_rate`, `probe`,
    /// `trial_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionCause::ConsecutiveFailures => "consecutive_failures",
            EjectionCause::FailureRate => "failure_rate",
            EjectionCause::Probe => "probe",
            EjectionCause::TrialFailed => "trial_failed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The health events of one endpoint.
#[derive(Debug)]
pub(crate) struct Events {
    ejections: [AtomicU64; 4],
    holds: AtomicU64,
    cooldowns: AtomicU64,
}

impl Events {
    pub(crate) fn new() -> Self {
        Self {
            ejections: std::array::from_fn(|_| AtomicU64::new(0)),
            holds: AtomicU64::new(0),
            cooldowns: AtomicU64::new(0),
        }
    }

    pub(crate) fn ejected(&self, cause: EjectionCause) {
        self.ejections[cause.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn held(&self) {
        self.holds.fetch_add(1, Relaxed);
    }

    pub(crate) fn cooled_down(&self) {
        self.cooldowns.fetch_add(1, Relaxed);
    }

    pub(crate) fn ejections(&self, cause: EjectionCause) -> u64 {
        self.ejections[cause.index()].load(Relaxed)
    }

    pub(crate) fn holds(&self) -> u64 {
        self.holds.load(Relaxed)
    }

    pub(crate) fn cooldowns(&self) -> u64 {
        self.cooldowns.load(Relaxed)
    }
}
