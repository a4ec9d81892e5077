//! Affinity: weighted rendezvous hashing with bounded loads ([`rendezvous`]), and the
//! remembered endpoint first ([`affine`]).

use super::filter::{ramp_admits, Filter, View};
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
/// spills over rather than pile up. One look at each endpoint (two above 16 endpoints).
pub fn rendezvous<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    key: u64,
    bound: f64,
) -> Option<usize> {
    if endpoints.len() > KEPT {
        return rendezvous_twice(endpoints, filter, key, bound);
    }
    // The eligible endpoints as the one look saw them, then placed from that record.
    let mut seen = [Seen::default(); KEPT];
    let mut n = 0;
    let mut sums = Sums::default();
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        let Some(view) = filter.view(e) else {
            continue;
        };
        sums.add(view.load, view.weight);
        seen[n] = Seen::of(i, e, &view, key);
        n += 1;
    }
    let place = sums.place(bound)?;
    seen[..n]
        .iter()
        .fold(Best::default(), |best, s| place.rank(best, s))
        .index()
}

/// How many endpoints [`rendezvous`] places in one look at each.
const KEPT: usize = 16;

/// An eligible endpoint as the look at it saw it.
#[derive(Clone, Copy, Default)]
struct Seen {
    index: usize,
    load: usize,
    weight: f64,
    /// The key's and the endpoint's hashes combined.
    hash: u64,
}

impl Seen {
    /// Endpoint `e`, at `index`, as `view` shows it, for `key`.
    #[inline]
    fn of(index: usize, e: &Endpoint, view: &View, key: u64) -> Self {
        Self {
            index,
            load: view.load,
            weight: view.weight,
            hash: combine(key, e.key_hash()),
        }
    }
}

/// The eligible endpoints' total load, total weight, and the one weight they all have, if
/// they have one.
#[derive(Default)]
struct Sums {
    total: usize,
    weights: f64,
    same: Option<Option<f64>>,
}

impl Sums {
    #[inline]
    fn add(&mut self, load: usize, weight: f64) {
        self.total += load;
        self.weights += weight;
        self.same = match self.same {
            None => Some(Some(weight)),
            Some(w) => Some(w.filter(|&w| w == weight)),
        };
    }

    /// How endpoints are ranked, or `None` when no weight is left to place a key by.
    fn place(&self, bound: f64) -> Option<Place> {
        if self.weights <= 0.0 {
            return None;
        }
        Some(Place {
            // With equal weights `weight / -ln(u)` orders the endpoints as `u` does, so the
            // logarithm (eight of them at eight endpoints, most of a pick's time) is left
            // out: same result.
            equal: self.same.flatten().is_some(),
            share: bound.max(1.0) * (self.total + 1) as f64 / self.weights,
        })
    }
}

/// How the endpoints are ranked: by score, among those under their bound.
struct Place {
    equal: bool,
    share: f64,
}

/// The best score of all, and the best among those under their bound.
#[derive(Default, Clone, Copy)]
struct Best {
    any: Option<(usize, f64)>,
    under: Option<(usize, f64)>,
}

impl Best {
    fn index(self) -> Option<usize> {
        self.under.or(self.any).map(|(i, _)| i)
    }
}

impl Place {
    #[inline]
    fn rank(&self, mut best: Best, s: &Seen) -> Best {
        let beats = |best: Option<(usize, f64)>, score: f64| best.map_or(true, |(_, b)| b < score);
        let score = score(s.hash, s.weight, self.equal);
        if beats(best.any, score) {
            best.any = Some((s.index, score));
        }
        // A whole load is under `⌈x⌉` exactly when it is under `x`: no rounding call.
        if (s.load as f64) < self.share * s.weight && beats(best.under, score) {
            best.under = Some((s.index, score));
        }
        best
    }
}

/// [`rendezvous`] over more endpoints than it keeps: a look to sum the loads and weights, and
/// another to rank.
fn rendezvous_twice<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    key: u64,
    bound: f64,
) -> Option<usize> {
    let mut sums = Sums::default();
    for view in endpoints.iter().filter_map(|e| filter.view(e.as_ref())) {
        sums.add(view.load, view.weight);
    }
    let place = sums.place(bound)?;
    let mut best = Best::default();
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        let Some(view) = filter.view(e) else {
            continue;
        };
        best = place.rank(best, &Seen::of(i, e, &view, key));
    }
    best.index()
}

/// An endpoint's rendezvous score from `hash`, its hash combined with the key's:
/// `weight / -ln(u)`, `u` uniform in (0, 1) from the hash; when every weight is the same
/// (`equal`), `u` itself, which ranks the endpoints in the same order.
#[inline]
fn score(hash: u64, weight: f64, equal: bool) -> f64 {
    let u = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
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

    /// Loads `held` slots round the first three endpoints (so the bound sends some keys past
    /// their first choice) and checks 20,000 keys against the formula.
    fn places_as_the_formula_does(weights: impl Fn(usize) -> f64, n: usize, held: usize) {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| Endpoint::new(EndpointConfig::new(format!("e{i}")).weight(weights(i))))
            .collect::<Result<_, _>>()
            .unwrap();
        let now = tokio::time::Instant::now();
        let held: Vec<_> = (0..held)
            .filter_map(|i| LoadGuard::acquire_at(&endpoints[i % 3], 1, now))
            .collect();
        for k in 0..20_000u64 {
            let key = crate::hash::stable_hash(&k.to_le_bytes());
            assert_eq!(
                rendezvous(&endpoints, &Filter::new(), key, 1.25),
                by_formula(&endpoints, key, 1.25),
                "key {k} at {n} endpoints"
            );
        }
        drop(held);
    }

    #[test]
    fn equal_weights_place_every_key_where_the_formula_does() {
        for (weight, n) in [(1.0, 8), (3.5, 5), (1.0, 64)] {
            places_as_the_formula_does(|_| weight, n, 3 * n);
        }
    }

    #[test]
    fn unequal_weights_still_use_the_formula() {
        // 4 endpoints are placed from one look at each, 24 from two.
        for n in [4, 24] {
            places_as_the_formula_does(|i| [1.0, 2.0, 5.0, 1.0][i % 4], n, 2 * n);
        }
    }
}
