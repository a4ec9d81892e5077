//! An endpoint's latest load report: [`ReportWord`], what the pick reads of it in one load,
//! and [`Reported`], the word with the whole report behind it.
//!
//! The word packs what the pick needs: the other routers' requests at the endpoint (what the
//! engine reported less this router's own requests then), whether the report shows the engine
//! saturated, its KV-cache usage in percent, and until when the report is fresh, in ticks of
//! 2²¹ ns (about 2 ms) since the endpoint was made, rounded down so that a report is never
//! read past its age. 39 bits of ticks last 36 years. A word of 0 means no report; a pick
//! that finds the freshness passed reads the endpoint as if it had none.
//!
//! The whole report (every figure, as the source gave it) is kept behind a mutex that writers
//! and readers outside the pick take; the pick never does.

use std::time::Duration;

use tokio::time::Instant;

use crate::{
    clock::later,
    report::LoadReport,
    sync::{AtomicU64, Ordering::SeqCst},
};

/// The pick's view of an endpoint's latest report. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct ReportWord(AtomicU64);

const TICK_SHIFT: u32 = 21;
const UNTIL_BITS: u32 = 39;
const UNTIL: u64 = (1 << UNTIL_BITS) - 1;
const OTHERS_SHIFT: u32 = UNTIL_BITS;
/// The most other routers' requests the word holds; more read as this many.
pub(crate) const MAX_OTHERS: u32 = (1 << 16) - 1;
const KV_SHIFT: u32 = OTHERS_SHIFT + 16;
/// KV usage in the word when the report did not give one.
const KV_UNKNOWN: u64 = 127;
const SATURATED: u64 = 1 << 62;
const PRESENT: u64 = 1 << 63;

/// A time as the word counts it: ticks since `born`.
#[inline]
pub(crate) fn ticks(at: Instant, born: Instant) -> u64 {
    let since = at.saturating_duration_since(born);
    let nanos = since
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(since.subsec_nanos()));
    nanos >> TICK_SHIFT
}

/// A report's time as [`Reported`] stamps it: nanoseconds since `born`, plus one.
pub(crate) fn stamp(at: Instant, born: Instant) -> u64 {
    let since = at.saturating_duration_since(born);
    since
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(since.subsec_nanos()) + 1)
}

/// What the pick learns from the word at a time: the other routers' requests to add to this
/// router's own, or that the endpoint is saturated (`None`).
#[inline]
pub(crate) fn others(word: u64, now_ticks: u64) -> Option<usize> {
    if word & UNTIL <= now_ticks {
        return Some(0); // no report, or a stale one: this router's count alone
    }
    if word & SATURATED != 0 {
        return None;
    }
    Some(((word >> OTHERS_SHIFT) & u64::from(MAX_OTHERS)) as usize)
}

impl ReportWord {
    #[inline]
    pub(crate) fn load(&self) -> u64 {
        self.0.load(SeqCst)
    }

    /// Whether any report was taken (fresh or not) and not cleared.
    #[inline]
    pub(crate) fn present(&self) -> bool {
        self.load() & PRESENT != 0
    }

    pub(crate) fn clear(&self) {
        self.0.store(0, SeqCst);
    }

    /// Packs `report`, fresh until `until` (as [`ticks`]), saturated or not.
    pub(crate) fn store(&self, report: &LoadReport, until: u64, saturated: bool) {
        let others = report.others().unwrap_or(0).min(MAX_OTHERS);
        let kv = report
            .kv_usage
            .map_or(KV_UNKNOWN, |u| (u * 100.0).round() as u64);
        let word = PRESENT
            | if saturated { SATURATED } else { 0 }
            | kv << KV_SHIFT
            | u64::from(others) << OTHERS_SHIFT
            | until.min(UNTIL);
        self.0.store(word, SeqCst);
    }
}

/// When a fresh report that shows the engine saturated goes stale, if the word holds one at
/// `now_ticks`: the instant from which picks read the endpoint as having room again.
pub(crate) fn saturated_until(word: u64, now_ticks: u64, born: Instant) -> Option<Instant> {
    let until = word & UNTIL;
    (word & SATURATED != 0 && until > now_ticks)
        .then(|| later(born, Duration::from_nanos(until << TICK_SHIFT)))
}

/// The KV-cache usage in percent by a fresh report that gave one.
pub(crate) fn kv_percent(word: u64, now_ticks: u64) -> Option<u8> {
    let kv = (word >> KV_SHIFT) & 127;
    (word & UNTIL > now_ticks && kv != KV_UNKNOWN).then_some(kv as u8)
}

/// An endpoint's latest report: the whole of it, for readers outside the pick, kept with
/// the time until which it is fresh.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    latest: parking_lot::Mutex<Option<LoadReport>>,
    /// When the latest report was measured, in nanoseconds since the endpoint was made, plus
    /// one (0: none): a reader that keeps its own copy tells from it, in one load, whether a
    /// newer report came.
    stamp: AtomicU64,
}

impl Reported {
    /// Takes `report` unless a newer one was taken (reports can arrive out of order: two
    /// sources, or a slow scrape), and writes the pick's word under the same lock, so the
    /// word always says what the newest report says. Returns whether it was taken.
    pub(crate) fn take(
        &self,
        word: &ReportWord,
        report: &LoadReport,
        born: Instant,
        max_age: Duration,
        saturated: bool,
    ) -> bool {
        let mut latest = self.latest.lock();
        if latest.is_some_and(|l| l.measured_at > report.measured_at) {
            return false;
        }
        *latest = Some(*report);
        let until = ticks(later(report.measured_at, max_age), born);
        word.store(report, until, saturated);
        self.stamp.store(stamp(report.measured_at, born), SeqCst);
        true
    }

    pub(crate) fn latest(&self) -> Option<LoadReport> {
        *self.latest.lock()
    }

    /// The latest report, unless a writer holds it this instant (then `None`: the caller
    /// reads it next time). Never waits.
    pub(crate) fn try_latest(&self) -> Option<LoadReport> {
        self.latest.try_lock().and_then(|latest| *latest)
    }

    /// See the field.
    #[inline]
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp.load(SeqCst)
    }

    pub(crate) fn clear(&self, word: &ReportWord) {
        let mut latest = self.latest.lock();
        *latest = None;
        word.clear();
        self.stamp.store(0, SeqCst);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_word_says_what_the_report_says_until_it_is_stale() {
        let born = Instant::now();
        let word = ReportWord::default();
        let cell = Reported::default();
        assert!(!word.present());
        assert_eq!(others(word.load(), 0), Some(0));
        let at = born + Duration::from_secs(10);
        let report = LoadReport::new(at)
            .waiting(5)
            .running(7)
            .kv_usage(0.426)
            .local_in_flight(2);
        assert!(cell.take(&word, &report, born, Duration::from_secs(1), false));
        let fresh_at = |t: Duration| others(word.load(), ticks(at + t, born));
        assert_eq!(fresh_at(Duration::ZERO), Some(10));
        assert_eq!(fresh_at(Duration::from_millis(990)), Some(10));
        // Rounded down: never read past its age, at most a tick early.
        assert_eq!(fresh_at(Duration::from_millis(1000)), Some(0));
        assert_eq!(kv_percent(word.load(), ticks(at, born)), Some(43));
        assert_eq!(kv_percent(word.load(), ticks(at, born) + 1000), None);
        // An older report does not replace a newer one.
        let older = LoadReport::new(at - Duration::from_secs(1)).waiting(100);
        assert!(!cell.take(&word, &older, born, Duration::from_secs(5), true));
        assert_eq!(cell.latest(), Some(report));
        // A saturated report leaves no room; a huge count saturates in the word.
        let huge = LoadReport::new(at).waiting(u32::MAX);
        cell.take(&word, &huge, born, Duration::from_secs(1), true);
        assert_eq!(others(word.load(), ticks(at, born)), None);
        cell.take(&word, &huge, born, Duration::from_secs(1), false);
        assert_eq!(
            others(word.load(), ticks(at, born)),
            Some(MAX_OTHERS as usize)
        );
        // A report that gives no usage, and one measured before the endpoint was made.
        let early = LoadReport::new(born - Duration::from_secs(5)).running(1);
        cell.clear(&word);
        assert_eq!((word.present(), cell.latest()), (false, None));
        cell.take(&word, &early, born, Duration::from_secs(60), false);
        assert_eq!(
            (others(word.load(), 0), kv_percent(word.load(), 0)),
            (Some(1), None)
        );
        // Any age, even one past what an instant can hold, is no panic.
        cell.take(&word, &report, born, Duration::MAX, false);
        assert_eq!(others(word.load(), ticks(at, born)), Some(10));
    }
}
