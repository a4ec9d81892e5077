//! A layer's per-request context that a long-lived clone copies for itself.
//!
//! A response future that must outlive the service's borrow holds an `Arc` of what the layer
//! shares (its settings, a spare service to retry with). If every clone of the service shares
//! one `Arc`, every request on every core increments and decrements the same reference count,
//! and that cache line travels between cores twice per request. A service cloned per
//! connection or per task serves many requests from one clone, so such a clone makes its own
//! copy on its second request: its requests then write a count that no other core touches. A
//! clone made for a single request (axum clones the service per request) never copies, so it
//! costs what a shared `Arc` costs and allocates nothing.

use std::sync::Arc;

/// What a service's requests share, copied once per long-lived clone. See the
/// [module docs](self).
#[derive(Debug)]
pub(crate) struct PerClone<T> {
    shared: Arc<T>,
    uses: Uses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uses {
    /// A clone that has served no request yet.
    None,
    /// A clone that has served one request with the shared copy.
    One,
    /// Holds its own copy (or is the original).
    Own,
}

impl<T> PerClone<T> {
    /// The original: its copy is its own.
    pub(crate) fn new(value: T) -> Self {
        Self {
            shared: Arc::new(value),
            uses: Uses::Own,
        }
    }

    /// The context without counting a request.
    pub(crate) fn get(&self) -> &Arc<T> {
        &self.shared
    }

    /// The context for one request: on a clone's second request, first a copy of its own,
    /// made by `copy` from the shared one.
    #[inline]
    pub(crate) fn for_request(&mut self, copy: impl FnOnce(&T) -> T) -> &Arc<T> {
        match self.uses {
            Uses::Own => {}
            Uses::None => self.uses = Uses::One,
            Uses::One => {
                self.shared = Arc::new(copy(&self.shared));
                self.uses = Uses::Own;
            }
        }
        &self.shared
    }
}

impl<T> Clone for PerClone<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            uses: Uses::None,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_clone_copies_on_its_second_request_and_never_again() {
        let original = PerClone::new(7);
        let mut clone = original.clone();
        let mut copies = 0;
        let first = Arc::clone(clone.for_request(|v| {
            copies += 1;
            *v
        }));
        assert!(
            Arc::ptr_eq(&first, original.get()),
            "the first request shares"
        );
        for _ in 0..3 {
            let own = clone.for_request(|v| {
                copies += 1;
                *v + 1
            });
            assert!(!Arc::ptr_eq(own, original.get()));
            assert_eq!(**own, 8);
        }
        assert_eq!(copies, 1);
        // A clone of a clone starts again from what it was cloned from.
        let mut grandchild = clone.clone();
        assert!(Arc::ptr_eq(grandchild.for_request(|v| *v), clone.get()));
    }

    #[test]
    fn the_original_never_copies() {
        let mut original = PerClone::new(1);
        let before = Arc::clone(original.get());
        for _ in 0..3 {
            assert!(Arc::ptr_eq(
                original.for_request(|_| unreachable!()),
                &before
            ));
        }
    }
}
