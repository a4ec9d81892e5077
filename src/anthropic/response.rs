//! Anthropic answers as OpenAI ones: a message as a `chat.completion`, an error as an
//! OpenAI-format error with the status an OpenAI client expects.

use http::StatusCode;
use serde_json::Value;

use super::error::ResponseError;
use crate::json::write::{openai_error_body, string as json_string};

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, and reasons this adapter does not know.
        _ => "stop",
    }
}

/// `(prompt_tokens, completion_tokens)` from an Anthropic `usage` object. Prompt tokens
/// include those written to and read from the prompt cache, as OpenAI counts them.
pub(crate) fn usage(usage: &Value) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let input = field("input_tokens");
    // Saturating: the counts are the upstream's bytes, and no sum of them may panic.
    let cached = field("cache_creation_input_tokens")
        .unwrap_or(0)
        .saturating_add(field("cache_read_input_tokens").unwrap_or(0));
    (
        input.map(|i| i.saturating_add(cached)),
        field("output_tokens"),
    )
}

/// Translates an Anthropic Messages response body (a `message`) into an OpenAI
/// `chat.completion` body. Text blocks are joined; other blocks (thinking, tool use, which the
/// request translation never asks for) are left out. `created` is the Unix time to report.
pub fn to_chat_completion(message: &[u8], created: u64) -> Result<Vec<u8>, ResponseError> {
    let message: Value = serde_json::from_slice(message).map_err(|_| ResponseError::Malformed)?;
    if message.get("type").and_then(Value::as_str) != Some("message") {
        return Err(ResponseError::Malformed);
    }
    let Some(Value::Array(blocks)) = message.get("content") else {
        return Err(ResponseError::Malformed);
    };
    let text: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let (prompt, completion) = usage(message.get("usage").unwrap_or(&Value::Null));
    let id = message.get("id").and_then(Value::as_str).unwrap_or("");
    let model = message.get("model").unwrap_or(&Value::Null);
    let finish = finish_reason(message.get("stop_reason").and_then(Value::as_str));
    // Written in OpenAI's field order.
    let mut out = format!(
        "{{\"id\":{},\"object\":\"chat.completion\",\"created\":{created},\"model\":{model},\
         \"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":{}}},\
         \"logprobs\":null,\"finish_reason\":\"{finish}\"}}],\"usage\":",
        json_string(&format!("chatcmpl-{id}")),
        json_string(&text),
    )
    .into_bytes();
    write_usage(prompt.unwrap_or(0), completion.unwrap_or(0), &mut out);
    out.push(b'}');
    Ok(out)
}

/// An OpenAI-format error answer for an Anthropic error answer: the status an OpenAI client
/// acts on, and a body `{"error":{"message","type","code"}}`.
///
/// - `429` stays `429` (`rate_limit_exceeded`); keep its `retry-after` header.
/// - `529` (overloaded) becomes `503`, which clients retry.
/// - `401`, `403` (the gateway's own credentials were refused) become `502`: the client's
///   request was not at fault, and the provider's message is not passed on.
/// - `404` keeps its status (`model_not_found`), `413` too; other statuses are kept.
///
/// The provider's message is passed on when the body is its error JSON; otherwise a message
/// names the status only.
pub fn to_openai_error(status: StatusCode, body: &[u8]) -> (StatusCode, Vec<u8>) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.chars().take(1000).collect::<String>());
    let (status, kind, code, message) = match status.as_u16() {
        401 | 403 | 407 => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("upstream_auth_failed"),
            "the upstream refused the gateway's credentials".to_owned(),
        ),
        429 => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            message.unwrap_or_else(|| "the upstream is rate-limiting requests".into()),
        ),
        529 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("overloaded"),
            message.unwrap_or_else(|| "the upstream is overloaded".into()),
        ),
        404 => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found").filter(|_| kind == Some("not_found_error")),
            message.unwrap_or_else(|| "not found".into()),
        ),
        413 => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            message.unwrap_or_else(|| "the request is too large".into()),
        ),
        _ if status.is_client_error() => (
            status,
            "invalid_request_error",
            None,
            message.unwrap_or_else(|| format!("the upstream answered {}", status.as_u16())),
        ),
        _ => (
            if status.is_server_error() {
                status
            } else {
                StatusCode::BAD_GATEWAY
            },
            "server_error",
            None,
            message.unwrap_or_else(|| format!("the upstream answered {}", status.as_u16())),
        ),
    };
    (status, openai_error_body(&message, kind, code).to_vec())
}

/// `{"prompt_tokens":...,"completion_tokens":...,"total_tokens":...}`.
pub(crate) fn write_usage(prompt: u64, completion: u64, out: &mut Vec<u8>) {
    let total = prompt.saturating_add(completion);
    let usage = format!(
        "{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{total}}}"
    );
    out.extend_from_slice(usage.as_bytes());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn token_counts_near_u64_max_saturate_instead_of_panicking() {
        let message = json!({
            "id": "msg_1", "type": "message", "model": "claude-x", "content": [],
            "usage": {"input_tokens": u64::MAX, "cache_read_input_tokens": 1,
                      "cache_creation_input_tokens": u64::MAX, "output_tokens": 3},
        });
        let out: Value =
            serde_json::from_slice(&to_chat_completion(message.to_string().as_bytes(), 7).unwrap())
                .unwrap();
        assert_eq!(out["usage"]["prompt_tokens"], u64::MAX);
        assert_eq!(out["usage"]["total_tokens"], u64::MAX);
    }

    #[test]
    fn a_message_becomes_a_chat_completion() {
        let message = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Hello"}, {"type": "thinking", "thinking": "hm"},
                        {"type": "text", "text": ", world"}],
            "stop_reason": "max_tokens", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 3},
        });
        let out: Value =
            serde_json::from_slice(&to_chat_completion(message.to_string().as_bytes(), 7).unwrap())
                .unwrap();
        assert_eq!(
            out,
            json!({
                "id": "chatcmpl-msg_1", "object": "chat.completion", "created": 7, "model": "claude-x",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world"},
                             "logprobs": null, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 15, "completion_tokens": 3, "total_tokens": 18},
            })
        );
        assert!(to_chat_completion(b"{\"type\":\"error\"}", 0).is_err());
        assert!(to_chat_completion(b"\xff", 0).is_err());
    }

    #[test]
    fn errors_get_the_status_an_openai_client_acts_on() {
        let body = |kind: &str, message: &str| {
            json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
                .to_string()
        };
        let cases = [
            (
                429,
                body("rate_limit_error", "slow down"),
                429,
                "slow down",
                "rate_limit_exceeded",
            ),
            (
                529,
                body("overloaded_error", "Overloaded"),
                503,
                "Overloaded",
                "overloaded",
            ),
            (
                401,
                body("authentication_error", "invalid x-api-key sk-ant-123"),
                502,
                "the upstream refused the gateway's credentials",
                "upstream_auth_failed",
            ),
            (
                404,
                body("not_found_error", "model: claude-z"),
                404,
                "model: claude-z",
                "model_not_found",
            ),
            (
                500,
                "<html>oops</html>".to_owned(),
                500,
                "the upstream answered 500",
                "",
            ),
        ];
        for (status, input, want_status, want_message, want_code) in cases {
            let (s, out) = to_openai_error(StatusCode::from_u16(status).unwrap(), input.as_bytes());
            assert_eq!(s.as_u16(), want_status);
            let out: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(out["error"]["message"], want_message);
            assert_eq!(out["error"]["code"].as_str().unwrap_or(""), want_code);
        }
        assert_eq!(finish_reason(Some("end_turn")), "stop");
        assert_eq!(finish_reason(Some("stop_sequence")), "stop");
        assert_eq!(finish_reason(Some("refusal")), "content_filter");
        assert_eq!(finish_reason(None), "stop");
    }
}
