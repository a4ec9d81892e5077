//! The adapter's errors: a request it will not translate, and an answer it could not.

use std::fmt;

/// An OpenAI request the adapter refuses to translate: it is not JSON, or it depends on
/// something the Anthropic translation would lose. Answered with `400`; no upstream sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    /// The body is not a JSON object.
    InvalidJson,
    /// A field or a value the adapter does not translate (tools, images, `n` > 1, ...).
    Unsupported {
        /// The field, as the OpenAI request names it (`tools`, `messages[].content[].image_url`).
        field: &'static str,
    },
    /// A field with a value of the wrong shape.
    Invalid {
        /// The field.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidJson => f.write_str("the request body is not a JSON object"),
            Self::Unsupported { field } => write!(
                f,
                "`{field}` is not supported by this upstream (an Anthropic Messages endpoint)"
            ),
            Self::Invalid { field, expected } => write!(f, "`{field}` must be {expected}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// An Anthropic answer (a message, or an event stream) that could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseError {
    /// The stream ended before `message_stop`.
    Truncated,
    /// The message, or an event's data, was not the JSON the API sends.
    Malformed,
    /// One event was longer than the translator holds (4 MiB).
    EventTooLarge,
    /// The upstream sent an `error` event.
    Upstream {
        /// Its error type, such as `overloaded_error`.
        kind: String,
        /// Its message.
        message: String,
    },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("the upstream's stream ended before message_stop"),
            Self::Malformed => {
                f.write_str("the upstream sent a message or event that is not the expected JSON")
            }
            Self::EventTooLarge => f.write_str("the upstream's stream sent an oversized event"),
            Self::Upstream { kind, message } => {
                write!(f, "the upstream's stream failed: {kind}: {message}")
            }
        }
    }
}

impl std::error::Error for ResponseError {}
