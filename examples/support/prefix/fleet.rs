//! The simulated fleet, in virtual time: LLM engines with a KV cache, and the routers in
//! front of them, seeing only what a real router sees.

use std::{cmp::Reverse, collections::BinaryHeap, collections::VecDeque};

use tower_ai_balance::prefix::KvEvent;

use super::{
    lru::Lru,
    trace::{Request, Trace},
};

/// The engines' hardware and the fleet's shape.
#[derive(Clone, Copy)]
pub struct Settings {
    pub workers: usize,
    /// Sequences an engine runs at once (prefilling or decoding).
    pub slots: usize,
    /// KV cache per engine, in blocks.
    pub cache_blocks: usize,
    pub block_tokens: u32,
    /// Prefill tokens per second.
    pub prefill_rate: f64,
    /// Seconds per output token of one sequence.
    pub decode: f64,
    /// How often routers scrape the engines' metrics.
    pub scrape: f64,
    /// How many distinct blocks the workload has (`Trace::distinct`).
    pub universe: usize,
}

/// An engine's metrics as a scrape sees them: vLLM's gauges `num_requests_waiting`,
/// `num_requests_running` and `kv_cache_usage_perc`, and its counters
/// `prefix_cache_queries_total` and `prefix_cache_hits_total` (a request's prompt tokens, and
/// those found cached, counted when it is scheduled: here, when its prefill starts) and
/// `prompt_tokens_by_source_total{source="local_compute"}` (the tokens a request computed,
/// counted when its prefill ends, with its first token).
#[derive(Clone, Copy, Default)]
pub struct Metrics {
    pub waiting: u32,
    pub running: u32,
    pub kv_usage: f64,
    pub queries: u64,
    pub hits: u64,
    pub computed: u64,
}

/// The engines' cache changes not yet told to the routers: which engine stored which
/// request's prompt, and the blocks that made room for it (a range of `evicted`).
#[derive(Default)]
struct Published {
    changes: Vec<(usize, usize, std::ops::Range<usize>)>,
    evicted: Vec<u64>,
}

/// A router: picks a worker for each request it receives, and hears what a real router hears.
pub trait Router {
    fn route(&mut self, id: usize, request: &Request, blocks: &[u64], now: f64) -> usize;
    /// The request's first token reached the router.
    fn first_token(&mut self, id: usize, now: f64);
    /// The request's response ended.
    fn finished(&mut self, id: usize, now: f64);
    /// A scrape of every engine's metrics.
    fn scrape(&mut self, metrics: &[Metrics], now: f64);
    /// An engine's KV event (vLLM's `BlockStored` and `BlockRemoved`), published as its cache
    /// changes. Only routers told to subscribe use them; none does in the stated setting.
    fn kv_event(&mut self, _worker: usize, _event: KvEvent<'_>) {}
    /// The time to first token the router expected for a request, if it estimates one.
    fn expected(&self, _id: usize) -> Option<f64> {
        None
    }
}

/// One engine: FIFO queue, one prefill at a time, up to `slots` sequences, an LRU KV cache.
struct Engine {
    cache: Lru,
    queue: VecDeque<usize>,
    running: usize,
    prefilling: bool,
    /// Blocks held by the running sequences, for the KV usage metric.
    running_blocks: usize,
    /// The counters (see `Metrics`).
    queries: u64,
    hits: u64,
    computed: u64,
    /// Diagnostics: when the prefill running ends, and whose it is.
    prefill_end: f64,
    prefill_owner: usize,
}

pub struct Outcome {
    pub ttft: Vec<f64>,
    pub latency: Vec<f64>,
    pub hit_blocks: u64,
    pub prompt_blocks: u64,
    pub served: Vec<u64>,
    /// Mean share of the fleet's slots in use while requests arrive.
    pub utilisation: f64,
    /// Among the slowest 1% of requests to the first token, the share for which the router
    /// expected less than half the time they took (routers that estimate it).
    pub misjudged: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Done = 0,
    Prefilled = 1,
    Scrape = 2,
}

/// A time, ordered totally, for the event queue.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
struct Time(f64);
impl Eq for Time {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Replays `requests` (arrival order), each handed to the router `replica(id)`.
pub fn run(
    trace: &Trace,
    requests: &[Request],
    settings: &Settings,
    routers: &mut [Box<dyn Router + Send>],
    replica: impl Fn(usize) -> usize,
) -> Outcome {
    let s = settings;
    let mut engines: Vec<Engine> = (0..s.workers)
        .map(|_| Engine {
            cache: Lru::new(s.cache_blocks, s.universe),
            queue: VecDeque::new(),
            running: 0,
            prefilling: false,
            running_blocks: 0,
            queries: 0,
            hits: 0,
            computed: 0,
            prefill_end: 0.0,
            prefill_owner: 0,
        })
        .collect();
    let n = requests.len();
    let mut placed = vec![0usize; n];
    let mut owner = vec![0usize; n];
    let mut first = vec![0.0f64; n];
    let mut computed = vec![0u64; n];
    let diag = std::env::var_os("PREFIX_DIAG").is_some();
    let mut ahead: Vec<Ahead> = if diag {
        vec![Ahead::default(); n]
    } else {
        Vec::new()
    };
    let mut out = Outcome {
        ttft: Vec::with_capacity(n),
        latency: Vec::with_capacity(n),
        hit_blocks: 0,
        prompt_blocks: 0,
        served: vec![0; s.workers],
        utilisation: 0.0,
        misjudged: None,
    };
    let mut events: BinaryHeap<Reverse<(Time, Kind, usize)>> = BinaryHeap::new();
    events.push(Reverse((Time(0.0), Kind::Scrape, 0)));
    let (start, end) = (
        requests.first().map_or(0.0, |r| r.at),
        requests.last().map_or(0.0, |r| r.at),
    );
    let (mut busy, mut last, mut running) = (0.0, start, 0usize);
    let mut next = 0;
    let mut done = 0;
    let blocks_of =
        |r: &Request| r.len as usize + (r.output as usize).div_ceil(s.block_tokens as usize);

    // Starts the next queued request on engine `w` if its prefill unit and a slot are free.
    let start_next = |w: usize,
                      now: f64,
                      engines: &mut Vec<Engine>,
                      events: &mut BinaryHeap<Reverse<(Time, Kind, usize)>>,
                      out: &mut Outcome,
                      running: &mut usize,
                      computed: &mut Vec<u64>,
                      owner: &Vec<usize>,
                      published: &mut Published| {
        let e = &mut engines[w];
        if e.prefilling || e.running >= s.slots {
            return;
        }
        let Some(id) = e.queue.pop_front() else {
            return;
        };
        let r = &requests[id];
        let chain = trace.blocks(r);
        let hit = e.cache.matched(chain);
        out.hit_blocks += hit as u64;
        out.prompt_blocks += chain.len() as u64;
        let cached = (hit as u64 * u64::from(s.block_tokens)).min(u64::from(r.input) - 1);
        let compute = u64::from(r.input) - cached;
        e.queries += u64::from(r.input);
        e.hits += cached;
        computed[id] = compute;
        e.prefill_end = now + compute as f64 / s.prefill_rate;
        e.prefill_owner = owner[id];
        let from = published.evicted.len();
        e.cache.touch(chain, |block| published.evicted.push(block));
        let to = published.evicted.len();
        published.changes.push((w, id, from..to));
        e.running += 1;
        *running += 1;
        e.prefilling = true;
        e.running_blocks += blocks_of(r);
        events.push(Reverse((
            Time(now + compute as f64 / s.prefill_rate),
            Kind::Prefilled,
            id,
        )));
    };

    let mut published = Published::default();
    while done < n {
        // The engines' cache changes since the last step reach the routers before anything
        // else happens: KV events arrive within milliseconds.
        for (w, id, evicted) in published.changes.drain(..) {
            let stored = trace.blocks(&requests[id]);
            for router in routers.iter_mut() {
                router.kv_event(w, KvEvent::Stored(stored));
                if !evicted.is_empty() {
                    router.kv_event(w, KvEvent::Removed(&published.evicted[evicted.clone()]));
                }
            }
        }
        published.evicted.clear();
        let arrival = requests.get(next).map(|r| r.at);
        let event = events.peek().map(|Reverse((t, _, _))| t.0);
        let now = match (arrival, event) {
            (Some(a), Some(e)) => a.min(e),
            (Some(a), None) => a,
            (None, Some(e)) => e,
            (None, None) => break,
        };
        let clamp = |t: f64| t.clamp(start, end);
        busy += running as f64 * (clamp(now) - clamp(last));
        last = now;
        // Completions and first tokens at the same instant go before an arrival.
        if event.is_some_and(|e| arrival.map_or(true, |a| e <= a)) {
            let Reverse((Time(now), kind, id)) = events.pop().expect("peeked");
            match kind {
                Kind::Scrape => {
                    let metrics: Vec<Metrics> = engines
                        .iter()
                        .map(|e| Metrics {
                            waiting: e.queue.len() as u32,
                            running: e.running as u32,
                            kv_usage: (e.running_blocks as f64 / s.cache_blocks.max(1) as f64)
                                .min(1.0),
                            queries: e.queries,
                            hits: e.hits,
                            computed: e.computed,
                        })
                        .collect();
                    for router in routers.iter_mut() {
                        router.scrape(&metrics, now);
                    }
                    if next < n {
                        events.push(Reverse((Time(now + s.scrape), Kind::Scrape, 0)));
                    }
                }
                Kind::Prefilled => {
                    let w = placed[id];
                    engines[w].prefilling = false;
                    engines[w].computed += computed[id];
                    first[id] = now;
                    out.ttft.push(now - requests[id].at);
                    routers[owner[id]].first_token(id, now);
                    let r = &requests[id];
                    events.push(Reverse((
                        Time(now + f64::from(r.output) * s.decode),
                        Kind::Done,
                        id,
                    )));
                    start_next(
                        w,
                        now,
                        &mut engines,
                        &mut events,
                        &mut out,
                        &mut running,
                        &mut computed,
                        &owner,
                        &mut published,
                    );
                }
                Kind::Done => {
                    let w = placed[id];
                    let r = &requests[id];
                    engines[w].running -= 1;
                    engines[w].running_blocks -= blocks_of(r);
                    running -= 1;
                    done += 1;
                    out.latency.push(now - r.at);
                    routers[owner[id]].finished(id, now);
                    start_next(
                        w,
                        now,
                        &mut engines,
                        &mut events,
                        &mut out,
                        &mut running,
                        &mut computed,
                        &owner,
                        &mut published,
                    );
                }
            }
        } else {
            let id = next;
            next += 1;
            let r = &requests[id];
            let k = replica(id);
            owner[id] = k;
            let w = routers[k].route(id, r, trace.blocks(r), now);
            placed[id] = w;
            out.served[w] += 1;
            engines[w].queue.push_back(id);
            if diag {
                ahead[id] = Ahead::at(&engines[w], w, k, now, requests, trace, &owner, &placed, s);
                ahead[id].best(&engines, r, trace, s);
            }
            start_next(
                w,
                now,
                &mut engines,
                &mut events,
                &mut out,
                &mut running,
                &mut computed,
                &owner,
                &mut published,
            );
        }
    }
    out.utilisation = busy / ((end - start).max(1e-9) * (s.workers * s.slots) as f64);
    let mut slowest: Vec<(f64, usize)> =
        (0..n).map(|id| (first[id] - requests[id].at, id)).collect();
    slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
    slowest.truncate((n / 100).max(1));
    let judged: Vec<bool> = slowest
        .iter()
        .filter_map(|&(ttft, id)| routers[owner[id]].expected(id).map(|e| e < 0.5 * ttft))
        .collect();
    if !judged.is_empty() {
        out.misjudged = Some(judged.iter().filter(|m| **m).count() as f64 / judged.len() as f64);
    }
    if diag {
        let mut sum = Ahead::default();
        for &(ttft, id) in &slowest {
            sum.add(
                &ahead[id],
                ttft,
                routers[owner[id]].expected(id).unwrap_or(0.0),
            );
        }
        let k = slowest.len() as f64;
        eprintln!(
            "slowest {}: ttft {:.2} expected {:.2} | prefill running: own {:.2} s, others {:.2} s | queued: own {:.2} s ({:.1} req), others {:.2} s ({:.1} req) | full {:.0}% | own prefill {:.2} s (best engine's {:.2} s)",
            slowest.len(), sum.ttft / k, sum.expected / k, sum.running_own / k, sum.running_other / k,
            sum.queued_own / k, sum.queued_own_n / k, sum.queued_other / k, sum.queued_other_n / k,
            100.0 * sum.full / k, sum.own / k, sum.best_own / k,
        );
    }
    out.ttft.sort_by(f64::total_cmp);
    out.latency.sort_by(f64::total_cmp);
    out
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Diagnostics: the work ahead of a request on its engine when it was routed, in seconds of
/// prefill, split by whether this request's router sent it.
#[derive(Clone, Copy, Default)]
struct Ahead {
    running_own: f64,
    running_other: f64,
    queued_own: f64,
    queued_own_n: f64,
    queued_other: f64,
    queued_other_n: f64,
    full: f64,
    own: f64,
    /// The prefill it would have had on the engine holding most of its prompt.
    best_own: f64,
    ttft: f64,
    expected: f64,
}

impl Ahead {
    #[allow(clippy::too_many_arguments)]
    fn at(
        e: &Engine,
        w: usize,
        router: usize,
        now: f64,
        requests: &[Request],
        trace: &Trace,
        owner: &[usize],
        placed: &[usize],
        s: &Settings,
    ) -> Self {
        let _ = (w, placed);
        let mut a = Ahead {
            best_own: f64::INFINITY,
            ..Ahead::default()
        };
        if e.prefilling {
            let left = (e.prefill_end - now).max(0.0);
            if e.prefill_owner == router {
                a.running_own = left;
            } else {
                a.running_other = left;
            }
        }
        let id = *e.queue.back().expect("just queued");
        for &q in e.queue.iter().take(e.queue.len() - 1) {
            let r = &requests[q];
            let hit = e.cache.matched(trace.blocks(r)) as u64 * u64::from(s.block_tokens);
            let t = (u64::from(r.input) - hit.min(u64::from(r.input) - 1)) as f64 / s.prefill_rate;
            if owner[q] == router {
                a.queued_own += t;
                a.queued_own_n += 1.0;
            } else {
                a.queued_other += t;
                a.queued_other_n += 1.0;
            }
        }
        a.full = f64::from(u8::from(e.running >= s.slots));
        let r = &requests[id];
        let hit = e.cache.matched(trace.blocks(r)) as u64 * u64::from(s.block_tokens);
        a.own = (u64::from(r.input) - hit.min(u64::from(r.input) - 1)) as f64 / s.prefill_rate;
        a
    }

    fn best(&mut self, engines: &[Engine], r: &Request, trace: &Trace, s: &Settings) {
        for e in engines {
            let hit = e.cache.matched(trace.blocks(r)) as u64 * u64::from(s.block_tokens);
            let t = (u64::from(r.input) - hit.min(u64::from(r.input) - 1)) as f64 / s.prefill_rate;
            self.best_own = self.best_own.min(t);
        }
    }

    fn add(&mut self, o: &Ahead, ttft: f64, expected: f64) {
        self.running_own += o.running_own;
        self.running_other += o.running_other;
        self.queued_own += o.queued_own;
        self.queued_own_n += o.queued_own_n;
        self.queued_other += o.queued_other;
        self.queued_other_n += o.queued_other_n;
        self.full += o.full;
        self.own += o.own;
        self.best_own += o.best_own;
        self.ttft += ttft;
        self.expected += expected;
    }
}
