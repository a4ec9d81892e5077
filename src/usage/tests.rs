//! The reader on whole answers and streams of both formats, split at every byte.

use proptest::prelude::*;

use super::{lexer::MAX_USAGE, Usage, UsageReader};

/// An OpenAI stream with `stream_options.include_usage`: `usage` is null in every chunk but
/// the last, which has no choices. The content talks about usage, as text.
const OPENAI_SSE: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"The \\\"usage\\\": {\\\"prompt_tokens\\\": 999} field\\n\\ndata: {\\\"usage\\\":{}}\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    ": a comment, and an event of another name\n",
    "event: ping\ndata: {}\nid: 3\nretry: 100\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":1234,\"completion_tokens\":56,\"total_tokens\":1290,\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

/// A non-streamed OpenAI answer whose tool call's arguments hold a `usage` of their own.
const OPENAI_JSON: &str = r#"{
  "id": "chatcmpl-2",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": null,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "record", "arguments": "{\"usage\": {\"prompt_tokens\": 5}}"}}],
        "usage": {"prompt_tokens": 6}
      },
      "logprobs": null,
      "finish_reason": "tool_calls"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}
  },
  "service_tier": "default"
}"#;

/// A non-streamed Anthropic message that read and wrote the prompt cache.
const ANTHROPIC_JSON: &str = r#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hello! {\"usage\":{\"input_tokens\":1}}"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":200,"cache_read_input_tokens":3000,"output_tokens":40,"service_tier":"standard"}}"#;

/// An Anthropic stream, with `\r\n` line ends: the input in `message_start`, the output
/// counted cumulatively in `message_delta`.
const ANTHROPIC_SSE: &str = concat!(
    "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_02\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\r\n\r\n",
    "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
    "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
    "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \\u00e9\\\\\"}}\r\n\r\n",
    "event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
    "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\r\n\r\n",
    "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
);

fn bodies() -> [(&'static str, &'static str, Option<Usage>); 4] {
    [
        (
            "openai stream",
            OPENAI_SSE,
            Some(Usage::new(1234, 56).cached(1024)),
        ),
        ("openai answer", OPENAI_JSON, Some(Usage::new(19, 10))),
        (
            "anthropic answer",
            ANTHROPIC_JSON,
            Some(Usage::new(3212, 40).cached(3000)),
        ),
        (
            "anthropic stream",
            ANTHROPIC_SSE,
            Some(Usage::new(125, 15).cached(100)),
        ),
    ]
}

fn read(pieces: impl IntoIterator<Item = impl AsRef<[u8]>>) -> Option<Usage> {
    let mut reader = UsageReader::new();
    for piece in pieces {
        reader.push(piece.as_ref());
    }
    reader.usage()
}

#[test]
fn each_format_is_read_whole_and_byte_by_byte() {
    for (name, body, want) in bodies() {
        assert_eq!(read([body]), want, "{name}, whole");
        assert_eq!(
            read(body.as_bytes().chunks(1)),
            want,
            "{name}, byte by byte"
        );
    }
}

#[test]
fn each_format_is_read_split_at_every_byte() {
    for (name, body, want) in bodies() {
        let bytes = body.as_bytes();
        for at in 0..=bytes.len() {
            assert_eq!(
                read([&bytes[..at], &bytes[at..]]),
                want,
                "{name}, split at {at}"
            );
        }
    }
}

#[test]
fn lone_carriage_returns_end_lines_also_when_split_from_their_line_feed() {
    let lf = ANTHROPIC_SSE.replace("\r\n", "\n");
    let cr = ANTHROPIC_SSE.replace("\r\n", "\r");
    let want = Some(Usage::new(125, 15).cached(100));
    assert_eq!(read([&lf]), want);
    assert_eq!(read([&cr]), want);
    // A `\r` ending one piece and the `\n` starting the next end one line, not two: a blank
    // line there would split the event's data lines into two events.
    let joined = "data: {\"usage\":\r\ndata: {\"prompt_tokens\":3}}\r\n\r\n";
    assert_eq!(read([joined]), Some(Usage::new(3, 0)), "data lines join");
    let at = joined.find('\n').unwrap();
    assert_eq!(read([&joined[..at], &joined[at..]]), Some(Usage::new(3, 0)));
}

#[test]
fn an_empty_piece_between_a_carriage_return_and_its_line_feed_changes_nothing() {
    // A body may hand over an empty data frame anywhere; one between the `\r` and the `\n`
    // of a line end must not turn the `\n` into a blank line that splits the event.
    let joined = "data: {\"usage\":\r\ndata: {\"prompt_tokens\":3}}\r\n\r\n";
    let at = joined.find('\n').unwrap();
    assert_eq!(
        read([&joined[..at], "", &joined[at..]]),
        Some(Usage::new(3, 0))
    );
}

#[test]
fn what_is_not_the_servers_count_is_not_read() {
    let none: [&str; 9] = [
        "",
        "   \n",
        "{}",
        r#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":5}"}}]}"#,
        r#"{"data":{"usage":{"prompt_tokens":5}}}"#,
        r#"[{"usage":{"prompt_tokens":5}}]"#,
        "data: [DONE]\n\n",
        "<html>usage: {\"prompt_tokens\": 5}</html>",
        r#"{"usage":null,"x":{"usage":{"prompt_tokens":5}}}"#,
    ];
    for body in none {
        assert_eq!(read([body]), None, "{body}");
    }
    // A `message` object holds the usage only at the top level.
    assert_eq!(
        read([r#"{"a":{"message":{"usage":{"prompt_tokens":5}}}}"#]),
        None
    );
    assert_eq!(
        read([r#"{"type":"message_start","message":{"usage":{"input_tokens":5}}}"#]),
        Some(Usage::new(5, 0))
    );
    // A key longer than the reader remembers is none of its keys.
    assert_eq!(
        read([r#"{"usage_and_more":{"prompt_tokens":5},"usage":{"prompt_tokens":6}}"#]),
        Some(Usage::new(6, 0))
    );
}

#[test]
fn a_split_usage_object_larger_than_the_bound_is_dropped() {
    let padding = " ".repeat(MAX_USAGE);
    let body = format!(r#"{{"usage":{{"prompt_tokens":5,{padding}"completion_tokens":2}}}}"#);
    assert_eq!(
        read([&body]),
        Some(Usage::new(5, 2)),
        "in one piece: in place"
    );
    let at = body.len() / 2;
    assert_eq!(
        read([&body[..at], &body[at..]]),
        None,
        "split: beyond the bound"
    );
    // The reader goes on after it.
    let stream = format!("data: {body}\n\ndata: {{\"usage\":{{\"prompt_tokens\":9}}}}\n\n");
    let at = stream.len() / 3;
    assert_eq!(read([&stream[..at], &stream[at..]]), Some(Usage::new(9, 0)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_of_a_real_body_reads_the_same(
        which in 0usize..4,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let (name, body, want) = bodies()[which];
        let bytes = body.as_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([bytes.len()]) {
            pieces.push(&bytes[from..to]);
            from = to;
        }
        prop_assert_eq!(read(pieces), want, "{}", name);
    }

    #[test]
    fn any_bytes_are_read_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        size in 1usize..64,
    ) {
        // Whatever they are, split anyhow: read without a panic, and the same either way.
        let whole = read([&bytes]);
        prop_assert_eq!(read(bytes.chunks(size)), whole);
    }

    #[test]
    fn real_bodies_broken_anywhere_never_panic(
        which in 0usize..4,
        cut in any::<prop::sample::Index>(),
        noise in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let body = bodies()[which].1.as_bytes();
        let at = cut.index(body.len() + 1);
        let mut broken = body[..at].to_vec();
        broken.extend_from_slice(&noise);
        broken.extend_from_slice(&body[at..]);
        let _ = read(broken.chunks(7));
    }
}

/// A JSON string literal of `text` (quotes and backslashes escaped).
fn literal(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn generated_answers_read_their_usage_whatever_the_framing_and_splits(
        (prompt, completion, cached) in (any::<u64>(), any::<u64>(), any::<u64>()),
        noise in "[a-z{}\\[\\]\":,\\\\ ]{0,24}",
        space in "[ \t\r\n]{0,3}",
        stream in any::<bool>(),
        eol in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        bom in any::<bool>(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        // A data line holds no line end: the stream's JSON is spaced with spaces and tabs.
        let space = if stream { space.replace(['\r', '\n'], " ") } else { space };
        let s = &space;
        let usage = format!(
            "{{{s}\"prompt_tokens\"{s}:{s}{prompt}{s},\"completion_tokens\":{completion},{s}\
             \"prompt_tokens_details\":{s}{{\"cached_tokens\":{cached}}}{s}}}"
        );
        let noise = literal(&noise);
        let doc = format!(
            "{{\"id\":{noise},\"choices\":[{{\"delta\":{{\"content\":{noise}}},\"usage\":{{\"prompt_tokens\":1}}}}],\
             {noise}:{{\"usage\":{{\"prompt_tokens\":2}}}},{s}\"usage\"{s}:{s}{usage}{s}}}"
        );
        let mut body = String::new();
        if bom {
            body.push('\u{feff}');
        }
        if stream {
            for line in [
                ": comment".to_owned(),
                "event: x".to_owned(),
                format!("data: {{\"choices\":[],\"usage\":null,\"x\":{noise}}}"),
                String::new(),
                format!("data: {doc}"),
                String::new(),
                "data: [DONE]".to_owned(),
                String::new(),
            ] {
                body.push_str(&line);
                body.push_str(eol);
            }
        } else {
            body.push_str(&doc);
        }
        let bytes = body.as_bytes();
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        at.sort_unstable();
        let mut pieces = Vec::new();
        let mut from = 0;
        for to in at.into_iter().chain([bytes.len()]) {
            pieces.push(&bytes[from..to]);
            from = to;
        }
        prop_assert_eq!(
            read(pieces),
            Some(Usage::new(prompt, completion).cached(cached)),
            "{}",
            body
        );
    }
}
