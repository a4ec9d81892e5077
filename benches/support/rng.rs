//! The benches' random numbers: wyrand, the generator `Balance` draws from internally, as a
//! seeded stream (`Wyrand`) and per thread (`ThreadRng`), so the pick functions are timed with
//! the draw they cost inside `Balance`.

use std::cell::Cell;

use rand::RngCore;

#[inline]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let t = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    (t as u64) ^ ((t >> 64) as u64)
}

fn fill(dst: &mut [u8], mut next: impl FnMut() -> u64) {
    for chunk in dst.chunks_mut(8) {
        let bytes = next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// A seeded wyrand stream.
#[allow(dead_code)]
pub(crate) struct Wyrand(u64);

#[allow(dead_code)]
impl Wyrand {
    pub(crate) fn seeded(seed: u64) -> Self {
        Self(seed)
    }
}

impl RngCore for Wyrand {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        wyrand(&mut self.0) as u32
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        wyrand(&mut self.0)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        fill(dst, || wyrand(&mut self.0));
    }
}

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// This thread's wyrand stream, seeded on first use.
#[derive(Clone, Copy)]
pub(crate) struct ThreadRng;

#[inline]
fn thread_u64() -> u64 {
    STATE.with(|s| {
        let mut state = s.get();
        if state == 0 {
            state = seed();
        }
        let out = wyrand(&mut state);
        s.set(state);
        out
    })
}

#[cold]
fn seed() -> u64 {
    rand::random::<u64>() | 1
}

impl RngCore for ThreadRng {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        thread_u64() as u32
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        thread_u64()
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        fill(dst, thread_u64);
    }
}
