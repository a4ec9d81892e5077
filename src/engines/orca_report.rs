//! An ORCA load report as it came, and why a header was not one.

/// An ORCA load report as it came (`OrcaLoadReport`'s fields).
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct OrcaReport {
    /// CPU utilization.
    pub cpu_utilization: Option<f64>,
    /// Memory utilization.
    pub mem_utilization: Option<f64>,
    /// Application-specific utilization.
    pub application_utilization: Option<f64>,
    /// Queries per second.
    pub rps_fractional: Option<f64>,
    /// Errors per second.
    pub eps: Option<f64>,
    /// Application-specific metrics, by name.
    pub named_metrics: Vec<(String, f64)>,
    /// Resource utilizations, by name.
    pub utilization: Vec<(String, f64)>,
    /// Per-request costs, by name.
    pub request_cost: Vec<(String, f64)>,
}

/// Why a header was not a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrcaError(&'static str);

impl OrcaError {
    pub(super) fn new(why: &'static str) -> Self {
        Self(why)
    }
}

impl std::fmt::Display for OrcaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed ORCA load report: {}", self.0)
    }
}

impl std::error::Error for OrcaError {}

pub(super) fn bad<T>(why: &'static str) -> Result<T, OrcaError> {
    Err(OrcaError(why))
}
