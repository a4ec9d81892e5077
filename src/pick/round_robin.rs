//! Each endpoint in turn: [`RoundRobin`], which owns its cursor.

use super::filter::{ramp_admits, Filter};
use crate::{
    endpoint::Endpoint,
    hash::combine,
    sync::{AtomicUsize, Ordering::Relaxed},
};

/// Each eligible endpoint in turn, blind to load; the cursor is shared by every caller of one
/// `RoundRobin` (every clone of a `Balance`). An endpoint in its slow start takes its turn
/// only for its ramp's share of them, and passes the others to the next.
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A cursor at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next eligible endpoint from the cursor, which moves on by one.
    pub fn pick<E: AsRef<Endpoint>>(&self, endpoints: &[E], filter: &Filter<'_>) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let turn = self.cursor.fetch_add(1, Relaxed);
        let start = turn % n;
        // The first eligible endpoint that passed its turn: taken if every one did.
        let mut passed = None;
        for i in (0..n).map(|k| (start + k) % n) {
            let e = endpoints[i].as_ref();
            let Some(view) = filter.view(e) else {
                continue;
            };
            // The turn's number, hashed, is the variate: no generator to carry.
            let ramp = view.ramp(e);
            if ramp >= 1.0 || ramp_admits(ramp, combine(turn as u64, e.id())) {
                return Some(i);
            }
            passed.get_or_insert(i);
        }
        passed
    }
}
