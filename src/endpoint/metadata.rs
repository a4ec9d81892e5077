//! An endpoint's metadata that can change while it lives: the concurrency limit, the
//! capabilities (its models among them), and taking a re-announced config in place, so that
//! a discovery source announcing the endpoint again changes its metadata and nothing else.

use std::sync::Arc;

use super::{limit, slots::NO_LIMIT, Capabilities, Endpoint, EndpointConfig};
use crate::sync::Ordering::{Relaxed, SeqCst};

/// An endpoint's capabilities as they are now (see [`Endpoint::capabilities`]).
struct CapabilitiesNow(arc_swap::Guard<Arc<Capabilities>>);

impl std::ops::Deref for CapabilitiesNow {
    type Target = Capabilities;

    #[inline]
    fn deref(&self) -> &Capabilities {
        &self.0
    }
}

impl Endpoint {
    /// Takes `config`'s metadata in place, keeping every part of the live state, if only its
    /// weight, tier, concurrency limit and capabilities (models among them) differ from this
    /// endpoint's (its key, labels and quota being the same); returns whether it did. The pool
    /// publishes a new snapshot after it, so its per-model lists follow. A new limit applies to the
    /// requests already in flight: a lower one admits no request until they are under it, a
    /// higher one offers the new room to the requests that wait.
    pub(crate) fn take_metadata(&self, config: &EndpointConfig) -> bool {
        let quota = self.quota.as_deref().map(|q| q.config());
        // A new quota is new accounting: the endpoint is replaced, not changed in place.
        if config.key != self.key
            || *config.labels != *self.labels
            || config.quota.as_ref() != quota
        {
            return false;
        }
        if **self.capabilities.load() != config.capabilities {
            self.capabilities
                .store(Arc::new(config.capabilities.clone()));
        }
        self.tier.store(config.tier, Relaxed);
        let max = limit(config.max_concurrency);
        let before = self.admission.max_concurrency.swap(max, SeqCst);
        // `set_weight` offers the endpoint to the waiters when it takes traffic.
        if before != max || config.weight != self.weight() {
            self.set_weight(config.weight);
        }
        true
    }

    /// The concurrency limit, if any.
    pub fn max_concurrency(&self) -> Option<usize> {
        let max = self.limit();
        (max != NO_LIMIT).then_some(max)
    }

    /// The concurrency limit as the slots compare it.
    #[inline(always)]
    pub(super) fn limit(&self) -> usize {
        self.admission.max_concurrency.load(Relaxed)
    }

    /// What it can serve now: its models, context window, hardware, provider, region and
    /// price. The pool changes them in place when a discovery source announces the endpoint
    /// again with others (see [`crate::discovery`]), so read them for each use rather than
    /// keeping the guard.
    #[inline]
    pub fn capabilities(&self) -> impl std::ops::Deref<Target = Capabilities> + '_ {
        CapabilitiesNow(self.capabilities.load())
    }
}
