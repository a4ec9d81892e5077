//! Keeps streams and sessions on their instance.
//!
//! LLM servers reuse a conversation's KV cache and a prompt's prefix cache when the next turn
//! lands on the same instance; a reconnecting SSE client should find its stream's instance
//! again. [`StreamAffinity`] takes a key from each request (a header such as `x-session-id`,
//! a [`PromptPrefix`] hash, or any function) and hands [`Balance`](crate::balance::Balance) an
//! [`Affinity`](crate::hints::Affinity) hint; a request without a key is balanced as usual.
//!
//! - **Stateless** (the default): weighted rendezvous hashing of the key over the eligible
//!   endpoints, with bounded loads: an endpoint above 1.25 × its share of the load is passed
//!   over for the next in the key's order. Every gateway replica makes the same choice with no
//!   shared state, and when an endpoint leaves only its keys move.
//! - **Remembering** ([`StreamAffinityBuilder::remember`]): a bounded table from key to the
//!   endpoint that last served it, for strict stickiness; when that endpoint is ejected or
//!   removed the key moves and the table follows.
//!
//! Whatever the mode, affinity yields to health (never an ejected, cooling or removed
//! endpoint), and a streamed response holds its endpoint's load until its body ends.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{HeaderName, Request, Response};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{affinity::StreamAffinityLayer, hints::Served, BalanceLayer, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let model = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
//! });
//! let pool = Pool::new();
//! for gpu in ["gpu-0", "gpu-1", "gpu-2", "gpu-3"] {
//!     pool.insert(gpu, model)?;
//! }
//! let svc = ServiceBuilder::new()
//!     .layer(StreamAffinityLayer::header(HeaderName::from_static("x-session-id")))
//!     .layer(BalanceLayer::new())
//!     .service(pool);
//!
//! let turn = || Request::builder().header("x-session-id", "chat-42").body(Full::new(Bytes::new())).unwrap();
//! let first = svc.clone().oneshot(turn()).await?;
//! let second = svc.clone().oneshot(turn()).await?;
//! let key = |r: &Response<_>| r.extensions().get::<Served>().unwrap().endpoint().key().clone();
//! assert_eq!(key(&first), key(&second));
//! # Ok(())
//! # }
//! ```

mod future;
mod key;
mod layer;
mod service;
mod table;

use std::sync::Arc;

pub use self::{
    future::ResponseFuture,
    key::{hash_key, ExtractKey, Header, PromptPrefix},
    layer::{StreamAffinityBuilder, StreamAffinityLayer},
    service::StreamAffinity,
};

/// What every service built by one layer shares.
#[derive(Debug)]
pub(crate) struct Shared<K> {
    extract: Arc<K>,
    bound: f64,
    table: Option<Arc<table::Table>>,
}
