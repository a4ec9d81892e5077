//! Replays a real LLM inference trace against simulated instances under each picking strategy,
//! in virtual time, and prints the latency and time to first token each gets.
//!
//! ```sh
//! cargo run --release --example simulate                    # traces from ../shared/data
//! cargo run --release --example simulate -- --data DIR --out docs
//! ```
//!
//! The simulation drives the crate's own pick functions and load accounting (`LoadGuard` in
//! virtual time), not a model of them. Each instance runs up to 8 sequences at once; a
//! request's time is its prefill (prompt tokens) then one decode step per output token; half
//! the instances are twice as fast as the others (and weighted 2). Arrivals and token counts
//! come from the Azure LLM inference trace (conversation and code), the arrival times scaled so
//! that the offered load is 50% to 95% of the instances' capacity, keeping the order and the
//! bursts. Without the trace files, a synthetic workload with the same published statistics
//! is used, and the output says so.
//!
//! Strategies: round-robin, random, least connections (full scan), power of two choices (the
//! default), peak-EWMA, least outstanding work, Prequal's hot-cold rule (NSDI 2024), and an
//! oracle that knows every instance's exact remaining work and sends each request where it
//! will finish first.
//!
//! Router replicas (conversation trace, 90% load, power of two choices): 1, 4 and 16 replicas,
//! each with its own `Pool` over the same instances and a random share of the arrivals,
//! knowing their own requests only, or also every instance's running and waiting counts
//! scraped every 100 ms or every second and fed to their endpoints with `Endpoint::report`.
//!
//! Data: Patel et al., "Splitwise: Efficient generative LLM inference using phase splitting",
//! ISCA 2024; the Azure Public Dataset (CC-BY 4.0).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower_ai_balance::{
    load::LoadGuard,
    pick::{Filter, Picker, Strategy},
    report::LoadReport,
    Endpoint, EndpointConfig, Pool,
};

/// A seeded wyrand stream (one multiply, one add a draw): the runs repeat exactly.
struct Wyrand(u64);

impl rand::RngCore for Wyrand {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t as u64) ^ ((t >> 64) as u64)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

const INSTANCES: usize = 8;
const SLOTS: usize = 8;
/// Prefill time per prompt token and decode time per output token on a fast instance.
const PREFILL: f64 = 0.000_1;
const DECODE: f64 = 0.02;
const UTILISATIONS: [f64; 5] = [0.5, 0.7, 0.8, 0.9, 0.95];

#[derive(Clone, Copy)]
struct Request {
    at: f64,
    prompt: u32,
    output: u32,
}

/// One simulated instance: up to `SLOTS` sequences at once, the rest queued in order.
struct Instance {
    slow: f64,
    running: Vec<(f64, usize)>,
    queue: VecDeque<usize>,
}

impl Instance {
    fn prefill(&self, r: &Request) -> f64 {
        f64::from(r.prompt) * PREFILL * self.slow
    }
    fn service(&self, r: &Request) -> f64 {
        self.prefill(r) + f64::from(r.output) * DECODE * self.slow
    }
    /// When a request sent now would finish: the oracle's view.
    fn finish_if_sent(&self, r: &Request, now: f64, requests: &[Request]) -> f64 {
        let mut frees: Vec<f64> = self.running.iter().map(|(t, _)| *t).collect();
        frees.resize(SLOTS, now);
        frees.sort_by(f64::total_cmp);
        let mut frees: BinaryHeap<Reverse<Ordered>> = frees
            .into_iter()
            .map(|t| Reverse(Ordered(t.max(now))))
            .collect();
        for &q in &self.queue {
            let Reverse(Ordered(start)) = frees.pop().unwrap();
            frees.push(Reverse(Ordered(start + self.service(&requests[q]))));
        }
        let Reverse(Ordered(start)) = frees.pop().unwrap();
        start + self.service(r)
    }
}

/// A time, ordered totally, for the event queue.
#[derive(Clone, Copy)]
struct Ordered(f64);

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Crate(Strategy),
    Prequal,
    Oracle,
}

fn name(p: Policy) -> &'static str {
    match p {
        Policy::Crate(Strategy::RoundRobin) => "round-robin",
        Policy::Crate(Strategy::Random) => "random",
        Policy::Crate(Strategy::LeastLoaded) => "least connections",
        Policy::Crate(Strategy::PowerOfTwoChoices) => "p2c (default)",
        Policy::Crate(Strategy::PeakEwma) => "peak-EWMA",
        Policy::Crate(Strategy::LeastWork) => "least work (p2c)",
        Policy::Prequal => "prequal hot-cold",
        Policy::Oracle => "oracle",
        Policy::Crate(_) => "other",
    }
}

const POLICIES: [Policy; 8] = [
    Policy::Crate(Strategy::RoundRobin),
    Policy::Crate(Strategy::Random),
    Policy::Crate(Strategy::LeastLoaded),
    Policy::Crate(Strategy::PowerOfTwoChoices),
    Policy::Crate(Strategy::PeakEwma),
    Policy::Crate(Strategy::LeastWork),
    Policy::Prequal,
    Policy::Oracle,
];

/// Prequal's hot-cold rule: probe 3 instances; among those whose requests in flight are below
/// the pool's 0.84 quantile ("cold"), the one with the lowest latency estimate; if all are
/// hot, the one with the fewest in flight.
fn prequal(endpoints: &[Arc<Endpoint>], now: Instant, rng: &mut Wyrand) -> usize {
    let mut rif: Vec<usize> = endpoints.iter().map(|e| e.in_flight()).collect();
    rif.sort_unstable();
    let threshold = rif[((rif.len() as f64 * 0.84) as usize).min(rif.len() - 1)];
    let probes: Vec<usize> = (0..3)
        .map(|_| rng.random_range(0..endpoints.len()))
        .collect();
    let latency = |i: usize| {
        endpoints[i]
            .latency_estimate(now)
            .map_or(0.0, |d| d.as_secs_f64())
            * (endpoints[i].in_flight() + 1) as f64
    };
    let cold: Vec<usize> = probes
        .iter()
        .copied()
        .filter(|&i| endpoints[i].in_flight() < threshold)
        .collect();
    if let Some(&best) = cold
        .iter()
        .min_by(|&&a, &&b| latency(a).total_cmp(&latency(b)))
    {
        return best;
    }
    *probes
        .iter()
        .min_by_key(|&&i| endpoints[i].in_flight())
        .unwrap()
}

struct Outcome {
    latency: Vec<f64>,
    ttft: Vec<f64>,
}

/// How many router replicas share the instances, and what each knows of the others' load.
#[derive(Clone, Copy)]
struct Fleet {
    /// Router replicas, each with its own `Pool` over the same instances; each arrival goes
    /// to one of them at random (as an L4 balancer or a Kubernetes Service spreads them).
    replicas: usize,
    /// Every this many seconds each replica scrapes every instance's running and waiting
    /// counts (a snapshot at that instant, as `/metrics` gives) into its pool's endpoints;
    /// `None`: each replica knows its own requests in flight alone.
    scrape: Option<f64>,
}

const ONE_ROUTER: Fleet = Fleet {
    replicas: 1,
    scrape: None,
};

fn simulate(requests: &[Request], policy: Policy, seed: u64) -> Outcome {
    simulate_fleet(requests, policy, ONE_ROUTER, seed)
}

fn simulate_fleet(requests: &[Request], policy: Policy, fleet: Fleet, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs.max(0.0));
    // One pool a replica, each over the same instances (the pools keep their endpoints).
    let pools: Vec<Pool<()>> = (0..fleet.replicas)
        .map(|_| {
            let pool = Pool::new();
            for i in 0..INSTANCES {
                let weight = if i % 2 == 0 { 2.0 } else { 1.0 };
                pool.insert(EndpointConfig::new(format!("i{i}")).weight(weight), ())
                    .expect("valid");
            }
            pool
        })
        .collect();
    let fleet_endpoints: Vec<Vec<Arc<Endpoint>>> = pools
        .iter()
        .map(|pool| {
            (0..INSTANCES)
                .map(|i| pool.get(&format!("i{i}")).expect("inserted"))
                .collect()
        })
        .collect();
    let mut instances: Vec<Instance> = (0..INSTANCES)
        .map(|i| Instance {
            slow: if i % 2 == 0 { 1.0 } else { 2.0 },
            running: Vec::new(),
            queue: VecDeque::new(),
        })
        .collect();
    let mut guards: Vec<Option<LoadGuard>> = (0..requests.len()).map(|_| None).collect();
    let mut first_token: Vec<f64> = vec![0.0; requests.len()];
    let mut outcome = Outcome {
        latency: Vec::with_capacity(requests.len()),
        ttft: Vec::with_capacity(requests.len()),
    };
    // Events: (time, kind, request); kind 0 = completion, 1 = arrival, so completions at the
    // same instant free their slots first.
    let mut events: BinaryHeap<Reverse<(Ordered, u8, usize)>> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| Reverse((Ordered(r.at), 1, i)))
        .collect();
    let mut placed: Vec<usize> = vec![0; requests.len()];
    let mut rng = Wyrand(seed);
    // Which replica takes each arrival: a stream of its own, so one router's picks draw the
    // same numbers whatever the fleet.
    let mut spread = Wyrand(seed ^ 0x5eed_5eed);
    // Each replica's scrapes, every interval from a phase of its own: kind 2, the replica's
    // index in place of a request's.
    if let Some(every) = fleet.scrape {
        for replica in 0..fleet.replicas {
            let phase = every * spread.random::<f64>();
            events.push(Reverse((Ordered(phase), 2, replica)));
        }
    }
    // One picker for the run: round-robin's cursor lives in it.
    let picker = Picker::new(match policy {
        Policy::Crate(strategy) => strategy,
        _ => Strategy::default(),
    });

    let start = |inst: &mut Instance,
                 i: usize,
                 r: usize,
                 now: f64,
                 events: &mut BinaryHeap<_>,
                 first_token: &mut Vec<f64>,
                 guards: &mut Vec<Option<LoadGuard>>| {
        let request = &requests[r];
        let done = now + inst.service(request);
        first_token[r] = now + inst.prefill(request);
        if let Some(g) = guards[r].as_mut() {
            g.first_byte_at(at(first_token[r]));
        }
        inst.running.push((done, r));
        events.push(Reverse((Ordered(done), 0u8, r)));
        let _ = i;
    };

    let mut arrivals_left = requests.len();
    while let Some(Reverse((Ordered(now), kind, r))) = events.pop() {
        if kind == 2 {
            // A scrape by replica `r`: each instance's counts now, with the replica's own
            // requests there now as the ones the report includes.
            let replica = r;
            for (endpoint, inst) in fleet_endpoints[replica].iter().zip(&instances) {
                let report = LoadReport::new(at(now))
                    .running(inst.running.len() as u32)
                    .waiting(inst.queue.len() as u32)
                    .local_in_flight(endpoint.in_flight() as u32);
                endpoint.report(&report);
            }
            if arrivals_left > 0 {
                let every = fleet.scrape.expect("scrapes only with an interval");
                events.push(Reverse((Ordered(now + every), 2, replica)));
            }
            continue;
        }
        if kind == 1 {
            arrivals_left -= 1;
            let request = requests[r];
            let replica = if fleet.replicas > 1 {
                spread.random_range(0..fleet.replicas)
            } else {
                0
            };
            let endpoints = &fleet_endpoints[replica];
            let i = match policy {
                Policy::Crate(_) => {
                    let cost = u64::from(request.prompt + request.output);
                    // As `Balance` does for a pool whose weights differ.
                    let filter = Filter::new().at(at(now)).cost(cost).sample_by_weight(2.0);
                    picker
                        .pick(endpoints, &filter, &mut rng)
                        .expect("an endpoint")
                }
                Policy::Prequal => prequal(endpoints, at(now), &mut rng),
                Policy::Oracle => (0..INSTANCES)
                    .min_by(|&a, &b| {
                        let fa = instances[a].finish_if_sent(&request, now, requests);
                        let fb = instances[b].finish_if_sent(&request, now, requests);
                        fa.total_cmp(&fb)
                    })
                    .unwrap(),
            };
            placed[r] = i;
            guards[r] = LoadGuard::acquire_at(
                &fleet_endpoints[replica][i],
                u64::from(request.prompt + request.output),
                at(now),
            );
            let inst = &mut instances[i];
            if inst.running.len() < SLOTS {
                start(inst, i, r, now, &mut events, &mut first_token, &mut guards);
            } else {
                inst.queue.push_back(r);
            }
        } else {
            let i = placed[r];
            let inst = &mut instances[i];
            inst.running.retain(|&(_, q)| q != r);
            if let Some(g) = guards[r].take() {
                g.complete_at(at(now));
            }
            outcome.latency.push(now - requests[r].at);
            outcome.ttft.push(first_token[r] - requests[r].at);
            if let Some(next) = inst.queue.pop_front() {
                start(
                    inst,
                    i,
                    next,
                    now,
                    &mut events,
                    &mut first_token,
                    &mut guards,
                );
            }
        }
    }
    outcome.latency.sort_by(f64::total_cmp);
    outcome.ttft.sort_by(f64::total_cmp);
    outcome
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Reads a trace: one request per line, `TIMESTAMP,ContextTokens,GeneratedTokens`.
fn read_trace(path: &Path) -> Option<Vec<Request>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut requests = Vec::new();
    let mut first: Option<f64> = None;
    for line in text.lines().skip(1) {
        let mut fields = line.split(',');
        let stamp = fields.next()?;
        let prompt: u32 = fields.next()?.trim().parse().ok()?;
        let output: u32 = fields.next()?.trim().parse().ok()?;
        // "YYYY-MM-DD HH:MM:SS.fffffff": seconds since the first request (one day at most).
        let time = stamp.split(' ').nth(1)?;
        let mut hms = time.split(':');
        let secs = hms.next()?.parse::<f64>().ok()? * 3600.0
            + hms.next()?.parse::<f64>().ok()? * 60.0
            + hms.next()?.parse::<f64>().ok()?;
        let base = *first.get_or_insert(secs);
        let mut at = secs - base;
        if at < 0.0 {
            at += 86_400.0;
        }
        requests.push(Request {
            at,
            prompt,
            output: output.max(1),
        });
    }
    (!requests.is_empty()).then_some(requests)
}

/// A synthetic workload with a trace's published statistics: Poisson arrivals at its mean rate
/// (or bursts, for the code trace), log-normal prompt and output lengths with its means and
/// medians.
fn synthetic(conv: bool, seed: u64) -> Vec<Request> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (n, rate, prompt, output) = if conv {
        (19_366, 5.53, (1155.0, 1020.0), (211.0, 129.0))
    } else {
        (8_819, 2.57, (2048.0, 1469.0), (27.9, 13.0))
    };
    // Log-normal with mean m and median d: mu = ln d, sigma^2 = 2 ln(m / d).
    let draw = |rng: &mut rand::rngs::StdRng, (mean, median): (f64, f64)| {
        let sigma = (2.0 * (mean / median).ln()).sqrt();
        let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
        (median.ln() + sigma * z).exp().max(1.0) as u32
    };
    let mut at = 0.0;
    (0..n)
        .map(|_| {
            let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
            // The code trace comes in bursts: most gaps are tiny, a few are long.
            at += if conv {
                gap
            } else if rng.random_bool(0.9) {
                gap * 0.05
            } else {
                gap * 9.5
            };
            Request {
                at,
                prompt: draw(&mut rng, prompt),
                output: draw(&mut rng, output).max(1),
            }
        })
        .collect()
}

/// Scales arrival times so that the offered load is `utilisation` of the instances' capacity.
fn scaled(requests: &[Request], utilisation: f64) -> Vec<Request> {
    let fast = Instance {
        slow: 1.0,
        running: Vec::new(),
        queue: VecDeque::new(),
    };
    let mean_service: f64 =
        requests.iter().map(|r| fast.service(r)).sum::<f64>() / requests.len() as f64;
    // Capacity in requests per second: 4 fast instances and 4 at half speed, SLOTS each.
    let capacity = SLOTS as f64 * (4.0 + 2.0) / mean_service;
    let span = requests.last().map_or(1.0, |r| r.at).max(1.0);
    let offered = requests.len() as f64 / span;
    let factor = offered / (utilisation * capacity);
    requests
        .iter()
        .map(|r| Request {
            at: r.at * factor,
            ..*r
        })
        .collect()
}

struct Args {
    data: PathBuf,
    out: Option<PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        data: PathBuf::from("../shared/data"),
        out: Some(PathBuf::from("docs")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => args.data = it.next().map(PathBuf::from).expect("--data DIR"),
            "--out" => args.out = it.next().map(PathBuf::from),
            "--no-out" => args.out = None,
            other => panic!("unknown argument {other}; use --data DIR, --out DIR or --no-out"),
        }
    }
    args
}

fn main() {
    let args = args();
    let mut report = String::new();
    for (trace, conv) in [("conv", true), ("code", false)] {
        let path = args
            .data
            .join(format!("AzureLLMInferenceTrace_{trace}.csv"));
        let requests = match read_trace(&path) {
            Some(r) => {
                println!("{trace}: {} requests from {}", r.len(), path.display());
                r
            }
            None => {
                println!("{trace}: {} not found; using a synthetic workload with the trace's published statistics", path.display());
                synthetic(conv, 1)
            }
        };
        let _ = writeln!(report, "\n### {trace} trace\n");
        let _ = writeln!(
            report,
            "| utilisation | strategy | latency p50 | p99 | p99.9 | TTFT p50 | p99 | p99.9 |"
        );
        let _ = writeln!(report, "|---|---|---|---|---|---|---|---|");
        let mut p99s: Vec<(Policy, Vec<f64>)> = POLICIES.iter().map(|&p| (p, Vec::new())).collect();
        for &u in &UTILISATIONS {
            let load = scaled(&requests, u);
            for (p, series) in p99s.iter_mut() {
                let o = simulate(&load, *p, 7);
                let (l, t) = (&o.latency, &o.ttft);
                series.push(percentile(l, 0.99));
                let _ = writeln!(
                    report,
                    "| {:.0}% | {} | {:.1} s | {:.1} s | {:.1} s | {:.2} s | {:.2} s | {:.2} s |",
                    u * 100.0,
                    name(*p),
                    percentile(l, 0.5),
                    percentile(l, 0.99),
                    percentile(l, 0.999),
                    percentile(t, 0.5),
                    percentile(t, 0.99),
                    percentile(t, 0.999)
                );
            }
        }
        if let Some(dir) = &args.out {
            std::fs::create_dir_all(dir).expect("create the output directory");
            let svg = plot(trace, &p99s);
            let file = dir.join(format!("simulate-{trace}.svg"));
            std::fs::write(&file, svg).expect("write the plot");
            println!("wrote {}", file.display());
        }
        let at90 = |p: Policy| {
            p99s.iter()
                .find(|(q, _)| *q == p)
                .map(|(_, s)| s[3])
                .unwrap()
        };
        let default = at90(Policy::Crate(Strategy::PowerOfTwoChoices));
        if conv {
            fleets(&scaled(&requests, 0.9), &mut report);
        }
        println!(
            "{trace} at 90%: p99 latency of the default {default:.1} s = {:.2}x the oracle's, {:.2}x round-robin's",
            default / at90(Policy::Oracle),
            default / at90(Policy::Crate(Strategy::RoundRobin))
        );
    }
    println!("{report}");
    if let Some(dir) = &args.out {
        let file = dir.join("simulate.md");
        let text = format!(
            "# Simulated strategies on the Azure LLM inference traces\n\nProduced by `cargo run --release --example simulate`. Data: Patel et al., \"Splitwise: Efficient generative LLM inference using phase splitting\", ISCA 2024; the Azure Public Dataset (CC-BY 4.0).\n{report}"
        );
        std::fs::write(&file, text).expect("write the table");
        println!("wrote {}", file.display());
    }
}

/// Router replicas on one trace at one load: one router, then R replicas each knowing its own
/// requests alone, or also the instances' counts scraped every 100 ms or every second.
fn fleets(load: &[Request], report: &mut String) {
    let p2c = Policy::Crate(Strategy::PowerOfTwoChoices);
    let one = simulate_fleet(load, p2c, ONE_ROUTER, 7);
    let one_p99 = percentile(&one.latency, 0.99);
    let _ = writeln!(
        report,
        "\n### Router replicas (conv trace, 90% utilisation, p2c)\n\nEach replica has its own `Pool` over the same 8 instances and takes each arrival with probability 1/R (a seeded random spread, as an L4 balancer gives). \"local only\": a replica knows its own requests in flight alone. \"reports every T\": each replica also scrapes every instance's running and waiting counts every T (from a random phase of its own) into its endpoints with `Endpoint::report`, and picks by the others' requests by the report plus its own now.\n"
    );
    let _ = writeln!(
        report,
        "| routers | load known | latency p50 | p99 | p99 × one router's | TTFT p50 | p99 |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    let mut row = |replicas: usize, known: &str, o: &Outcome| {
        let (l, t) = (&o.latency, &o.ttft);
        let p99 = percentile(l, 0.99);
        let _ = writeln!(
            report,
            "| {replicas} | {known} | {:.1} s | {:.1} s | {:.2} | {:.2} s | {:.2} s |",
            percentile(l, 0.5),
            p99,
            p99 / one_p99,
            percentile(t, 0.5),
            percentile(t, 0.99),
        );
        println!("conv at 90%, {replicas} router(s), {known}: p99 latency {p99:.1} s = {:.2}x one router's", p99 / one_p99);
    };
    row(1, "local only", &one);
    for replicas in [1, 4, 16] {
        for (known, scrape) in [
            ("local only", None),
            ("reports every 100 ms", Some(0.1)),
            ("reports every 1 s", Some(1.0)),
        ] {
            if replicas == 1 && scrape.is_none() {
                continue;
            }
            let fleet = Fleet { replicas, scrape };
            row(replicas, known, &simulate_fleet(load, p2c, fleet, 7));
        }
    }
}

/// p99 latency against utilisation, one line per strategy, as SVG.
fn plot(trace: &str, series: &[(Policy, Vec<f64>)]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 190.0);
    let max = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .fold(1.0f64, f64::max);
    let ymax = (max * 1.1).log10().ceil().max(0.0);
    let x = |u: f64| left + (u - 0.5) / 0.45 * (w - left - right);
    let y = |v: f64| h - bottom - (v.max(1.0).log10() / ymax) * (h - bottom - top);
    let colors = [
        "#999", "#c9a", "#8a5", "#d33", "#a6d", "#37b", "#e90", "#000",
    ];
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="22" font-size="14">p99 latency, {trace} trace (log scale; Azure LLM inference trace, Patel et al. ISCA 2024)</text>
"#
    );
    for e in 0..=(ymax as i32) {
        let v = 10f64.powi(e);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{}" y2="{}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{v} s</text>"##,
            w - right,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        );
    }
    for u in UTILISATIONS {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{:.0}%</text>"#,
            x(u),
            h - bottom + 18.0,
            u * 100.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">offered load, share of capacity</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (k, (p, s)) in series.iter().enumerate() {
        let points: Vec<String> = UTILISATIONS
            .iter()
            .zip(s)
            .map(|(&u, &v)| format!("{:.1},{:.1}", x(u), y(v)))
            .collect();
        let c = colors[k % colors.len()];
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="14" height="3" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            w - right + 12.0,
            top + 18.0 * k as f64 + 6.0,
            w - right + 32.0,
            top + 18.0 * k as f64 + 11.0,
            name(*p)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
