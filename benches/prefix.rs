//! What prefix-aware routing costs per request, beside the crate's default pick.
//!
//! `cargo bench --bench prefix`. Groups, at 8 and 64 endpoints and prompts of 16 and 160
//! blocks (half of each prompt cached on one endpoint, engine reports fresh):
//! Ids read `8x16`: 8 endpoints, prompts of 16 blocks.
//! - `prefix/p2c`: the crate's default pick alone, for scale (it reads no prompt).
//! - `prefix/pick`: `PrefixPolicy::pick`: a look-up per endpoint in the index, the
//!   distinguishing prefix, the rendezvous rank among the near-best.
//! - `prefix/pick+placed`: the same, then recording the placement (the index stores the
//!   prompt's blocks on the chosen endpoint, the backlog counts its prefill) and its first
//!   token: everything the policy adds to a request.
//! - `prefix/matched`: one look-up of the whole prompt in one endpoint's record.
//! - `prefix keys/chat {4,64} KiB`: block hashes of an OpenAI chat body's messages, read
//!   from the body without consuming it.
//! - `prefix contended/pick+placed`: the pick and placement from two threads at once over the
//!   same index (time per request, both threads together).
//!
//! At the end, the ratio of each to `p2c` at the same size is printed.

use std::{hint::black_box, sync::Arc, time::Duration};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use http_body_util::Full;
use tokio::time::Instant;
use tower_ai_balance::{
    pick::{self, Filter},
    prefix::{with_scratch, ChatMessages, EngineLoad, ExtractBlocks, PrefixIndex, PrefixPolicy},
    Endpoint, EndpointConfig,
};

#[path = "support/ratios.rs"]
mod ratios;
#[path = "support/rng.rs"]
#[allow(dead_code)]
mod rng;

use rng::Wyrand;

const SIZES: [(usize, usize); 4] = [(8, 16), (8, 160), (64, 16), (64, 160)];

struct Setup {
    endpoints: Vec<Arc<Endpoint>>,
    policy: PrefixPolicy,
    prompts: Vec<Vec<u64>>,
    tokens: u64,
}

/// `n` endpoints and 256 conversations of `blocks` blocks, the first half of each stored on
/// one endpoint; every engine has reported its load.
fn setup(n: usize, blocks: usize) -> Setup {
    let endpoints: Vec<_> = (0..n)
        .map(|i| Endpoint::new(EndpointConfig::new(format!("gpu-{i}"))).unwrap())
        .collect();
    let policy = PrefixPolicy::new(Arc::new(PrefixIndex::new(16_384)), 512)
        .and_then(|p| p.prefill_rate(40_000.0))
        .and_then(|p| p.slots(16))
        .unwrap();
    let prompts: Vec<Vec<u64>> = (0..256u64)
        .map(|c| (0..blocks as u64).map(|i| c << 32 | i).collect())
        .collect();
    for (i, p) in prompts.iter().enumerate() {
        policy.index().stored(&endpoints[i % n], &p[..blocks / 2]);
    }
    for e in &endpoints {
        let load = EngineLoad {
            waiting: 1,
            running: 8,
            ..EngineLoad::default()
        };
        policy.report(e, load, Instant::now());
    }
    Setup {
        endpoints,
        policy,
        prompts,
        tokens: 512 * blocks as u64,
    }
}

/// `8x16`: 8 endpoints, prompts of 16 blocks.
fn id(n: usize, blocks: usize) -> String {
    format!("{n}x{blocks}")
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("prefix");
    for (n, blocks) in SIZES {
        let s = setup(n, blocks);
        let mut rng = Wyrand::seeded(1);
        let mut k = 0usize;
        let mut next = || {
            k = (k + 1) % s.prompts.len();
            k
        };
        let now = Instant::now();
        group.bench_with_input(BenchmarkId::new("p2c", id(n, blocks)), &n, |b, _| {
            b.iter(|| black_box(pick::p2c(&s.endpoints, &Filter::new().at(now), &mut rng)))
        });
        group.bench_with_input(BenchmarkId::new("pick", id(n, blocks)), &n, |b, _| {
            b.iter(|| {
                let p = &s.prompts[next()];
                black_box(s.policy.pick(
                    &s.endpoints,
                    &Filter::new().at(now),
                    p,
                    s.tokens,
                    &mut rng,
                ))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("pick+placed", id(n, blocks)),
            &n,
            |b, _| {
                b.iter(|| {
                    let p = &s.prompts[next()];
                    let filter = Filter::new().at(now);
                    let c = s
                        .policy
                        .pick(&s.endpoints, &filter, p, s.tokens, &mut rng)
                        .unwrap();
                    let mut placement = s.policy.placed(&s.endpoints[c.index], p, &c);
                    placement.first_token(now);
                    black_box(placement)
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("matched", id(n, blocks)), &n, |b, _| {
            b.iter(|| {
                let i = next();
                black_box(s.policy.index().matched(&s.endpoints[i % n], &s.prompts[i]))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("prefix keys");
    let keys = ChatMessages::new(256).unwrap();
    for kib in [4usize, 64] {
        let body = serde_json::json!({
            "model": "m",
            "stream": true,
            "messages": [
                {"role": "system", "content": "s".repeat(kib * 256)},
                {"role": "user", "content": "u".repeat(kib * 768)},
            ],
        })
        .to_string();
        let request = http::Request::new(Full::new(Bytes::from(body)));
        group.bench_function(format!("chat {kib} KiB"), |b| {
            b.iter(|| with_scratch(|out| black_box(keys.extract(&request, out))))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("prefix contended");
    let s = setup(64, 160);
    group.bench_function("pick+placed", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|scope| {
                for t in 0..2u64 {
                    let s = &s;
                    scope.spawn(move || {
                        let mut rng = Wyrand::seeded(t);
                        let now = Instant::now();
                        for i in 0..iters / 2 {
                            let p = &s.prompts[(i as usize * 7 + t as usize) % s.prompts.len()];
                            let filter = Filter::new().at(now);
                            let c = s
                                .policy
                                .pick(&s.endpoints, &filter, p, s.tokens, &mut rng)
                                .unwrap();
                            s.policy
                                .placed(&s.endpoints[c.index], p, &c)
                                .first_token(now);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    for (n, blocks) in SIZES {
        let base = format!("p2c/{}", id(n, blocks));
        let others: Vec<String> = ["pick", "pick+placed", "matched"]
            .iter()
            .map(|b| format!("{b}/{}", id(n, blocks)))
            .collect();
        ratios::print(
            &format!("{n} endpoints, prompts of {blocks} blocks, against p2c"),
            "prefix",
            &base,
            &others,
        );
    }
}
