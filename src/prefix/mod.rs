//! Prefix-cache-aware routing: send each prompt where its first token comes soonest, counting
//! the prefix each server already holds in its KV cache.
//!
//! An LLM server that holds a prompt's prefix skips its prefill; time to first token drops
//! severalfold. Routing by prefix starts from block keys: [`BlockHasher`] cuts a prompt into
//! blocks of tokens (or bytes, for a router without a tokenizer) and hashes each with
//! everything before it; [`ChatMessages`] reads them from an OpenAI chat body without
//! consuming it; [`ExtractBlocks`] takes any function; a replay passes a trace's hashes as a
//! `&[u64]` directly. [`with_scratch`] lends a per-thread buffer, so hashing allocates nothing
//! once warm.

mod block;
mod chat;
mod extract;

pub use self::{
    block::{BlockHasher, ByteStream},
    chat::ChatMessages,
    extract::{with_scratch, ExtractBlocks},
};
