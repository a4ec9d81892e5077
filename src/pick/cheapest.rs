//! Cost-aware: the cheapest endpoint under a load threshold, then spill: [`cheapest`].

use rand::RngCore;

use super::{
    compare::least_by,
    filter::{ramp_admits, Filter, View},
};
use crate::{endpoint::Endpoint, hash::combine};

/// An endpoint's load for [`cheapest`]: in flight per unit of its concurrency limit, or of its
/// weight when it has none. While it slow-starts, its limit shrinks with its ramp as its
/// weight does.
fn utilisation(e: &Endpoint, view: View) -> f64 {
    let capacity = e
        .max_concurrency()
        .map_or(view.weight, |max| max as f64 * view.ramp(e));
    view.load as f64 / capacity.max(f64::MIN_POSITIVE)
}

/// Cost-aware: the cheapest eligible endpoint (by its price per 1,000 input plus output
/// tokens) whose load is under `max_load`; the least loaded of them all when every one is
/// above it. Linear in the number of endpoints.
///
/// An endpoint in its slow start counts as under the threshold only for its ramp's share of
/// picks (5% of them early in the ramp), and its load is counted against its ramped
/// capacity: a cheap endpoint back from an ejection is eased in rather than given every
/// request at once.
pub fn cheapest<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    max_load: f64,
    rng: &mut R,
) -> Option<usize> {
    // One variate for the pick, mixed with each ramping endpoint's id: the same answer for an
    // endpoint however often the comparison asks, and independent between endpoints.
    let seed = rng.next_u64();
    let room = |e: &Endpoint, v: View| {
        utilisation(e, v) < max_load && {
            let ramp = v.ramp(e);
            ramp >= 1.0 || ramp_admits(ramp, combine(seed, e.id()))
        }
    };
    let price = |e: &Endpoint| e.capabilities().price_in + e.capabilities().price_out;
    let pick = least_by(endpoints, filter, rng, |(a, va), (b, vb)| {
        let (room_a, room_b) = (room(a, va), room(b, vb));
        room_b
            .cmp(&room_a)
            .then(price(a).total_cmp(&price(b)))
            .then(utilisation(a, va).total_cmp(&utilisation(b, vb)))
    })?;
    let e = endpoints[pick].as_ref();
    if filter.view(e).is_some_and(|v| room(e, v)) {
        return Some(pick);
    }
    least_by(endpoints, filter, rng, |(a, va), (b, vb)| {
        utilisation(a, va).total_cmp(&utilisation(b, vb))
    })
}
