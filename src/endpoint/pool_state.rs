//! What the endpoints of one pool share: the queue of waiting requests, how many endpoints
//! the pool has, how many of them are ejected, and how their load reports are read.
//!
//! The counts bound outlier ejection without a view of the pool: an ejection first reserves
//! its place in the ejected count with a compare-and-swap, so the bound holds at every
//! instant, however many judges decide at once.

use std::{sync::Arc, time::Duration};

use super::{layer_events::LayerEvents, wait_queue::WaitQueue};
use crate::{
    report::ReportPolicy,
    sync::{AtomicU64, AtomicUsize, Ordering::SeqCst},
};

/// How old a report may be when neither the policy nor a scraper says (three seconds: three
/// of the scraper's default intervals).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3);
/// "Not set", in the report policy's words.
const UNSET: u64 = u64::MAX;

/// The pool-wide state its endpoints share. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct PoolState {
    pub(crate) waiters: Arc<WaitQueue>,
    /// What the layers did for the pool's requests.
    pub(crate) layer_events: LayerEvents,
    /// Endpoints in the pool (made and not yet removed).
    members: AtomicUsize,
    /// Endpoints ejected (due back or not: one awaiting its trial still counts).
    ejected: AtomicUsize,
    /// How reports are read, read by every report an endpoint takes (loads only).
    reports: ReportWords,
}

/// A [`ReportPolicy`] in atomics, so that an endpoint taking a report reads it with loads
/// only, and the scraper's interval, for the default age.
#[derive(Debug)]
struct ReportWords {
    /// Nanoseconds, or [`UNSET`].
    max_age: AtomicU64,
    /// The scraper's interval in nanoseconds, 0 if none said.
    interval: AtomicU64,
    /// Requests, or [`UNSET`].
    max_waiting: AtomicU64,
    /// `f64` bits, or [`UNSET`].
    max_kv_usage: AtomicU64,
}

impl Default for ReportWords {
    fn default() -> Self {
        Self {
            max_age: AtomicU64::new(UNSET),
            interval: AtomicU64::new(0),
            max_waiting: AtomicU64::new(UNSET),
            max_kv_usage: AtomicU64::new(UNSET),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(UNSET - 1)
}

impl PoolState {
    pub(crate) fn joined(&self) {
        self.members.fetch_add(1, SeqCst);
    }

    pub(crate) fn left(&self) {
        self.members.fetch_sub(1, SeqCst);
    }

    /// How many endpoints the pool has.
    pub(crate) fn members(&self) -> usize {
        self.members.load(SeqCst)
    }

    /// How many are ejected.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn ejected(&self) -> usize {
        self.ejected.load(SeqCst)
    }

    /// How many are ejected, in a loom model.
    #[cfg(all(test, loom))]
    pub(crate) fn ejected_now(&self) -> usize {
        self.ejected.load(SeqCst)
    }

    /// Reserves a place among the ejected if one more keeps them within `max_fraction` of
    /// the members (or if none is ejected: at least one may always be).
    pub(crate) fn reserve_ejection(&self, max_fraction: f64) -> bool {
        let members = self.members() as f64;
        self.ejected
            .fetch_update(SeqCst, SeqCst, |n| {
                (n == 0 || (n + 1) as f64 <= max_fraction * members).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts one more ejected endpoint, bound or not (a health set by hand).
    pub(crate) fn count_ejection(&self) {
        self.ejected.fetch_add(1, SeqCst);
    }

    /// One ejected endpoint is back, or gone.
    pub(crate) fn release_ejection(&self) {
        self.ejected.fetch_sub(1, SeqCst);
    }

    /// How the pool reads reports (as set: `max_age` is `None` unless set).
    pub(crate) fn report_policy(&self) -> ReportPolicy {
        let w = &self.reports;
        let mut policy = ReportPolicy::default();
        let set = |word: &AtomicU64| Some(word.load(SeqCst)).filter(|&v| v != UNSET);
        policy.max_age = set(&w.max_age).map(Duration::from_nanos);
        policy.max_waiting = set(&w.max_waiting).map(|n| n as u32);
        policy.max_kv_usage = set(&w.max_kv_usage).map(f64::from_bits);
        policy
    }

    pub(crate) fn set_report_policy(&self, policy: &ReportPolicy) {
        let w = &self.reports;
        w.max_age.store(policy.max_age.map_or(UNSET, nanos), SeqCst);
        w.max_waiting
            .store(policy.max_waiting.map_or(UNSET, u64::from), SeqCst);
        w.max_kv_usage
            .store(policy.max_kv_usage.map_or(UNSET, f64::to_bits), SeqCst);
    }

    /// Notes how often a scraper feeds the pool, for the default age.
    pub(crate) fn set_scrape_interval(&self, interval: Duration) {
        self.reports.interval.store(nanos(interval), SeqCst);
    }

    /// How old a report may be: as set, else three scrape intervals, else three seconds.
    pub(crate) fn max_report_age(&self, policy: &ReportPolicy) -> Duration {
        policy
            .max_age
            .unwrap_or_else(|| match self.reports.interval.load(SeqCst) {
                0 => DEFAULT_MAX_AGE,
                n => Duration::from_nanos(n).saturating_mul(3),
            })
    }
}
