use std::sync::Arc;

use tokio::task::JoinHandle;
use tower_layer::Layer;

use super::{probe, HealthFilter, HealthPolicy, Probe, ProbeConfig, Shared};
use crate::{
    classify::{Classify, DefaultClassifier},
    error::ConfigError,
    pool::{Members, Pool},
};

/// Builds a [`HealthFilter`] that watches the endpoints of one [`Pool`].
#[derive(Clone)]
pub struct HealthFilterLayer {
    policy: HealthPolicy,
    classify: Arc<dyn Classify>,
    members: Members,
}

impl std::fmt::Debug for HealthFilterLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthFilterLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl HealthFilterLayer {
    /// Watches `pool`'s endpoints with the default [`HealthPolicy`] and
    /// [`DefaultClassifier`], and turns on the pool's panic mode: when health would leave no
    /// endpoint at all, requests go to every endpoint rather than fail.
    pub fn new<S: Clone + Send + Sync + 'static>(pool: &Pool<S>) -> Self {
        let members = pool.members();
        members.set_panic_routing(true);
        Self {
            policy: HealthPolicy::default(),
            classify: Arc::new(DefaultClassifier),
            members,
        }
    }

    /// Uses this policy; refuses one whose settings are out of range.
    pub fn policy(mut self, policy: HealthPolicy) -> Result<Self, ConfigError> {
        policy.validate()?;
        self.policy = policy;
        Ok(self)
    }

    /// Judges outcomes with this classifier.
    pub fn classifier(mut self, classify: impl Classify) -> Self {
        self.classify = Arc::new(classify);
        self
    }

    /// Turns panic mode on or off (on by default).
    pub fn panic_mode(self, on: bool) -> Self {
        self.members.set_panic_routing(on);
        self
    }

    /// Starts probing every endpoint in a background task (call it within a tokio runtime).
    /// The task ends by itself once the pool is dropped; abort the handle to end it sooner.
    pub fn spawn_probes(&self, probe: impl Probe, config: ProbeConfig) -> JoinHandle<()> {
        probe::spawn(
            self.members.clone(),
            self.policy.clone(),
            Arc::new(probe),
            config,
        )
    }
}

impl<S> Layer<S> for HealthFilterLayer {
    type Service = HealthFilter<S>;

    fn layer(&self, inner: S) -> HealthFilter<S> {
        HealthFilter::new(
            inner,
            Shared {
                policy: self.policy.clone(),
                classify: Arc::clone(&self.classify),
                members: self.members.clone(),
            },
        )
    }
}
