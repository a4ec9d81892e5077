//! The hint that carries a request's prompt blocks to `Balance`'s pick: [`PromptBlocks`].

use std::cell::RefCell;

/// A request's prompt as block hashes (see [`BlockHasher`](super::BlockHasher)) and its length
/// in tokens: put in the request's extensions, it makes [`Balance`](crate::balance::Balance)
/// pick with its [`PrefixPolicy`](super::PrefixPolicy) (set with
/// [`BalanceBuilder::prefix`](crate::balance::BalanceBuilder::prefix)).
///
/// [`PrefixKeys`](super::PrefixKeys) puts it there from any [`ExtractBlocks`](super::ExtractBlocks);
/// a caller that has the hashes already (a replay, a tokenizing gateway) builds it from a
/// slice:
///
/// ```
/// use tower_ai_balance::prefix::PromptBlocks;
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(PromptBlocks::new(&[7, 8, 9], 1_400));
/// let hint = request.extensions().get::<PromptBlocks>().unwrap();
/// assert_eq!((hint.blocks(), hint.tokens()), (&[7, 8, 9][..], 1_400));
/// ```
///
/// The hashes live in a buffer that a dropped hint gives back to its thread, so hinting a
/// request allocates nothing for them once the thread has seen a prompt as long.
#[derive(Debug)]
pub struct PromptBlocks {
    blocks: Vec<u64>,
    tokens: u64,
}

/// Buffers kept per thread, and the largest kept: a burst of long prompts does not stay
/// resident.
const KEPT: usize = 64;
const KEPT_CAPACITY: usize = 1 << 16;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
}

impl PromptBlocks {
    /// A prompt of `tokens` tokens whose blocks hash to `blocks`.
    pub fn new(blocks: &[u64], tokens: u64) -> Self {
        let mut buffer = SPARE
            .try_with(|s| s.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(blocks);
        Self {
            blocks: buffer,
            tokens,
        }
    }

    /// The block hashes, head first.
    pub fn blocks(&self) -> &[u64] {
        &self.blocks
    }

    /// The prompt's length in tokens.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

impl Clone for PromptBlocks {
    fn clone(&self) -> Self {
        Self::new(&self.blocks, self.tokens)
    }
}

impl Drop for PromptBlocks {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.blocks);
        if buffer.capacity() == 0 || buffer.capacity() > KEPT_CAPACITY {
            return;
        }
        // During a thread's teardown the spares may be gone already: the buffer is then freed.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut spare) = s.try_borrow_mut() {
                if spare.len() < KEPT {
                    spare.push(buffer);
                }
            }
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_hint_gives_its_buffer_back() {
        let first = PromptBlocks::new(&[1, 2, 3, 4], 2_000);
        let address = first.blocks().as_ptr();
        let copy = first.clone();
        assert_eq!(copy.blocks(), first.blocks());
        assert_ne!(copy.blocks().as_ptr(), address);
        drop(copy);
        drop(first);
        // The last buffer given back is the first taken.
        let next = PromptBlocks::new(&[5, 6], 900);
        assert_eq!(next.blocks().as_ptr(), address);
        assert_eq!((next.blocks(), next.tokens()), (&[5, 6][..], 900));
    }
}
