//! The endpoint's side of its engine's load reports: taking one, forgetting it, and what the
//! pick and other readers learn from it (the word itself is in `report.rs`).

use tokio::time::Instant;

use super::{
    report::{kv_percent, others, saturated_until, ticks},
    Endpoint,
};
use crate::{clock::LazyNow, report::LoadReport, sync::Ordering::SeqCst};

/// The endpoint's side of its load reports.
impl Endpoint {
    /// Whether health, weight, reports and quota let every pick through from the in-flight
    /// word alone: `Healthy`, weight above 0, no load report to read, no quota.
    pub(super) fn plainly_open(&self) -> bool {
        self.quota.is_none()
            && self.is_healthy()
            && self.admission.weight.load(SeqCst) != 0
            && !self.admission.report.present()
    }

    /// The other routers' requests by the latest fresh report (0 without one), or `None` if
    /// it shows the engine saturated: the clock is read only if there is a report.
    #[inline]
    pub(super) fn others(&self, now: &LazyNow) -> Option<usize> {
        let word = self.admission.report.load();
        if word == 0 {
            return Some(0);
        }
        others(word, ticks(now.get(), self.born))
    }

    // --- load reports ---

    /// Takes the engine's load report: from now until it is older than its pool's
    /// [`ReportPolicy`](crate::report::ReportPolicy) allows, picks count this endpoint's load
    /// as the other routers' requests by the report ([`LoadReport::others`]) plus this
    /// router's own in flight now, and treat it as full if the report shows it saturated.
    /// A report older than the latest taken is ignored.
    pub fn report(&self, report: &LoadReport) {
        let policy = self.pool.report_policy();
        let max_age = self.pool.max_report_age(&policy);
        let saturated = policy.saturated(report);
        let word = &self.admission.report;
        if self
            .reported
            .take(word, report, self.born, max_age, saturated)
        {
            self.refresh_gate();
            if saturated {
                // The report going stale gives the endpoint room again: waiting requests are
                // offered it then, as when an ejection or a cooldown ends.
                if let Some(at) = self.saturated_until(Instant::now()) {
                    self.admission.waiters.note_time(at);
                }
            } else {
                // It may have room now: the same wake-up as a release.
                self.admission.waiters.offer(self);
            }
        }
    }

    /// Forgets the load report: picks count this router's requests alone again.
    pub fn clear_report(&self) {
        self.reported.clear(&self.admission.report);
        self.refresh_gate();
        self.admission.waiters.offer(self);
    }

    /// Whether a fresh report shows the engine saturated: the wait queue then hands out no
    /// slot on it, as the pick takes none.
    pub(crate) fn saturated(&self) -> bool {
        let word = self.admission.report.load();
        word != 0 && others(word, ticks(Instant::now(), self.born)).is_none()
    }

    /// When the fresh report in force at `now`, if it shows the engine saturated, goes stale:
    /// from then on picks read the endpoint as having room.
    pub(crate) fn saturated_until(&self, now: Instant) -> Option<Instant> {
        saturated_until(
            self.admission.report.load(),
            ticks(now, self.born),
            self.born,
        )
    }

    /// The latest load report taken, however old.
    pub fn latest_report(&self) -> Option<LoadReport> {
        self.reported.latest()
    }

    /// When the latest report was measured, as a number that grows with each newer report
    /// (0: none): one atomic load, for a reader that keeps its own copy of the report.
    #[inline]
    pub(crate) fn report_stamp(&self) -> u64 {
        self.reported.stamp()
    }

    /// The latest report and its stamp, unless a writer is storing one this instant (then
    /// `None`). Never waits, never allocates.
    pub(crate) fn try_latest_report(&self) -> Option<(LoadReport, u64)> {
        self.reported
            .try_latest()
            .map(|r| (r, super::report::stamp(r.measured_at, self.born)))
    }

    /// The load picks compare at `now`: the requests in flight from this router, plus the
    /// other routers' by the latest report if it is fresh; `None` if that report shows the
    /// engine saturated.
    pub fn load(&self, now: Instant) -> Option<usize> {
        Some(self.in_flight() + self.others(&LazyNow::at(now))?)
    }

    /// The KV-cache usage in percent by the latest report, if fresh and it gave one.
    pub fn kv_usage_percent(&self, now: Instant) -> Option<u8> {
        kv_percent(self.admission.report.load(), ticks(now, self.born))
    }
}
