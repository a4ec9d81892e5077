//! Nanoseconds per pick, beside the physical floor.
//!
//! `cargo bench --bench pick`. Groups:
//! - `pick/floor`: a bare power-of-two-choices loop over an array of atomic counters (draw,
//!   compare, increment, decrement): what any least-loaded picker must at least pay.
//!   `pick/floor draw+compare`: its draw and comparison alone, without the counter.
//! - `pick/p2c`, `pick/p2c+2 filters`: the pick function alone over the pool's endpoints, without and
//!   with two filters (an `Exclude` hint of two endpoints and an ejected endpoint): the
//!   counterpart of the floor's draw and comparison.
//! - `pick/p2c+2 filters+slot`: the same, plus taking and giving back the slot with a
//!   `LoadGuard<&Endpoint>`: the work the floor does, as the crate does it (trial permits,
//!   removal and drain, the capacity queue's wake-up). Timed in virtual time, so no clock is
//!   read.
//! - `pick/p2c+2 filters+guard`: the same with the owned `LoadGuard` that `Balance` ties to the
//!   response, which adds the endpoint's reference count.
//! - `pick/balance`: `Balance::pick` end to end with the two filters: snapshot load, hint
//!   look-ups, pick, slot, guard, and the one clock read that times the request.
//! - `pick/least-loaded scan`: the full-scan strategy, for scale.
//!
//! - `two threads/{floor,p2c+2 filters+slot}`: the floor and the pick with its slot at 1,000
//!   endpoints, from two threads at once on the same pool (time per pick, both threads
//!   together).
//!
//! - `requirements/balance/{0,1,3}`: `Balance::pick` at 1,000 endpoints with 0, 1 (model) and 3
//!   (model, context window, hardware) requirements.
//!
//! - `quota/balance {without,with}/{8,1000}`: `Balance::pick` with a token hint over endpoints
//!   without a quota and with one (requests and tokens per minute): the reservation's cost.
//!
//! At the end, the ratio of each to the floor at the same size is printed.

use std::{
    hint::black_box,
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    time::Duration,
};

use criterion::{BenchmarkId, Criterion};
use rand::RngCore;
use tower_ai_balance::{
    endpoint::Quota,
    hints::Require,
    hints::Tokens,
    hints::{Exclude, WithHints},
    load::LoadGuard,
    pick::{self, Filter, Picker, Strategy},
    Balance, EndpointConfig, Health, Pool,
};

#[path = "support/rng.rs"]
mod rng;
use rng::{ThreadRng, Wyrand};

const SIZES: [usize; 4] = [8, 100, 1000, 10_000];

#[derive(Clone, Copy)]
struct Unit;

fn pool(n: usize) -> Pool<Unit> {
    let pool = Pool::new();
    pool.extend((0..n).map(|i| (EndpointConfig::new(format!("e{i}")), Unit)))
        .unwrap();
    pool
}

/// Runs `iters` calls of `f` split over two threads; the wall time for all of them.
fn two_threads(iters: u64, f: impl Fn() + Sync) -> Duration {
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..iters / 2 {
                    f();
                }
            });
        }
    });
    start.elapsed()
}

/// Two filters: an `Exclude` of two endpoints and one ejected endpoint.
fn filtered(pool: &Pool<Unit>) -> Exclude {
    let endpoints = pool.endpoints();
    let mut exclude = Exclude::new();
    exclude.insert(&endpoints[0]);
    exclude.insert(&endpoints[endpoints.len() / 2]);
    endpoints[1].set_health(Health::Ejected {
        until: tokio::time::Instant::now() + Duration::from_secs(3600),
    });
    exclude
}

/// The floor's draw and comparison: two indices from one word, the lesser counter.
fn floor_choose(counters: &[AtomicUsize], rng: &mut impl RngCore) -> usize {
    let n = counters.len() as u64;
    let r = rng.next_u64();
    let a = (((r & 0xffff_ffff) * n) >> 32) as usize;
    let b = (((r >> 32) * n) >> 32) as usize;
    if counters[a].load(SeqCst) <= counters[b].load(SeqCst) {
        a
    } else {
        b
    }
}

fn floor_pick(counters: &[AtomicUsize], rng: &mut impl RngCore) -> usize {
    let i = floor_choose(counters, rng);
    counters[i].fetch_add(1, SeqCst);
    counters[i].fetch_sub(1, SeqCst);
    i
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for &n in &SIZES {
        let counters: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let mut rng = Wyrand::seeded(1);
        group.bench_with_input(BenchmarkId::new("floor", n), &n, |b, _| {
            b.iter(|| black_box(floor_pick(&counters, &mut rng)))
        });
        group.bench_with_input(BenchmarkId::new("floor draw+compare", n), &n, |b, _| {
            b.iter(|| black_box(floor_choose(&counters, &mut rng)))
        });

        let p = pool(n);
        let endpoints = p.endpoints();
        group.bench_with_input(BenchmarkId::new("p2c", n), &n, |b, _| {
            let mut rng = ThreadRng;
            b.iter(|| black_box(pick::p2c(&endpoints, &Filter::new(), &mut rng)))
        });

        let exclude = filtered(&p);
        group.bench_with_input(BenchmarkId::new("p2c+2 filters", n), &n, |b, _| {
            let mut rng = ThreadRng;
            b.iter(|| {
                let filter = Filter::new().exclude(&exclude);
                black_box(pick::p2c(&endpoints, &filter, &mut rng))
            })
        });

        let t0 = tokio::time::Instant::now();
        group.bench_with_input(BenchmarkId::new("p2c+2 filters+slot", n), &n, |b, _| {
            let mut rng = ThreadRng;
            b.iter(|| {
                let filter = Filter::new().exclude(&exclude);
                let i = pick::p2c(&endpoints, &filter, &mut rng).unwrap();
                black_box(LoadGuard::acquire_at(&&*endpoints[i], 1, t0))
            })
        });
        group.bench_with_input(BenchmarkId::new("p2c+2 filters+guard", n), &n, |b, _| {
            let mut rng = ThreadRng;
            b.iter(|| {
                let filter = Filter::new().exclude(&exclude);
                let i = pick::p2c(&endpoints, &filter, &mut rng).unwrap();
                black_box(LoadGuard::acquire_at(&endpoints[i], 1, t0))
            })
        });

        group.bench_with_input(BenchmarkId::new("balance", n), &n, |b, _| {
            let balance = Balance::new(p.clone());
            let mut request = WithHints::new(());
            request.extensions.insert(exclude.clone());
            b.iter(|| black_box(balance.pick(&request).unwrap()))
        });

        let scan = Picker::new(Strategy::LeastLoaded);
        group.bench_with_input(BenchmarkId::new("least-loaded scan", n), &n, |b, _| {
            let mut rng = ThreadRng;
            b.iter(|| black_box(scan.pick(&endpoints, &Filter::new(), &mut rng)))
        });
    }
    group.finish();

    // Two threads at once, at 1,000 endpoints: the floor's counters and the endpoints' slots
    // are shared between cores, as in a server.
    let mut group = c.benchmark_group("two threads");
    let counters: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                black_box(floor_pick(&counters, &mut ThreadRng));
            })
        })
    });
    let p = pool(1000);
    let endpoints = p.endpoints();
    let exclude = filtered(&p);
    let t0 = tokio::time::Instant::now();
    group.bench_function("p2c+2 filters+slot", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let filter = Filter::new().exclude(&exclude);
                let i = pick::p2c(&endpoints, &filter, &mut ThreadRng).unwrap();
                black_box(LoadGuard::acquire_at(&&*endpoints[i], 1, t0));
            })
        })
    });
    group.finish();

    // Balance::pick at 1,000 endpoints serving two models on two hardware classes, with 0, 1
    // (model) and 3 (model, context, hardware) requirements.
    let mut group = c.benchmark_group("requirements");
    let p = Pool::new();
    for i in 0..1000 {
        let config = EndpointConfig::new(format!("e{i}"))
            .model(if i % 2 == 0 { "llama-70b" } else { "llama-8b" })
            .max_context(if i % 4 < 2 { 131_072 } else { 8_192 })
            .hardware(if i % 3 == 0 { "h100" } else { "a10" });
        p.insert(config, Unit).unwrap();
    }
    let balance = Balance::new(p.clone());
    for (name, require) in [
        ("0", None),
        ("1", Some(Require::model("llama-70b"))),
        (
            "3",
            Some(Require::model("llama-70b").context(32_000).hardware("h100")),
        ),
    ] {
        let mut request = WithHints::new(());
        if let Some(r) = require {
            request.extensions.insert(r);
        }
        group.bench_function(BenchmarkId::new("balance", name), |b| {
            b.iter(|| black_box(balance.pick(&request).unwrap()))
        });
    }
    group.finish();

    // Balance::pick with a provider quota (requests and tokens per minute) on every endpoint,
    // beside the same pool without: the reservation taken with the slot and given back when
    // the guard drops, so however many picks a run makes, no pick finds a quota full.
    let mut group = c.benchmark_group("quota");
    for n in [8, 1000] {
        for (name, quota) in [
            ("without", None),
            (
                "with",
                Some(
                    Quota::new()
                        .requests_per_minute(1_000_000_000)
                        .tokens_per_minute(1_000_000_000),
                ),
            ),
        ] {
            let p = Pool::new();
            for i in 0..n {
                let mut config = EndpointConfig::new(format!("e{i}"));
                if let Some(q) = &quota {
                    config = config.quota(q.clone());
                }
                p.insert(config, Unit).unwrap();
            }
            let balance = Balance::new(p);
            let mut request = WithHints::new(());
            request.extensions.insert(Tokens::new(600, 400));
            group.bench_function(BenchmarkId::new(format!("balance {name}"), n), |b| {
                b.iter(|| black_box(balance.pick(&request).unwrap()))
            });
        }
    }
    group.finish();
}

#[path = "support/ratios.rs"]
mod ratios;

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    ratios::print(
        "Balance::pick at 1,000 endpoints, by number of requirements",
        "requirements",
        "balance/0",
        &["balance/1".to_owned(), "balance/3".to_owned()],
    );
    for n in [8, 1000] {
        ratios::print(
            &format!("Balance::pick at {n} endpoints with a quota on each, against none"),
            "quota",
            &format!("balance without/{n}"),
            &[format!("balance with/{n}")],
        );
    }
    ratios::print(
        "two threads at 1,000 endpoints, against the bare atomic floor",
        "two threads",
        "floor",
        &["p2c+2 filters+slot".to_owned()],
    );
    for n in SIZES {
        ratios::print(
            &format!("pick at {n} endpoints, against the bare atomic floor"),
            "pick",
            &format!("floor/{n}"),
            &[
                "floor draw+compare",
                "p2c",
                "p2c+2 filters",
                "p2c+2 filters+slot",
                "p2c+2 filters+guard",
                "balance",
                "least-loaded scan",
            ]
            .map(|f| format!("{f}/{n}")),
        );
    }
}
