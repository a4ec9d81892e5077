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
    // The one weight every eligible endpoint has, if they have one.
    let mut same: Option<Option<f64>> = None;
    for view in endpoints.iter().filter_map(|e| filter.view(e.as_ref())) {
        total += view.load;
        weights += view.weight;
        same = match same {
            None => Some(Some(view.weight)),
            Some(w) => Some(w.filter(|&w| w == view.weight)),
        };
    }
    if weights <= 0.0 {
        return None;
    }
    // With equal weights `weight / -ln(u)` orders the endpoints as `u` does, so the logarithm
    // (eight of them at eight endpoints, most of a pick's time) is left out: same result.
    let equal = same.flatten().is_some();
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
        let score = score(key, e, view.weight, equal);
        if beats(best_any, score) {
            best_any = Some((i, score));
        }
        // A whole load is under `⌈x⌉` exactly when it is under `x`: no rounding call.
        if (view.load as f64) < share * view.weight && beats(best, score) {
            best = Some((i, score));
        }
    }
    best.or(best_any).map(|(i, _)| i)
}

/// An endpoint's rendezvous score for `key`: `weight / -ln(u)`, `u` uniform in (0, 1) from the
/// two hashes; when every weight is the same (`equal`), `u` itself, which ranks the endpoints
/// in the same order.
#[inline]
fn score(key: u64, e: &Endpoint, weight: f64, equal: bool) -> f64 {
    let u = ((combine(key, e.key_hash()) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    if equal {
        u
    } else {
        weight / -u.ln()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{load::LoadGuard, EndpointConfig};

    /// The placement by the formula itself, `weight / -ln(u)` for every endpoint.
    fn by_formula(endpoints: &[Arc<Endpoint>], key: u64, bound: f64) -> Option<usize> {
        let filter = Filter::new();
        let views: Vec<_> = endpoints.iter().map(|e| filter.view(e)).collect();
        let total: usize = views.iter().flatten().map(|v| v.load).sum();
        let weights: f64 = views.iter().flatten().map(|v| v.weight).sum();
        let share = bound.max(1.0) * (total + 1) as f64 / weights;
        let mut best: Option<(usize, f64)> = None;
        let mut best_any: Option<(usize, f64)> = None;
        for (i, (e, view)) in endpoints.iter().zip(&views).enumerate() {
            let Some(view) = view else { continue };
            let u = ((combine(key, e.key_hash()) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = view.weight / -u.ln();
            if best_any.map_or(true, |(_, s)| s < score) {
                best_any = Some((i, score));
            }
            let under = (view.load as f64) < (share * view.weight).ceil();
            if under && best.map_or(true, |(_, s)| s < score) {
                best = Some((i, score));
            }
        }
        best.or(best_any).map(|(i, _)| i)
    }

    #[test]
    fn equal_weights_place_every_key_where_the_formula_does() {
        for (weight, n) in [(1.0, 8), (3.5, 5), (1.0, 64)] {
            let endpoints: Vec<Arc<Endpoint>> = (0..n)
                .map(|i| Endpoint::new(EndpointConfig::new(format!("e{i}")).weight(weight)))
                .collect::<Result<_, _>>()
                .unwrap();
            // Uneven loads, so that the bound sends some keys past their first choice.
            let now = tokio::time::Instant::now();
            let held: Vec<_> = (0..3 * n)
                .filter_map(|i| LoadGuard::acquire_at(&endpoints[i % 3], 1, now))
                .collect();
            for k in 0..20_000u64 {
                let key = crate::hash::stable_hash(&k.to_le_bytes());
                assert_eq!(
                    rendezvous(&endpoints, &Filter::new(), key, 1.25),
                    by_formula(&endpoints, key, 1.25),
                    "key {k} at {n} endpoints of weight {weight}"
                );
            }
            drop(held);
        }
    }

    #[test]
    fn unequal_weights_still_use_the_formula() {
        let endpoints: Vec<Arc<Endpoint>> = [1.0, 2.0, 5.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint::new(EndpointConfig::new(format!("e{i}")).weight(w)))
            .collect::<Result<_, _>>()
            .unwrap();
        for k in 0..20_000u64 {
            let key = crate::hash::stable_hash(&k.to_le_bytes());
            assert_eq!(
                rendezvous(&endpoints, &Filter::new(), key, 1.25),
                by_formula(&endpoints, key, 1.25),
            );
        }
    }
}
