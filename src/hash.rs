//! A stable 64-bit hash: the same bytes give the same hash in every process, on every
//! platform and with every Rust release (unlike `std`'s `DefaultHasher`), so that gateway
//! replicas that share nothing agree on where a session key belongs.

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;

/// Multiplies and folds the 128-bit product: the core of wyhash.
#[inline]
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let t = u128::from(a) * u128::from(b);
    (t as u64) ^ ((t >> 64) as u64)
}

/// Hashes bytes. Stable across processes, platforms and releases.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = P0 ^ (bytes.len() as u64).wrapping_mul(P1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = mix(h ^ word, P1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        h = mix(h ^ u64::from_le_bytes(last), P0);
    }
    mix(h ^ (h >> 32), P1) ^ (h >> 29)
}

/// Combines a request key's hash with an endpoint's into one well-mixed value.
#[inline]
pub(crate) fn combine(key: u64, endpoint: u64) -> u64 {
    let h = mix(key ^ P0, endpoint ^ P1);
    mix(h ^ (h >> 31), P0)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_pinned() {
        // These values must never change: replicas built apart rely on them.
        assert_eq!(stable_hash(b""), stable_hash(b""));
        let pinned = [
            stable_hash(b"session-1"),
            stable_hash(b"a longer key of more than sixteen bytes"),
        ];
        assert_eq!(pinned, [PINNED_0, PINNED_1]);
        assert_ne!(stable_hash(b"a"), stable_hash(b"b"));
        assert_ne!(stable_hash(b"ab"), stable_hash(b"ab\\0"));
    }

    #[test]
    fn combined_bits_are_balanced() {
        let mut ones = [0u32; 64];
        for k in 0..10_000u64 {
            let h = combine(stable_hash(&k.to_le_bytes()), 42);
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += ((h >> bit) & 1) as u32;
            }
        }
        for c in ones {
            assert!((4_700..5_300).contains(&c), "{ones:?}");
        }
    }

    const PINNED_0: u64 = 2_049_672_688_411_258_063;
    const PINNED_1: u64 = 8_964_348_542_934_012_941;
}
