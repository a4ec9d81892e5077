//! SGLang model gateway's `cache_aware` policy, re-implemented from its code and defaults.

use super::{
    fleet::{Router, Settings},
    lru::Lru,
    routers::Base,
    trace::Request,
};

/// SGLang model gateway's `cache_aware` (sgl-router `policies/cache_aware.rs`, CLI defaults):
/// when the router's own loads are imbalanced (max - min > 64 and max > 1.5 min), the least
/// loaded worker; else the approximate tree's longest match if its match rate exceeds 0.3,
/// else the worker with the smallest tree. The request is inserted in the chosen worker's
/// tree. The tree is kept in blocks rather than characters; its bound (2^26 characters per
/// worker, some 32,768 blocks of 512 tokens at 4 characters a token) is applied at insertion
/// instead of every 120 s. Where the gateway takes "the first tenant" of the deepest node
/// (map order), this takes one at random.
pub struct Sglang {
    base: Base,
    trees: Vec<Lru>,
    /// For each block, one bit per worker whose tree holds it.
    holders: Vec<u32>,
}

impl Sglang {
    pub fn new(base: Base, s: &Settings) -> Self {
        let n = base.endpoints.len();
        Self {
            base,
            trees: (0..n).map(|_| Lru::new(32_768, s.universe)).collect(),
            holders: vec![0; s.universe],
        }
    }
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
}

impl Router for Sglang {
    fn route(&mut self, id: usize, _: &Request, blocks: &[u64], now: f64) -> usize {
        let n = self.base.endpoints.len();
        let loads: Vec<usize> = (0..n).map(|w| self.base.load(w)).collect();
        let (max, min) = (*loads.iter().max().unwrap(), *loads.iter().min().unwrap());
        let imbalanced = max - min > 64 && max as f64 > min as f64 * 1.5;
        let w = if imbalanced {
            loads.iter().position(|&l| l == min).unwrap()
        } else {
            let depth = blocks
                .iter()
                .take_while(|&&b| self.holders[b as usize] != 0)
                .count();
            let rate = depth as f64 / blocks.len().max(1) as f64;
            if depth > 0 && rate > 0.3 {
                let mask = self.holders[blocks[depth - 1] as usize];
                self.base
                    .best_by(n, |w| if mask >> w & 1 == 1 { 0.0 } else { 1.0 })
            } else {
                let sizes: Vec<usize> = self.trees.iter().map(Lru::len).collect();
                self.base.best_by(n, |w| sizes[w] as f64)
            }
        };
        let holders = &mut self.holders;
        self.trees[w].touch(blocks, |b| holders[b as usize] &= !(1 << w));
        for &b in blocks {
            self.holders[b as usize] |= 1 << w;
        }
        self.base.sent(id, w, now);
        w
    }
    base_events!();
}
