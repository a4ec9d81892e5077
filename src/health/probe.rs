//! Active health checks: the [`Probe`] trait, its [`ProbeConfig`], and the task that probes
//! every endpoint of a pool until the pool is gone.

use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures_util::{future::join_all, FutureExt};
use tokio::{task::JoinHandle, time::Instant};

use super::HealthPolicy;
use crate::{endpoint::Endpoint, pool::Members};

/// A check of one endpoint, run in the background: an HTTP `GET` on a health path, a gRPC
/// `grpc.health.v1.Health/Check`, or anything else. `true` means healthy.
///
/// Any `Fn(Arc<Endpoint>) -> impl Future<Output = bool>` is a probe.
pub trait Probe: Send + Sync + 'static {
    /// Checks the endpoint.
    fn probe(&self, endpoint: Arc<Endpoint>) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

impl<F, Fut> Probe for F
where
    F: Fn(Arc<Endpoint>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn probe(&self, endpoint: Arc<Endpoint>) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        Box::pin(self(endpoint))
    }
}

/// How often and how strictly probes run.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ProbeConfig {
    /// Time between rounds, give or take 10% at random so replicas do not probe in step
    /// (default 5 s).
    pub interval: Duration,
    /// A probe that takes longer fails (default 1 s).
    pub timeout: Duration,
    /// Successes in a row that bring an ejected endpoint back (default 2).
    pub healthy_threshold: u32,
    /// Failures in a row that eject a serving endpoint (default 3).
    pub unhealthy_threshold: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Probes one endpoint: `true` if the probe says healthy within the timeout. A probe that
/// panics (when called or while it runs) or takes too long fails, and only for its endpoint.
async fn check(probe: &dyn Probe, endpoint: &Arc<Endpoint>, timeout: Duration) -> bool {
    let failed = |why: &'static str| {
        tracing::warn!(endpoint = %endpoint.key(), why, "probe failed");
        false
    };
    let Ok(check) = catch_unwind(AssertUnwindSafe(|| probe.probe(Arc::clone(endpoint)))) else {
        return failed("the probe panicked");
    };
    match tokio::time::timeout(timeout, AssertUnwindSafe(check).catch_unwind()).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(_)) => failed("the probe panicked"),
        Err(_) => false,
    }
}

/// Probes every endpoint each round until the pool is dropped.
pub(crate) fn spawn(
    members: Members,
    policy: Arc<HealthPolicy>,
    probe: Arc<dyn Probe>,
    config: ProbeConfig,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let jitter = 0.9 + 0.2 * rand::random::<f64>();
            tokio::time::sleep(crate::clock::scaled(config.interval, jitter)).await;
            let Some(endpoints) = members.endpoints() else {
                return; // the pool is gone
            };
            let checks = endpoints.iter().map(|e| check(&*probe, e, config.timeout));
            let results = join_all(checks).await;
            let now = Instant::now();
            let thresholds = (config.healthy_threshold, config.unhealthy_threshold);
            for (endpoint, ok) in endpoints.iter().zip(results) {
                policy.probed(endpoint, ok, thresholds, now);
            }
        }
    })
}
