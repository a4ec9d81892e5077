//! Mid-stream continuation: the [`Continuation`] policy that builds the request carrying a
//! broken stream on, and [`OpenAiChat`] for chat completions (feature `openai`).

use bytes::Bytes;

/// Builds the request that carries a broken stream on, on another endpoint, from what was
/// already streamed. Opt-in ([`FailoverBuilder::continuation`](super::FailoverBuilder::continuation)):
/// unsafe for tool calls and anything else a model must not say twice.
pub trait Continuation: Send + Sync + 'static {
    /// The body of the continuation request, from the original request's body and the bytes
    /// the caller has received so far; `None` to let the stream fail instead.
    fn continue_body(&self, original: &[u8], streamed: &[u8]) -> Option<Bytes>;
}

/// OpenAI-format chat completions, continued by a server that can continue a trailing
/// assistant message (vLLM, and servers that take its parameters).
///
/// The continuation request is the original request with:
///
/// - the partial answer appended as a final `{"role": "assistant", "content": ...}` message:
///   the text of every `choices[0].delta.content` the caller received, in order;
/// - `"continue_final_message": true` and `"add_generation_prompt": false`: vLLM's chat
///   parameters (also taken by llama.cpp's server) that render that message open-ended, with
///   no end-of-turn token and no new assistant turn after it, so the model carries on the same
///   text. vLLM refuses a request with both set to `true`; without them a chat template
///   closes the message and the model starts a new answer, repeating itself.
/// - `max_tokens` and `max_completion_tokens` (where the request has them) lowered by the
///   tokens already streamed, never below 1. Tokens are counted as content deltas: one per
///   `data:` event with a non-empty `content`, which is what vLLM and OpenAI send per token
///   (the role chunk's empty `content` is none). A server that puts several tokens in one
///   event is under-counted, so the original limit may be exceeded by that much in total;
///   `usage` is not read (it comes only at the end).
/// - `"stream": true`.
///
/// OpenAI's hosted API has no such parameters and does not continue a trailing assistant
/// message: it refuses unknown parameters or answers with a new turn. Point continuations at
/// servers that do (a continuation answered with anything but a 2xx event stream is not
/// spliced in; the caller's stream fails as it would have without one).
///
/// Declines (the stream fails as it broke) when the partial answer has tool calls or a
/// function call, when no content was streamed yet, when the request asks for several
/// choices (`n` above 1: one message continues one choice), or when the request is not a chat
/// completion (no `messages` array, or not JSON).
#[cfg(feature = "openai")]
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiChat;

#[cfg(feature = "openai")]
impl Continuation for OpenAiChat {
    fn continue_body(&self, original: &[u8], streamed: &[u8]) -> Option<Bytes> {
        use serde_json::{json, Value};

        let mut request: Value = serde_json::from_slice(original).ok()?;
        // One assistant message carries one choice on: `n` above 1 cannot be continued.
        if request["n"].as_u64().is_some_and(|n| n > 1) {
            return None;
        }
        let (mut text, mut tokens) = (String::new(), 0u64);
        for line in streamed.split(|&b| b == b'\n') {
            let Some(data) = line.trim_ascii().strip_prefix(b"data:") else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
                continue; // "[DONE]" or a partial line
            };
            // The first choice, by its index (a chunk of another choice is not its text).
            let choice = &event["choices"][0];
            if choice["index"].as_u64().is_some_and(|i| i != 0) {
                continue;
            }
            let delta = &choice["delta"];
            if !delta["tool_calls"].is_null() || !delta["function_call"].is_null() {
                return None;
            }
            // The role chunk's `"content": ""` is no token.
            if let Some(content) = delta["content"].as_str().filter(|c| !c.is_empty()) {
                text.push_str(content);
                tokens += 1;
            }
        }
        if text.is_empty() {
            return None;
        }
        let messages = request.get_mut("messages")?.as_array_mut()?;
        messages.push(json!({ "role": "assistant", "content": text }));
        for limit in ["max_tokens", "max_completion_tokens"] {
            if let Some(max) = request[limit].as_u64() {
                request[limit] = json!(max.saturating_sub(tokens).max(1));
            }
        }
        request["continue_final_message"] = json!(true);
        request["add_generation_prompt"] = json!(false);
        request["stream"] = json!(true);
        serde_json::to_vec(&request).ok().map(Bytes::from)
    }
}

#[cfg(all(test, feature = "openai", not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_openai_policy_produces_a_well_formed_request() {
        let original = br#"{"model":"m","stream":true,"max_tokens":100,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Count to five."}]}"#;
        let streamed = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"One, \"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"two, \"}}]}\n\n",
            "data: {\"id\":\"c\",\"choi"
        );
        let body = OpenAiChat
            .continue_body(original, streamed.as_bytes())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["model"], "m");
        assert_eq!(v["stream"], true);
        assert_eq!(v["max_tokens"], 98);
        assert_eq!(
            v["continue_final_message"], true,
            "vLLM continues the message"
        );
        assert_eq!(v["add_generation_prompt"], false, "and opens no new turn");
        let messages = v["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[1]["content"], "Count to five.",
            "the original messages, in order"
        );
        assert_eq!(messages[2]["role"], "assistant");
        assert_eq!(messages[2]["content"], "One, two, ");
    }

    #[test]
    fn it_declines_tool_calls_empty_answers_and_other_bodies() {
        let original = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let tool = b"data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0}]}}]}\n\n";
        assert!(OpenAiChat.continue_body(original, tool).is_none());
        assert!(OpenAiChat.continue_body(original, b"").is_none());
        let text = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";
        assert!(OpenAiChat.continue_body(b"not json", text).is_none());
        assert!(OpenAiChat
            .continue_body(br#"{"prompt":"x"}"#, text)
            .is_none());
    }

    #[test]
    fn the_empty_content_of_the_role_chunk_is_not_a_token() {
        // OpenAI and vLLM open a stream with `{"role":"assistant","content":""}`: no token.
        let original =
            br#"{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
        let streamed = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"One\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\", two\"}}]}\n\n",
        );
        let body = OpenAiChat
            .continue_body(original, streamed.as_bytes())
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["max_tokens"], 98, "two tokens streamed");
    }

    #[test]
    fn several_choices_are_not_spliced_into_one_message() {
        // With `n: 2` each chunk carries one choice, by its index: choice 1's text is not
        // the continuation of choice 0's.
        let original =
            br#"{"model":"m","n":2,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let streamed = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":1,\"delta\":{\"content\":\"B\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"C\"}}]}\n\n",
        );
        if let Some(body) = OpenAiChat.continue_body(original, streamed.as_bytes()) {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let messages = v["messages"].as_array().unwrap();
            assert_eq!(messages.last().unwrap()["content"], "AC", "{v}");
        }
    }
}
