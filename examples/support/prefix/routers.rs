//! The routers compared: the crate's own (power of two choices, rendezvous with bounded load,
//! the prefix policy) and the baselines, re-implemented from their public descriptions.
//!
//! Every router sees what a real one sees: its own placements, its own requests in flight
//! (counted with the crate's `LoadGuard`), the first token and the end of its own responses,
//! and the engines' metrics scraped every 100 ms. None sees another router's placements or
//! an engine's cache, except the prefix policy when told to subscribe to the engines' KV
//! events (`Tuning::kv_events`, outside the stated setting).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tower_ai_balance::{
    affinity::hash_key as stable_hash,
    load::LoadGuard,
    pick::{self, Filter},
    prefix::{EngineLoad, KvEvent, Placement, PrefixIndex, PrefixPolicy},
    Endpoint, EndpointConfig,
};

use super::{
    dynamo::Dynamo,
    fleet::{Metrics, Router, Settings},
    llmd::Llmd,
    sglang::Sglang,
    trace::Request,
};
use rand::RngCore;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    P2c,
    Rendezvous,
    Sglang,
    Llmd,
    Dynamo,
    Prefix,
}

pub const KINDS: [Kind; 6] = [
    Kind::P2c,
    Kind::Rendezvous,
    Kind::Sglang,
    Kind::Llmd,
    Kind::Dynamo,
    Kind::Prefix,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::P2c => "p2c (crate default)",
            Kind::Rendezvous => "rendezvous, bounded load (crate)",
            Kind::Sglang => "SGLang cache_aware",
            Kind::Llmd => "llm-d scorer",
            Kind::Dynamo => "Dynamo KV router",
            Kind::Prefix => "prefix policy (crate, new)",
        }
    }
}

pub fn router(
    kind: Kind,
    s: &Settings,
    replicas: usize,
    seed: u64,
    n: usize,
) -> Box<dyn Router + Send> {
    let base = Base::new(s, seed, n);
    match kind {
        Kind::P2c => Box::new(P2c(base)),
        Kind::Rendezvous => Box::new(Rendezvous(base)),
        Kind::Sglang => Box::new(Sglang::new(base, s)),
        Kind::Llmd => Box::new(Llmd::new(base, s)),
        Kind::Dynamo => Box::new(Dynamo::new(base, s)),
        Kind::Prefix => Box::new(Prefix::new(base, s, replicas)),
    }
}

/// What every router has: its endpoints (with its own in-flight counts), a seeded generator,
/// and the guard of each request it sent.
pub struct Base {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub rng: Wyrand,
    pub guards: Vec<Option<LoadGuard>>,
    t0: Instant,
    /// The engines' metrics as last scraped.
    pub metrics: Vec<Metrics>,
}

impl Base {
    pub fn new(s: &Settings, seed: u64, n: usize) -> Self {
        Self {
            endpoints: (0..s.workers)
                .map(|i| Endpoint::new(EndpointConfig::new(format!("engine-{i}"))).expect("valid"))
                .collect(),
            rng: Wyrand(seed),
            guards: (0..n).map(|_| None).collect(),
            t0: Instant::now(),
            metrics: vec![Metrics::default(); s.workers],
        }
    }

    pub fn at(&self, secs: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(secs.max(0.0))
    }

    pub fn sent(&mut self, id: usize, w: usize, now: f64) {
        self.guards[id] = LoadGuard::acquire_at(&self.endpoints[w], 1, self.at(now));
    }

    pub fn first_token(&mut self, id: usize, now: f64) {
        let at = self.at(now);
        if let Some(g) = self.guards[id].as_mut() {
            g.first_byte_at(at);
        }
    }

    pub fn finished(&mut self, id: usize, now: f64) {
        let at = self.at(now);
        if let Some(g) = self.guards[id].take() {
            g.complete_at(at);
        }
    }

    pub fn load(&self, w: usize) -> usize {
        self.endpoints[w].in_flight()
    }

    /// A uniformly random index among those for which `best` holds the best value.
    pub fn best_by(&mut self, n: usize, mut key: impl FnMut(usize) -> f64) -> usize {
        let (mut best, mut ties, mut chosen) = (f64::INFINITY, 0u64, 0);
        for i in 0..n {
            let k = key(i);
            if k < best {
                (best, ties, chosen) = (k, 1, i);
            } else if k == best {
                ties += 1;
                if self.rng.next_u64() % ties == 0 {
                    chosen = i;
                }
            }
        }
        chosen
    }
}

/// The crate's default: power of two choices over its own requests in flight.
struct P2c(Base);

impl P2c {
    fn base(&mut self) -> &mut Base {
        &mut self.0
    }
}

impl Router for P2c {
    fn route(&mut self, id: usize, _: &Request, _: &[u64], now: f64) -> usize {
        let b = &mut self.0;
        let filter = Filter::new().at(b.at(now));
        let w = pick::p2c(&b.endpoints, &filter, &mut b.rng).expect("an endpoint");
        b.sent(id, w, now);
        w
    }
    base_events!();
}

/// The crate's `StreamAffinity` with `PromptPrefix`: weighted rendezvous hashing of the
/// prompt's first bytes, bound 1.25. Its key here is the first two blocks (1,024 tokens, about
/// 4 KiB of text): every prompt of the trace shares its first block, so a shorter prefix
/// would send all of them to one key.
struct Rendezvous(Base);

impl Rendezvous {
    fn base(&mut self) -> &mut Base {
        &mut self.0
    }
}

impl Router for Rendezvous {
    fn route(&mut self, id: usize, _: &Request, blocks: &[u64], now: f64) -> usize {
        let b = &mut self.0;
        let mut key = [0u8; 16];
        for (i, block) in blocks.iter().take(2).enumerate() {
            key[i * 8..i * 8 + 8].copy_from_slice(&block.to_le_bytes());
        }
        let filter = Filter::new().at(b.at(now));
        let w = pick::rendezvous(&b.endpoints, &filter, stable_hash(&key), 1.25).expect("one");
        b.sent(id, w, now);
        w
    }
    base_events!();
}

/// The crate's prefix policy, fed what this router sees: its placements, first tokens and
/// ends, and the scraped metrics.
struct Prefix {
    base: Base,
    policy: PrefixPolicy,
    placements: Vec<Option<Placement>>,
    expected: Vec<f64>,
    /// Subscribed to the engines' KV events.
    kv_events: bool,
}

impl Prefix {
    fn new(base: Base, s: &Settings, replicas: usize) -> Self {
        let n = base.guards.len();
        let t = TUNING.with(std::cell::Cell::get);
        let mut policy =
            PrefixPolicy::new(Arc::new(PrefixIndex::new(s.cache_blocks)), s.block_tokens)
                .and_then(|p| p.prefill_rate(s.prefill_rate * t.rate_error.unwrap_or(1.0)))
                // Fed the engines' KV events, every replica's index lists what every engine holds:
                // no bet on a prefix's home is needed.
                .and_then(|p| p.replicas(if t.kv_events { 1 } else { replicas as u32 }))
                .expect("valid settings");
        if !t.no_slots {
            policy = policy.slots(s.slots as u32).expect("valid");
        }
        if let Some(w) = t.work_weight {
            policy = policy.work_weight(w).expect("valid");
        }
        if let Some(spread) = t.spread {
            policy = policy.spread(spread).expect("valid");
        }
        Self {
            base,
            policy,
            placements: (0..n).map(|_| None).collect(),
            expected: vec![0.0; n],
            kv_events: t.kv_events,
        }
    }
}

impl Router for Prefix {
    fn route(&mut self, id: usize, r: &Request, blocks: &[u64], now: f64) -> usize {
        let b = &mut self.base;
        let filter = Filter::new().at(b.at(now));
        let choice = self
            .policy
            .pick(
                &b.endpoints,
                &filter,
                blocks,
                u64::from(r.input),
                &mut b.rng,
            )
            .expect("an endpoint");
        let w = choice.index;
        self.expected[id] = choice.expected;
        self.placements[id] = Some(self.policy.placed(&b.endpoints[w], blocks, &choice));
        b.sent(id, w, now);
        w
    }

    fn first_token(&mut self, id: usize, now: f64) {
        let at = self.base.at(now);
        if let Some(p) = self.placements[id].as_mut() {
            p.first_token(at);
        }
        self.base.first_token(id, now);
    }

    fn finished(&mut self, id: usize, now: f64) {
        let at = self.base.at(now);
        if let Some(p) = self.placements[id].take() {
            p.finished(at);
        }
        self.base.finished(id, now);
    }

    fn scrape(&mut self, metrics: &[Metrics], now: f64) {
        let at = self.base.at(now);
        for (e, m) in self.base.endpoints.iter().zip(metrics) {
            // vLLM's counters: prompt tokens scheduled and not found cached, less those
            // computed, are the prefill under way.
            let load = EngineLoad {
                waiting: m.waiting,
                running: m.running,
                prefilling: (m.queries - m.hits).saturating_sub(m.computed),
            };
            self.policy.report(e, load, at);
        }
    }

    fn expected(&self, id: usize) -> Option<f64> {
        Some(self.expected[id])
    }

    fn kv_event(&mut self, worker: usize, event: KvEvent<'_>) {
        if self.kv_events {
            self.policy
                .index()
                .apply(&self.base.endpoints[worker], event);
        }
    }
}

/// Variations of the prefix policy's settings, for the sensitivity table.
#[derive(Clone, Copy, Default)]
pub struct Tuning {
    pub work_weight: Option<f64>,
    pub spread: Option<f64>,
    pub rate_error: Option<f64>,
    pub no_slots: bool,
    /// The prefix policy subscribes to the engines' KV events (not the stated setting).
    pub kv_events: bool,
}

thread_local! {
    static TUNING: std::cell::Cell<Tuning> = const { std::cell::Cell::new(Tuning { work_weight: None, spread: None, rate_error: None, no_slots: false, kv_events: false }) };
}

/// Runs `f` with the prefix policies it builds on this thread tuned so.
pub fn tuned<R>(tuning: Tuning, f: impl FnOnce() -> R) -> R {
    TUNING.with(|t| t.set(tuning));
    let out = f();
    TUNING.with(|t| t.set(Tuning::default()));
    out
}

/// The routers' random numbers: wyrand (one multiply per draw), seeded, so that a seed gives
/// the same run every time.
#[derive(Debug, Clone)]
pub struct Wyrand(pub u64);

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
