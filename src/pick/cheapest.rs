//! Cost-aware: the cheapest endpoint under a load threshold, then spill: [`cheapest`].

use rand::RngCore;

use super::{
    compare::least_by,
    filter::{Filter, View},
};
use crate::endpoint::Endpoint;

/// An endpoint's load for [`cheapest`]: in flight per unit of its concurrency limit, or of its
/// weight when it has none.
fn utilisation(e: &Endpoint, view: View) -> f64 {
    let capacity = e.max_concurrency().map_or(view.weight, |max| max as f64);
    view.load as f64 / capacity.max(f64::MIN_POSITIVE)
}

/// Cost-aware: the cheapest eligible endpoint (by its price per 1,000 input plus output
/// tokens) whose load is under `max_load`; the least loaded of them all when every one is
/// above it. Linear in the number of endpoints.
pub fn cheapest<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    max_load: f64,
    rng: &mut R,
) -> Option<usize> {
    let price = |e: &Endpoint| e.capabilities().price_in + e.capabilities().price_out;
    let pick = least_by(endpoints, filter, rng, |(a, va), (b, vb)| {
        let (load_a, load_b) = (utilisation(a, va), utilisation(b, vb));
        let (room_a, room_b) = (load_a < max_load, load_b < max_load);
        room_b
            .cmp(&room_a)
            .then(price(a).total_cmp(&price(b)))
            .then(load_a.total_cmp(&load_b))
    })?;
    let e = endpoints[pick].as_ref();
    if filter.view(e).is_some_and(|v| utilisation(e, v) < max_load) {
        return Some(pick);
    }
    least_by(endpoints, filter, rng, |(a, va), (b, vb)| {
        utilisation(a, va).total_cmp(&utilisation(b, vb))
    })
}
