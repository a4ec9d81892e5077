//! What routing a request costs in memory: reading an 8 MiB OpenAI body for its model and its
//! size allocates a few small values, not a copy or a tree of the body, and `Route` itself
//! allocates nothing when the routing lets the request through. Counted with a global
//! allocator that records this thread's bytes in use and their peak.
//!
//! `cargo test --test route_alloc -- --nocapture` prints the figures.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    convert::Infallible,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_ai_balance::{
    hints::WithHints,
    route::{Decide, OpenAiRules, RouteLayer, Routing, Rules},
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static IN_USE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(bytes: isize) {
    let _ = IN_USE.try_with(|now| {
        now.set(now.get() + bytes);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now.get())));
    });
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        grew(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grew(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        grew(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most bytes `f` had allocated at once beyond what was in use before it, and how many
/// allocations it made.
fn peak_during(f: impl FnOnce()) -> (usize, usize) {
    let base = IN_USE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let allocations = ALLOCATIONS.with(Cell::get);
    f();
    let peak = PEAK.with(Cell::get) - base;
    (peak as usize, ALLOCATIONS.with(Cell::get) - allocations)
}

#[test]
fn the_counter_sees_the_bytes() {
    let (peak, n) = peak_during(|| drop(std::hint::black_box(vec![0u8; 1 << 20])));
    assert_eq!((peak, n), (1 << 20, 1));
}

const MIB: usize = 1 << 20;

/// Bodies of just under 8 MiB, in the shapes that reach that size.
fn bodies() -> Vec<(&'static str, Bytes)> {
    let size = 8 * MIB - 1024;
    let mut image = br#"{"model":"gpt-4o","max_tokens":300,"messages":[{"role":"user","content":[{"type":"text","text":"What is in this picture?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#.to_vec();
    let tail = br#""}}]}]}"#;
    image.resize(size - tail.len(), b'A');
    image.extend_from_slice(tail);

    let mut ids = br#"{"model":"gpt-4o","max_tokens":300,"prompt":[1"#.to_vec();
    while ids.len() < size - 2 {
        ids.extend_from_slice(b",1");
    }
    ids.extend_from_slice(b"]}");

    let mut chat = br#"{"model":"gpt-4o","max_tokens":300,"messages":["#.to_vec();
    let turn = br#"{"role":"user","content":"a short turn of a long conversation"},"#;
    while chat.len() + turn.len() < size {
        chat.extend_from_slice(turn);
    }
    chat.extend_from_slice(br#"{"role":"user","content":"the end"}]}"#);

    vec![
        ("a chat with a base64 image", Bytes::from(image)),
        ("a prompt of token ids", Bytes::from(ids)),
        ("a chat of many short messages", Bytes::from(chat)),
    ]
}

#[test]
fn routing_an_8_mib_body_allocates_a_few_small_values() {
    let rules = OpenAiRules(Rules::new());
    let mut measured = Vec::new();
    for (shape, body) in bodies() {
        let len = body.len();
        let request = Request::post("/v1/chat/completions")
            .body(Full::new(body))
            .unwrap();
        let mut routing = Routing::default();
        let (peak, allocations) = peak_during(|| routing = rules.decide(&request));
        eprintln!(
            "routing {shape} of {:.2} MiB: peak {peak} bytes allocated ({:.1} MiB), {allocations} allocations",
            len as f64 / MIB as f64,
            peak as f64 / MIB as f64,
        );
        let model = routing.require.and_then(|r| r.model);
        measured.push((shape, peak, model));
    }
    for (shape, peak, model) in measured {
        assert_eq!(model.as_deref(), Some("gpt-4o"), "{shape}");
        assert!(peak < 16 * 1024, "{shape}: {peak} bytes");
    }
}

#[test]
fn route_allocates_nothing_when_the_routing_lets_a_request_through() {
    let inner = tower::service_fn(|_: WithHints<()>| std::future::ready(Ok::<_, Infallible>(())));
    let mut route = RouteLayer::new(|_: &WithHints<()>| Routing::default()).layer(inner);
    let request = WithHints::new(());
    let (_, allocations) = peak_during(|| {
        let future = route.call(request);
        assert!(matches!(
            futures_util::FutureExt::now_or_never(future),
            Some(Ok(()))
        ));
    });
    assert_eq!(allocations, 0);
}
