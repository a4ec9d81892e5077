//! Prefix-cache-aware routing: send each prompt where its first token comes soonest, counting
//! the prefix each server already holds in its KV cache.
//!
//! An LLM server that holds a prompt's prefix skips its prefill; time to first token drops
//! severalfold. The parts:
//!
//! - [`BlockHasher`]: block keys, chained hashes of fixed-size blocks of a prompt (tokens, or
//!   bytes for a router without a tokenizer); [`ChatMessages`] reads them from an OpenAI chat
//!   body without consuming it; [`ExtractBlocks`] takes any function; and a replay passes a
//!   trace's hashes as a `&[u64]` directly. [`with_scratch`] lends a per-thread buffer, so
//!   hashing allocates nothing once warm.
//! - [`PrefixIndex`]: per endpoint, which blocks its engine holds, learned from this
//!   router's placements and, where engines publish them, from their KV events; bounded,
//!   least recently used out first; looked up without a lock.
//! - [`PrefixPolicy`]: per request, each candidate's expected time to first token (the work
//!   queued there, the prefix it holds), rendezvous hashing among the near-best so that
//!   independent router replicas agree where a new prefix goes.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use tower_ai_balance::{
//!     pick::Filter,
//!     prefix::{PrefixIndex, PrefixPolicy},
//!     Endpoint, EndpointConfig,
//! };
//!
//! let gpus: Vec<_> = (0..4)
//!     .map(|i| Endpoint::new(EndpointConfig::new(format!("gpu-{i}"))).unwrap())
//!     .collect();
//! let policy = PrefixPolicy::new(Arc::new(PrefixIndex::new(5_000)), 512)
//!     .unwrap()
//!     .prefill_rate(20_000.0)
//!     .unwrap();
//! let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
//!
//! // A first turn: 3 blocks of 512 tokens.
//! let turn = [10, 11, 12];
//! let first = policy.pick(&gpus, &Filter::new(), &turn, 1_400, &mut rng).unwrap();
//! let mut placement = policy.placed(&gpus[first.index], &turn, &first);
//! placement.first_token(tokio::time::Instant::now());
//! drop(placement);
//!
//! // The next turn extends it, and goes where its first 3 blocks are.
//! let next = [10, 11, 12, 13, 14];
//! let second = policy.pick(&gpus, &Filter::new(), &next, 2_500, &mut rng).unwrap();
//! assert_eq!((second.index, second.cached_blocks), (first.index, 3));
//! ```
//!
//! # In a request path
//!
//! The pick is a plain function over a slice of endpoints with the crate's [`Filter`], as the
//! other strategies are, so it slots into [`Balance`](crate::balance::Balance)'s pick: a layer
//! extracts the blocks ([`ExtractBlocks`]) into a hint, the pick reads the hint and calls
//! [`PrefixPolicy::pick`] over the tier's endpoints, and the returned [`Placement`] rides
//! with the response body until its first data frame.
//!
//! [`Filter`]: crate::pick::Filter

mod averages;
mod backlog;
mod block;
mod chat;
mod extract;
mod index;
mod placement;
mod policy;
mod set;

pub use self::{
    backlog::EngineLoad,
    block::{BlockHasher, ByteStream},
    chat::ChatMessages,
    extract::{with_scratch, ExtractBlocks},
    index::{KvEvent, PrefixIndex},
    placement::Placement,
    policy::{Choice, PrefixPolicy},
};
