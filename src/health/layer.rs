//! [`HealthFilterLayer`] and its [`HealthFilterBuilder`]: the policy, validated once, and the
//! probes, started for a pool.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tower_layer::Layer;

use super::{probe, HealthFilter, HealthPolicy, Probe, ProbeConfig};
use crate::{error::ConfigError, pool::Pool};

/// Builds a [`HealthFilter`]. It needs no pool: it judges the endpoint each response names,
/// and the endpoints of one pool share what bounds their ejection.
#[derive(Debug, Clone, Default)]
pub struct HealthFilterLayer {
    policy: Arc<HealthPolicy>,
}

impl HealthFilterLayer {
    /// The default [`HealthPolicy`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings other than the defaults.
    pub fn builder() -> HealthFilterBuilder {
        HealthFilterBuilder::default()
    }

    /// The policy.
    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// Starts probing every endpoint of `pool` in a background task (call it within a tokio
    /// runtime), judged with this layer's policy. The task ends by itself once the pool is
    /// dropped; abort the handle to end it sooner.
    pub fn spawn_probes<S>(
        &self,
        pool: &Pool<S>,
        probe: impl Probe,
        config: ProbeConfig,
    ) -> JoinHandle<()>
    where
        S: Clone + Send + Sync + 'static,
    {
        probe::spawn(
            pool.members(),
            Arc::clone(&self.policy),
            Arc::new(probe),
            config,
        )
    }
}

/// The settings of a [`HealthFilterLayer`], checked by [`build`](Self::build).
#[derive(Debug, Clone, Default)]
pub struct HealthFilterBuilder {
    policy: HealthPolicy,
}

impl HealthFilterBuilder {
    /// Uses this policy.
    pub fn policy(mut self, policy: HealthPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The layer, or the setting of the policy it refuses.
    pub fn build(self) -> Result<HealthFilterLayer, ConfigError> {
        self.policy.validate()?;
        Ok(HealthFilterLayer {
            policy: Arc::new(self.policy),
        })
    }
}

impl<S> Layer<S> for HealthFilterLayer {
    type Service = HealthFilter<S>;

    fn layer(&self, inner: S) -> HealthFilter<S> {
        HealthFilter::new(inner, &self.policy)
    }
}
