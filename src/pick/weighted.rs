//! At random in proportion to weight: [`weighted`].

use rand::RngCore;

use super::filter::Filter;
use crate::endpoint::Endpoint;

/// At random in proportion to weight among the eligible endpoints; blind to load. Linear in
/// the number of endpoints.
pub fn weighted<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let total: f64 = endpoints
        .iter()
        .filter_map(|e| filter.view(e.as_ref()))
        .map(|v| v.weight)
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut last = None;
    for (i, e) in endpoints.iter().enumerate() {
        let Some(view) = filter.view(e.as_ref()) else {
            continue;
        };
        last = Some(i);
        x -= view.weight;
        if x < 0.0 {
            return Some(i);
        }
    }
    last
}
