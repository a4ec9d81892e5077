//! Affinity: weighted rendezvous hashing with bounded loads ([`rendezvous`]), and the
//! remembered endpoint first ([`affine`]).

use super::filter::{ramp_admits, Filter};
use crate::{endpoint::Endpoint, hash::combine, hints::Affinity};

/// Affinity: the preferred endpoint if it can serve, else [`rendezvous`].
///
/// A preferred endpoint in its slow start is kept for its ramp's share of keys (by the key's
/// hash, so the same keys in every replica), and the other keys are placed by rendezvous,
/// which weighs the ramp: the sessions remembered on an endpoint that comes back from an
/// ejection return to it as it ramps, not all at once.
#[inline]
pub fn affine<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    affinity: &Affinity,
) -> Option<usize> {
    if let Some(id) = affinity.prefer {
        let preferred = endpoints.iter().position(|e| {
            let e = e.as_ref();
            e.id() == id
                && filter.view(e).is_some_and(|view| {
                    let ramp = view.ramp(e);
                    ramp >= 1.0 || ramp_admits(ramp, combine(!affinity.key, e.key_hash()))
                })
        });
        if preferred.is_some() {
            return preferred;
        }
    }
    rendezvous(endpoints, filter, affinity.key, affinity.bound)
}

/// Weighted rendezvous (highest random weight) hashing with bounded loads.
///
/// Each eligible endpoint scores `weight / -ln(u)`, `u` uniform from the key's and the
/// endpoint key's stable hashes, and the best score wins among those with a load (requests in
/// flight, plus the other routers' by a fresh load report) under
/// `⌈bound × (total + 1) × weight / Σweight⌉`. The same key finds the same
/// endpoint wherever it is computed; removing an endpoint moves only its keys; a hot key
/// spills over rather than pile up. Two passes over the endpoints.
pub fn rendezvous<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    key: u64,
    bound: f64,
) -> Option<usize> {
    let mut total = 0usize;
    let mut weights = 0.0;
    for view in endpoints.iter().filter_map(|e| filter.view(e.as_ref())) {
        total += view.load;
        weights += view.weight;
    }
    if weights <= 0.0 {
        return None;
    }
    let share = bound.max(1.0) * (total + 1) as f64 / weights;
    // The best score of all, and the best among those under their bound.
    let mut best: Option<(usize, f64)> = None;
    let mut best_any: Option<(usize, f64)> = None;
    let beats = |best: Option<(usize, f64)>, score: f64| best.map_or(true, |(_, s)| s < score);
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        let Some(view) = filter.view(e) else {
            continue;
        };
        let u = ((combine(key, e.key_hash()) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = view.weight / -u.ln();
        if beats(best_any, score) {
            best_any = Some((i, score));
        }
        let capacity = (share * view.weight).ceil();
        if (view.load as f64) < capacity && beats(best, score) {
            best = Some((i, score));
        }
    }
    best.or(best_any).map(|(i, _)| i)
}
