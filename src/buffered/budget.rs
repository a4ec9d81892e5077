//! The memory budget of the request bodies a [`BufferBodyLayer`](super::BufferBodyLayer) holds
//! at once, and the buffer that returns its share when the last reference to it drops.

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

/// The most bytes the bodies buffered by one layer (and every service it built) hold at once,
/// and how many they hold now.
#[derive(Clone)]
pub(super) struct Budget {
    shared: Arc<Shared>,
}

struct Shared {
    max: usize,
    used: AtomicUsize,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("max", &self.shared.max)
            .field("used", &self.used())
            .finish()
    }
}

impl Budget {
    pub(super) fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max,
                used: AtomicUsize::new(0),
            }),
        }
    }

    pub(super) fn max(&self) -> usize {
        self.shared.max
    }

    pub(super) fn used(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }
}

/// One body's share of a [`Budget`] (or of none): given back when dropped.
#[derive(Default)]
pub(super) struct Reservation {
    budget: Option<Arc<Shared>>,
    bytes: usize,
}

impl Reservation {
    pub(super) fn new(budget: Option<&Budget>) -> Self {
        Self {
            budget: budget.map(|b| Arc::clone(&b.shared)),
            bytes: 0,
        }
    }

    /// Takes `more` bytes, if they fit in the budget; without a budget, always.
    pub(super) fn grow(&mut self, more: usize) -> bool {
        if let Some(shared) = &self.budget {
            let taken = shared
                .used
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(more).filter(|&total| total <= shared.max)
                });
            if taken.is_err() {
                return false;
            }
        }
        self.bytes += more;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(shared) = &self.budget {
            shared.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// A body's bytes with the reservation that counts them: `Bytes::from_owner` keeps both until
/// the last clone of the body (the one `Failover` keeps to replay, the one sent upstream) is
/// dropped, and only then is the share given back.
pub(super) struct Held {
    pub(super) data: Vec<u8>,
    pub(super) reservation: Reservation,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn shares_are_taken_within_the_budget_and_given_back_on_drop() {
        let budget = Budget::new(100);
        let mut a = Reservation::new(Some(&budget));
        assert!(a.grow(60));
        let mut b = Reservation::new(Some(&budget));
        assert!(!b.grow(41), "over the budget");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        assert!(!b.grow(1));
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(usize::MAX - 40).eq(&false), "no overflow");
        drop(b);
        assert_eq!(budget.used(), 0);
        let mut free = Reservation::new(None);
        assert!(free.grow(usize::MAX));
    }

    #[test]
    fn a_buffer_gives_its_share_back_when_its_last_clone_drops() {
        let budget = Budget::new(10);
        let mut reservation = Reservation::new(Some(&budget));
        assert!(reservation.grow(3));
        let bytes = bytes::Bytes::from_owner(Held {
            data: b"abc".to_vec(),
            reservation,
        });
        let replay = bytes.clone();
        drop(bytes);
        assert_eq!(budget.used(), 3);
        assert_eq!(replay, "abc");
        drop(replay);
        assert_eq!(budget.used(), 0);
    }
}
