//! Reading an OpenAI request body for routing: the in-place scanner beside serde_json.
//!
//! `cargo bench --bench route`. For each body (a 2 KiB chat, and 8 MiB bodies: a chat with a
//! base64 image, a prompt of token ids, a chat of many short messages):
//! - `scanner`: `OpenAiRequest::parse`, which reads the routed fields in place and skips the
//!   rest;
//! - `serde_json Value`: the reader it replaced, a full `serde_json::Value` and the same fields
//!   read from it;
//! - `serde_json IgnoredAny`: serde_json only checking the body (`IgnoredAny`), the least any
//!   serde_json-based reader pays before reading a field.
//!
//! Throughput is in bytes of body per second.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::Value;
use tower_ai_balance::route::{OpenAiRequest, RequestInfo};

const MIB: usize = 1 << 20;

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let size = 8 * MIB;
    let mut image = br#"{"model":"gpt-4o","max_tokens":300,"messages":[{"role":"user","content":[{"type":"text","text":"What is in this picture?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#.to_vec();
    let tail = br#""}}]}]}"#;
    image.resize(size - tail.len(), b'A');
    image.extend_from_slice(tail);

    let mut ids = br#"{"model":"gpt-4o","max_tokens":300,"prompt":[1"#.to_vec();
    while ids.len() < size - 2 {
        ids.extend_from_slice(b",1");
    }
    ids.extend_from_slice(b"]}");

    let turn =
        br#"{"role":"user","content":"a short turn of a long conversation\nwith a line break"},"#;
    let mut chat = br#"{"model":"gpt-4o","max_tokens":300,"messages":["#.to_vec();
    while chat.len() + turn.len() < size {
        chat.extend_from_slice(turn);
    }
    chat.extend_from_slice(br#"{"role":"user","content":"the end"}]}"#);

    let mut small = br#"{"model":"gpt-4o","max_tokens":300,"stream":true,"messages":["#.to_vec();
    while small.len() < 2048 {
        small.extend_from_slice(turn);
    }
    small.extend_from_slice(br#"{"role":"user","content":"the end"}]}"#);

    vec![
        ("2 KiB chat", small),
        ("8 MiB image chat", image),
        ("8 MiB token ids", ids),
        ("8 MiB short messages", chat),
    ]
}

/// The reader the scanner replaced: a whole `serde_json::Value`, then the fields.
fn with_value(bytes: &[u8]) -> Option<RequestInfo> {
    let json: Value = serde_json::from_slice(bytes).ok()?;
    let text = |v: &Value| match v {
        Value::String(s) => s.chars().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .map(|s| s.chars().count())
            .sum(),
        _ => 0,
    };
    let (chars, ids) = match (json.get("messages"), json.get("prompt")) {
        (Some(messages), _) => (
            messages
                .as_array()?
                .iter()
                .map(|m| text(&m["content"]))
                .sum(),
            0,
        ),
        (None, Some(Value::Array(items))) => items.iter().fold((0, 0), |(c, i), item| match item {
            Value::String(s) => (c + s.chars().count(), i),
            Value::Array(ids) => (c, i + ids.len()),
            _ => (c, i + 1),
        }),
        (None, Some(prompt)) => (text(prompt), 0),
        (None, None) => (0, 0),
    };
    let max_tokens = json["max_tokens"]
        .as_u64()
        .or_else(|| json["max_completion_tokens"].as_u64())
        .unwrap_or(256);
    Some(RequestInfo {
        model: json["model"].as_str().map(str::to_owned),
        prompt_tokens: u32::try_from(chars.div_ceil(4) + ids).unwrap_or(u32::MAX),
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
    })
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(3));
    let mut group = c.benchmark_group("read");
    for (name, body) in bodies() {
        let expected = OpenAiRequest::parse(&body).unwrap();
        assert_eq!(with_value(&body), expected, "both readers agree on {name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("scanner", name), &body, |b, body| {
            b.iter(|| OpenAiRequest::parse(black_box(body)))
        });
        group.bench_with_input(
            BenchmarkId::new("serde_json Value", name),
            &body,
            |b, body| b.iter(|| with_value(black_box(body))),
        );
        group.bench_with_input(
            BenchmarkId::new("serde_json IgnoredAny", name),
            &body,
            |b, body| {
                b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).is_ok())
            },
        );
    }
    group.finish();
    c.final_summary();
}
