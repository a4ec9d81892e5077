//! OpenAI chat completions served by Anthropic Messages endpoints (feature `anthropic`).
//!
//! A pure adapter: [`to_messages`] turns an OpenAI chat-completions request body into an
//! Anthropic Messages one, [`to_chat_completion`] turns the message back into a
//! `chat.completion`, [`ChatStream`] (over [`StreamTranslator`]) turns the event stream into
//! `chat.completion.chunk`s ending in `data: [DONE]`, and [`to_openai_error`] turns an error
//! answer into an OpenAI-format one. With the `client` feature,
//! [`Format::Anthropic`](crate::client::Format) makes an upstream speak it, with its
//! `x-api-key` and `anthropic-version` headers, so one pool mixes both formats.
//!
//! # What is translated
//!
//! - `messages`: `user` and `assistant` turns whose content is a string or an array of `text`
//!   parts; `system` and `developer` messages go to the top-level `system` (several as
//!   several text blocks, in order, wherever they were in the conversation).
//! - `max_completion_tokens`, or else `max_tokens`, as `max_tokens`; when neither is set,
//!   [`RequestOptions::default_max_tokens`] (4,096), since Anthropic requires it.
//! - `stop` (a string or an array) as `stop_sequences`; `temperature` (clamped to
//!   Anthropic's 0 to 1), `top_p`, `top_k`; `stream`; `user` as `metadata.user_id`.
//! - `model`, or [`RequestOptions::model`] in its place.
//! - The answer: text blocks joined as the message's content; `stop_reason` as
//!   `finish_reason` (`end_turn`, `stop_sequence` → `stop`, `max_tokens` → `length`,
//!   `refusal` → `content_filter`); `usage` (input tokens, cache reads and writes included,
//!   as `prompt_tokens`; output tokens as `completion_tokens`), and in a stream's last chunk
//!   when `stream_options.include_usage` is set.
//! - Stream events: `message_start`, `content_block_start`, `content_block_delta`
//!   (`text_delta`), `content_block_stop`, `message_delta`, `message_stop`, `ping`, `error`
//!   (as an OpenAI error event, and a failed body).
//! - Model lists (with `client`): `GET /v1/models` asks Anthropic's list (every page, up to
//!   ten thousand models) and answers OpenAI's `{"object":"list","data":[{"id","object",
//!   "created","owned_by"}]}`, `created` from `created_at`.
//! - Errors: `429` (with its `retry-after`, kept by the client), `529` overloaded → `503`,
//!   `401`/`403` (the gateway's key refused) → `502`, others with their status; the body is
//!   OpenAI's `{"error": {"message", "type", "code"}}`.
//!
//! # What is refused (400, never sent upstream)
//!
//! Requests that depend on what the translation would lose: `tools`, `functions`,
//! a `tool_choice`/`function_call` other than `none`/`auto`, assistant `tool_calls`, `tool`
//! and `function` messages; image, audio and file content parts; `n` > 1;
//! `response_format` other than `text` (JSON mode, structured outputs); `logprobs`;
//! `audio` output and `modalities` other than text; `web_search_options`.
//!
//! # What is dropped
//!
//! Sampling settings with no Anthropic counterpart, which tune an answer but which no answer
//! depends on: `frequency_penalty`, `presence_penalty`, `seed`, `logit_bias`,
//! `reasoning_effort`, `prediction`, `service_tier`, `store`, `metadata`,
//! `parallel_tool_calls`; a message's `name`; unknown fields. In answers: thinking blocks,
//! citations, and the cache token counts as separate fields.
//!
//! # Example
//!
//! ```
//! use tower_ai_balance::anthropic::{to_messages, RequestOptions};
//!
//! let openai = br#"{"model": "gpt-4o", "stream": true, "stop": "END",
//!     "messages": [{"role": "system", "content": "Be brief."},
//!                  {"role": "user", "content": "Hello"}]}"#;
//! let options = RequestOptions { model: Some("claude-sonnet-4-5".into()), ..Default::default() };
//! let request = to_messages(openai, &options).unwrap();
//! let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
//! assert_eq!(body["system"], "Be brief.");
//! assert_eq!(body["max_tokens"], 4096);
//! assert_eq!(body["stop_sequences"][0], "END");
//! assert!(request.stream);
//! ```

mod body;
mod error;
#[cfg(feature = "client")]
pub(crate) mod models;
mod request;
mod response;
mod sse;
mod stream;

pub use self::{
    body::ChatStream,
    error::{RequestError, ResponseError},
    request::{to_messages, MessagesRequest, RequestOptions, ANTHROPIC_VERSION},
    response::{finish_reason, to_chat_completion, to_openai_error},
    stream::StreamTranslator,
};
