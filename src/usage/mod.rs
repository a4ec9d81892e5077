//! Token usage read from responses as they pass: [`Usage`], [`UsageReader`], [`UsageBody`].
//!
//! A model server says how many tokens a request took in the answer itself: the `usage`
//! object of an OpenAI chat completion (in the last chunk of a stream, when the request set
//! `stream_options.include_usage`), or of an Anthropic message (its `message_start` event
//! for the input and its `message_delta` events for the output, cumulative). The reader
//! finds it in the bytes of a JSON answer or an event stream fed to it in pieces of any
//! size, without buffering the body: it keeps a few bytes of state, reads a `usage` object
//! where it lies, and copies one only when it is split between pieces (at most 4 KiB).
//! Bytes that are neither JSON nor events are skipped; nothing panics, and a body without
//! usage has none.
//!
//! How other parts get the usage when a body ends: wrap the body in a [`UsageBody`] with a
//! [`UsageSink`] (any `FnOnce(Option<Usage>)`), which is called once when the body ends,
//! fails or is dropped. Nothing is read, and nothing costs, for a body nobody wraps.
//!
//! ```
//! use tower_ai_balance::usage::{Usage, UsageReader};
//!
//! let stream = concat!(
//!     "event: message_start\n",
//!     "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,",
//!     "\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
//!     "event: message_delta\n",
//!     "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
//! );
//! let mut reader = UsageReader::new();
//! for piece in stream.as_bytes().chunks(7) {
//!     reader.push(piece);
//! }
//! // Anthropic's input count leaves out the cached tokens; `Usage` counts them in.
//! assert_eq!(reader.usage(), Some(Usage::new(120, 42).cached(100)));
//! ```

mod body;
mod fields;
mod lexer;
mod reader;
#[cfg(all(test, not(loom)))]
mod tests;

pub use self::{
    body::{UsageBody, UsageSink},
    reader::UsageReader,
};

/// The tokens one request took, as its server counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Usage {
    /// The prompt's tokens, those read from a cache included (OpenAI's `prompt_tokens`;
    /// Anthropic's `input_tokens` plus its `cache_read_input_tokens` and
    /// `cache_creation_input_tokens`).
    pub input_tokens: u64,
    /// The generated tokens (`completion_tokens`, `output_tokens`).
    pub output_tokens: u64,
    /// Of the input tokens, those read from the server's prompt cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens`); 0 when
    /// the server did not say.
    pub cached_input_tokens: u64,
}

impl Usage {
    /// `input` and `output` tokens, none of them cached.
    pub const fn new(input: u64, output: u64) -> Self {
        Self {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: 0,
        }
    }

    /// The same, with `tokens` of the input read from a cache.
    pub const fn cached(mut self, tokens: u64) -> Self {
        self.cached_input_tokens = tokens;
        self
    }

    /// Input and output together.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}
