//! Power of two choices over peak-EWMA time to first byte times load: [`peak_ewma`].

use rand::RngCore;

use super::{
    compare::{best_of_two, Candidate},
    filter::Filter,
};
use crate::endpoint::Endpoint;

/// Power of two choices over peak-EWMA time to first byte × `(in_flight + 1) / weight`
/// (Finagle's and tower's least-latency rule, without the lock). An endpoint with no
/// estimate yet borrows the other's, so a new endpoint is tried without being flooded.
pub fn peak_ewma<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let now = filter.now();
    let order = |(a, va): Candidate<'_>, (b, vb): Candidate<'_>| {
        let (ta, tb) = (a.ttfb_nanos(now), b.ttfb_nanos(now));
        let ta_ = ta.or(tb).unwrap_or(1.0).max(1.0);
        let tb_ = tb.or(ta).unwrap_or(1.0).max(1.0);
        let ca = ta_ * (va.load + 1) as f64 * vb.weight;
        let cb = tb_ * (vb.load + 1) as f64 * va.weight;
        ca.total_cmp(&cb)
    };
    best_of_two(endpoints, filter, rng, order)
}
