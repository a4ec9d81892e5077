//! A bounded set of blocks that evicts the least recently used first: a simulated engine's KV
//! cache, and the baselines' per-worker approximate indexes. Blocks are the trace's dense
//! numbers (`Trace::distinct` of them), so the map is an array.

const NIL: u32 = u32::MAX;

pub struct Lru {
    map: Vec<u32>,
    len: usize,
    nodes: Vec<(u64, u32, u32)>,
    head: u32,
    tail: u32,
    free: u32,
    capacity: usize,
}

impl Lru {
    pub fn new(capacity: usize, universe: usize) -> Self {
        Self {
            map: vec![NIL; universe],
            len: 0,
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn contains(&self, block: u64) -> bool {
        self.map[block as usize] != NIL
    }

    /// How many leading blocks of the chain are held, looked at one by one.
    pub fn matched(&self, chain: &[u64]) -> usize {
        chain.iter().take_while(|b| self.contains(**b)).count()
    }

    /// Uses a chain now, its head last (so its tail goes first, as engines evict); calls
    /// `evicted` with each block that made room.
    pub fn touch(&mut self, chain: &[u64], mut evicted: impl FnMut(u64)) {
        if self.capacity == 0 {
            return;
        }
        for &block in chain.iter().rev() {
            let i = self.map[block as usize];
            if i != NIL {
                self.unlink(i);
                self.push_front(i);
                continue;
            }
            if self.len == self.capacity {
                let victim = self.tail;
                let key = self.nodes[victim as usize].0;
                self.unlink(victim);
                self.map[key as usize] = NIL;
                self.len -= 1;
                self.nodes[victim as usize].2 = self.free;
                self.free = victim;
                evicted(key);
            }
            let i = if self.free != NIL {
                let i = self.free;
                self.free = self.nodes[i as usize].2;
                self.nodes[i as usize] = (block, NIL, NIL);
                i
            } else {
                self.nodes.push((block, NIL, NIL));
                (self.nodes.len() - 1) as u32
            };
            self.map[block as usize] = i;
            self.len += 1;
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (_, prev, next) = self.nodes[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].2 = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].1 = prev;
        }
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        self.nodes[i as usize].1 = NIL;
        self.nodes[i as usize].2 = head;
        if head == NIL {
            self.tail = i;
        } else {
            self.nodes[head as usize].1 = i;
        }
        self.head = i;
    }
}
