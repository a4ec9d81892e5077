//! Reading OpenAI-style JSON request bodies for routing: [`OpenAiRequest`] and
//! [`OpenAiRules`] (feature `openai`).

use http_body::Body;

use super::{Decide, RequestInfo, Routing, Rules};

/// How much of a body is read at most to route it.
const READ_LIMIT: usize = 8 << 20;

/// What an OpenAI-style JSON body (chat or text completions) says of itself: its model, an
/// estimate of its prompt's tokens (a quarter of its text's characters, the usual rule of
/// thumb) and its `max_tokens` (or `max_completion_tokens`; 256 when absent). Reads a body
/// already in memory without consuming it; `None` for anything else.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiRequest;

impl OpenAiRequest {
    /// Reads `body`.
    pub fn read<B: Body + Clone>(body: &B) -> Option<RequestInfo> {
        let bytes = crate::peek::peek(body, READ_LIMIT)?;
        Self::parse(&bytes)
    }

    /// Reads a JSON request body.
    pub fn parse(bytes: &[u8]) -> Option<RequestInfo> {
        let json: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let mut chars = 0usize;
        let mut count = |v: &serde_json::Value| chars += text_len(v);
        match (json.get("messages"), json.get("prompt")) {
            (Some(messages), _) => messages
                .as_array()?
                .iter()
                .for_each(|m| count(&m["content"])),
            (None, Some(prompt)) => count(prompt),
            (None, None) => return None,
        }
        let max_tokens = json["max_tokens"]
            .as_u64()
            .or_else(|| json["max_completion_tokens"].as_u64())
            .unwrap_or(256);
        Some(RequestInfo {
            model: json["model"].as_str().map(str::to_owned),
            prompt_tokens: u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX),
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        })
    }
}

/// Characters of text in a message's content: a string, or an array of text parts.
fn text_len(content: &serde_json::Value) -> usize {
    match content {
        serde_json::Value::String(s) => s.chars().count(),
        serde_json::Value::Array(parts) => parts.iter().map(|p| text_len(&p["text"])).sum(),
        _ => 0,
    }
}

/// [`Rules`] over what [`OpenAiRequest`] reads; a request it cannot read is balanced as usual.
#[derive(Debug, Clone, Default)]
pub struct OpenAiRules(pub Rules);

impl<B> Decide<http::Request<B>> for OpenAiRules
where
    B: Body + Clone + Send + Sync + 'static,
{
    fn decide(&self, request: &http::Request<B>) -> Routing {
        match OpenAiRequest::read(request.body()) {
            Some(info) => self.0.decide(&info, rand::random()),
            None => Routing::default(),
        }
    }
}
