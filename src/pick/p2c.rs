//! Power of two choices over load relative to weight, and the full scan it falls back to:
//! [`p2c`] and [`least_loaded`].

use rand::RngCore;

use super::{
    compare::{by_load, least_by},
    filter::Filter,
    sample::sample_pair,
};
use crate::endpoint::Endpoint;

/// Power of two choices: samples two eligible endpoints and takes the less loaded, a coin
/// deciding ties. Constant time; when the filter leaves few endpoints, falls back to
/// [`least_loaded`].
#[inline(always)]
pub fn p2c<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    if endpoints.len() >= 2 {
        if let Some(pair) = sample_pair(endpoints, filter, rng) {
            return Some(pair.choose(by_load(pair.a.1, pair.b.1)));
        }
    }
    scan(endpoints, filter, rng)
}

/// The full scan when sampling finds no pair: out of line, so that the two-choice path stays
/// small enough to inline into its caller.
#[cold]
#[inline(never)]
fn scan<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    least_loaded(endpoints, filter, rng)
}

/// The least-loaded eligible endpoint by full scan; ties broken uniformly at random.
pub fn least_loaded<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    least_by(endpoints, filter, rng, |(_, a), (_, b)| by_load(a, b))
}
