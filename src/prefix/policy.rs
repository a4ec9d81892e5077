//! The prefix-aware policy: each candidate's expected time to first token, from the prefix it
//! holds and the work queued ahead; rendezvous hashing among the near-best.

use std::{cell::RefCell, sync::Arc, time::Duration};

use rand::RngCore;
use tokio::time::Instant;

use super::{
    backlog::{nanos, Backlog, EngineLoad, Seen},
    index::PrefixIndex,
    placement::Placement,
};
use crate::{endpoint::Endpoint, error::ConfigError, pick::Filter};

/// Where a request goes, and what the index expected of it there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The index of the endpoint in the slice given to [`PrefixPolicy::pick`].
    pub index: usize,
    /// The prompt's leading blocks the index lists for that endpoint.
    pub cached_blocks: usize,
    /// The prompt's tokens it would have to compute there.
    pub new_tokens: u64,
    /// The expected time to first token there, in seconds.
    pub expected: f64,
}

/// Routes each request where its first token is expected soonest, counting the prefix each
/// endpoint already holds and the prefill work the request would add.
///
/// For every eligible endpoint it estimates the wait before the engine can start this prefill
/// and the prefill itself, of the prompt's tokens that endpoint does not hold:
///
/// ```text
/// wait(e)    = max(backlog(e) / rate(e), slot_wait(e))
/// prefill(e) = (tokens - cached(e)) / rate(e)
/// cost(e)    = wait(e) + (1 + work_weight) × prefill(e)
/// ```
///
/// - `cached(e)`: the prompt's leading blocks the [`PrefixIndex`] lists for `e`, in tokens.
/// - `backlog(e)`: prefill tokens ahead of this request there: those this router sent and
///   that have not produced a first token yet (each counted after its own cached prefix), the
///   requests the engine last reported waiting beyond those, at the average size, and the
///   prefill tokens it reported scheduled beyond this router's, less what it can have
///   computed since ([`EngineLoad::prefilling`]).
/// - `slot_wait(e)`: with a sequence limit per engine ([`slots`](Self::slots)), the time for
///   the requests beyond the limit to finish (their number × the observed time a request
///   holds its slot after its first token / the limit).
/// - `rate(e)`: the engines' prefill speed ([`prefill_rate`](Self::prefill_rate)) × weight.
///
/// `wait + prefill` is this request's expected time to first token; the work weight adds what
/// its prefill costs the others: the requests that will queue behind it, and the later turns
/// that find their prefix where it was computed. Computing a prefix again elsewhere is taken
/// only when the holder's queue costs more than that.
///
/// Among the endpoints whose cost is within [`spread`](Self::spread) of the best, it takes the
/// first in rendezvous order for the prompt's *distinguishing prefix*: the blocks that at
/// least half of the endpoints hold (a system prompt every server has; the first block of
/// every prompt in a chat service), and the first block after them. So a new conversation goes
/// where every router replica would send it, with no state shared, and its later turns find it
/// there; a prefix hot enough to queue work spreads over the endpoints next in its rendezvous
/// order, each of which then holds it too. With several router replicas
/// ([`replicas`](Self::replicas)), a prefix this router has never placed keeps to its
/// rendezvous order more firmly, since an earlier turn of it may have gone there through
/// another replica.
///
/// Hot path: a look-up per candidate in the index (no lock, no allocation) and two passes
/// over a per-thread scratch buffer that keeps its capacity.
#[derive(Debug, Clone)]
pub struct PrefixPolicy {
    index: Arc<PrefixIndex>,
    shared: Arc<Shared>,
}

/// The policy's settings.
#[derive(Debug, Clone, Copy)]
struct Settings {
    block_tokens: u64,
    rate: f64,
    slots: Option<u64>,
    spread: f64,
    work: f64,
    /// For a prefix this router has not placed: how far above the best cost, as a share of
    /// it, its rendezvous home may be and still take it.
    tolerance: f64,
    max_age: u64,
}

#[derive(Debug)]
struct Shared {
    settings: Settings,
}

impl Shared {
    fn new(settings: Settings) -> Self {
        Self { settings }
    }
}

struct Candidate {
    cached: u32,
    cost: f64,
    ttft: f64,
}

thread_local! {
    static SCRATCH: RefCell<(Vec<Candidate>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn invalid(name: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting { name, reason }
}

impl PrefixPolicy {
    /// A policy over `index`, whose blocks are `block_tokens` tokens long (for byte blocks,
    /// the tokens a block stands for: about a quarter of its bytes in English).
    pub fn new(index: Arc<PrefixIndex>, block_tokens: u32) -> Result<Self, ConfigError> {
        if block_tokens == 0 {
            return Err(invalid("block_tokens", "must be at least 1"));
        }
        Ok(Self {
            index,
            shared: Arc::new(Shared::new(Settings {
                block_tokens: u64::from(block_tokens),
                rate: 10_000.0,
                slots: None,
                spread: 0.5,
                work: 16.0,
                tolerance: 0.0,
                max_age: nanos(Duration::from_secs(1)),
            })),
        })
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.shared.settings;
        change(&mut settings);
        self.shared = Arc::new(Shared::new(settings));
        self
    }

    /// The engines' prefill speed in tokens per second at weight 1 (10,000 by default): what
    /// turns queued tokens into a wait, beside the wait for a slot.
    pub fn prefill_rate(self, tokens_per_sec: f64) -> Result<Self, ConfigError> {
        if !(tokens_per_sec.is_finite() && tokens_per_sec > 0.0) {
            return Err(invalid("prefill_rate", "must be a positive number"));
        }
        Ok(self.with(|s| s.rate = tokens_per_sec))
    }

    /// The sequences an engine runs at once (vLLM's `max_num_seqs`); beyond it, a request
    /// waits for one to finish. Unset by default: no wait for a slot is counted.
    pub fn slots(self, slots: u32) -> Result<Self, ConfigError> {
        if slots == 0 {
            return Err(invalid("slots", "must be at least 1"));
        }
        Ok(self.with(|s| s.slots = Some(u64::from(slots))))
    }

    /// How much the prefill work a request brings counts beyond its own wait (16 by default):
    /// the others that queue behind it, and the later turns that reuse what it computes. 0
    /// minimises each request's own expected time to first token; larger keeps prefixes where
    /// they are cached until their holder's queue grows longer.
    pub fn work_weight(self, weight: f64) -> Result<Self, ConfigError> {
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(invalid("work_weight", "must be a number of at least 0"));
        }
        Ok(self.with(|s| s.work = weight))
    }

    /// How far above the best cost, as a share of this prompt's whole prefill time, an
    /// endpoint may be and still be taken for its rendezvous rank (0.5 by default). 0 takes
    /// the best cost always.
    pub fn spread(self, share: f64) -> Result<Self, ConfigError> {
        if !(share.is_finite() && share >= 0.0) {
            return Err(invalid("spread", "must be a number of at least 0"));
        }
        Ok(self.with(|s| s.spread = share))
    }

    /// How many router replicas, each with its own index, share these engines (1 by default).
    /// With more than one, a later turn of a conversation often reaches a replica that did
    /// not place the earlier ones and knows only where the rendezvous order puts it; so a
    /// prefix this router has never placed goes to its rendezvous home while that home's cost
    /// is within `2(n - 1) / 3n` of the best (a half with four replicas), on top of the spread.
    ///
    /// Replicas whose indexes are fed the engines' KV events ([`PrefixIndex::apply`]) each know
    /// what every engine holds, whoever placed it: leave this at 1, since the bet only costs
    /// them (docs/prefix-cache.md measures both).
    pub fn replicas(self, n: u32) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(invalid("replicas", "must be at least 1"));
        }
        let n = f64::from(n);
        Ok(self.with(|s| s.tolerance = 2.0 * (n - 1.0) / (3.0 * n)))
    }

    /// How old an engine's report may be and still count (1 s by default).
    pub fn report_age(self, age: Duration) -> Self {
        self.with(|s| s.max_age = nanos(age))
    }

    /// The index.
    pub fn index(&self) -> &Arc<PrefixIndex> {
        &self.index
    }

    /// Records an engine's report of its load, taken at `at`. The report counts this router's
    /// requests already; the policy subtracts those it had there at the time.
    ///
    /// An endpoint that holds a load report of its own ([`Endpoint::report`], which the
    /// [`Scraper`](crate::engines::Scraper) with [`ToEndpoints`](crate::engines::ToEndpoints)
    /// feeds) needs no call: a pick reads the endpoint's latest report when it is newer than
    /// the one recorded here, with the report's
    /// [`local_in_flight`](crate::report::LoadReport::local_in_flight) as this router's
    /// requests then. Whichever of the two is newer counts.
    pub fn report(&self, endpoint: &Endpoint, load: EngineLoad, at: Instant) {
        let at = nanos(at.saturating_duration_since(self.index.epoch));
        self.index
            .record(endpoint)
            .backlog
            .report(load, endpoint.in_flight(), at);
    }

    /// Picks an endpoint for a prompt of `tokens` tokens whose block hashes are `blocks`.
    /// `None` if no endpoint is eligible. `rng` breaks ties when the prompt has no full block.
    pub fn pick<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
        &self,
        endpoints: &[E],
        filter: &Filter<'_>,
        blocks: &[u64],
        tokens: u64,
        rng: &mut R,
    ) -> Option<Choice> {
        SCRATCH.with(|scratch| {
            let (candidates, depths) = &mut *scratch.borrow_mut();
            self.pick_with(endpoints, filter, blocks, tokens, rng, candidates, depths)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn pick_with<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
        &self,
        endpoints: &[E],
        filter: &Filter<'_>,
        blocks: &[u64],
        tokens: u64,
        rng: &mut R,
        candidates: &mut Vec<Candidate>,
        depths: &mut Vec<u32>,
    ) -> Option<Choice> {
        let s = &self.shared.settings;
        let tokens = tokens.max(1);
        let view = self.index.view();
        let decode = self.index.averages.decode();
        let average = self.index.averages.new_tokens();
        let mut now = None;
        candidates.clear();
        depths.clear();
        let mut best = f64::INFINITY;
        for e in endpoints.iter().map(AsRef::as_ref) {
            let weight = filter.weight(e);
            if !(weight > 0.0 && filter.eligible(e)) {
                candidates.push(Candidate {
                    cached: 0,
                    cost: f64::INFINITY,
                    ttft: f64::INFINITY,
                });
                continue;
            }
            let record = view.get(e);
            let cached = record.map_or(0, |r| r.matched(blocks));
            let mut now_nanos = || {
                *now.get_or_insert_with(|| {
                    nanos(filter.now().saturating_duration_since(self.index.epoch))
                })
            };
            let seen = match record {
                Some(r) => {
                    r.backlog.adopt(e, self.index.epoch);
                    r.backlog.seen(now_nanos(), s.max_age)
                }
                // Never placed there: the endpoint's own report, if it has one, alone.
                None if e.report_stamp() != 0 => {
                    let backlog = Backlog::default();
                    backlog.adopt(e, self.index.epoch);
                    backlog.seen(now_nanos(), s.max_age)
                }
                None => Seen::default(),
            };
            let rate = s.rate * weight;
            // Another router's prefill that had begun by the report: what may be left of it.
            let prefilling =
                (seen.others_prefilling as f64 / rate - seen.age as f64 * 1e-9).max(0.0);
            let backlog = seen.tokens as f64 + seen.others_waiting as f64 * average;
            let mut wait = backlog / rate + prefilling;
            if let Some(slots) = s.slots {
                let occupied = e.in_flight() as u64 + seen.others_in_flight;
                let over = (occupied + 1).saturating_sub(slots);
                wait = wait.max(over as f64 * decode / slots as f64);
            }
            let prefill = new_tokens(tokens, cached, s.block_tokens) as f64 / rate;
            let cost = wait + (1.0 + s.work) * prefill;
            best = best.min(cost);
            candidates.push(Candidate {
                cached: cached as u32,
                cost,
                ttft: wait + prefill,
            });
            depths.push(cached as u32);
        }
        if depths.is_empty() {
            return None;
        }
        // The blocks at least half the endpoints hold, then the first that tells prompts apart.
        let half = depths.len().div_ceil(2);
        let (_, common, _) = depths.select_nth_unstable_by(half - 1, |a, b| b.cmp(a));
        let key = blocks
            .get((*common as usize).min(blocks.len().saturating_sub(1)))
            .copied();
        // A prefix no endpoint is known to hold beyond the common blocks is new to this router.
        let known = candidates.iter().map(|c| c.cached).max().unwrap_or(0);
        let tolerance = if known <= *common { s.tolerance } else { 0.0 };
        let limit = best * (1.0 + tolerance) + s.spread * tokens as f64 / s.rate;
        let tie = rng.next_u64();
        let mut chosen: Option<(usize, f64)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if c.cost > limit {
                continue;
            }
            let e = endpoints[i].as_ref();
            let rank = match key {
                Some(key) => rendezvous(key, e, filter.weight(e)),
                // No full block to hash: any of the near-best, at random.
                None => rendezvous(tie, e, 1.0),
            };
            if chosen.is_none_or_lower(rank) {
                chosen = Some((i, rank));
            }
        }
        let (index, _) = chosen?;
        let cached = candidates[index].cached as usize;
        Some(Choice {
            index,
            cached_blocks: cached,
            new_tokens: new_tokens(tokens, cached, s.block_tokens),
            expected: candidates[index].ttft,
        })
    }

    /// Records that a request with these blocks was sent to `endpoint` as `choice` said: the
    /// index lists its blocks there, and its prefill counts in the endpoint's backlog until
    /// the returned placement hears of its first token or is dropped.
    #[must_use = "the prefill counts in the backlog only while the placement is held"]
    pub fn placed(&self, endpoint: &Endpoint, blocks: &[u64], choice: &Choice) -> Placement {
        let record = self.index.record(endpoint);
        record.store(blocks);
        record.averages.observe_new_tokens(choice.new_tokens);
        Placement::new(record, choice.new_tokens, choice.cached_blocks)
    }
}

/// The prompt's tokens left to compute with `cached` blocks held (at least one: an engine
/// computes the last token even when it holds the whole prompt).
fn new_tokens(tokens: u64, cached: usize, block_tokens: u64) -> u64 {
    tokens - (cached as u64 * block_tokens).min(tokens - 1)
}

/// Weighted rendezvous score (as [`pick::rendezvous`](crate::pick::rendezvous) ranks).
#[inline]
fn rendezvous(key: u64, e: &Endpoint, weight: f64) -> f64 {
    let u = ((crate::hash::combine(key, e.key_hash()) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    weight / -u.ln()
}

trait Best {
    fn is_none_or_lower(&self, rank: f64) -> bool;
}

impl Best for Option<(usize, f64)> {
    #[inline]
    fn is_none_or_lower(&self, rank: f64) -> bool {
        self.map_or(true, |(_, r)| r < rank)
    }
}
