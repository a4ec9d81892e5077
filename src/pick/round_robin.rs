//! Each endpoint in turn: [`RoundRobin`], which owns its cursor.

use super::filter::Filter;
use crate::{
    endpoint::Endpoint,
    sync::{AtomicUsize, Ordering::Relaxed},
};

/// Each eligible endpoint in turn, blind to load; the cursor is shared by every caller of one
/// `RoundRobin` (every clone of a `Balance`).
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
        let start = self.cursor.fetch_add(1, Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| filter.eligible(endpoints[i].as_ref()))
    }
}
