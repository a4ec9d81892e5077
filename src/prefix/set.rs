//! One endpoint's cached blocks: a bounded set of block hashes that drops the least recently
//! used first, whose membership test is a few atomic loads with no lock.
//!
//! Readers probe an open-addressed table of `AtomicU64` (linear probing, at most three
//! quarters full): no lock, no allocation and no write to shared memory, so picks on many
//! cores never contend on it. Writers (a placement, an engine's event) take the set's mutex,
//! which also guards the recency list, an intrusive list over a slab allocated once. A removal
//! shifts the entries after it back (no tombstones, so the table never needs a rebuild); a
//! reader that races it can miss an entry that is moving, which an index that is approximate
//! by nature can afford: the next look-up sees it.

use parking_lot::Mutex;

use crate::sync::{AtomicU64, Ordering};

const EMPTY: u64 = 0;
const NIL: u32 = u32::MAX;

/// The largest capacity a set takes (the slab is indexed by `u32`).
pub(crate) const MAX_CAPACITY: usize = 1 << 30;

pub(crate) struct BlockSet {
    slots: Box<[AtomicU64]>,
    mask: usize,
    shift: u32,
    capacity: usize,
    lru: Mutex<Lru>,
}

impl std::fmt::Debug for BlockSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSet")
            .field("capacity", &self.capacity)
            .field("len", &self.lru.lock().len)
            .finish()
    }
}

/// The writers' side: which node each slot's entry is, and the recency order.
struct Lru {
    node_at: Box<[u32]>,
    nodes: Vec<Node>,
    /// Most recently used.
    head: u32,
    /// Least recently used: evicted first.
    tail: u32,
    free: u32,
    len: usize,
    /// Set when a larger or smaller set has replaced this one: writers go to the new one.
    retired: bool,
}

#[derive(Clone, Copy)]
struct Node {
    tag: u64,
    prev: u32,
    next: u32,
}

/// Spreads a block hash over the table (a bijection: distinct hashes stay distinct), avoiding
/// the empty marker. Hashes from a trace are small consecutive numbers; these are not.
#[inline]
pub(crate) fn tag(block: u64) -> u64 {
    const K: u64 = 0xd6e8_feb8_6659_fd93;
    let mut x = block ^ (block >> 32);
    x = x.wrapping_mul(K);
    x ^= x >> 32;
    x = x.wrapping_mul(K);
    x ^= x >> 32;
    if x == EMPTY {
        1
    } else {
        x
    }
}

impl BlockSet {
    /// A set of at most `capacity` blocks; its memory is allocated here, once.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.min(MAX_CAPACITY);
        let len = (capacity + capacity / 3 + 1).next_power_of_two().max(8);
        Self {
            slots: (0..len).map(|_| AtomicU64::new(EMPTY)).collect(),
            mask: len - 1,
            shift: 64 - len.trailing_zeros(),
            capacity,
            lru: Mutex::new(Lru {
                node_at: vec![NIL; len].into_boxed_slice(),
                nodes: Vec::with_capacity(capacity),
                head: NIL,
                tail: NIL,
                free: NIL,
                len: 0,
                retired: false,
            }),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.lru.lock().len
    }

    #[inline]
    fn home(&self, tag: u64) -> usize {
        (tag >> self.shift) as usize & self.mask
    }

    /// Whether the block is in the set: atomic loads only.
    #[inline]
    pub(crate) fn contains(&self, block: u64) -> bool {
        let tag = tag(block);
        let mut i = self.home(tag);
        // A bound on the probe: a reader racing writers never loops for long.
        for _ in 0..self.slots.len() {
            match self.slots[i].load(Ordering::Acquire) {
                t if t == tag => return true,
                EMPTY => return false,
                _ => i = (i + 1) & self.mask,
            }
        }
        false
    }

    /// How many leading blocks of `chain` the set holds. The set holds chains' prefixes (a
    /// chain is stored whole and its head is always used more recently than its tail), so a
    /// galloping search finds the end of the match in O(log n) probes.
    pub(crate) fn matched(&self, chain: &[u64]) -> usize {
        // Invariant: blocks[..lo] held, blocks[hi..] not (hi = len means unknown).
        if chain.is_empty() || !self.contains(chain[0]) {
            return 0;
        }
        let (mut lo, mut hi) = (1, chain.len());
        let mut step = 1;
        while lo < hi {
            let probe = (lo + step - 1).min(hi - 1);
            if self.contains(chain[probe]) {
                lo = probe + 1;
                step *= 2;
            } else {
                hi = probe;
                break;
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.contains(chain[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Records a chain as used now: each block is added or refreshed, the chain's head last so
    /// that it is the most recent and the tail is evicted first, as engines evict. Returns
    /// `false` (doing nothing) if this set has been replaced.
    pub(crate) fn touch(&self, chain: &[u64]) -> bool {
        let mut lru = self.lru.lock();
        if lru.retired {
            return false;
        }
        if self.capacity == 0 {
            return true;
        }
        for &block in chain.iter().rev() {
            self.touch_one(&mut lru, tag(block));
        }
        true
    }

    /// Removes the blocks (an engine evicted them). Returns `false` if replaced.
    pub(crate) fn remove(&self, blocks: &[u64]) -> bool {
        let mut lru = self.lru.lock();
        if lru.retired {
            return false;
        }
        for &block in blocks {
            if let Some(slot) = self.find(tag(block)) {
                let node = lru.node_at[slot];
                lru.unlink(node);
                lru.release(node);
                self.delete(&mut lru, slot);
            }
        }
        true
    }

    /// Empties the set. Returns `false` if replaced.
    pub(crate) fn clear(&self) -> bool {
        let mut lru = self.lru.lock();
        if lru.retired {
            return false;
        }
        for (slot, node) in self.slots.iter().zip(lru.node_at.iter_mut()) {
            slot.store(EMPTY, Ordering::Release);
            *node = NIL;
        }
        lru.nodes.clear();
        lru.head = NIL;
        lru.tail = NIL;
        lru.free = NIL;
        lru.len = 0;
        true
    }

    /// Replaces this set with one of a new capacity holding its most recent blocks in the same
    /// order: `publish` puts the new set where writers find it, and only then is this one
    /// retired, so a writer blocked on it meanwhile goes on to the new one.
    pub(crate) fn replace(&self, capacity: usize, publish: impl FnOnce(Self)) {
        let next = Self::new(capacity);
        let mut lru = self.lru.lock();
        {
            let mut fresh = next.lru.lock();
            let mut node = lru.tail;
            // Oldest first, skipping what the new capacity cannot keep.
            let mut skip = lru.len.saturating_sub(next.capacity);
            while node != NIL {
                let Node { tag, prev, .. } = lru.nodes[node as usize];
                if skip > 0 {
                    skip -= 1;
                } else if next.capacity > 0 {
                    next.touch_one(&mut fresh, tag);
                }
                node = prev;
            }
        }
        publish(next);
        lru.retired = true;
    }

    fn touch_one(&self, lru: &mut Lru, tag: u64) {
        if let Some(slot) = self.find(tag) {
            let node = lru.node_at[slot];
            lru.unlink(node);
            lru.push_front(node);
            return;
        }
        if lru.len == self.capacity {
            let victim = lru.tail;
            let victim_tag = lru.nodes[victim as usize].tag;
            lru.unlink(victim);
            lru.release(victim);
            if let Some(slot) = self.find(victim_tag) {
                self.delete(lru, slot);
            }
        }
        let node = lru.allocate(tag);
        lru.push_front(node);
        let mut i = self.home(tag);
        while self.slots[i].load(Ordering::Relaxed) != EMPTY {
            i = (i + 1) & self.mask;
        }
        lru.node_at[i] = node;
        self.slots[i].store(tag, Ordering::Release);
    }

    /// The slot holding `tag`, for a writer (under the mutex, so nothing moves meanwhile).
    fn find(&self, tag: u64) -> Option<usize> {
        let mut i = self.home(tag);
        loop {
            match self.slots[i].load(Ordering::Relaxed) {
                t if t == tag => return Some(i),
                EMPTY => return None,
                _ => i = (i + 1) & self.mask,
            }
        }
    }

    /// Empties a slot, shifting back each later entry of its cluster that may move closer to
    /// its home, so that probes never stop short of an entry.
    fn delete(&self, lru: &mut Lru, slot: usize) {
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & self.mask;
            let t = self.slots[j].load(Ordering::Relaxed);
            if t == EMPTY {
                break;
            }
            let home = self.home(t);
            // The entry at j may fill the hole if the hole lies on its probe path.
            if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(hole) & self.mask) {
                self.slots[hole].store(t, Ordering::Release);
                lru.node_at[hole] = lru.node_at[j];
                hole = j;
            }
        }
        self.slots[hole].store(EMPTY, Ordering::Release);
        lru.node_at[hole] = NIL;
    }
}

impl Lru {
    fn allocate(&mut self, tag: u64) -> u32 {
        self.len += 1;
        let node = Node {
            tag,
            prev: NIL,
            next: NIL,
        };
        if self.free != NIL {
            let i = self.free;
            self.free = self.nodes[i as usize].next;
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn release(&mut self, i: u32) {
        self.len -= 1;
        self.nodes[i as usize].next = self.free;
        self.free = i;
    }

    fn unlink(&mut self, i: u32) {
        let Node { prev, next, .. } = self.nodes[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        self.nodes[i as usize].prev = NIL;
        self.nodes[i as usize].next = head;
        if head == NIL {
            self.tail = i;
        } else {
            self.nodes[head as usize].prev = i;
        }
        self.head = i;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// The same set, as a plain list: most recent first.
    #[derive(Default)]
    struct Model(VecDeque<u64>, usize);

    impl Model {
        fn touch(&mut self, chain: &[u64]) {
            for &b in chain.iter().rev() {
                self.0.retain(|&x| x != b);
                self.0.push_front(b);
                if self.0.len() > self.1 {
                    self.0.pop_back();
                }
            }
        }
    }

    #[test]
    fn keeps_the_most_recent_and_evicts_tails_first() {
        let set = BlockSet::new(5);
        set.touch(&[1, 2, 3]);
        set.touch(&[1, 4, 5]);
        // 1 is the most recent; 3, then 2 are the oldest.
        set.touch(&[6]);
        assert!(!set.contains(3));
        assert!(set.contains(2));
        assert_eq!(set.matched(&[1, 4, 5, 9]), 3);
        assert_eq!(set.matched(&[1, 2, 3]), 2);
        assert_eq!(set.matched(&[7, 1]), 0);
        assert_eq!(set.len(), 5);
    }

    #[test]
    fn matches_the_model_through_churn() {
        // Random chains over a small alphabet: many collisions, evictions and shifts.
        let mut state = 7u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for capacity in [1, 3, 16, 100] {
            let set = BlockSet::new(capacity);
            let mut model = Model(VecDeque::new(), capacity);
            for round in 0..3_000 {
                let len = (next() % 6) as usize + 1;
                let chain: Vec<u64> = (0..len).map(|_| next() % 300).collect();
                if round % 7 == 3 {
                    set.remove(&chain[..1]);
                    model.0.retain(|&x| x != chain[0]);
                } else {
                    set.touch(&chain);
                    model.touch(&chain);
                }
                assert_eq!(set.len(), model.0.len());
                for b in 0..300 {
                    assert_eq!(set.contains(b), model.0.contains(&b), "block {b}");
                }
            }
        }
    }

    #[test]
    fn finds_the_end_of_a_long_match() {
        let set = BlockSet::new(1000);
        let chain: Vec<u64> = (1000..1160).collect();
        for held in [0, 1, 2, 3, 17, 64, 159, 160] {
            set.clear();
            set.touch(&chain[..held]);
            assert_eq!(set.matched(&chain), held);
        }
    }

    #[test]
    fn a_replacement_keeps_the_most_recent_and_retires_the_old_set() {
        let resized = |set: &BlockSet, capacity| {
            let mut out = None;
            set.replace(capacity, |next| out = Some(next));
            out.unwrap()
        };
        let set = BlockSet::new(10);
        set.touch(&[1, 2, 3, 4, 5, 6]);
        let small = resized(&set, 3);
        assert_eq!(small.len(), 3);
        assert_eq!(small.matched(&[1, 2, 3, 4]), 3);
        assert!(!set.touch(&[9]));
        let large = resized(&small, 100);
        assert_eq!(large.matched(&[1, 2, 3, 4]), 3);
        assert_eq!(resized(&large, 0).len(), 0);
    }

    #[test]
    fn a_zero_capacity_holds_nothing() {
        let set = BlockSet::new(0);
        assert!(set.touch(&[1, 2]));
        assert!(!set.contains(1));
        assert_eq!(set.matched(&[1]), 0);
    }

    #[test]
    fn tags_never_collide_with_empty() {
        for b in [0u64, 1, u64::MAX, 1 << 32] {
            assert_ne!(tag(b), EMPTY);
        }
    }
}
