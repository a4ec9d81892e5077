//! The OpenAI continuation builder: any original body and any streamed bytes give a request
//! body or `None`, never a panic. The input is split at its first NUL byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_ai_balance::failover::{Continuation, OpenAiChat};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (original, streamed) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let _ = OpenAiChat.continue_body(original, streamed);
});
