//! Block keys: chained hashes of fixed-size blocks of a prompt, each covering everything
//! before it, so that two prompts share a block's hash exactly when they share the whole
//! prefix up to the end of that block.
//!
//! Engines cache whole blocks only (vLLM and SGLang hash full pages of tokens the same way), so
//! only full blocks get a hash: a prompt shorter than one block has none.

use crate::{error::ConfigError, hash::mix};

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// Cuts a prompt into blocks of a fixed size and hashes each with everything before it.
///
/// The unit is the caller's: tokens ([`tokens`](Self::tokens), when the router has a
/// tokenizer, with the engine's block size to mirror its cache exactly), or bytes
/// ([`bytes`](Self::bytes), when it has none: a block of bytes stands for a few dozen tokens).
/// The hashes are stable across processes, platforms and releases, so independent router
/// replicas compute the same ones.
///
/// Nothing here allocates: hashes are appended to a caller's `Vec`, which keeps its capacity
/// from one request to the next (see [`with_scratch`](super::with_scratch)).
///
/// ```
/// use tower_ai_balance::prefix::BlockHasher;
/// let hasher = BlockHasher::new(4).unwrap();
/// let (mut a, mut b) = (Vec::new(), Vec::new());
/// hasher.tokens(&[1, 2, 3, 4, 5, 6, 7, 8, 9], &mut a); // two full blocks; the 9 is left out
/// hasher.tokens(&[1, 2, 3, 4, 5, 6, 7, 0], &mut b);
/// assert_eq!(a.len(), 2);
/// assert_eq!(a[0], b[0]); // the same first block
/// assert_ne!(a[1], b[1]); // the second differs, and so would every later one
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHasher {
    size: usize,
    seed: u64,
}

impl BlockHasher {
    /// Blocks of `size` units (tokens or bytes); at least 1.
    pub fn new(size: usize) -> Result<Self, ConfigError> {
        if size == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "block size",
                reason: "must be at least 1",
            });
        }
        Ok(Self { size, seed: P2 })
    }

    /// Starts every chain from `seed` instead of the default, for example a hash of the
    /// model's name: prompts sent to different models then never share a block.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The block size, in the caller's unit.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Appends the hashes of the full blocks of `tokens` to `out`.
    pub fn tokens(&self, tokens: &[u32], out: &mut Vec<u64>) {
        let mut prev = self.seed;
        for block in tokens.chunks_exact(self.size) {
            let mut h = start(prev);
            let mut pairs = block.chunks_exact(2);
            for pair in &mut pairs {
                h = mix(h ^ (u64::from(pair[0]) | u64::from(pair[1]) << 32), P1);
            }
            if let [last] = pairs.remainder() {
                h = mix(h ^ u64::from(*last), P0);
            }
            prev = finish(h, self.size);
            out.push(prev);
        }
    }

    /// Appends the hashes of the full blocks of `bytes` to `out`.
    pub fn bytes(&self, bytes: &[u8], out: &mut Vec<u64>) {
        let mut stream = self.stream();
        stream.push(bytes, out);
    }

    /// A hasher fed in pieces (a body's frames, the parts of a message), with the same result
    /// as [`bytes`](Self::bytes) over the pieces joined.
    pub fn stream(&self) -> ByteStream {
        ByteStream {
            size: self.size,
            prev: self.seed,
            h: start(self.seed),
            filled: 0,
            word: 0,
            word_len: 0,
        }
    }
}

#[inline]
fn start(prev: u64) -> u64 {
    mix(prev ^ P0, P1)
}

#[inline]
fn finish(h: u64, len: usize) -> u64 {
    let h = mix(h ^ len as u64, P0);
    mix(h ^ (h >> 31), P1) ^ (h >> 29)
}

/// Block hashes of bytes that arrive in pieces; see [`BlockHasher::stream`].
#[derive(Debug, Clone)]
pub struct ByteStream {
    size: usize,
    prev: u64,
    h: u64,
    /// Bytes of the current block taken so far.
    filled: usize,
    /// Bytes not yet folded in (fewer than 8), little-endian.
    word: u64,
    word_len: u32,
}

impl ByteStream {
    /// Takes the next piece, appending the hash of each block it completes to `out`.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u64>) {
        while !bytes.is_empty() {
            let take = (self.size - self.filled).min(bytes.len());
            self.absorb(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == self.size {
                if self.word_len > 0 {
                    self.h = mix(self.h ^ self.word, P0);
                }
                self.prev = finish(self.h, self.size);
                out.push(self.prev);
                self.h = start(self.prev);
                self.filled = 0;
                self.word = 0;
                self.word_len = 0;
            }
        }
    }

    /// Folds bytes of one block into the state, eight at a time.
    #[inline]
    fn absorb(&mut self, mut bytes: &[u8]) {
        if self.word_len > 0 {
            let n = bytes.len().min(8 - self.word_len as usize);
            for (i, &b) in bytes[..n].iter().enumerate() {
                self.word |= u64::from(b) << (8 * (self.word_len as usize + i));
            }
            self.word_len += n as u32;
            bytes = &bytes[n..];
            if self.word_len < 8 {
                return;
            }
            self.h = mix(self.h ^ self.word, P1);
            self.word = 0;
            self.word_len = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.h = mix(
                self.h ^ u64::from_le_bytes(w.try_into().expect("8 bytes")),
                P1,
            );
        }
        for (i, &b) in words.remainder().iter().enumerate() {
            self.word |= u64::from(b) << (8 * i);
        }
        self.word_len = words.remainder().len() as u32;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_zero_block_size_is_refused() {
        assert!(BlockHasher::new(0).is_err());
    }

    #[test]
    fn a_block_covers_everything_before_it() {
        let hasher = BlockHasher::new(3).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        hasher.tokens(&[1, 2, 3, 4, 5, 6], &mut a);
        hasher.tokens(&[9, 2, 3, 4, 5, 6], &mut b);
        // Same second block, different first: every hash differs.
        assert_eq!(a.len(), 2);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        // A block's hash depends on its position's content only through the chain.
        let mut c = Vec::new();
        hasher.tokens(&[4, 5, 6, 1, 2, 3], &mut c);
        assert_ne!(c[1], a[0]);
    }

    #[test]
    fn only_full_blocks_are_hashed() {
        let hasher = BlockHasher::new(8).unwrap();
        let mut out = Vec::new();
        hasher.bytes(b"0123456", &mut out);
        assert!(out.is_empty());
        hasher.bytes(b"01234567abcdefgh!", &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn pieces_hash_as_the_whole() {
        let text: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for size in [1, 5, 8, 13, 64, 100] {
            let hasher = BlockHasher::new(size).unwrap();
            let mut whole = Vec::new();
            hasher.bytes(&text, &mut whole);
            assert_eq!(whole.len(), text.len() / size);
            for cut in [1, 3, 7, 8, 9, 61, 500] {
                let mut pieces = Vec::new();
                let mut stream = hasher.stream();
                for piece in text.chunks(cut) {
                    stream.push(piece, &mut pieces);
                }
                assert_eq!(pieces, whole, "block {size}, pieces of {cut}");
            }
        }
    }

    #[test]
    fn seeds_and_sizes_separate_chains() {
        let text = [7u8; 64];
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut c = Vec::new();
        BlockHasher::new(16).unwrap().bytes(&text, &mut a);
        BlockHasher::new(16).unwrap().seed(1).bytes(&text, &mut b);
        BlockHasher::new(32).unwrap().bytes(&text, &mut c);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], c[0]);
        // Equal blocks at different depths hash differently.
        assert_ne!(a[0], a[1]);
    }

    #[test]
    fn the_hashes_are_pinned() {
        // Router replicas built apart rely on these never changing.
        let mut out = Vec::new();
        BlockHasher::new(4)
            .unwrap()
            .tokens(&[1, 2, 3, 4, 5, 6, 7], &mut out);
        BlockHasher::new(8)
            .unwrap()
            .bytes(b"hello, world", &mut out);
        assert_eq!(out, PINNED);
    }

    const PINNED: [u64; 2] = [9_394_772_853_402_163_898, 5_131_331_119_053_601_693];
}
