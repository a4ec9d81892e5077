//! Prefix-cache-aware routing on a real trace: replays the Mooncake conversation trace over
//! 16 simulated LLM engines with KV caches, in virtual time, under the crate's policies and
//! re-implementations of the cache-aware routers it is compared with, and prints (and writes
//! to `docs/prefix-cache.md` and `docs/prefix-cache.svg`) the prompt blocks each serves from
//! cache, time to first token and latency.
//!
//! ```sh
//! cargo run --release --example prefix_cache                 # trace from ../shared/data
//! cargo run --release --example prefix_cache -- --data DIR --out docs --seeds 5
//! cargo run --release --example prefix_cache -- --no-out     # print only
//! ```
//!
//! Engines (one per 8-GPU node serving a 70B-class model): prefill at 40,000 tokens/s, one
//! prefill at a time, for the prompt's tokens not found in the engine's KV cache when the
//! prefill starts; 20 ms per output token; up to 16 sequences at once; a KV cache of 1,000 or
//! 5,000 blocks of 512 tokens, least recently used out first, a prompt's tail before its head.
//! Routers see their own placements and requests in flight, the first token and end of their
//! own responses, and the engines' metrics (waiting, running, KV usage, prompt-token
//! counters) scraped every 100 ms.
//! The trace's arrival times are scaled so that power of two choices keeps 70% and 90% of the
//! fleet's slots busy; each figure is the median over seeds.
//!
//! Without the trace file, a synthetic workload with its prefix structure is used, and the
//! output says so.
//!
//! Data: Qin et al., "Mooncake: Trading More Storage for Less Computation — A KVCache-centric
//! Architecture for Serving LLM Chatbot", FAST 2025; data from kvcache-ai/Mooncake
//! (Apache-2.0).

#[path = "support/prefix/mod.rs"]
mod sim;

use std::{path::PathBuf, sync::Mutex, time::Instant};

use sim::{
    fleet::{percentile, run, Settings},
    report::{Cell, Report, Row, KV_EVENTS},
    routers::{router, tuned, Kind, Tuning, KINDS},
    trace::{self, Trace},
};

const CACHES: [usize; 2] = [1_000, 5_000];
const TARGETS: [f64; 2] = [0.7, 0.9];
const REPLICAS: [usize; 2] = [1, 4];

fn settings(cache_blocks: usize, universe: usize) -> Settings {
    Settings {
        workers: 16,
        slots: 16,
        cache_blocks,
        block_tokens: 512,
        prefill_rate: 40_000.0,
        decode: 0.020,
        scrape: 0.1,
        universe,
    }
}

/// One replay: a policy, its routers, a seed.
fn replay(t: &Trace, speed: f64, s: &Settings, kind: Kind, replicas: usize, seed: u64) -> Cell {
    let requests = t.faster(speed);
    let mut routers: Vec<_> = (0..replicas)
        .map(|k| router(kind, s, replicas, seed * 100 + k as u64 + 1, requests.len()))
        .collect();
    // Each arrival goes to a replica at random (the same draw for every policy).
    let assign = |id: usize| {
        let h = (id as u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> 40) as usize % replicas
    };
    let o = run(t, &requests, s, &mut routers, assign);
    Cell {
        hit: o.hit_blocks as f64 / o.prompt_blocks.max(1) as f64,
        ttft50: percentile(&o.ttft, 0.5),
        ttft99: percentile(&o.ttft, 0.99),
        latency99: percentile(&o.latency, 0.99),
        busiest: *o.served.iter().max().unwrap_or(&0) as f64 / requests.len().max(1) as f64,
        utilisation: o.utilisation,
        misjudged: o.misjudged,
    }
}

/// The arrival speed-up at which power of two choices keeps `target` of the slots busy.
fn calibrate(t: &Trace, s: &Settings, target: f64) -> f64 {
    let (mut lo, mut hi) = (0.5f64, 64.0f64);
    for _ in 0..10 {
        let mid = (lo * hi).sqrt();
        if replay(t, mid, s, Kind::P2c, 1, 0).utilisation < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo * hi).sqrt()
}

struct Args {
    data: PathBuf,
    out: Option<PathBuf>,
    seeds: u64,
    /// Only this setting (cache blocks, share of slots busy) and the new policy: for study.
    only: Option<(usize, f64, Option<f64>)>,
}

fn args() -> Args {
    let mut args = Args {
        data: PathBuf::from("../shared/data"),
        out: Some(PathBuf::from("docs")),
        seeds: 5,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => args.data = it.next().map(PathBuf::from).expect("--data DIR"),
            "--out" => args.out = it.next().map(PathBuf::from),
            "--no-out" => args.out = None,
            "--seeds" => {
                args.seeds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--seeds N (at least 1)")
            }
            "--only" => {
                // CACHE:BUSY[:SPEED], e.g. 1000:0.7 or 1000:0.7:7.46
                let spec = it.next().expect("--only CACHE:BUSY[:SPEED]");
                let mut parts = spec.split(':');
                let cache = parts.next().and_then(|c| c.parse().ok());
                let busy = parts.next().and_then(|b| b.parse().ok());
                let speed = parts.next().and_then(|v| v.parse().ok());
                args.only = Some((cache.expect("CACHE"), busy.expect("BUSY"), speed));
                args.out = None;
            }
            other => {
                panic!("unknown argument {other}; use --data DIR, --out DIR, --no-out, --seeds N or --only CACHE:BUSY[:SPEED]")
            }
        }
    }
    args
}

/// Runs jobs on every core, in order of submission, and returns their results in that order.
fn parallel<T: Send>(jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    let n = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new((0..n).map(|_| None).collect::<Vec<Option<T>>>());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let job = queue.lock().unwrap().pop();
                let Some((i, job)) = job else { break };
                let out = job();
                results.lock().unwrap()[i] = Some(out);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("ran"))
        .collect()
}

fn main() {
    let started = Instant::now();
    let args = args();
    let path = args.data.join("mooncake_conversation_trace.jsonl");
    let t = match trace::read(&path) {
        Some(t) => t,
        None => {
            println!(
                "{} not found: using a SYNTHETIC workload with the trace's prefix structure; \
                 the figures below are not the trace's.",
                path.display()
            );
            trace::synthetic(1)
        }
    };
    println!(
        "{} requests from {}; one unbounded cache would serve {:.1}% of prompt blocks.",
        t.requests.len(),
        t.source,
        100.0 * t.reuse_ceiling()
    );

    if let Some((cache, busy, speed)) = args.only {
        study(&t, cache, busy, speed, args.seeds);
        return;
    }
    // The speeds: per cache size, the arrival rates at which p2c keeps 70% and 90% busy.
    let speeds: Vec<(usize, f64, f64)> = parallel(
        CACHES
            .iter()
            .flat_map(|&c| TARGETS.iter().map(move |&u| (c, u)))
            .map(|(c, u)| {
                let t = &t;
                Box::new(move || (c, u, calibrate(t, &settings(c, t.distinct), u)))
                    as Box<dyn FnOnce() -> _ + Send>
            })
            .collect(),
    );

    let mut jobs: Vec<Box<dyn FnOnce() -> Row + Send + '_>> = Vec::new();
    for &(cache, target, speed) in &speeds {
        for replicas in REPLICAS {
            for kind in KINDS {
                for seed in 1..=args.seeds {
                    let t = &t;
                    jobs.push(Box::new(move || Row {
                        cache,
                        target,
                        replicas,
                        kind,
                        variant: None,
                        cell: replay(t, speed, &settings(cache, t.distinct), kind, replicas, seed),
                    }));
                }
            }
        }
    }
    // How much the new policy's figures owe to its settings: one setting, one router.
    let (cache, target, speed) = speeds[1];
    let variants: [(&'static str, Tuning); 8] = [
        (
            "work weight 0 (each request's own time only)",
            Tuning {
                work_weight: Some(0.0),
                ..Tuning::default()
            },
        ),
        (
            "work weight 4",
            Tuning {
                work_weight: Some(4.0),
                ..Tuning::default()
            },
        ),
        (
            "work weight 64",
            Tuning {
                work_weight: Some(64.0),
                ..Tuning::default()
            },
        ),
        (
            "spread 0 (no rendezvous among the near-best)",
            Tuning {
                spread: Some(0.0),
                ..Tuning::default()
            },
        ),
        (
            "spread 2",
            Tuning {
                spread: Some(2.0),
                ..Tuning::default()
            },
        ),
        (
            "prefill rate set at half the engines' own",
            Tuning {
                rate_error: Some(0.5),
                ..Tuning::default()
            },
        ),
        (
            "prefill rate set at twice the engines' own",
            Tuning {
                rate_error: Some(2.0),
                ..Tuning::default()
            },
        ),
        (
            "no slot limit given",
            Tuning {
                no_slots: true,
                ..Tuning::default()
            },
        ),
    ];
    for (name, tuning) in variants {
        for seed in 1..=args.seeds.min(3) {
            jobs.push(variant_job(
                &t,
                (cache, target, speed),
                1,
                seed,
                name,
                tuning,
            ));
        }
    }
    // Outside the stated setting: the new policy fed the engines' KV events.
    let kv_events = Tuning {
        kv_events: true,
        ..Tuning::default()
    };
    for &setting in &speeds {
        for replicas in REPLICAS {
            for seed in 1..=args.seeds {
                jobs.push(variant_job(
                    &t, setting, replicas, seed, KV_EVENTS, kv_events,
                ));
            }
        }
    }
    let rows = parallel(jobs);
    let report = Report::new(
        &t,
        &settings(CACHES[0], t.distinct),
        &speeds,
        args.seeds,
        rows,
    );
    let text = report.markdown();
    println!("{}", report.summary());
    println!("finished in {:.1} s", started.elapsed().as_secs_f64());
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).expect("create the output directory");
        let md = dir.join("prefix-cache.md");
        std::fs::write(&md, text).expect("write the table");
        let svg = dir.join("prefix-cache.svg");
        std::fs::write(&svg, report.svg()).expect("write the plot");
        println!("wrote {} and {}", md.display(), svg.display());
    }
}

/// A replay of the new policy tuned as `variant` says, at `setting` (cache blocks, share of
/// slots busy, speed).
fn variant_job<'a>(
    t: &'a Trace,
    (cache, target, speed): (usize, f64, f64),
    replicas: usize,
    seed: u64,
    variant: &'static str,
    tuning: Tuning,
) -> Box<dyn FnOnce() -> Row + Send + 'a> {
    Box::new(move || Row {
        cache,
        target,
        replicas,
        kind: Kind::Prefix,
        variant: Some(variant),
        cell: tuned(tuning, || {
            replay(
                t,
                speed,
                &settings(cache, t.distinct),
                Kind::Prefix,
                replicas,
                seed,
            )
        }),
    })
}

/// One setting, the new policy only, with one router and with four: each seed's figures and
/// the medians (`--only`).
fn study(t: &Trace, cache: usize, busy: f64, speed: Option<f64>, seeds: u64) {
    let s = settings(cache, t.distinct);
    let speed = speed.unwrap_or_else(|| calibrate(t, &s, busy));
    println!("{cache} blocks, {busy} busy: arrivals sped up x{speed:.2}");
    type Job<'a> = Box<dyn FnOnce() -> (usize, u64, Cell) + Send + 'a>;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for replicas in REPLICAS {
        for seed in 1..=seeds {
            let s = &s;
            jobs.push(Box::new(move || {
                (
                    replicas,
                    seed,
                    replay(t, speed, s, Kind::Prefix, replicas, seed),
                )
            }));
        }
    }
    let cells = parallel(jobs);
    for replicas in REPLICAS {
        let mine: Vec<&Cell> = cells
            .iter()
            .filter(|c| c.0 == replicas)
            .map(|c| &c.2)
            .collect();
        for (seed, c) in cells
            .iter()
            .filter(|c| c.0 == replicas)
            .map(|c| (c.1, &c.2))
        {
            println!(
                "  {replicas} router(s), seed {seed}: hit {:.1}% ttft p50 {:.2} p99 {:.2} latency p99 {:.1} misjudged {:.0}%",
                100.0 * c.hit, c.ttft50, c.ttft99, c.latency99, 100.0 * c.misjudged.unwrap_or(0.0)
            );
        }
        let median = |f: fn(&Cell) -> f64| {
            let mut v: Vec<f64> = mine.iter().map(|c| f(c)).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{replicas} router(s), median: hit {:.1}% ttft p50 {:.2} p99 {:.2} latency p99 {:.1}",
            100.0 * median(|c| c.hit),
            median(|c| c.ttft50),
            median(|c| c.ttft99),
            median(|c| c.latency99)
        );
    }
}
