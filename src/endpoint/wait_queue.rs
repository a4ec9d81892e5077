//! The pool-wide queue of requests waiting for a slot: first come, first served, one slot to
//! one waiter.
//!
//! A waiting request takes a [`Place`] at the back (bounded: a full queue turns it away),
//! with what it can use (a [`Wants`]: its requirements and exclusions) and its cost. When an
//! endpoint may have room (a slot released; health, weight or membership that admits traffic;
//! an ejection or a cooldown reaching its end), [`WaitQueue::offer`] walks the queue from the
//! front and takes each free slot for the oldest waiter that can use it, as a [`Grant`], and
//! wakes that waiter alone: no herd, and a waiter that cannot use the endpoint lets the slot
//! go on to the next. A grant that is never claimed (its request was dropped) is released, and
//! so offered to the next waiter in turn. A request that finds a slot while others wait keeps
//! it only if no waiter ahead of it could use it.
//!
//! Time passing is an event too: an endpoint that will be able to serve at some instant (its
//! ejection or cooldown ends) tells the queue ([`WaitQueue::note_time`]), and while requests
//! wait, one timer is armed for the earliest such instant. Its keeper is one waiter, which
//! polls it; when the keeper leaves, the oldest waiter takes it up.
//!
//! Every release reads the waiter count, so the queue has a cache line of its own: a
//! neighbour's writes would make every release miss. A release with nobody waiting costs that
//! one load; the list itself is behind a mutex, taken only while requests wait.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Waker},
};

use tokio::time::{Instant, Sleep};

use super::{Endpoint, Reservation, Tokens};
use crate::sync::{seq_cst_order, AtomicUsize, Mutex, Ordering::SeqCst};

/// Whether a waiting request can be served by an endpoint, room aside: its requirements,
/// exclusions and the endpoint's health and weight.
pub(crate) type Wants = Box<dyn Fn(&Endpoint) -> bool + Send + Sync>;

/// No node: the end of the list.
const NIL: usize = usize::MAX;

/// How many waiters one pass of [`WaitQueue::offer`] wakes before it lets go of the lock.
const WAKE_BATCH: usize = 8;

/// The requests waiting for capacity. See the [module docs](self).
#[repr(align(64))]
pub(crate) struct WaitQueue {
    /// How many requests wait: what every release reads.
    waiting: AtomicUsize,
    list: Mutex<List>,
}

/// The waiters in the order they came, in a slab, linked both ways.
struct List {
    nodes: Vec<Node>,
    vacant: Vec<usize>,
    head: usize,
    tail: usize,
    len: usize,
    timer: Timer,
}

struct Node {
    prev: usize,
    next: usize,
    wants: Option<Wants>,
    cost: u64,
    tokens: Option<Tokens>,
    waker: Option<Waker>,
    grant: Option<Grant>,
}

/// The queue's one timer: armed, while requests wait, for the earliest instant at which an
/// endpoint that cannot serve now will be able to.
struct Timer {
    due: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The waiter whose task polls the timer, or [`NIL`].
    keeper: usize,
}

/// A slot taken on an endpoint for a waiting request. The request claims it; if it never does
/// (it was dropped), the slot is released, which offers it to the next waiter.
pub(crate) struct Grant {
    endpoint: Option<Arc<Endpoint>>,
    cost: u64,
    trial: bool,
    /// What it holds of the endpoint's quota, if it has one.
    reservation: Option<Reservation>,
}

/// What a waiter learns when it polls its [`Place`].
pub(crate) enum Turn {
    /// A slot was taken for it.
    Granted(Grant),
    /// The queue's timer went off: some endpoint's ejection or cooldown has ended. The waiter
    /// that kept it offers the endpoints that are due ([`WaitQueue::offer`]) and tells the
    /// queue of the next instant ([`WaitQueue::note_time`]).
    TimerFired,
    /// Nothing yet; the task will be woken.
    Waiting,
}

/// A place in the [`WaitQueue`], given back on drop.
pub(crate) struct Place {
    queue: Arc<WaitQueue>,
    index: usize,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self {
            waiting: AtomicUsize::new(0),
            list: Mutex::new(List {
                nodes: Vec::new(),
                vacant: Vec::new(),
                head: NIL,
                tail: NIL,
                len: 0,
                timer: Timer {
                    due: None,
                    sleep: None,
                    keeper: NIL,
                },
            }),
        }
    }
}

impl fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitQueue")
            .field("waiting", &self.waiting.load(SeqCst))
            .finish_non_exhaustive()
    }
}

impl WaitQueue {
    /// Whether any request waits: one load.
    #[inline]
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.load(SeqCst) != 0
    }

    /// `endpoint` may have room (a slot was released, or its health, weight or membership now
    /// admits traffic): its free slots go to the oldest waiters that can use them. One load
    /// when nobody waits.
    #[inline]
    pub(crate) fn offer(&self, endpoint: &Endpoint) {
        seq_cst_order();
        if self.waiting.load(SeqCst) != 0 {
            self.offer_slow(endpoint);
        }
    }

    #[cold]
    #[inline(never)]
    fn offer_slow(&self, endpoint: &Endpoint) {
        if endpoint.saturated() {
            return; // its load report leaves it no room, as the pick would find
        }
        let Some(endpoint) = endpoint.handle() else {
            return; // being dropped: it has no slot to give
        };
        let now = endpoint.has_quota().then(Instant::now);
        // When the endpoint's quota has room for the oldest waiter that could use it.
        let mut quota_returns = None;
        loop {
            let mut wake: [Option<Waker>; WAKE_BATCH] = Default::default();
            let mut woken = 0;
            let more = {
                let mut list = self.list.lock();
                let mut i = list.head;
                loop {
                    if i == NIL {
                        break false;
                    }
                    let node = &mut list.nodes[i];
                    i = node.next;
                    if node.grant.is_some() || !node.wants.as_ref().is_some_and(|w| w(&endpoint)) {
                        continue; // served already, or cannot use it: the next may
                    }
                    let reservation = match now {
                        Some(now) => match Reservation::take(&endpoint, node.tokens, now) {
                            Ok(r) => r,
                            Err(at) => {
                                quota_returns = Some(at);
                                break false; // no quota left: FIFO, the next waits too
                            }
                        },
                        None => None,
                    };
                    let Some(trial) = endpoint.try_acquire(node.cost) else {
                        if let Some(r) = reservation {
                            r.release_quietly();
                        }
                        break false; // no room left
                    };
                    node.grant = Some(Grant {
                        endpoint: Some(Arc::clone(&endpoint)),
                        cost: node.cost,
                        trial,
                        reservation,
                    });
                    if let Some(waker) = node.waker.take() {
                        wake[woken] = Some(waker);
                        woken += 1;
                        if woken == WAKE_BATCH {
                            break true;
                        }
                    }
                }
            };
            for waker in wake.into_iter().flatten() {
                waker.wake();
            }
            if !more {
                if let (Some(at), Some(now)) = (quota_returns, now) {
                    // Nothing else will offer this endpoint when its quota refills: time will.
                    self.note_time(at.max(now + std::time::Duration::from_millis(1)));
                }
                return;
            }
        }
    }

    /// Takes a place at the back of the queue, unless `max` requests already wait.
    pub(crate) fn join(
        self: &Arc<Self>,
        max: usize,
        cost: u64,
        tokens: Option<Tokens>,
        wants: Wants,
    ) -> Option<Place> {
        let mut list = self.list.lock();
        if list.len >= max {
            return None;
        }
        let index = list.push(Node {
            prev: NIL,
            next: NIL,
            wants: Some(wants),
            cost,
            tokens,
            waker: None,
            grant: None,
        });
        self.waiting.fetch_add(1, SeqCst);
        drop(list);
        // A slot released before this count was seen is found by the waiter's next look.
        seq_cst_order();
        Some(Place {
            queue: Arc::clone(self),
            index,
        })
    }

    /// Whether a request waiting ahead of `place` (of every waiter, without one) could use
    /// `endpoint`: then a slot found there is theirs.
    pub(crate) fn wanted_ahead(&self, endpoint: &Endpoint, place: Option<&Place>) -> bool {
        let stop = place.map_or(NIL, |p| p.index);
        let list = self.list.lock();
        let mut i = list.head;
        while i != NIL && i != stop {
            let node = &list.nodes[i];
            if node.grant.is_none() && node.wants.as_ref().is_some_and(|w| w(endpoint)) {
                return true;
            }
            i = node.next;
        }
        false
    }

    /// Some endpoint will be able to serve at `at` (its ejection or cooldown ends): the queue's
    /// timer goes off then if requests wait.
    pub(crate) fn note_time(&self, at: Instant) {
        let waker = {
            let mut list = self.list.lock();
            if list.timer.due.is_some_and(|due| due <= at) {
                return;
            }
            list.timer.due = Some(at);
            // The keeper re-arms the timer; without one, the oldest waiter takes it up.
            let keeper = match list.timer.keeper {
                NIL => list.head,
                keeper => keeper,
            };
            list.nodes.get(keeper).and_then(|n| n.waker.clone())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl List {
    fn push(&mut self, mut node: Node) -> usize {
        node.prev = self.tail;
        let index = match self.vacant.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        match self.tail {
            NIL => self.head = index,
            tail => self.nodes[tail].next = index,
        }
        self.tail = index;
        self.len += 1;
        index
    }

    fn remove(&mut self, index: usize) -> Node {
        let vacant = Node {
            prev: NIL,
            next: NIL,
            wants: None,
            cost: 0,
            tokens: None,
            waker: None,
            grant: None,
        };
        let node = std::mem::replace(&mut self.nodes[index], vacant);
        match node.prev {
            NIL => self.head = node.next,
            prev => self.nodes[prev].next = node.next,
        }
        match node.next {
            NIL => self.tail = node.prev,
            next => self.nodes[next].prev = node.prev,
        }
        self.vacant.push(index);
        self.len -= 1;
        node
    }
}

impl Place {
    /// Takes a slot granted to this request; else registers the task to be woken when one is,
    /// and keeps the queue's timer if no other waiter does.
    pub(crate) fn poll_turn(&self, cx: &mut Context<'_>) -> Turn {
        let mut list = self.queue.list.lock();
        let list = &mut *list;
        let node = &mut list.nodes[self.index];
        if let Some(grant) = node.grant.take() {
            return Turn::Granted(grant);
        }
        match &node.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => node.waker = Some(cx.waker().clone()),
        }
        let timer = &mut list.timer;
        let Some(due) = timer.due else {
            return Turn::Waiting;
        };
        if timer.keeper != NIL && timer.keeper != self.index {
            return Turn::Waiting;
        }
        timer.keeper = self.index;
        let sleep = match &mut timer.sleep {
            Some(sleep) => {
                if sleep.deadline() != due {
                    sleep.as_mut().reset(due);
                }
                sleep
            }
            None => timer.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
        };
        if sleep.as_mut().poll(cx).is_ready() {
            timer.due = None;
            timer.sleep = None;
            return Turn::TimerFired;
        }
        Turn::Waiting
    }
}

impl fmt::Debug for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Place").field("index", &self.index).finish()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let (grant, wake) = {
            let mut list = self.queue.list.lock();
            let node = list.remove(self.index);
            self.queue.waiting.fetch_sub(1, SeqCst);
            let mut wake = None;
            if list.timer.keeper == self.index {
                list.timer.keeper = NIL;
                if list.len == 0 {
                    list.timer.sleep = None;
                } else if list.timer.due.is_some() {
                    // The oldest waiter takes the timer up.
                    let head = list.head;
                    wake = list.nodes[head].waker.clone();
                }
            }
            (node.grant, wake)
        };
        // A slot granted but never claimed goes to the next waiter that can use it.
        drop(grant);
        if let Some(waker) = wake {
            waker.wake();
        }
    }
}

impl Grant {
    /// The endpoint the slot is on.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        self.endpoint
            .as_ref()
            .expect("a grant holds its endpoint until claimed")
    }

    /// Takes the slot: the endpoint, the cost it was taken for, whether it holds a
    /// half-open trial permit, and its quota reservation. The caller releases them.
    pub(crate) fn claim(mut self) -> (Arc<Endpoint>, u64, bool, Option<Reservation>) {
        let endpoint = self.endpoint.take().expect("claimed once");
        (endpoint, self.cost, self.trial, self.reservation.take())
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("endpoint", &self.endpoint.as_ref().map(|e| e.key()))
            .field("cost", &self.cost)
            .finish()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(endpoint) = self.endpoint.take() {
            // The quota first, so that the slot's offer finds it.
            if let Some(r) = self.reservation.take() {
                r.release_quietly();
            }
            if self.trial {
                endpoint.return_trial();
            }
            endpoint.release(self.cost);
        }
    }
}
