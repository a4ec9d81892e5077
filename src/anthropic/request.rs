//! OpenAI chat-completions requests as Anthropic Messages requests.

use serde_json::{json, Map, Value};

use super::error::RequestError;

/// The `anthropic-version` header value the adapter's requests are written for.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How requests are translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOptions {
    /// `max_tokens` when the request sets neither `max_completion_tokens` nor `max_tokens`
    /// (Anthropic requires it): 4,096 by default.
    pub default_max_tokens: u64,
    /// The model to ask for instead of the request's (an OpenAI client names an OpenAI model;
    /// the Anthropic endpoint serves a Claude model). `None` keeps the request's.
    pub model: Option<String>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        Self {
            default_max_tokens: 4096,
            model: None,
        }
    }
}

/// A translated request: the Messages body, and what the answer's translation needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesRequest {
    /// The JSON body for `POST /v1/messages`.
    pub body: Vec<u8>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for usage in the stream's last chunk
    /// (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// Translates an OpenAI chat-completions request body into an Anthropic Messages one.
/// See the [module docs](super) for what is translated, dropped and refused.
pub fn to_messages(
    openai: &[u8],
    options: &RequestOptions,
) -> Result<MessagesRequest, RequestError> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(openai) else {
        return Err(RequestError::InvalidJson);
    };
    refuse_unsupported(&request)?;
    let model = match &options.model {
        Some(model) => model.clone(),
        None => match request.get("model") {
            Some(Value::String(m)) => m.clone(),
            _ => return Err(invalid("model", "a string")),
        },
    };
    let Some(Value::Array(messages)) = request.get("messages") else {
        return Err(invalid("messages", "an array of messages"));
    };
    let mut system = Vec::new();
    let mut turns = Vec::with_capacity(messages.len());
    for message in messages {
        let role = message.get("role").and_then(Value::as_str);
        match role {
            Some("system" | "developer") => {
                for text in text_parts(message.get("content"))? {
                    system.push(json!({"type": "text", "text": text}));
                }
            }
            Some(role @ ("user" | "assistant")) => {
                if message.get("tool_calls").is_some_and(non_empty)
                    || message.get("function_call").is_some_and(non_empty)
                {
                    return Err(unsupported("messages[].tool_calls"));
                }
                if message.get("audio").is_some_and(non_empty) {
                    return Err(unsupported("messages[].audio"));
                }
                let content = match message.get("content") {
                    Some(Value::String(text)) => Value::String(text.clone()),
                    other => Value::Array(
                        text_parts(other)?
                            .into_iter()
                            .map(|text| json!({"type": "text", "text": text}))
                            .collect(),
                    ),
                };
                turns.push(json!({"role": role, "content": content}));
            }
            Some("tool" | "function") => return Err(unsupported("messages[].role: tool")),
            _ => {
                return Err(invalid(
                    "messages[].role",
                    "system, developer, user or assistant",
                ))
            }
        }
    }
    let max_tokens = match request
        .get("max_completion_tokens")
        .filter(|v| !v.is_null())
        .or_else(|| request.get("max_tokens").filter(|v| !v.is_null()))
    {
        None => options.default_max_tokens,
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or(invalid("max_tokens", "a positive integer"))?,
    };
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "a boolean")),
    };
    let include_usage = stream
        && request
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);

    let mut out = Map::new();
    out.insert("model".into(), Value::String(model));
    out.insert("max_tokens".into(), Value::from(max_tokens));
    match system.len() {
        0 => {}
        1 => {
            out.insert("system".into(), system.swap_remove(0)["text"].take());
        }
        _ => {
            out.insert("system".into(), Value::Array(system));
        }
    }
    out.insert("messages".into(), Value::Array(turns));
    match request.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(all)) if all.iter().all(Value::is_string) => {
            if !all.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(all.clone()));
            }
        }
        Some(_) => return Err(invalid("stop", "a string or an array of strings")),
    }
    if let Some(t) = number(&request, "temperature")? {
        // OpenAI's range is 0 to 2, Anthropic's 0 to 1: above 1 is sent as 1.
        out.insert("temperature".into(), Value::from(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = number(&request, "top_p")? {
        out.insert("top_p".into(), Value::from(p));
    }
    if let Some(k) = request.get("top_k").filter(|v| !v.is_null()) {
        let k = k
            .as_u64()
            .ok_or(invalid("top_k", "a non-negative integer"))?;
        out.insert("top_k".into(), Value::from(k));
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let body = serde_json::to_vec(&Value::Object(out)).map_err(|_| RequestError::InvalidJson)?;
    Ok(MessagesRequest {
        body,
        stream,
        include_usage,
    })
}

/// Refuses a request that depends on what the translation cannot carry.
fn refuse_unsupported(request: &Map<String, Value>) -> Result<(), RequestError> {
    for field in ["tools", "functions", "audio", "web_search_options"] {
        if request.get(field).is_some_and(non_empty) {
            return Err(unsupported(field));
        }
    }
    for (field, name) in [
        ("tool_choice", "tool_choice"),
        ("function_call", "function_call"),
    ] {
        match request.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(unsupported(name)),
        }
    }
    match request.get("n") {
        None | Some(Value::Null) => {}
        Some(n) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(unsupported("n")),
    }
    match request.get("response_format") {
        None | Some(Value::Null) => {}
        Some(f) if f.get("type").and_then(Value::as_str) == Some("text") => {}
        Some(_) => return Err(unsupported("response_format")),
    }
    if request.get("logprobs").and_then(Value::as_bool) == Some(true)
        || request
            .get("top_logprobs")
            .is_some_and(|v| v.as_u64().is_some_and(|n| n > 0))
    {
        return Err(unsupported("logprobs"));
    }
    if let Some(Value::Array(modalities)) = request.get("modalities") {
        if modalities.iter().any(|m| m.as_str() != Some("text")) {
            return Err(unsupported("modalities"));
        }
    }
    Ok(())
}

/// The texts of a message's content: a string, or an array of `text` parts. Any other part
/// (an image, audio, a file) is refused.
fn text_parts(content: Option<&Value>) -> Result<Vec<String>, RequestError> {
    match content {
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => part
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or(invalid("messages[].content[].text", "a string")),
                Some("image_url") => Err(unsupported("messages[].content[].image_url")),
                Some("input_audio") => Err(unsupported("messages[].content[].input_audio")),
                Some("file") => Err(unsupported("messages[].content[].file")),
                _ => Err(unsupported(
                    "messages[].content[] (a part that is not text)",
                )),
            })
            .collect(),
        _ => Err(invalid(
            "messages[].content",
            "a string or an array of text parts",
        )),
    }
}

fn number(request: &Map<String, Value>, field: &'static str) -> Result<Option<f64>, RequestError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(invalid(field, "a number")),
    }
}

/// Whether a field's value asks for something: not null, not an empty array or object, not
/// `false`.
fn non_empty(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn unsupported(field: &'static str) -> RequestError {
    RequestError::Unsupported { field }
}

fn invalid(field: &'static str, expected: &'static str) -> RequestError {
    RequestError::Invalid { field, expected }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(request: Value) -> Result<(Value, MessagesRequest), RequestError> {
        let t = to_messages(request.to_string().as_bytes(), &RequestOptions::default())?;
        Ok((serde_json::from_slice(&t.body).unwrap(), t))
    }

    #[test]
    fn a_full_request_is_translated() {
        let (body, t) = translate(json!({
            "model": "claude-x", "stream": true, "stream_options": {"include_usage": true},
            "max_completion_tokens": 50, "max_tokens": 10, "temperature": 1.7, "top_p": 0.9,
            "stop": "END", "user": "u-1", "seed": 7, "presence_penalty": 0.5,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No lists."}]},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again", "name": "bob"},
            ],
        }))
        .unwrap();
        assert!(t.stream && t.include_usage);
        assert_eq!(
            body,
            json!({
                "model": "claude-x", "max_tokens": 50, "stream": true,
                "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "No lists."}],
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Again"},
                ],
                "stop_sequences": ["END"], "temperature": 1.0, "top_p": 0.9,
                "metadata": {"user_id": "u-1"},
            })
        );
    }

    #[test]
    fn max_tokens_defaults_and_the_model_can_be_replaced() {
        let options = RequestOptions {
            default_max_tokens: 123,
            model: Some("claude-y".into()),
        };
        let t = to_messages(
            br#"{"model":"gpt-4o","max_tokens":null,"messages":[{"role":"user","content":"x"}],"system":"s"}"#,
            &options,
        )
        .unwrap();
        let body: Value = serde_json::from_slice(&t.body).unwrap();
        assert_eq!(body["max_tokens"], 123);
        assert_eq!(body["model"], "claude-y");
        assert!(!t.stream && !t.include_usage);
        let (body, _) = translate(json!({"model": "m", "max_tokens": 9, "stop": ["a", "b"],
            "messages": [{"role": "system", "content": "one"}, {"role": "user", "content": "x"}]}))
        .unwrap();
        assert_eq!(body["max_tokens"], 9);
        assert_eq!(body["system"], "one");
        assert_eq!(body["stop_sequences"], json!(["a", "b"]));
    }

    #[test]
    fn what_cannot_be_translated_is_refused() {
        let user = json!([{"role": "user", "content": "x"}]);
        for (extra, field) in [
            (
                json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
                "tools",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (json!({"n": 2}), "n"),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
        ] {
            let mut request = json!({"model": "m", "messages": user});
            for (k, v) in extra.as_object().unwrap() {
                request[k] = v.clone();
            }
            assert_eq!(
                translate(request).unwrap_err(),
                RequestError::Unsupported { field }
            );
        }
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(
            translate(image).unwrap_err(),
            RequestError::Unsupported {
                field: "messages[].content[].image_url"
            }
        );
        let tool_turn = json!({"model": "m", "messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]});
        assert!(matches!(
            translate(tool_turn).unwrap_err(),
            RequestError::Unsupported { .. }
        ));
        // Harmless defaults are accepted.
        translate(
            json!({"model": "m", "messages": user, "n": 1, "tools": [], "tool_choice": "none",
            "response_format": {"type": "text"}, "logprobs": false}),
        )
        .unwrap();
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"{"messages":[]}"#,
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
            br#"{"model":"m","messages":[{"role":"user","content":null}]}"#,
            br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
        ] {
            assert!(
                to_messages(bad, &RequestOptions::default()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
