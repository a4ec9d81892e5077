//! Where a request's block hashes come from: any function, or a ready-made extractor.

use std::cell::Cell;

/// Finds a request's prompt blocks: appends their chained hashes to `out` (see
/// [`BlockHasher`](super::BlockHasher)) and returns the prompt's length in tokens (an estimate
/// when the blocks are bytes), or `None` when the request has no prompt to route by, which
/// is then balanced as usual.
///
/// [`ChatMessages`](super::ChatMessages) reads an OpenAI chat body; any
/// `Fn(&Req, &mut Vec<u64>) -> Option<u64>` is one too, such as a closure that tokenizes, or
/// one that copies hashes the request already carries:
///
/// ```
/// use tower_ai_balance::prefix::ExtractBlocks;
/// struct Replayed { hash_ids: Vec<u64>, tokens: u64 }
/// let from_trace = |r: &Replayed, out: &mut Vec<u64>| {
///     out.extend_from_slice(&r.hash_ids);
///     Some(r.tokens)
/// };
/// let mut out = Vec::new();
/// let tokens = from_trace.extract(&Replayed { hash_ids: vec![0, 7, 9], tokens: 1400 }, &mut out);
/// assert_eq!((tokens, out.as_slice()), (Some(1400), &[0, 7, 9][..]));
/// ```
pub trait ExtractBlocks<Req>: Send + Sync + 'static {
    /// Appends the request's block hashes to `out`; the prompt's length in tokens.
    fn extract(&self, request: &Req, out: &mut Vec<u64>) -> Option<u64>;
}

impl<F, Req> ExtractBlocks<Req> for F
where
    F: Fn(&Req, &mut Vec<u64>) -> Option<u64> + Send + Sync + 'static,
{
    fn extract(&self, request: &Req, out: &mut Vec<u64>) -> Option<u64> {
        self(request, out)
    }
}

thread_local! {
    static SCRATCH: Cell<Vec<u64>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` with an empty buffer for block hashes that keeps its capacity from one call to
/// the next on this thread, so that hashing a prompt allocates nothing once the thread has
/// seen a prompt as long. Safe to nest (an inner call gets a buffer of its own).
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
    let mut buffer = SCRATCH.with(Cell::take);
    buffer.clear();
    let out = f(&mut buffer);
    SCRATCH.with(|s| {
        // Keep the larger buffer if a nested call left one behind.
        let other = s.take();
        s.set(if other.capacity() > buffer.capacity() {
            other
        } else {
            buffer
        });
    });
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_buffer_is_empty_and_reused() {
        let capacity = with_scratch(|b| {
            assert!(b.is_empty());
            b.extend(0..100);
            b.capacity()
        });
        with_scratch(|b| {
            assert!(b.is_empty());
            assert_eq!(b.capacity(), capacity);
            // Nested: a buffer of its own.
            with_scratch(|inner| {
                assert!(inner.is_empty());
                inner.push(1);
            });
            assert!(b.is_empty());
        });
    }
}
