//! The prefix index: for each endpoint, an approximate record of the blocks its engine holds.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
};

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{averages::Averages, backlog::Backlog, set::BlockSet};
use crate::{endpoint::Endpoint, load::FirstByteHook};

/// Which prompt prefixes each endpoint's engine holds in its KV cache, as chains of block
/// hashes (see [`BlockHasher`](super::BlockHasher)).
///
/// It learns from two sources, both plain method calls:
///
/// - the router's own placements ([`stored`](Self::stored) with the prompt's blocks when a
///   request is sent; [`PrefixPolicy::placed`](super::PrefixPolicy::placed) does it): an
///   approximation, since the engine may have evicted a block the index still lists, or hold
///   one another router sent;
/// - the engine's own KV events, where it publishes them (vLLM's `BlockStored`,
///   `BlockRemoved`, `AllBlocksCleared`): [`stored`](Self::stored), [`removed`](Self::removed),
///   [`cleared`](Self::cleared), or [`apply`](Self::apply) with a [`KvEvent`]. With the engine's
///   block size and hash, the index is then exact.
///
/// Each endpoint's record is bounded: it holds at most its capacity in blocks and drops the
/// least recently used first, a chain's tail before its head, as engines evict. The capacity
/// is the one given to [`new`](Self::new), or the engine's reported KV capacity through
/// [`set_capacity`](Self::set_capacity).
///
/// # Concurrency
///
/// A pick looks up every candidate: that path takes no lock, allocates nothing and writes no
/// shared memory. The endpoints' records are found through one `arc-swap` snapshot (replaced
/// only when an endpoint is first seen or its capacity changes), and a record's membership
/// test is atomic loads over an open-addressed table. Writers lock one endpoint's record only:
/// placements on different endpoints never wait for each other, and no pick waits for any.
/// A reader racing a writer may miss a block that is moving in the table for the duration of
/// one probe; for an index that is approximate by nature, that costs nothing.
///
/// ```
/// use tower_ai_balance::{prefix::PrefixIndex, Endpoint, EndpointConfig};
/// let index = PrefixIndex::new(1_000);
/// let gpu = Endpoint::new(EndpointConfig::new("gpu-0")).unwrap();
/// index.stored(&gpu, &[11, 12, 13]);
/// assert_eq!(index.matched(&gpu, &[11, 12, 99]), 2);
/// index.removed(&gpu, &[13, 12]);
/// assert_eq!(index.matched(&gpu, &[11, 12, 99]), 1);
/// ```
#[derive(Debug)]
pub struct PrefixIndex {
    records: ArcSwap<Records>,
    /// Taken to add a record or change a capacity (rare); never by a pick.
    writer: Mutex<()>,
    capacity: usize,
    pub(crate) epoch: Instant,
    /// What the placements on every endpoint taught: shared by the records.
    pub(crate) averages: Arc<Averages>,
}

type Records = HashMap<u64, Arc<Record>, BuildHasherDefault<KeyHasher>>;

/// One endpoint's record: its blocks, and its prefill backlog as this router sees it.
#[derive(Debug)]
pub(crate) struct Record {
    blocks: ArcSwap<BlockSet>,
    pub(crate) backlog: Backlog,
    pub(crate) averages: Arc<Averages>,
}

/// A placement's prefill leaves the backlog at its first token, whoever sees it: a
/// [`Placement`](super::Placement), or the load guard it was handed to.
impl FirstByteHook for Record {
    fn release(&self, amount: u64, _at: Option<Instant>) {
        self.backlog.release(amount);
    }

    fn completed(&self, first: Instant, at: Instant) {
        self.averages
            .observe_decode(at.saturating_duration_since(first));
    }
}

impl Record {
    /// Records a chain as held now (see [`PrefixIndex::stored`]).
    pub(crate) fn store(&self, chain: &[u64]) {
        // A record whose set was just replaced refuses the write; the new set takes it.
        while !self.blocks.load().touch(chain) {}
    }

    /// How many leading blocks of `chain` the record lists.
    #[inline]
    pub(crate) fn matched(&self, chain: &[u64]) -> usize {
        self.blocks.load().matched(chain)
    }
}

/// An engine's report of a change to its KV cache, in the index's block hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvEvent<'a> {
    /// These blocks were stored (a chain, head first).
    Stored(&'a [u64]),
    /// These blocks were evicted.
    Removed(&'a [u64]),
    /// Every block was dropped (the engine reset its cache).
    Cleared,
}

/// The endpoints' key hashes are already uniform: no need to hash them again.
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl PrefixIndex {
    /// An index that holds at most `capacity` blocks per endpoint until told an endpoint's own
    /// capacity.
    pub fn new(capacity: usize) -> Self {
        Self {
            records: ArcSwap::from_pointee(Records::default()),
            writer: Mutex::new(()),
            capacity: capacity.min(super::set::MAX_CAPACITY),
            epoch: Instant::now(),
            averages: Arc::new(Averages::new()),
        }
    }

    /// How many leading blocks of `blocks` the endpoint holds, as far as the index knows.
    /// Lock-free and allocation-free.
    pub fn matched(&self, endpoint: &Endpoint, blocks: &[u64]) -> usize {
        self.view().matched(endpoint, blocks)
    }

    /// Records that the endpoint holds these blocks now (a request with this prompt was sent
    /// there, or the engine reported storing them): each is added or refreshed, the least
    /// recently used making room.
    pub fn stored(&self, endpoint: &Endpoint, blocks: &[u64]) {
        self.record(endpoint).store(blocks);
    }

    /// Records that the endpoint's engine evicted these blocks.
    pub fn removed(&self, endpoint: &Endpoint, blocks: &[u64]) {
        if let Some(record) = self.view().get(endpoint) {
            while !record.blocks.load().remove(blocks) {}
        }
    }

    /// Records that the endpoint's engine dropped its whole cache (a restart, a reset).
    pub fn cleared(&self, endpoint: &Endpoint) {
        if let Some(record) = self.view().get(endpoint) {
            while !record.blocks.load().clear() {}
        }
    }

    /// Applies an engine's KV event.
    pub fn apply(&self, endpoint: &Endpoint, event: KvEvent<'_>) {
        match event {
            KvEvent::Stored(blocks) => self.stored(endpoint, blocks),
            KvEvent::Removed(blocks) => self.removed(endpoint, blocks),
            KvEvent::Cleared => self.cleared(endpoint),
        }
    }

    /// Sizes the endpoint's record to what its engine reports it can hold (in the index's
    /// blocks: for an engine that reports 40,000 blocks of 16 tokens and an index of 512-token
    /// blocks, 1,250). Keeps the most recently used blocks.
    pub fn set_capacity(&self, endpoint: &Endpoint, blocks: usize) {
        let record = self.record(endpoint);
        let _writer = self.writer.lock();
        let current = record.blocks.load_full();
        if current.capacity() != blocks.min(super::set::MAX_CAPACITY) {
            current.replace(blocks, |next| record.blocks.store(Arc::new(next)));
        }
    }

    /// The most blocks the index keeps for the endpoint.
    pub fn capacity(&self, endpoint: &Endpoint) -> usize {
        self.view()
            .get(endpoint)
            .map_or(self.capacity, |r| r.blocks.load().capacity())
    }

    /// How many blocks the index lists for the endpoint.
    pub fn len(&self, endpoint: &Endpoint) -> usize {
        self.view()
            .get(endpoint)
            .map_or(0, |r| r.blocks.load().len())
    }

    /// Whether the index lists no block for the endpoint.
    pub fn is_empty(&self, endpoint: &Endpoint) -> bool {
        self.len(endpoint) == 0
    }

    /// Drops the endpoint's record (it left for good; one that comes back with the same key
    /// finds its record again unless forgotten).
    pub fn forget(&self, endpoint: &Endpoint) {
        let _writer = self.writer.lock();
        let records = self.records.load();
        if records.contains_key(&endpoint.key_hash()) {
            let mut next = Records::clone(&records);
            next.remove(&endpoint.key_hash());
            self.records.store(Arc::new(next));
        }
    }

    /// The records as they are now, for a pick's look-ups.
    pub(crate) fn view(&self) -> View {
        View(self.records.load())
    }

    /// The endpoint's record, created on first use.
    pub(crate) fn record(&self, endpoint: &Endpoint) -> Arc<Record> {
        if let Some(record) = self.records.load().get(&endpoint.key_hash()) {
            return Arc::clone(record);
        }
        let _writer = self.writer.lock();
        let records = self.records.load();
        if let Some(record) = records.get(&endpoint.key_hash()) {
            return Arc::clone(record);
        }
        let record = Arc::new(Record {
            blocks: ArcSwap::from_pointee(BlockSet::new(self.capacity)),
            backlog: Backlog::default(),
            averages: Arc::clone(&self.averages),
        });
        let mut next = Records::clone(&records);
        next.insert(endpoint.key_hash(), Arc::clone(&record));
        self.records.store(Arc::new(next));
        record
    }
}

/// A snapshot of the records, held for one pick.
pub(crate) struct View(Guard<Arc<Records>>);

impl View {
    #[inline]
    pub(crate) fn get(&self, endpoint: &Endpoint) -> Option<&Record> {
        self.0.get(&endpoint.key_hash()).map(|r| &**r)
    }

    #[inline]
    pub(crate) fn matched(&self, endpoint: &Endpoint, blocks: &[u64]) -> usize {
        self.get(endpoint).map_or(0, |r| r.matched(blocks))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::EndpointConfig;

    fn endpoint(key: &str) -> Arc<Endpoint> {
        Endpoint::new(EndpointConfig::new(key)).unwrap()
    }

    #[test]
    fn records_are_per_endpoint_and_keyed_by_the_endpoint_key() {
        let index = PrefixIndex::new(100);
        let (a, b) = (endpoint("a"), endpoint("b"));
        index.stored(&a, &[1, 2, 3]);
        assert_eq!(index.matched(&a, &[1, 2, 3]), 3);
        assert_eq!(index.matched(&b, &[1, 2, 3]), 0);
        // The same server, announced again: its cache did not go away.
        let a_again = endpoint("a");
        assert_eq!(index.matched(&a_again, &[1, 2]), 2);
        index.forget(&a);
        assert_eq!(index.matched(&a_again, &[1, 2]), 0);
    }

    #[test]
    fn engine_events_make_it_exact() {
        let index = PrefixIndex::new(100);
        let a = endpoint("a");
        index.apply(&a, KvEvent::Stored(&[1, 2, 3, 4]));
        index.apply(&a, KvEvent::Removed(&[4, 3]));
        assert_eq!(index.matched(&a, &[1, 2, 3, 4]), 2);
        index.apply(&a, KvEvent::Cleared);
        assert_eq!(index.matched(&a, &[1, 2, 3, 4]), 0);
        assert!(index.is_empty(&a));
        // Events for an endpoint never seen change nothing and create nothing.
        let b = endpoint("b");
        index.removed(&b, &[1]);
        index.cleared(&b);
        assert_eq!(index.view().get(&b).map(|_| ()), None);
    }

    #[test]
    fn the_capacity_follows_the_engine() {
        let index = PrefixIndex::new(4);
        let a = endpoint("a");
        index.stored(&a, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(index.len(&a), 4);
        assert_eq!(index.matched(&a, &[1, 2, 3, 4, 5, 6]), 4);
        index.set_capacity(&a, 2);
        assert_eq!(index.capacity(&a), 2);
        assert_eq!(index.matched(&a, &[1, 2, 3]), 2);
        index.set_capacity(&a, 10);
        index.stored(&a, &[7, 8, 9]);
        assert_eq!(index.len(&a), 5);
        assert_eq!(index.matched(&a, &[1, 2]), 2);
    }

    #[test]
    fn writers_and_readers_on_many_threads() {
        let index = Arc::new(PrefixIndex::new(64));
        let endpoints: Vec<_> = (0..4).map(|i| endpoint(&format!("e{i}"))).collect();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (index, endpoints) = (&index, &endpoints);
                s.spawn(move || {
                    for i in 0..2_000u64 {
                        let e = &endpoints[((i + t) % 4) as usize];
                        let chain = [t, t * 1000 + i % 50, t * 100_000 + i % 7];
                        index.stored(e, &chain);
                        assert!(index.matched(e, &chain) <= 3);
                        if i % 500 == 0 {
                            index.set_capacity(e, 32 + (i % 3) as usize * 16);
                        }
                    }
                });
            }
        });
        for e in &endpoints {
            assert!(index.len(e) <= index.capacity(e));
        }
    }
}
