//! An Anthropic Messages event stream as an OpenAI `chat.completion.chunk` stream.
//!
//! Incremental: bytes go in as they arrive (an event may be split across chunks, a chunk may
//! hold several events, lines may end with CRLF), chunks come out as soon as an event is
//! whole. Never panics, whatever the bytes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{
    error::ResponseError,
    response::{finish_reason, usage, write_usage},
    sse::{Event, SseParser},
};
use crate::json::write::openai_error_body;

/// Translates one stream. Feed it with [`push`](Self::push) and end it with
/// [`finish`](Self::finish); each appends OpenAI SSE bytes to `out`.
///
/// | Anthropic event | OpenAI output |
/// |---|---|
/// | `message_start` | remembered: id, model, input tokens |
/// | first text (or `message_stop`) | first, a chunk with `delta: {"role": "assistant", "content": ""}` |
/// | `content_block_start` (text) | its text, if any, as a content chunk |
/// | `content_block_delta` (`text_delta`) | a content chunk |
/// | `message_delta` | remembered: `stop_reason`, output tokens |
/// | `message_stop` | a chunk with `finish_reason`; a usage chunk (`choices: []`) if asked for; `data: [DONE]` |
/// | `error` | `data: {"error": {...}}`, then [`ResponseError::Upstream`] |
/// | `ping`, `content_block_stop`, other blocks and deltas, unknown events | nothing |
///
/// A stream that ends before `message_stop` fails with [`ResponseError::Truncated`] and never
/// gets a `[DONE]`: a client must not mistake a cut answer for a whole one.
#[derive(Debug)]
pub struct StreamTranslator {
    sse: SseParser,
    events: Vec<Event>,
    include_usage: bool,
    id: String,
    model: Value,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    stop_reason: Option<String>,
    started: bool,
    done: bool,
    failed: bool,
}

impl StreamTranslator {
    /// A translator for one stream; `include_usage` adds the usage chunk before `[DONE]`
    /// (the request's `stream_options.include_usage`).
    pub fn new(include_usage: bool) -> Self {
        Self {
            sse: SseParser::default(),
            events: Vec::new(),
            include_usage,
            id: String::new(),
            model: Value::Null,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            prompt_tokens: 0,
            completion_tokens: 0,
            stop_reason: None,
            started: false,
            done: false,
            failed: false,
        }
    }

    /// Whether `message_stop` was translated: the OpenAI stream is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Translates the events `bytes` complete. After the stream is done or has failed, further
    /// bytes are ignored.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), ResponseError> {
        if self.done || self.failed {
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.events);
        let parsed = self.sse.push(bytes, &mut events);
        let mut result = parsed.inspect_err(|_| self.failed = true);
        for event in events.drain(..) {
            if result.is_err() || self.done {
                break;
            }
            result = self.event(&event, out);
        }
        self.events = events;
        result
    }

    /// Ends the input: an error unless the stream was complete.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), ResponseError> {
        // A last event without its blank line is not whole: SSE drops it, and so does this.
        let _ = out;
        if self.done {
            Ok(())
        } else {
            self.failed = true;
            Err(ResponseError::Truncated)
        }
    }

    fn event(&mut self, event: &Event, out: &mut Vec<u8>) -> Result<(), ResponseError> {
        if event.data.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let Ok(data) = serde_json::from_slice::<Value>(&event.data) else {
            self.failed = true;
            return Err(ResponseError::Malformed);
        };
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.name.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = id.chars().take(200).collect();
                }
                // Repeated in every chunk, so bounded as the id is: a model's name is short.
                self.model = match message.get("model") {
                    Some(Value::String(model)) => Value::String(model.chars().take(200).collect()),
                    _ => Value::Null,
                };
                self.read_usage(message.get("usage"));
                // The role chunk waits for the first text: an error before it is then the
                // stream's first event, which Failover's first-chunk check recognises.
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(text) = block.get("text").and_then(Value::as_str) {
                        self.text(text, out);
                    }
                }
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                if delta.get("type").and_then(Value::as_str) == Some("text_delta") {
                    if let Some(text) = delta.get("text").and_then(Value::as_str) {
                        self.text(text, out);
                    }
                }
            }
            "message_delta" => {
                if let Some(reason) = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(reason.to_owned());
                }
                self.read_usage(data.get("usage"));
            }
            "message_stop" => {
                self.start(out);
                let finish = finish_reason(self.stop_reason.as_deref());
                self.chunk(Delta::None, Some(finish), out);
                if self.include_usage {
                    self.head(out);
                    out.extend_from_slice(b",\"choices\":[],\"usage\":");
                    write_usage(self.prompt_tokens, self.completion_tokens, out);
                    out.extend_from_slice(b"}\n\n");
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "error" => {
                let error = data.get("error").unwrap_or(&Value::Null);
                let field = |name: &str| {
                    error
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .chars()
                        .take(1000)
                        .collect::<String>()
                };
                let (upstream_kind, message) = (field("type"), field("message"));
                let (kind, code) = match upstream_kind.as_str() {
                    "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
                    "overloaded_error" => ("server_error", Some("overloaded")),
                    "invalid_request_error" => ("invalid_request_error", None),
                    _ => ("server_error", None),
                };
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&openai_error_body(&message, kind, code));
                out.extend_from_slice(b"\n\n");
                self.failed = true;
                return Err(ResponseError::Upstream {
                    kind: upstream_kind,
                    message,
                });
            }
            // ping, content_block_stop, and events added to the API later.
            _ => {}
        }
        Ok(())
    }

    fn read_usage(&mut self, value: Option<&Value>) {
        let Some(value) = value else { return };
        let (prompt, completion) = usage(value);
        if let Some(p) = prompt {
            self.prompt_tokens = p;
        }
        if let Some(c) = completion {
            // Anthropic's counts are cumulative.
            self.completion_tokens = c;
        }
    }

    /// The first chunk, with the assistant's role, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            self.chunk(Delta::Role, None, out);
        }
    }

    fn text(&mut self, text: &str, out: &mut Vec<u8>) {
        if !text.is_empty() {
            self.start(out);
            self.chunk(Delta::Content(text), None, out);
        }
    }

    /// `data: {"id":...,"object":"chat.completion.chunk","created":...,"model":...`: a chunk's
    /// fields in OpenAI's order, up to its choices.
    fn head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: {\"id\":");
        out.extend_from_slice(json_string(&format!("chatcmpl-{}", self.id)).as_bytes());
        out.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        out.extend_from_slice(self.created.to_string().as_bytes());
        out.extend_from_slice(b",\"model\":");
        out.extend_from_slice(self.model.to_string().as_bytes());
    }

    fn chunk(&self, delta: Delta<'_>, finish: Option<&str>, out: &mut Vec<u8>) {
        self.head(out);
        out.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
        match delta {
            Delta::Role => out.extend_from_slice(b"{\"role\":\"assistant\",\"content\":\"\"}"),
            Delta::Content(text) => {
                out.extend_from_slice(b"{\"content\":");
                out.extend_from_slice(json_string(text).as_bytes());
                out.push(b'}');
            }
            Delta::None => out.extend_from_slice(b"{}"),
        }
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(finish) => out.extend_from_slice(json_string(finish).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }
}

/// What a chunk's `delta` holds.
enum Delta<'a> {
    Role,
    Content(&'a str),
    None,
}

pub(crate) use crate::json::write::string as json_string;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const STREAM: &str = "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\r\n\r\nevent: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\nevent: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\nevent: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\r\n\r\nevent: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", w\\u00f6rld\"}}\r\n\r\nevent: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\nevent: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\r\n\r\nevent: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";

    /// The OpenAI events (data payloads) of a translated stream.
    fn data_lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| e.strip_prefix("data: ").unwrap().to_owned())
            .collect()
    }

    #[test]
    fn a_stream_translates_whatever_its_chunking() {
        let mut whole = Vec::new();
        let mut t = StreamTranslator::new(true);
        t.push(STREAM.as_bytes(), &mut whole).unwrap();
        t.finish(&mut whole).unwrap();
        let events = data_lines(&whole);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(chunks.len(), 5);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["model"], "claude-x");
        assert_eq!(chunks[0]["id"], "chatcmpl-msg_1");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello, wörld");
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[4]["choices"], json!([]));
        assert_eq!(
            chunks[4]["usage"],
            json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40})
        );
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
        }
        // Any chunking gives the same bytes (the created time aside, which is the same second
        // or not: compare without it).
        let strip = |b: &[u8]| {
            let s = String::from_utf8(b.to_vec()).unwrap();
            s.replace(&format!("\"created\":{}", t.created), "")
        };
        for cut in [1, 2, 3, 7, 64, 1000] {
            let mut t2 = StreamTranslator::new(true);
            t2.created = t.created;
            let mut out = Vec::new();
            for piece in STREAM.as_bytes().chunks(cut) {
                t2.push(piece, &mut out).unwrap();
            }
            t2.finish(&mut out).unwrap();
            assert_eq!(strip(&out), strip(&whole), "cut {cut}");
        }
    }

    #[test]
    fn a_cut_stream_gets_no_done() {
        let cut = &STREAM[..STREAM.find("event: message_stop").unwrap()];
        let mut out = Vec::new();
        let mut t = StreamTranslator::new(false);
        t.push(cut.as_bytes(), &mut out).unwrap();
        assert_eq!(t.finish(&mut out), Err(ResponseError::Truncated));
        assert!(!String::from_utf8(out).unwrap().contains("[DONE]"));
    }

    #[test]
    fn an_error_event_becomes_an_openai_error_event() {
        let input = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\nevent: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n";
        let mut out = Vec::new();
        let mut t = StreamTranslator::new(false);
        let err = t.push(input.as_bytes(), &mut out).unwrap_err();
        assert_eq!(
            err,
            ResponseError::Upstream {
                kind: "overloaded_error".into(),
                message: "Overloaded".into()
            }
        );
        let events = data_lines(&out);
        // Nothing before it: the error is the stream's first event.
        assert_eq!(events.len(), 1, "{events:?}");
        let error: Value = serde_json::from_str(&events[0]).unwrap();
        assert_eq!(error["error"]["message"], "Overloaded");
        assert_eq!(error["error"]["code"], "overloaded");
        // Nothing more comes out after the failure.
        let before = out.len();
        t.push(STREAM.as_bytes(), &mut out).unwrap();
        assert_eq!(out.len(), before);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        let mut t = StreamTranslator::new(false);
        assert_eq!(
            t.push(b"data: {not json\n\n", &mut out),
            Err(ResponseError::Malformed)
        );
    }

    #[test]
    fn token_counts_near_u64_max_saturate_instead_of_panicking() {
        let stream = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"x\",",
            "\"usage\":{\"input_tokens\":18446744073709551615,\"cache_read_input_tokens\":1,",
            "\"cache_creation_input_tokens\":18446744073709551615}}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},",
            "\"usage\":{\"output_tokens\":18446744073709551615}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let mut out = Vec::new();
        let mut t = StreamTranslator::new(true);
        t.push(stream.as_bytes(), &mut out).unwrap();
        let events = data_lines(&out);
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["prompt_tokens"], u64::MAX);
        assert_eq!(usage["usage"]["total_tokens"], u64::MAX);
    }

    #[test]
    fn a_huge_model_name_is_not_repeated_in_every_chunk() {
        // The id is cut to 200 characters so that an upstream cannot make every chunk large;
        // the model, repeated in every chunk just the same, must be bounded too.
        let model = "m".repeat(1 << 20);
        let mut stream = format!(
            "data: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"model\":\"{model}\"}}}}\n\n"
        );
        for _ in 0..64 {
            stream.push_str("data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n");
        }
        let mut out = Vec::new();
        let mut t = StreamTranslator::new(false);
        t.push(stream.as_bytes(), &mut out).unwrap();
        assert!(
            out.len() < 64 * 4096,
            "{} bytes out for {} in",
            out.len(),
            stream.len()
        );
    }
}
