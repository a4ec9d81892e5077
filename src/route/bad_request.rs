//! The refusal of a request whose routing cannot be decided from what it says.

use std::{borrow::Cow, fmt};

/// The request was refused before any endpoint saw it: what it asks for cannot be read (a
/// body that is not the JSON it should be, a field given twice or of the wrong type), so it
/// could not be routed where it can run. A gateway answers it with `400 Bad Request`.
///
/// [`Route`](super::Route) fails with it when its [`Decide`](super::Decide) returns
/// [`Routing::refused`](super::Routing::refused); [`OpenAiRules`](super::OpenAiRules) does so
/// for a body it cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    reason: Cow<'static, str>,
}

impl BadRequest {
    /// A refusal for `reason`, which is shown to the client.
    pub fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// Why the request was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad request: {}", self.reason)
    }
}

impl std::error::Error for BadRequest {}
