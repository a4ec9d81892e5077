//! Block keys from OpenAI chat bodies as a client sends them, and the policy fed with them.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rand::{rngs::SmallRng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;
use tower_ai_balance::{
    pick::Filter,
    prefix::{with_scratch, ChatMessages, ExtractBlocks, PrefixIndex, PrefixPolicy},
};

use crate::endpoints;

const SYSTEM: &str = "You are a meticulous assistant for a hardware store. Answer briefly, \
    cite the aisle of every product you name, and never invent stock levels you were not given.";

fn chat(turns: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut messages = vec![json!({"role": "system", "content": SYSTEM})];
    for (role, content) in turns {
        messages.push(json!({"role": role, "content": content}));
    }
    let body = json!({"model": "m", "stream": true, "max_tokens": 256, "messages": messages});
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn blocks(keys: &ChatMessages, request: &Request<Full<Bytes>>) -> (u64, Vec<u64>) {
    let mut out = Vec::new();
    let tokens = keys.extract(request, &mut out).expect("a chat body");
    (tokens, out)
}

#[test]
fn turns_of_one_conversation_share_their_blocks() {
    let keys = ChatMessages::new(64).unwrap();
    let q1 = "Where are the 4 mm wood screws, and do you have them in stainless steel? I am \
        building a deck by the sea and the last ones rusted within a season, so I need the \
        kind that will not, in lengths of 30 and 40 mm, about five hundred of each.";
    let a1 = "Aisle 7, bin C: brass and zinc-plated. Stainless ones are in aisle 7, bin D.";
    let (t1, first) = blocks(&keys, &chat(&[("user", q1)]));
    let (t2, second) = blocks(
        &keys,
        &chat(&[("user", q1), ("assistant", a1), ("user", "And washers?")]),
    );
    assert!(t2 > t1 && second.len() > first.len());
    // Every full block of the first turn but the last, which the closing bracket ends.
    let shared = first.len() - 1;
    assert_eq!(first[..shared], second[..shared]);
    // Another conversation shares the system prompt's blocks only.
    let (_, other) = blocks(&keys, &chat(&[("user", "Do you sell ladders?")]));
    let common = other.iter().zip(&first).take_while(|(a, b)| a == b).count();
    assert!(
        common >= SYSTEM.len() / 64 - 1 && common < shared,
        "{common}"
    );
}

#[test]
fn the_next_turn_is_routed_to_the_first_ones_endpoint() {
    let keys = ChatMessages::new(64).unwrap();
    let eps = endpoints(8);
    let policy = PrefixPolicy::new(Arc::new(PrefixIndex::new(1_000)), 16)
        .and_then(|p| p.prefill_rate(40_000.0))
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut route = |request: &Request<Full<Bytes>>| {
        with_scratch(|out| {
            let tokens = keys.extract(request, out).unwrap();
            let c = policy
                .pick(&eps, &Filter::new(), out, tokens, &mut rng)
                .unwrap();
            policy
                .placed(&eps[c.index], out, &c)
                .first_token(Instant::now());
            c
        })
    };
    let mut first = Vec::new();
    for user in 0..20 {
        let q = format!("Customer {user} asks: which glue holds ceramic to metal outdoors?");
        first.push((q.clone(), route(&chat(&[("user", &q)]))));
    }
    for (q, c) in first {
        let next = route(&chat(&[
            ("user", &q),
            ("assistant", "Two-part epoxy, aisle 3."),
            ("user", "Thanks!"),
        ]));
        assert_eq!(next.index, c.index);
        assert!(next.cached_blocks >= c.cached_blocks);
    }
}

#[test]
fn reading_the_keys_leaves_the_request_untouched() {
    let keys = ChatMessages::new(32).unwrap();
    let request = chat(&[("user", "hello")]);
    let before = request.body().clone().collect();
    let before = futures_util::FutureExt::now_or_never(before)
        .unwrap()
        .unwrap()
        .to_bytes();
    blocks(&keys, &request);
    let after = futures_util::FutureExt::now_or_never(request.into_body().collect())
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(before, after);
}
