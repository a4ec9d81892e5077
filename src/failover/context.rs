//! What the requests through one [`Failover`](super::Failover) service share ([`Context`]).

use std::sync::Arc;

use super::settings::Settings;

/// What the requests through one service share: the layer's settings, and a clone of the
/// inner service from which a retry clones its own. A request that needs no retry copies no
/// service, and holds one reference count instead of one per inner layer; a clone that serves
/// many requests holds its own context, so that count is not shared between cores.
#[derive(Debug)]
pub(crate) struct Context<S> {
    pub(crate) settings: Arc<Settings>,
    /// The inner service, cloned for each retry.
    pub(crate) service: S,
}
