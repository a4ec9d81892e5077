//! llm-d's inference scheduler (default profile), re-implemented from its code and defaults.

use super::{
    fleet::{Router, Settings},
    lru::Lru,
    routers::Base,
    trace::Request,
};

/// llm-d's inference scheduler, default profile: prefix-cache scorer ×3 (the share of the
/// prompt's blocks found on a pod in the approximate index: each block counts for every pod
/// listed for it, until a block no pod holds), queue scorer ×2 (waiting requests, min-max
/// normalised, from the metrics), KV-cache utilisation scorer ×2 (1 - usage), max-score picker
/// (ties at random). The index records the chosen pod's blocks; per-pod LRU sized to the
/// engine's KV capacity (its auto-tuning). Its 16-token blocks would cap matching at 256
/// blocks, 4,096 tokens; here blocks are the trace's 512 tokens and the cap of 256 blocks
/// reaches every prompt.
pub struct Llmd {
    base: Base,
    pods: Vec<Lru>,
    /// For each block, one bit per pod listed for it.
    holders: Vec<u32>,
}

impl Llmd {
    pub fn new(base: Base, s: &Settings) -> Self {
        let n = base.endpoints.len();
        Self {
            base,
            pods: (0..n)
                .map(|_| Lru::new(s.cache_blocks, s.universe))
                .collect(),
            holders: vec![0; s.universe],
        }
    }
    fn base(&mut self) -> &mut Base {
        &mut self.base
    }
}

impl Router for Llmd {
    fn route(&mut self, id: usize, _: &Request, blocks: &[u64], now: f64) -> usize {
        let n = self.base.endpoints.len();
        let blocks = &blocks[..blocks.len().min(256)];
        let mut matched = vec![0u32; n];
        for &b in blocks {
            let mask = self.holders[b as usize];
            if mask == 0 {
                break;
            }
            for (w, m) in matched.iter_mut().enumerate() {
                *m += mask >> w & 1;
            }
        }
        let m = &self.base.metrics;
        let (qmin, qmax) = m.iter().fold((u32::MAX, 0), |(a, b), x| {
            (a.min(x.waiting), b.max(x.waiting))
        });
        let score = |w: usize| {
            let prefix = f64::from(matched[w]) / blocks.len().max(1) as f64;
            let queue = if qmax == qmin {
                1.0
            } else {
                f64::from(qmax - m[w].waiting) / f64::from(qmax - qmin)
            };
            let kv = 1.0 - m[w].kv_usage;
            3.0 * prefix + 2.0 * queue + 2.0 * kv
        };
        let scores: Vec<f64> = (0..n).map(score).collect();
        let w = self.base.best_by(n, |w| -scores[w]);
        let holders = &mut self.holders;
        self.pods[w].touch(blocks, |b| holders[b as usize] &= !(1 << w));
        for &b in blocks {
            self.holders[b as usize] |= 1 << w;
        }
        self.base.sent(id, w, now);
        w
    }
    base_events!();
}
