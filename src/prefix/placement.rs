//! A request's prefill placed on an endpoint, counted in its backlog until the first token.

use std::{borrow::Borrow, sync::Arc};

use tokio::time::Instant;

use super::index::Record;
use crate::{
    endpoint::Endpoint,
    load::{FirstByteHook, LoadGuard},
};

/// A request's prefill placed on an endpoint: counted in the endpoint's backlog until its
/// first token arrives ([`first_token`](Self::first_token)) or this is dropped (the request
/// failed or was cancelled), so the backlog never keeps work that is gone.
///
/// [`Balance`](crate::balance::Balance) hands it to the request's load guard
/// ([`attach`](Self::attach)), which sees the response's first byte and its end; a caller that
/// routes by itself (a simulation, a custom transport) can do the same, or call
/// [`first_token`](Self::first_token) and [`finished`](Self::finished) itself.
#[derive(Debug)]
pub struct Placement {
    record: Arc<Record>,
    new_tokens: u64,
    cached_blocks: usize,
    pending: bool,
    first_token: Option<Instant>,
}

impl Placement {
    pub(crate) fn new(record: Arc<Record>, new_tokens: u64, cached_blocks: usize) -> Self {
        record.backlog.add(new_tokens);
        Self {
            record,
            new_tokens,
            cached_blocks,
            pending: true,
            first_token: None,
        }
    }

    /// The prompt's blocks the index expected the endpoint to hold.
    pub fn cached_blocks(&self) -> usize {
        self.cached_blocks
    }

    /// The prompt's tokens the index expected the endpoint to compute.
    pub fn new_tokens(&self) -> u64 {
        self.new_tokens
    }

    /// The first token arrived at `at`: the prefill is done and leaves the backlog.
    pub fn first_token(&mut self, at: Instant) {
        if std::mem::take(&mut self.pending) {
            self.record.release(self.new_tokens, Some(at));
            self.first_token = Some(at);
        }
    }

    /// The response ended at `at`: how long it held its slot after the first token is what
    /// the policy expects of the next one.
    pub fn finished(mut self, at: Instant) {
        if let Some(first) = self.first_token {
            self.record.completed(first, at);
        }
        self.release();
    }

    /// Hands the placement to the request's load guard: the prefill leaves the backlog at the
    /// response's first byte ([`LoadGuard::first_byte`]) or when the guard completes or is
    /// dropped, and a successful completion tells the policy how long the request ran after
    /// its first token. No allocation.
    pub fn attach<E: Borrow<Endpoint>>(mut self, guard: &mut LoadGuard<E>) {
        let record: Arc<dyn FirstByteHook> = Arc::clone(&self.record) as _;
        // The guard takes over the release.
        let first = if std::mem::take(&mut self.pending) {
            None
        } else {
            // Released already: the guard only times the rest.
            Some(self.first_token.unwrap_or_else(Instant::now))
        };
        guard.hold(record, self.new_tokens, first);
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.record.release(self.new_tokens, None);
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.release();
    }
}
