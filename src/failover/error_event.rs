//! Recognising a stream that opens with an error event: [`openai_error_event`].

/// Whether a first chunk is an error event: an SSE `event: error` line, or a first `data:`
/// line (or bare JSON) whose object opens with an `"error"` key, as OpenAI-compatible servers
/// send when a generation fails before its first token.
pub fn openai_error_event(chunk: &[u8]) -> bool {
    for line in chunk.split(|&b| b == b'\n') {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with(b":") {
            continue;
        }
        if let Some(event) = line.strip_prefix(b"event:") {
            if event.trim_ascii() == b"error" {
                return true;
            }
            continue;
        }
        let data = line.strip_prefix(b"data:").unwrap_or(line).trim_ascii();
        return data
            .strip_prefix(b"{")
            .is_some_and(|object| object.trim_ascii_start().starts_with(b"\"error\""));
    }
    false
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::openai_error_event;

    #[test]
    fn error_events_are_recognised() {
        assert!(openai_error_event(
            b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n"
        ));
        assert!(openai_error_event(
            b"event: error\ndata: {\"type\":\"overloaded_error\"}\n\n"
        ));
        assert!(openai_error_event(
            b": keep-alive\n\ndata: { \"error\":1}\n\n"
        ));
        assert!(openai_error_event(b"{\"error\":\"bad\"}"));
        assert!(!openai_error_event(
            b"data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"error\"}}]}\n\n"
        ));
        assert!(!openai_error_event(b"data: [DONE]\n\n"));
        assert!(!openai_error_event(b""));
    }
}
