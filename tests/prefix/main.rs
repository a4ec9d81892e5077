//! Prefix-cache-aware routing: the policy's choices (continuations, new prefixes, hot
//! prefixes, load, reports, slots, filters), its accounting under many threads, block keys
//! from OpenAI chat bodies, and the policy in `Balance`'s request path.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

mod keys;
mod layer;
mod policy;

use std::sync::Arc;

use tower_ai_balance::{
    prefix::{PrefixIndex, PrefixPolicy},
    Endpoint, EndpointConfig,
};

/// Endpoints `e0..e{n-1}`, built apart each time (as every router replica builds its own).
pub fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| Endpoint::new(EndpointConfig::new(format!("e{i}"))).unwrap())
        .collect()
}

/// A policy over a fresh index of 10,000 blocks per endpoint, 512-token blocks, 40,000
/// prefill tokens/s.
pub fn policy() -> PrefixPolicy {
    PrefixPolicy::new(Arc::new(PrefixIndex::new(10_000)), 512)
        .and_then(|p| p.prefill_rate(40_000.0))
        .unwrap()
}

/// A prompt of `n` blocks: the shared first block 0, then blocks unique to `id`.
pub fn prompt(id: u64, n: usize) -> Vec<u64> {
    std::iter::once(0)
        .chain((1..n as u64).map(|i| id * 1_000_000 + i))
        .collect()
}

/// A prompt of `n` blocks that shares nothing with any other `id`'s.
pub fn fresh(id: u64, n: usize) -> Vec<u64> {
    (1..=n as u64).map(|i| id * 1_000_000 + i).collect()
}
