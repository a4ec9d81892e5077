//! A request's prefill placed on an endpoint, counted in its backlog until the first token.

use std::sync::Arc;

use tokio::time::Instant;

use super::{averages::Averages, index::Record};

/// A request's prefill placed on an endpoint: counted in the endpoint's backlog until its
/// first token arrives ([`first_token`](Self::first_token)) or this is dropped (the request
/// failed or was cancelled), so the backlog never keeps work that is gone.
#[derive(Debug)]
pub struct Placement {
    record: Arc<Record>,
    averages: Arc<Averages>,
    new_tokens: u64,
    cached_blocks: usize,
    pending: bool,
    first_token: Option<Instant>,
}

impl Placement {
    pub(crate) fn new(
        record: Arc<Record>,
        averages: Arc<Averages>,
        new_tokens: u64,
        cached_blocks: usize,
    ) -> Self {
        record.backlog.add(new_tokens);
        Self {
            record,
            averages,
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
            self.record.backlog.release(self.new_tokens);
            self.first_token = Some(at);
        }
    }

    /// The response ended at `at`: how long it held its slot after the first token is what
    /// the policy expects of the next one.
    pub fn finished(mut self, at: Instant) {
        if let Some(first) = self.first_token {
            self.averages
                .observe_decode(at.saturating_duration_since(first));
        }
        self.release();
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.record.backlog.release(self.new_tokens);
        }
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.release();
    }
}
