//! Uniformly at random among the eligible endpoints: [`random`].

use rand::RngCore;

use super::filter::{ramp_admits, Filter};
use crate::{endpoint::Endpoint, rng::below};

/// How many draws [`random`] makes before it falls back to counting.
const REDRAWS: usize = 4;

/// Uniformly at random among the eligible endpoints; blind to load. An endpoint in its slow
/// start is drawn in proportion to how far into its ramp it is.
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
        let word = rng.next_u64();
        let i = below(word as u32, n);
        let e = endpoints[i].as_ref();
        if let Some(view) = filter.view(e) {
            // A ramping endpoint is kept with the chance of its ramp: rejection sampling,
            // with the word's high half, which the index does not use, as the variate.
            let ramp = view.ramp(e);
            if ramp >= 1.0 || ramp_admits(ramp, word & 0xffff_ffff_0000_0000) {
                return Some(i);
            }
        }
    }
    scan(endpoints, filter, rng)
}

/// Most are filtered out (or ramping): chooses among those left in proportion to their ramp
/// (1 each at full weight), in two passes.
#[cold]
fn scan<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let ramp = |e: &E| {
        let e = e.as_ref();
        filter.view(e).map(|v| v.ramp(e))
    };
    let total: f64 = endpoints.iter().filter_map(ramp).sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut last = None;
    for (i, e) in endpoints.iter().enumerate() {
        let Some(share) = ramp(e) else {
            continue;
        };
        last = Some(i);
        x -= share;
        if x < 0.0 {
            return Some(i);
        }
    }
    last
}
