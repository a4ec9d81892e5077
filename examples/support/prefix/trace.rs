//! The workload: the Mooncake conversation trace, or a synthetic one with the same prefix
//! structure when the trace is not at hand.

use std::path::Path;

use rand::{Rng, SeedableRng};

/// One request: when it arrives, its prompt and output length, and its prompt's blocks (a
/// range of `Trace::blocks`).
#[derive(Clone, Copy)]
pub struct Request {
    pub at: f64,
    pub input: u32,
    pub output: u32,
    pub start: u32,
    pub len: u32,
}

pub struct Trace {
    pub requests: Vec<Request>,
    /// Every request's blocks, numbered densely in order of first appearance.
    pub blocks: Vec<u64>,
    /// How many distinct blocks there are.
    pub distinct: usize,
    /// Where it came from, for the output.
    pub source: String,
    pub synthetic: bool,
}

impl Trace {
    pub fn blocks(&self, r: &Request) -> &[u64] {
        &self.blocks[r.start as usize..(r.start + r.len) as usize]
    }

    /// The same requests with arrival times divided by `speed`.
    pub fn faster(&self, speed: f64) -> Vec<Request> {
        self.requests
            .iter()
            .map(|r| Request {
                at: r.at / speed,
                ..*r
            })
            .collect()
    }

    /// The share of prompt blocks one unbounded cache would serve: the ceiling for any router.
    pub fn reuse_ceiling(&self) -> f64 {
        let mut seen = std::collections::HashSet::new();
        let (mut hit, mut all) = (0usize, 0usize);
        for r in &self.requests {
            let blocks = self.blocks(r);
            hit += blocks.iter().take_while(|b| seen.contains(*b)).count();
            all += blocks.len();
            seen.extend(blocks.iter().copied());
        }
        hit as f64 / all.max(1) as f64
    }
}

/// Reads `mooncake_conversation_trace.jsonl`: one JSON object per line with `timestamp` (ms),
/// `input_length`, `output_length` and `hash_ids` (one per 512-token block).
pub fn read(path: &Path) -> Option<Trace> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut requests = Vec::new();
    let mut blocks = Vec::new();
    let mut dense = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let ids = v.get("hash_ids")?.as_array()?;
        let start = blocks.len() as u32;
        for id in ids {
            let next = dense.len() as u64;
            blocks.push(*dense.entry(id.as_u64()?).or_insert(next));
        }
        requests.push(Request {
            at: v.get("timestamp")?.as_f64()? / 1000.0,
            input: v.get("input_length")?.as_u64()?.max(1) as u32,
            output: v.get("output_length")?.as_u64()?.max(1) as u32,
            start,
            len: ids.len() as u32,
        });
    }
    requests.sort_by(|a, b| a.at.total_cmp(&b.at));
    (!requests.is_empty()).then(|| Trace {
        requests,
        blocks,
        distinct: dense.len(),
        source: path.display().to_string(),
        synthetic: false,
    })
}

/// Conversations with the trace's published statistics: 12,031 requests over about an hour
/// (3.4 per second), every prompt opening with one shared block (a system prompt), new
/// conversations of log-normal length (median some 7,000 tokens), and later turns that extend
/// an earlier prompt by 2 to 13 blocks, minutes later, half the conversations ending after each
/// turn; one unbounded cache would serve 36% of the prompt blocks, as in the trace. Outputs of
/// some 340 tokens.
pub fn synthetic(seed: u64) -> Trace {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let normal =
        |rng: &mut rand::rngs::StdRng| (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
    let n = 12_031;
    let mut requests = Vec::with_capacity(n);
    let mut blocks: Vec<u64> = Vec::new();
    let mut next_id = 1u64;
    // Open conversations: (prompt blocks so far, when the next turn may come).
    let mut open: Vec<(Vec<u64>, f64)> = Vec::new();
    let mut at = 0.0;
    while requests.len() < n {
        at += -(1.0 - rng.random::<f64>()).ln() / 3.4;
        // A due conversation continues with this request 35% of the time.
        let due = open.iter().position(|(_, t)| *t <= at);
        let chain = match due {
            Some(i) if rng.random_bool(0.35) => {
                let (mut chain, _) = open.swap_remove(i);
                let more = 2 + (rng.random::<f64>() * 12.0) as usize;
                chain.extend((0..more).map(|_| {
                    next_id += 1;
                    next_id
                }));
                chain
            }
            _ => {
                let tokens = (6_900f64.ln() + 1.0 * normal(&mut rng))
                    .exp()
                    .clamp(600.0, 120_000.0);
                let len = (tokens / 512.0).ceil() as usize;
                let mut chain = vec![0];
                chain.extend((1..len).map(|_| {
                    next_id += 1;
                    next_id
                }));
                chain
            }
        };
        let input = (chain.len() as u32 - 1) * 512 + 1 + (rng.random::<f64>() * 511.0) as u32;
        let output = (340f64.ln() + 0.6 * normal(&mut rng))
            .exp()
            .clamp(1.0, 4_000.0) as u32;
        let start = blocks.len() as u32;
        blocks.extend_from_slice(&chain);
        requests.push(Request {
            at,
            input,
            output,
            start,
            len: chain.len() as u32,
        });
        // Half the conversations end after each turn.
        if open.len() < 2_000 && rng.random_bool(0.5) {
            let gap = -(1.0 - rng.random::<f64>()).ln() * 120.0;
            open.push((chain, at + gap));
        }
    }
    Trace {
        requests,
        blocks,
        distinct: next_id as usize + 1,
        source: "synthetic conversations (the Mooncake trace's statistics)".into(),
        synthetic: true,
    }
}
