//! Uniformly at random among the eligible endpoints: [`random`].

use rand::RngCore;

use super::filter::Filter;
use crate::{endpoint::Endpoint, rng::below};

/// How many draws [`random`] makes before it falls back to counting.
const REDRAWS: usize = 4;

/// Uniformly at random among the eligible endpoints; blind to load.
pub fn random<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    for _ in 0..=REDRAWS {
        let i = below(rng.next_u32(), n);
        if filter.eligible(endpoints[i].as_ref()) {
            return Some(i);
        }
    }
    // Most are filtered out: choose uniformly among those left, in two passes.
    let count = endpoints
        .iter()
        .filter(|e| filter.eligible(e.as_ref()))
        .count();
    if count == 0 {
        return None;
    }
    let k = below(rng.next_u32(), count);
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| filter.eligible(e.as_ref()))
        .nth(k)
        .map(|(i, _)| i)
}
