//! The OpenAI request-body reader used for routing: any bytes give request facts or `None`,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tower_ai_balance::route::OpenAiRequest::parse(data);
});
