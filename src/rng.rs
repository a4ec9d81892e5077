//! A small, fast random number generator for the pick path.
//!
//! A pick needs one random `u64`. `rand`'s thread-local generator is a cryptographic one behind a
//! reference-counted handle; picking needs neither. [`FastRng`] is wyrand (one multiply, one add)
//! over a thread-local `Cell`, seeded once per thread from `rand`. Internal: simulations bring a
//! seeded generator of their own (any `rand::RngCore`).

use std::cell::Cell;

/// A wyrand generator: 64 bits of state, one multiply per draw. Not cryptographic.
///
/// [`FastRng::thread_u64`] and [`ThreadRng`] draw from a per-thread state; `FastRng::seeded`
/// gives a reproducible stream for the crate's tests. It implements [`rand::RngCore`], and every pick function
/// accepts any `RngCore`.
#[derive(Debug, Clone)]
pub(crate) struct FastRng {
    state: u64,
}

thread_local! {
    // 0 until the thread's first draw seeds it: a constant initialiser spares every draw the
    // check that a lazily initialised thread-local makes.
    static THREAD_STATE: Cell<u64> = const { Cell::new(0) };
}

impl FastRng {
    /// A generator with a fixed seed: the same seed gives the same stream.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    /// One draw from this thread's generator, without creating a handle.
    #[inline]
    pub(crate) fn thread_u64() -> u64 {
        THREAD_STATE.with(|s| {
            let mut state = s.get();
            if state == 0 {
                state = seed();
            }
            let out = wyrand(&mut state);
            s.set(state);
            out
        })
    }
}

#[cold]
fn seed() -> u64 {
    rand::random::<u64>() | 1
}

#[inline]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    (t as u64) ^ ((t >> 64) as u64)
}

impl rand::RngCore for FastRng {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        wyrand(&mut self.state) as u32
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        wyrand(&mut self.state)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = wyrand(&mut self.state).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// The per-thread generator as an [`rand::RngCore`], for callers of the pick functions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ThreadRng;

impl rand::RngCore for ThreadRng {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        FastRng::thread_u64() as u32
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        FastRng::thread_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = FastRng::thread_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Maps 32 random bits onto `0..n` without division (Lemire's multiply-shift).
#[inline]
pub(crate) fn below(bits: u32, n: usize) -> usize {
    ((u64::from(bits) * n as u64) >> 32) as usize
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn seeded_streams_repeat_and_spread() {
        let mut a = FastRng::seeded(7);
        let mut b = FastRng::seeded(7);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            let x = a.next_u64();
            assert_eq!(x, b.next_u64());
            counts[below(x as u32, 10)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven bucket: {counts:?}");
        }
    }
}
