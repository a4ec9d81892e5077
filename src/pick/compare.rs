//! How candidates are compared: load relative to weight over views read once, and the full
//! scan that keeps the least by any order, ties broken at random.

use std::cmp::Ordering;

use rand::RngCore;

use super::filter::{Filter, View};
use crate::{endpoint::Endpoint, rng::below};

/// `a`'s load against `b`'s, as `(load + 1) / weight`, the load each would have with this
/// request relative to its capacity (the load being this router's requests in flight plus,
/// by a fresh report, the other routers'): as integers when the weights are equal, else
/// cross-multiplied, without division.
#[inline(always)]
pub(crate) fn by_load(a: View, b: View) -> Ordering {
    if a.weight == b.weight {
        a.load.cmp(&b.load)
    } else {
        ((a.load + 1) as f64 * b.weight).total_cmp(&((b.load + 1) as f64 * a.weight))
    }
}

/// A candidate as an order sees it: the endpoint, and its view.
pub(crate) type Candidate<'e> = (&'e Endpoint, View);

/// The eligible endpoint that is least by `order`, each read once, ties broken uniformly at
/// random (reservoir sampling: the k-th tie replaces the choice with probability 1/k).
pub(crate) fn least_by<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    order: impl Fn(Candidate<'_>, Candidate<'_>) -> Ordering,
) -> Option<usize> {
    let mut best: Option<(usize, View)> = None;
    let mut ties = 0u32;
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        let Some(view) = filter.view(e) else {
            continue;
        };
        let Some((b, best_view)) = best else {
            best = Some((i, view));
            ties = 1;
            continue;
        };
        match order((e, view), (endpoints[b].as_ref(), best_view)) {
            Ordering::Less => {
                best = Some((i, view));
                ties = 1;
            }
            Ordering::Equal => {
                ties += 1;
                if below(rng.next_u32(), ties as usize) == 0 {
                    best = Some((i, view));
                }
            }
            Ordering::Greater => {}
        }
    }
    best.map(|(i, _)| i)
}

/// The better by `order` of two eligible endpoints sampled at random (a coin deciding a tie);
/// the least by full scan when sampling keeps missing (a selective filter) or there are fewer
/// than two.
#[inline]
pub(crate) fn best_of_two<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    order: impl Fn(Candidate<'_>, Candidate<'_>) -> Ordering,
) -> Option<usize> {
    let pair = if endpoints.len() < 2 {
        None
    } else {
        super::sample::sample_pair(endpoints, filter, rng)
    };
    match pair {
        Some(p) => Some(p.choose(order(
            (endpoints[p.a.0].as_ref(), p.a.1),
            (endpoints[p.b.0].as_ref(), p.b.1),
        ))),
        None => least_by(endpoints, filter, rng, order),
    }
}
