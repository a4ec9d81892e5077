//! Outstanding work relative to weight, by two choices or by full scan: [`least_work`] and
//! [`least_work_scan`].

use std::cmp::Ordering;

use rand::RngCore;

use super::{
    compare::{best_of_two, least_by, Candidate},
    filter::Filter,
};
use crate::endpoint::Endpoint;

/// `a` has less outstanding work than `b`, counting this request's: `(outstanding + cost) /
/// weight`.
#[inline]
fn by_work(cost: u64) -> impl Fn(Candidate<'_>, Candidate<'_>) -> Ordering {
    move |(a, va), (b, vb)| {
        // In floating point: a caller's `Cost` may be anything up to `u64::MAX`.
        let wa = (a.outstanding() as f64 + cost as f64) * vb.weight;
        let wb = (b.outstanding() as f64 + cost as f64) * va.weight;
        wa.total_cmp(&wb)
    }
}

/// Power of two choices over outstanding work (the [`Cost`](crate::hints::Cost) of the
/// requests in flight) relative to weight: a request's weight is its tokens, not 1. Falls
/// back to a full scan by the same order when the filter leaves few endpoints.
pub fn least_work<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let order = by_work(filter.cost);
    best_of_two(endpoints, filter, rng, order)
}

/// The least outstanding work relative to weight, by full scan; ties broken at random.
pub fn least_work_scan<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    least_by(endpoints, filter, rng, by_work(filter.cost))
}
