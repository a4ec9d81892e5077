//! The SSE translator fed arbitrary chunkings and arbitrary bytes: the same output whatever
//! the chunking, and never a panic.

use proptest::prelude::*;
use serde_json::Value;
use tower_ai_balance::anthropic::StreamTranslator;

use crate::support::sse_data;

fn stream(crlf: bool) -> String {
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":9,"output_tokens":1}}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        r#"{"type": "ping"}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hé"}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"llo\n"}}"#,
        r#"{"type":"content_block_stop","index":0}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":2}}"#,
        r#"{"type":"message_stop"}"#,
    ];
    let nl = if crlf { "\r\n" } else { "\n" };
    events
        .iter()
        .map(|data| {
            let name = serde_json::from_str::<Value>(data).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned();
            format!("event: {name}{nl}data: {data}{nl}{nl}")
        })
        .collect()
}

/// Translates `input` cut at `cuts`; the output's events with `created` removed, and whether
/// the stream completed.
fn translate(input: &[u8], cuts: &[usize]) -> (Vec<String>, bool) {
    let mut translator = StreamTranslator::new(true);
    let mut out = Vec::new();
    let mut ok = true;
    let mut at = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    points.push(input.len());
    for point in points {
        if point < at {
            continue;
        }
        ok &= translator.push(&input[at..point], &mut out).is_ok();
        at = point;
    }
    ok &= translator.finish(&mut out).is_ok();
    let events = sse_data(&out)
        .into_iter()
        .map(|e| match serde_json::from_str::<Value>(&e) {
            Ok(mut v) => {
                if let Some(o) = v.as_object_mut() {
                    o.remove("created");
                }
                v.to_string()
            }
            // Every output event is JSON or the end marker.
            Err(_) => {
                assert_eq!(e, "[DONE]");
                e
            }
        })
        .collect();
    (events, ok && translator.is_done())
}

proptest! {
    #[test]
    fn any_chunking_gives_the_same_stream(cuts in prop::collection::vec(any::<usize>(), 0..40), crlf: bool) {
        let input = stream(crlf);
        let whole = translate(input.as_bytes(), &[]);
        prop_assert!(whole.1);
        prop_assert_eq!(whole.0.last().map(String::as_str), Some("[DONE]"));
        prop_assert_eq!(translate(input.as_bytes(), &cuts), whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), cuts in prop::collection::vec(any::<usize>(), 0..16)) {
        let _ = translate(&bytes, &cuts);
    }

    #[test]
    fn damaged_streams_never_panic_and_never_end_in_done_unless_whole(
        at in any::<usize>(),
        junk in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let input = stream(false).into_bytes();
        let at = at % input.len();
        let mut damaged = input[..at].to_vec();
        damaged.extend_from_slice(&junk);
        damaged.extend_from_slice(&input[at..]);
        let (events, complete) = translate(&damaged, &cuts);
        if !complete {
            prop_assert_ne!(events.last().map(String::as_str), Some("[DONE]"));
        }
    }
}
