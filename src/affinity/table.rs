//! The remembering table: where each key was served last, bounded, in two generations per
//! shard.

use std::{collections::HashMap, time::Duration};

use parking_lot::Mutex;
use tokio::time::Instant;

const SHARDS: usize = 16;

/// Where each key was served last, for strict stickiness. Bounded: each shard keeps two
/// generations of at most a half-share of the capacity; when the current one fills, it
/// becomes the previous and the old previous is dropped. A key found in the previous
/// generation moves back to the current one, so keys in use stay and idle keys age out, as
/// does any entry older than the idle TTL. O(1) per look-up, one short lock per shard.
#[derive(Debug)]
pub(crate) struct Table {
    shards: Box<[Mutex<Shard>]>,
    half: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Shard {
    current: HashMap<u64, (u64, Instant)>,
    previous: HashMap<u64, (u64, Instant)>,
}

impl Table {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            half: (capacity / SHARDS / 2).max(1),
            ttl,
        }
    }

    /// The key's shard, from the top bits of the key mixed: a key function may return ids as
    /// they are (0, 1, 2, ...), whose own top bits are all zero.
    fn shard(&self, key: u64) -> &Mutex<Shard> {
        &self.shards[(spread(key) >> 60) as usize % SHARDS]
    }

    /// The endpoint that last served `key`, if it did within the TTL.
    pub(crate) fn get(&self, key: u64, now: Instant) -> Option<u64> {
        let mut shard = self.shard(key).lock();
        let fresh = |&(id, at): &(u64, Instant)| {
            (now.saturating_duration_since(at) <= self.ttl).then_some(id)
        };
        if let Some(entry) = shard.current.get(&key) {
            return fresh(entry);
        }
        let entry = shard.previous.remove(&key)?;
        let id = fresh(&entry)?;
        self.put(&mut shard, key, entry);
        Some(id)
    }

    /// Records that `endpoint` served `key`.
    pub(crate) fn insert(&self, key: u64, endpoint: u64, now: Instant) {
        let mut shard = self.shard(key).lock();
        shard.previous.remove(&key);
        self.put(&mut shard, key, (endpoint, now));
    }

    fn put(&self, shard: &mut Shard, key: u64, entry: (u64, Instant)) {
        if shard.current.len() >= self.half && !shard.current.contains_key(&key) {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(key, entry);
    }

    /// How many keys it holds.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// The most keys it can hold: the capacity asked for, rounded down to whole shards.
    pub(crate) fn capacity(&self) -> usize {
        self.half * 2 * SHARDS
    }
}

/// SplitMix64's finaliser: every bit of the key moves every bit of the result, about half of
/// them on average, so neighbouring keys land in unrelated shards.
fn spread(key: u64) -> u64 {
    let mut z = key;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_million_distinct_keys_leave_it_at_its_capacity() {
        let table = Table::new(10_000, Duration::from_secs(60));
        let now = Instant::now();
        for k in 0..1_000_000u64 {
            table.insert(crate::hash::stable_hash(&k.to_le_bytes()), k % 7, now);
        }
        let len = table.len();
        assert!(
            len <= table.capacity(),
            "{len} keys over a capacity of {}",
            table.capacity()
        );
        assert!(len >= table.capacity() / 2, "only {len} kept");
        // The capacity asked for, rounded down to whole shards.
        assert!((10_000 - 32..=10_000).contains(&table.capacity()));
    }

    #[test]
    fn small_integer_keys_spread_over_every_shard() {
        // A key function may return user ids as they are, with their top bits all zero.
        let table = Table::new(10_000, Duration::from_secs(60));
        let now = Instant::now();
        for k in 0..2_000u64 {
            table.insert(k, k % 7, now);
        }
        assert_eq!(table.len(), 2_000, "all kept");
        assert!((0..2_000u64).all(|k| table.get(k, now) == Some(k % 7)));
        // Consecutive keys, in any range, never hold more than the capacity.
        for start in [0, 1 << 32, u64::MAX - 100_000] {
            let table = Table::new(10_000, Duration::from_secs(60));
            for k in start..start + 100_000 {
                table.insert(k, 1, now);
                if k % 1000 == 0 {
                    assert!(table.len() <= table.capacity());
                }
            }
            let len = table.len();
            assert!(
                len <= table.capacity() && len >= table.capacity() / 2,
                "{len}"
            );
        }
    }

    #[test]
    fn keys_in_use_stay_and_idle_ones_expire() {
        let table = Table::new(64, Duration::from_secs(10));
        let t0 = Instant::now();
        let hot = crate::hash::stable_hash(b"hot");
        table.insert(hot, 1, t0);
        for k in 0..10_000u64 {
            let key = crate::hash::stable_hash(&k.to_le_bytes());
            table.insert(key, 2, t0);
            // The hot key is used all along, so it is never dropped.
            assert_eq!(table.get(hot, t0), Some(1));
        }
        let cold = crate::hash::stable_hash(b"cold");
        table.insert(cold, 3, t0);
        assert_eq!(table.get(cold, t0 + Duration::from_secs(5)), Some(3));
        assert_eq!(
            table.get(cold, t0 + Duration::from_secs(11)),
            None,
            "idle past the TTL"
        );
    }
}
