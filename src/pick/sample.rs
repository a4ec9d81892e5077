//! The pair sampler of the two-choice strategies: two distinct eligible endpoints, uniformly
//! or in proportion to weight, each read once, and a coin for ties.

use std::cmp::Ordering;

use rand::RngCore;

use super::filter::{Filter, View};
use crate::{endpoint::Endpoint, rng::below};

/// How many draws a two-choice strategy makes for two eligible endpoints before it falls back
/// to a full scan.
const MAX_DRAWS: usize = 32;

/// Two distinct eligible candidates, as read when drawn, and a coin for a tie.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair {
    pub(crate) a: (usize, View),
    pub(crate) b: (usize, View),
    coin: bool,
}

impl Pair {
    /// The index of `a` if `order` says it is less, of `b` if greater, the coin deciding a tie.
    #[inline]
    pub(crate) fn choose(self, order: Ordering) -> usize {
        match order {
            Ordering::Less => self.a.0,
            Ordering::Greater => self.b.0,
            Ordering::Equal if self.coin => self.a.0,
            Ordering::Equal => self.b.0,
        }
    }
}

/// Samples two distinct eligible endpoints uniformly (in proportion to weight with
/// [`Filter::sample_by_weight`]). The common case, unweighted, takes one RNG word for both
/// and the coin. A selective filter (one endpoint in 6 eligible, say) costs a dozen draws
/// rather than a scan; after [`MAX_DRAWS`] it gives up (`None`) and the caller scans.
#[inline(always)]
pub(crate) fn sample_pair<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<Pair> {
    if filter.max_weight.is_some() {
        return sample_pair_slowly(endpoints, filter, rng);
    }
    let word = rng.next_u64();
    let (a, b) = pair(word, endpoints.len());
    let (ea, eb) = (endpoints[a].as_ref(), endpoints[b].as_ref());
    // The common case: both open with room and unmasked, known from two loads and two bit
    // tests with nothing called, so nothing spills.
    if let (Some(fa), Some(fb)) = (ea.open_slot(), eb.open_slot()) {
        if filter.unmasked(ea) && filter.unmasked(eb) {
            let view = |load, e: &Endpoint| View {
                load,
                weight: e.weight(),
            };
            return Some(Pair {
                a: (a, view(fa, ea)),
                b: (b, view(fb, eb)),
                coin: coin(word),
            });
        }
    }
    first_pair_closely(endpoints, filter, rng, (a, b, coin(word)))
}

/// The first draw's pair when one of the two needs a closer look (gated, or maybe excluded):
/// kept if both are eligible, else drawn afresh, which keeps the pairs uniform, since the
/// first draw is kept only when it is an eligible pair.
#[cold]
#[inline(never)]
fn first_pair_closely<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    (a, b, coin): (usize, usize, bool),
) -> Option<Pair> {
    if let (Some(va), Some(vb)) = (
        filter.view(endpoints[a].as_ref()),
        filter.view(endpoints[b].as_ref()),
    ) {
        return Some(Pair {
            a: (a, va),
            b: (b, vb),
            coin,
        });
    }
    sample_pair_slowly(endpoints, filter, rng)
}

/// Two distinct indices below `n` (at least 2) from one word's halves, uniform over ordered
/// pairs: the first among all `n`, the second among the other `n - 1` (Lemire's
/// multiply-shift for both), so no draw is wasted on a collision (one in 8 at 8 endpoints).
#[inline]
pub(crate) fn pair(word: u64, n: usize) -> (usize, usize) {
    let a = below(word as u32, n);
    let b = a + 1 + below((word >> 32) as u32, n - 1);
    (a, if b >= n { b - n } else { b })
}

/// A coin from a word's bits that the indices do not use alone.
#[inline]
fn coin(word: u64) -> bool {
    word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1
}

/// One index per 32 random bits, two per word, until two distinct eligible ones are drawn.
#[inline(never)]
fn sample_pair_slowly<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<Pair> {
    let n = endpoints.len();
    let mut first: Option<(usize, View)> = None;
    let mut word = 0u64;
    for draw in 0..MAX_DRAWS {
        if draw % 2 == 0 {
            word = rng.next_u64();
        }
        let bits = (word >> (32 * (draw % 2))) as u32;
        let i = below(bits, n);
        let Some(view) = filter.view(endpoints[i].as_ref()) else {
            continue;
        };
        if let Some(max) = filter.max_weight {
            // Rejection sampling in proportion to weight: accept with probability w / max,
            // using the draw's unused low bits as the uniform variate.
            let unused = (u64::from(bits) * n as u64) as u32;
            if f64::from(unused) * max >= view.weight * 4_294_967_296.0 {
                continue;
            }
        }
        match first {
            None => first = Some((i, view)),
            Some(a) if a.0 != i => {
                return Some(Pair {
                    a,
                    b: (i, view),
                    coin: coin(word),
                })
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::rng::FastRng;

    #[test]
    fn a_pair_is_two_distinct_indices_uniform_over_ordered_pairs() {
        let mut rng = FastRng::seeded(11);
        for n in [2usize, 3, 8, 1000] {
            for _ in 0..10_000 {
                let (a, b) = pair(rng.next_u64(), n);
                assert!(a < n && b < n && a != b, "{a}, {b} of {n}");
            }
        }
        let mut counts = [[0u32; 3]; 3];
        for _ in 0..60_000 {
            let (a, b) = pair(rng.next_u64(), 3);
            counts[a][b] += 1;
        }
        for (a, row) in counts.iter().enumerate() {
            for (b, &c) in row.iter().enumerate() {
                if a != b {
                    assert!((9_500..10_500).contains(&c), "{counts:?}");
                }
            }
        }
    }
}
