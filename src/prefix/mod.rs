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
//! Two pieces: [`PrefixKeysLayer`] reads each request's blocks with an [`ExtractBlocks`]
//! ([`ChatMessages`] for an OpenAI chat body, any function, or a caller's own hashes through
//! [`PromptBlocks::new`]) and puts them in a [`PromptBlocks`] hint;
//! [`BalanceBuilder::prefix`](crate::balance::BalanceBuilder::prefix) gives `Balance` the
//! policy, which picks every hinted request among the lowest tier's endpoints that pass the
//! request's filters (health, exclusions, limits, requirements), as every pick does. The
//! request's prefill counts in its endpoint's backlog until the response's first data frame,
//! carried by its load guard; a failed or cancelled request gives it back.
//!
//! ```
//! use std::{convert::Infallible, sync::Arc};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{
//!     balance::BalanceLayer,
//!     hints::Served,
//!     prefix::{ChatMessages, PrefixIndex, PrefixKeysLayer, PrefixPolicy},
//!     Pool,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let engine = service_fn(|_: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("data: hi\n\n"))))
//! });
//! let pool = Pool::new();
//! for i in 0..4 {
//!     pool.insert(format!("gpu-{i}"), engine.clone())?;
//! }
//! // Blocks of 64 bytes of the messages array, some 16 tokens each.
//! let policy = PrefixPolicy::new(Arc::new(PrefixIndex::new(50_000)), 16)?.prefill_rate(20_000.0)?;
//! let stack = ServiceBuilder::new()
//!     .layer(PrefixKeysLayer::new(ChatMessages::new(64)?))
//!     .layer(BalanceLayer::builder().prefix(policy).build()?)
//!     .service(pool);
//!
//! let chat = |messages: &str| {
//!     let body = format!(r#"{{"model":"m","stream":true,"messages":[{messages}]}}"#);
//!     Request::new(Full::new(Bytes::from(body)))
//! };
//! let first = r#"{"role":"system","content":"You answer questions about the tower crate, briefly and precisely."},{"role":"user","content":"What does a Layer do?"}"#;
//! let answer = stack.clone().oneshot(chat(first)).await?;
//! let placed = answer.extensions().get::<Served>().unwrap().endpoint().key().clone();
//! answer.into_body().collect().await?; // the first frame releases the prefill
//!
//! // The next turn carries the first one's messages: it goes where they are cached.
//! let next = format!(r#"{first},{{"role":"assistant","content":"It wraps a service."}},{{"role":"user","content":"And a Service?"}}"#);
//! let answer = stack.oneshot(chat(&next)).await?;
//! assert_eq!(answer.extensions().get::<Served>().unwrap().endpoint().key(), &placed);
//! # Ok(())
//! # }
//! ```

mod averages;
mod backlog;
mod block;
mod chat;
mod extract;
mod hint;
mod index;
mod layer;
mod placement;
mod policy;
mod set;

pub use self::{
    backlog::EngineLoad,
    block::{BlockHasher, ByteStream},
    chat::ChatMessages,
    extract::{with_scratch, ExtractBlocks},
    hint::PromptBlocks,
    index::{KvEvent, PrefixIndex},
    layer::{PrefixKeys, PrefixKeysLayer},
    placement::Placement,
    policy::{Choice, PrefixPolicy},
};
