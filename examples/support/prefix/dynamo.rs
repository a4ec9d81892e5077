//! NVIDIA Dynamo's KV router, re-implemented from its code and defaults.

use super::{
    fleet::{Metrics, Router, Settings},
    routers::Base,
    trace::Request,
};

/// NVIDIA Dynamo's KV router (`kv_router` scheduler, defaults): cost = overlap weight (1.0) ×
/// prefill blocks + decode blocks, the least cost taken (temperature 0), ties at random.
/// Prefill blocks: the prefill tokens the router has in flight on the worker (requests without
/// a first token) plus this request's tokens beyond its overlap, over the block size. Decode
/// blocks: the distinct blocks of the worker's active requests plus this request's blocks not
/// among them. Without KV events from the engines, the overlap comes from its approximate
/// mode: the router's own placements, each expiring 120 s after it was last routed. Newer
/// releases' router-side queueing (`router_queue_threshold`) is not modelled.
pub struct Dynamo {
    base: Base,
    /// For each block, its row in `expiry` (`u32::MAX`: never routed).
    row: Vec<u32>,
    /// When each worker's entry for a block expires.
    expiry: Vec<[f32; 16]>,
    /// For each worker, how many of its active requests hold each block.
    active: Vec<Vec<u16>>,
    distinct: Vec<usize>,
    prefill: Vec<u64>,
    requests: Vec<Option<Active>>,
    arena: Vec<u64>,
    block_tokens: u64,
}

/// A request Dynamo's router has in flight.
struct Active {
    worker: usize,
    /// Its prefill tokens, counted on the worker until its first token.
    tokens: u64,
    pending: bool,
    /// Where its blocks are in `arena`.
    start: u32,
    len: u32,
}

impl Dynamo {
    pub fn new(base: Base, s: &Settings) -> Self {
        assert!(s.workers <= 16);
        let n = base.endpoints.len();
        let requests = (0..base.guards.len()).map(|_| None).collect();
        Self {
            base,
            row: vec![u32::MAX; s.universe],
            expiry: Vec::new(),
            active: vec![vec![0; s.universe]; n],
            distinct: vec![0; n],
            prefill: vec![0; n],
            requests,
            arena: Vec::new(),
            block_tokens: u64::from(s.block_tokens),
        }
    }
}

impl Router for Dynamo {
    fn route(&mut self, id: usize, r: &Request, blocks: &[u64], now: f64) -> usize {
        const N: usize = 16;
        let n = self.base.endpoints.len();
        let t = now as f32;
        let mut overlap = [0u64; N];
        let mut live = (1u32 << n) - 1;
        for &b in blocks {
            let row = self.row[b as usize];
            if row == u32::MAX {
                break;
            }
            let expiry = &self.expiry[row as usize];
            for w in 0..n {
                if live >> w & 1 == 1 && expiry[w] > t {
                    overlap[w] += 1;
                } else {
                    live &= !(1 << w);
                }
            }
            if live == 0 {
                break;
            }
        }
        let input = u64::from(r.input);
        let mut new_tokens = [0u64; N];
        let mut cost = [0f64; N];
        for w in 0..n {
            new_tokens[w] = input.saturating_sub(overlap[w] * self.block_tokens);
            let prefill = (self.prefill[w] + new_tokens[w]) as f64 / self.block_tokens as f64;
            let active = &self.active[w];
            let new_blocks = blocks.iter().filter(|&&b| active[b as usize] == 0).count();
            cost[w] = prefill + (self.distinct[w] + new_blocks) as f64;
        }
        let w = self.base.best_by(n, |w| cost[w]);
        for &b in blocks {
            let b = b as usize;
            if self.row[b] == u32::MAX {
                self.row[b] = self.expiry.len() as u32;
                self.expiry.push([f32::NEG_INFINITY; N]);
            }
            self.expiry[self.row[b] as usize][w] = t + 120.0;
            if self.active[w][b] == 0 {
                self.distinct[w] += 1;
            }
            self.active[w][b] += 1;
        }
        self.prefill[w] += new_tokens[w];
        let start = self.arena.len() as u32;
        self.arena.extend_from_slice(blocks);
        self.requests[id] = Some(Active {
            worker: w,
            tokens: new_tokens[w],
            pending: true,
            start,
            len: blocks.len() as u32,
        });
        self.base.sent(id, w, now);
        w
    }

    fn first_token(&mut self, id: usize, now: f64) {
        if let Some(a) = self.requests[id].as_mut() {
            if std::mem::take(&mut a.pending) {
                self.prefill[a.worker] -= a.tokens;
            }
        }
        self.base.first_token(id, now);
    }

    fn finished(&mut self, id: usize, now: f64) {
        if let Some(a) = self.requests[id].take() {
            if a.pending {
                self.prefill[a.worker] -= a.tokens;
            }
            for &b in &self.arena[a.start as usize..(a.start + a.len) as usize] {
                let count = &mut self.active[a.worker][b as usize];
                *count -= 1;
                if *count == 0 {
                    self.distinct[a.worker] -= 1;
                }
            }
        }
        self.base.finished(id, now);
    }

    fn scrape(&mut self, metrics: &[Metrics], _now: f64) {
        self.base.metrics.copy_from_slice(metrics);
    }
}
