//! The OpenAI request-body reader used for routing, and the prompt-prefix key that reads the
//! same bodies: any bytes give request facts, an empty body or a typed refusal, never a panic;
//! and on every body serde_json reads, the reader reads what a serde_json-based reference
//! reads (differential).
#![no_main]

use bytes::Bytes;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use tower_ai_balance::{
    affinity::{ExtractKey, PromptPrefix},
    route::{Decide, OpenAiRequest, OpenAiRules, Rules},
};

#[path = "../../tests/support/openai_reference.rs"]
mod reference;

fuzz_target!(|data: &[u8]| {
    let read = OpenAiRequest::parse(data);
    if let Some(expected) = reference::reference(data) {
        assert_eq!(read.map_err(drop), expected.map(Some));
    }
    let request = http::Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::copy_from_slice(data)))
        .unwrap();
    let _ = OpenAiRules(Rules::new()).decide(&request);
    for n in [0, 64, usize::MAX] {
        let _ = PromptPrefix(n).extract(&request);
    }
});
