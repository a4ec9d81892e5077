//! Prefix-aware routing allocates nothing once warm: block keys, the index's look-up, the
//! policy's pick, recording a placement, and the same through `Balance` with the hint that
//! `PrefixKeys` puts on a request. Counted with a global allocator that counts this
//! thread's allocations.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use rand::{rngs::SmallRng, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_ai_balance::{
    balance::BalanceLayer,
    hints::{Cost, WithHints},
    pick::Filter,
    prefix::{
        with_scratch, BlockHasher, ChatMessages, EngineLoad, ExtractBlocks, PrefixIndex,
        PrefixKeys, PrefixPolicy, PromptBlocks,
    },
    Endpoint, EndpointConfig, Pool,
};

#[path = "support/counting.rs"]
mod counting;
use counting::allocations_during;

fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
    (0..n)
        .map(|i| Endpoint::new(EndpointConfig::new(format!("gpu-{i}"))).unwrap())
        .collect()
}

#[test]
fn picks_and_placements_allocate_nothing_once_warm() {
    for (n, blocks) in [(8, 16), (8, 160), (64, 16), (64, 160)] {
        let eps = endpoints(n);
        let policy = PrefixPolicy::new(Arc::new(PrefixIndex::new(4_096)), 512)
            .and_then(|p| p.prefill_rate(40_000.0))
            .and_then(|p| p.slots(16))
            .unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        // Conversations of `blocks` blocks; half of every prompt is cached somewhere.
        let prompts: Vec<Vec<u64>> = (0..64u64)
            .map(|c| (0..blocks as u64).map(|i| c << 32 | i).collect())
            .collect();
        let tokens = 512 * blocks as u64;
        let now = Instant::now();
        // Warm-up: every endpoint's record, the scratch buffers, every prompt stored once.
        for (i, p) in prompts.iter().enumerate() {
            policy.index().stored(&eps[i % n], &p[..blocks / 2]);
        }
        for e in &eps {
            policy.report(
                e,
                EngineLoad {
                    waiting: 1,
                    running: 4,
                    ..EngineLoad::default()
                },
                now,
            );
        }
        for p in &prompts {
            let c = policy
                .pick(&eps, &Filter::new().at(now), p, tokens, &mut rng)
                .unwrap();
            policy.placed(&eps[c.index], p, &c).first_token(now);
        }
        let count = allocations_during(|| {
            for round in 0..20 {
                for p in &prompts {
                    let filter = Filter::new().at(now);
                    let c = policy.pick(&eps, &filter, p, tokens, &mut rng).unwrap();
                    assert!(policy.index().matched(&eps[c.index], p) >= c.cached_blocks);
                    let mut placement = policy.placed(&eps[c.index], p, &c);
                    if round % 2 == 0 {
                        placement.first_token(now);
                    }
                    drop(placement);
                }
                policy.report(
                    &eps[round % n],
                    EngineLoad {
                        waiting: 2,
                        running: 8,
                        ..EngineLoad::default()
                    },
                    now,
                );
            }
        });
        assert_eq!(
            count, 0,
            "{n} endpoints, prompts of {blocks} blocks: {count} allocations"
        );
    }
}

#[test]
fn block_keys_allocate_nothing_once_warm() {
    let hasher = BlockHasher::new(16).unwrap();
    let tokens: Vec<u32> = (0..4_096).collect();
    let text: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let keys = ChatMessages::new(256).unwrap();
    let body = serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "x".repeat(20_000)},
            {"role": "user", "content": "y".repeat(40_000)},
        ],
    })
    .to_string();
    let request = http::Request::new(Full::new(Bytes::from(body)));
    let run = || {
        with_scratch(|out| {
            hasher.tokens(&tokens, out);
            hasher.bytes(&text, out);
            let mut stream = hasher.stream();
            for piece in text.chunks(1000) {
                stream.push(piece, out);
            }
            assert!(keys.extract(&request, out).is_some());
            out.len()
        })
    };
    let expected = run();
    let count = allocations_during(|| {
        for _ in 0..50 {
            assert_eq!(run(), expected);
        }
    });
    assert_eq!(count, 0, "block keys allocated {count} times in 50 rounds");
}

/// A service that costs nothing to clone or call.
#[derive(Clone, Copy)]
struct Unit;

impl<R> Service<R> for Unit {
    type Response = ();
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<(), std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[test]
fn balance_with_the_prefix_hint_allocates_nothing_once_warm() {
    for (n, blocks) in [(8, 16), (64, 160)] {
        let pool = Pool::new();
        for i in 0..n {
            pool.insert(format!("gpu-{i}"), Unit).unwrap();
        }
        let policy = PrefixPolicy::new(Arc::new(PrefixIndex::new(4_096)), 512)
            .and_then(|p| p.prefill_rate(40_000.0))
            .and_then(|p| p.slots(16))
            .unwrap();
        let balance = BalanceLayer::builder()
            .prefix(policy)
            .build()
            .unwrap()
            .layer(pool.clone());
        let prompts: Vec<Vec<u64>> = (0..64u64)
            .map(|c| (0..blocks as u64).map(|i| c << 32 | i).collect())
            .collect();
        let tokens = 512 * blocks as u64;
        let mut request = WithHints::new(());
        request
            .extensions
            .insert(PromptBlocks::new(&prompts[0], tokens));
        // The hint is replaced in place, as a new request's would be built: from the thread's
        // spare buffers. Every prompt is placed once to warm up.
        let mut run = |round: usize| {
            for p in &prompts {
                *request.extensions.get_mut::<PromptBlocks>().unwrap() =
                    PromptBlocks::new(p, tokens);
                let (_service, mut guard) = balance.pick(&request).unwrap();
                if round % 2 == 0 {
                    guard.first_byte();
                    guard.complete();
                } else {
                    drop(guard); // cancelled before the first byte
                }
            }
        };
        run(0);
        run(1);
        let count = allocations_during(|| {
            for round in 0..20 {
                run(round);
            }
        });
        assert_eq!(
            count, 0,
            "{n} endpoints, prompts of {blocks} blocks: {count} allocations"
        );
        assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
    }
}

#[test]
fn the_key_layer_costs_what_any_hint_costs() {
    let body = serde_json::json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "x".repeat(20_000)},
            {"role": "user", "content": "y".repeat(4_000)},
        ],
    })
    .to_string();
    let body = Full::new(Bytes::from(body));
    let mut keys = PrefixKeys::new(Unit, ChatMessages::new(256).unwrap());
    let mut through_layer = || {
        let request = http::Request::new(body.clone());
        drop(keys.call(request));
    };
    // Any hint on a request: the extensions' map and the value's box.
    let any_hint = || {
        let mut request = http::Request::new(body.clone());
        request.extensions_mut().insert(Cost(1));
        drop(request);
    };
    through_layer();
    any_hint();
    let baseline = allocations_during(|| {
        for _ in 0..100 {
            any_hint();
        }
    });
    let count = allocations_during(|| {
        for _ in 0..100 {
            through_layer();
        }
    });
    assert!(baseline > 0);
    assert_eq!(
        count, baseline,
        "the key layer allocated {count} times in 100 requests, a hint {baseline}"
    );
}
