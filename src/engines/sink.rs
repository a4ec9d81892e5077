//! Where load reports go.
//!
//! A source (the [`Scraper`](super::Scraper), the [`OrcaFeed`](super::OrcaFeed) layer, the
//! application's own code) hands each report to a [`ReportSink`] with the endpoint it
//! describes. [`ToEndpoints`] is the sink the pick reads: it gives each report to its
//! endpoint ([`Endpoint::report`]). [`LatestReports`] keeps the latest report of each endpoint
//! for anything else (dashboards, tests, a picker of one's own), and any
//! `Fn(&Arc<Endpoint>, LoadReport)` is one.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{endpoint::Endpoint, report::LoadReport};

/// Takes load reports.
pub trait ReportSink: Send + Sync + 'static {
    /// A new report about `endpoint`.
    fn report(&self, endpoint: &Arc<Endpoint>, report: LoadReport);

    /// A scrape round ended; `endpoints` were the pool's endpoints in it. A sink that keeps
    /// reports by endpoint drops the others' here.
    fn round(&self, endpoints: &[Arc<Endpoint>]) {
        let _ = endpoints;
    }
}

/// Gives each report to its endpoint ([`Endpoint::report`]), where the pick reads it:
/// `Scraper::new(client).spawn(&pool, ToEndpoints)`. It holds nothing, so the scraper's task
/// still ends with the pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct ToEndpoints;

impl ReportSink for ToEndpoints {
    fn report(&self, endpoint: &Arc<Endpoint>, report: LoadReport) {
        endpoint.report(&report);
    }
}

impl<F> ReportSink for F
where
    F: Fn(&Arc<Endpoint>, LoadReport) + Send + Sync + 'static,
{
    fn report(&self, endpoint: &Arc<Endpoint>, report: LoadReport) {
        self(endpoint, report);
    }
}

/// The latest report of each endpoint, by endpoint (a replaced endpoint with the same key is
/// a new endpoint, with no report yet). Clones share the same reports.
#[derive(Debug, Clone, Default)]
pub struct LatestReports(Arc<Mutex<HashMap<u64, LoadReport>>>);

impl LatestReports {
    /// No reports yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The latest report about `endpoint`, however old.
    pub fn get(&self, endpoint: &Endpoint) -> Option<LoadReport> {
        self.0.lock().get(&endpoint.id()).copied()
    }

    /// The latest report about `endpoint` if it is at most `max_age` old at `now`.
    pub fn fresh(
        &self,
        endpoint: &Endpoint,
        now: Instant,
        max_age: Duration,
    ) -> Option<LoadReport> {
        self.get(endpoint).filter(|r| r.is_fresh(now, max_age))
    }

    /// How many endpoints have a report.
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReportSink for LatestReports {
    fn report(&self, endpoint: &Arc<Endpoint>, report: LoadReport) {
        let mut reports = self.0.lock();
        let slot = reports.entry(endpoint.id()).or_insert(report);
        // Reports can arrive out of order (two sources, or a slow scrape): keep the newest.
        if report.measured_at >= slot.measured_at {
            *slot = report;
        }
    }

    fn round(&self, endpoints: &[Arc<Endpoint>]) {
        let live: std::collections::HashSet<u64> = endpoints.iter().map(|e| e.id()).collect();
        self.0.lock().retain(|id, _| live.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EndpointConfig;

    #[test]
    fn keeps_the_newest_and_forgets_the_gone() {
        let a = Endpoint::new(EndpointConfig::new("a")).unwrap();
        let b = Endpoint::new(EndpointConfig::new("b")).unwrap();
        let sink = LatestReports::new();
        let t = Instant::now();
        sink.report(&a, LoadReport::new(t + Duration::from_secs(1)).waiting(1));
        sink.report(&a, LoadReport::new(t).waiting(9));
        sink.report(&b, LoadReport::new(t).waiting(2));
        assert_eq!(sink.get(&a).unwrap().waiting, Some(1));
        assert!(sink
            .fresh(&a, t + Duration::from_secs(3), Duration::from_secs(1))
            .is_none());
        sink.round(std::slice::from_ref(&b));
        assert_eq!((sink.get(&a), sink.len()), (None, 1));
    }
}
