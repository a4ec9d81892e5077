//! Tests of the endpoint's live state: the loom models of its trial permits, the gate, and
//! the pool's ejected count.

impl super::Endpoint {
    /// Whether the health lets a request through at `now`, as the pick asks it.
    pub(crate) fn health_allows(&self, now: &crate::clock::LazyNow, include_held: bool) -> bool {
        self.health_cell().allows(now, include_held)
    }
}

#[cfg(loom)]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`

    use std::sync::Arc;

    use loom::{
        sync::atomic::{AtomicUsize, Ordering::SeqCst},
        thread,
    };
    use tokio::time::Instant;

    use super::super::{Endpoint, EndpointConfig};

    /// One request through a half-open endpoint: a slot and maybe a trial permit, both
    /// given back. Counts the trials running at once in `live`.
    fn attempt(e: &Endpoint, live: &AtomicUsize) {
        let Some(trial) = e.try_acquire(1) else {
            return;
        };
        if trial {
            let running = live.fetch_add(1, SeqCst) + 1;
            assert!(
                running <= 1,
                "{running} trials through a half-open endpoint of one"
            );
            live.fetch_sub(1, SeqCst);
            e.return_trial();
        }
        e.release(1);
    }

    #[test]
    fn half_open_admits_no_more_trials_than_it_allows() {
        loom::model(|| {
            let e = Endpoint::new(EndpointConfig::new("e")).unwrap();
            assert!(e.eject(Instant::now(), 1, 1.0));
            let live = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (e, live) = (Arc::clone(&e), Arc::clone(&live));
                    thread::spawn(move || attempt(&e, &live))
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(e.in_flight(), 0);
            assert_eq!(
                e.recovery.permits(),
                (1 << 16) | 1,
                "every permit came back"
            );
        });
    }

    #[test]
    fn permits_never_exceed_the_allowance_across_a_re_ejection() {
        loom::model(|| {
            let e = Endpoint::new(EndpointConfig::new("e")).unwrap();
            assert!(e.eject(Instant::now(), 1, 1.0));
            let live = Arc::new(AtomicUsize::new(0));
            let worker = {
                let (e, live) = (Arc::clone(&e), Arc::clone(&live));
                thread::spawn(move || attempt(&e, &live))
            };
            // The health layer re-ejects (a trial failed) while the request runs.
            assert!(e.eject(Instant::now(), 1, 1.0));
            worker.join().unwrap();
            assert_eq!(e.in_flight(), 0);
            let trials = e.recovery.permits();
            assert!(
                trials & 0xffff <= trials >> 16,
                "more permits ({}) than the ejection allows ({})",
                trials & 0xffff,
                trials >> 16
            );
            assert_eq!(trials & 0xffff, 1, "a permit was lost");
        });
    }
}

#[cfg(loom)]
mod loom_ejections {
    //! The pool's bound on ejections, under loom:
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`

    use std::sync::Arc;

    use loom::thread;
    use tokio::time::Instant;

    use super::super::{Endpoint, EndpointConfig, Health, PoolState};

    fn ejected(endpoints: &[Arc<Endpoint>]) -> usize {
        endpoints
            .iter()
            .filter(|e| matches!(e.health(), Health::Ejected { .. }))
            .count()
    }

    /// Two endpoints, at most half of them ejected: one. While the health layer ejects `a`,
    /// an operator sets `a` healthy and `b` is ejected: whatever the interleaving, at most
    /// one is ejected at the end, and the pool's count says how many.
    #[test]
    fn a_health_write_never_frees_a_place_an_ejection_holds() {
        loom::model(|| {
            let pool = Arc::new(PoolState::default());
            let e: Vec<_> = ["a", "b"]
                .iter()
                .map(|k| Endpoint::in_pool(EndpointConfig::new(*k), &pool).unwrap())
                .collect();
            let until = Instant::now() + std::time::Duration::from_secs(60);
            let ejector = {
                let a = Arc::clone(&e[0]);
                thread::spawn(move || a.eject(until, 1, 0.5))
            };
            let operator = {
                let a = Arc::clone(&e[0]);
                thread::spawn(move || a.set_health(Health::Healthy))
            };
            e[1].eject(until, 1, 0.5);
            ejector.join().unwrap();
            operator.join().unwrap();
            let n = ejected(&e);
            assert!(n <= 1, "{n} of 2 ejected");
            assert_eq!(pool.ejected_now(), n, "the count says how many");
        });
    }

    /// Two judges eject two of three endpoints at once, one of them again: at most one
    /// (half of three, rounded down) is ever ejected.
    #[test]
    fn racing_ejections_keep_the_bound() {
        loom::model(|| {
            let pool = Arc::new(PoolState::default());
            let e: Vec<_> = ["a", "b", "c"]
                .iter()
                .map(|k| Endpoint::in_pool(EndpointConfig::new(*k), &pool).unwrap())
                .collect();
            let until = Instant::now() + std::time::Duration::from_secs(60);
            let other = {
                let b = Arc::clone(&e[1]);
                thread::spawn(move || {
                    b.eject(until, 1, 0.5);
                    b.eject(until, 1, 0.5)
                })
            };
            e[0].eject(until, 1, 0.5);
            other.join().unwrap();
            let n = ejected(&e);
            assert_eq!(n, 1, "exactly one of 3 ejected");
            assert_eq!(pool.ejected_now(), 1);
        });
    }
}

#[cfg(loom)]
mod loom_queue {
    //! The wait queue's hand-over of slots, under loom:
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`

    use std::{sync::Arc, task::Context};

    use loom::thread;

    use super::super::{Endpoint, EndpointConfig, Grant, Place, PoolState, Turn};

    /// A pool state and one endpoint in it with a limit of one, its slot taken.
    fn full_endpoint() -> (Arc<PoolState>, Arc<Endpoint>) {
        let pool = Arc::new(PoolState::default());
        let e = Endpoint::in_pool(EndpointConfig::new("e").max_concurrency(1), &pool).unwrap();
        assert_eq!(e.try_acquire(1), Some(false));
        (pool, e)
    }

    fn join(pool: &PoolState) -> Place {
        pool.waiters
            .join(8, 1, None, Box::new(|_| true))
            .expect("room in the queue")
    }

    /// The slot granted to this waiter, if any.
    fn granted(place: &Place) -> Option<Grant> {
        let waker = futures_util::task::noop_waker();
        match place.poll_turn(&mut Context::from_waker(&waker)) {
            Turn::Granted(grant) => Some(grant),
            _ => None,
        }
    }

    /// A request that starts to wait as the only slot is released gets the slot: by its own
    /// look after taking its place, or by the release's offer, never neither.
    #[test]
    fn a_slot_released_as_a_request_starts_to_wait_is_never_missed() {
        loom::model(|| {
            let (pool, e) = full_endpoint();
            let releaser = {
                let e = Arc::clone(&e);
                thread::spawn(move || e.release(1))
            };
            // Its first look found the slot taken; it takes its place and looks again.
            let place = join(&pool);
            let looked = e.try_acquire(1).is_some();
            releaser.join().unwrap();
            let grant = granted(&place);
            assert!(
                looked != grant.is_some(),
                "looked: {looked}, granted: {grant:?}"
            );
            assert_eq!(e.in_flight(), 1);
            drop(grant);
            drop(place);
            if looked {
                e.release(1);
            }
            assert_eq!(e.in_flight(), 0);
        });
    }

    /// A waiter dropped as a slot is granted to it passes the slot on to the next.
    #[test]
    fn a_slot_granted_to_a_dropped_waiter_goes_to_the_next() {
        loom::model(|| {
            let (pool, e) = full_endpoint();
            let first = join(&pool);
            let second = join(&pool);
            let releaser = {
                let e = Arc::clone(&e);
                thread::spawn(move || e.release(1))
            };
            let dropper = thread::spawn(move || drop(first));
            releaser.join().unwrap();
            dropper.join().unwrap();
            let grant = granted(&second).expect("the slot reached the second waiter");
            assert_eq!(e.in_flight(), 1);
            // The second waiter leaves, then its slot goes back: nobody is left to take it.
            drop(second);
            drop(grant);
            assert_eq!(e.in_flight(), 0);
            assert!(!pool.waiters.is_waiting());
        });
    }

    /// A newcomer that finds the freed slot before the waiter ahead of it gets it leaves it to
    /// that waiter.
    #[test]
    fn a_newcomer_leaves_a_freed_slot_to_the_request_waiting_ahead() {
        loom::model(|| {
            let (pool, e) = full_endpoint();
            let waiter = join(&pool);
            let releaser = {
                let e = Arc::clone(&e);
                thread::spawn(move || e.release(1))
            };
            let newcomer = {
                let (pool, e) = (Arc::clone(&pool), Arc::clone(&e));
                thread::spawn(move || {
                    if e.try_acquire(1).is_some() {
                        if pool.waiters.is_waiting() && pool.waiters.wanted_ahead(&e, None) {
                            e.release(1);
                        } else {
                            panic!("the newcomer kept a slot the waiter ahead wanted");
                        }
                    }
                })
            };
            releaser.join().unwrap();
            newcomer.join().unwrap();
            let grant = granted(&waiter).expect("the slot reached the waiter");
            assert_eq!(e.in_flight(), 1);
            drop(grant);
            drop(waiter);
            assert_eq!(e.in_flight(), 0);
        });
    }
}

#[cfg(not(loom))]
mod plain {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::super::*;

    /// The gate in the in-flight word must say "look closer" exactly when health or weight
    /// would refuse a plain pick, whatever the order of writes, and never disturb the count.
    #[test]
    fn the_gate_follows_health_and_weight_and_keeps_the_count() {
        let e = Endpoint::new(EndpointConfig::new("a")).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        assert!(!e.admission.slots.is_gated());
        assert_eq!(e.open_slot(), Some(0));

        assert_eq!(e.try_acquire(1), Some(false));
        e.set_health(Health::Ejected { until: later });
        assert!(e.admission.slots.is_gated());
        assert_eq!(e.open_slot(), None, "an ejected endpoint is not open");
        assert_eq!(e.in_flight(), 1, "the gate is not counted");

        e.set_health(Health::SlowStart { until: later });
        assert!(
            e.admission.slots.is_gated(),
            "a ramping weight needs the closer look"
        );
        e.set_health(Health::CoolingDown { until: later });
        assert!(e.admission.slots.is_gated());
        e.set_health(Health::Healthy);
        assert!(!e.admission.slots.is_gated());
        assert_eq!(e.open_slot(), Some(1));

        e.set_weight(0.0);
        assert!(e.admission.slots.is_gated(), "weight 0 drains");
        e.set_health(Health::Ejected { until: later });
        e.set_health(Health::Healthy);
        assert!(
            e.admission.slots.is_gated(),
            "healthy again, but still weight 0"
        );
        e.set_weight(2.0);
        assert!(!e.admission.slots.is_gated());

        // Releasing under the gate, and removal, keep their meaning.
        e.set_weight(0.0);
        e.release(1);
        assert_eq!(e.in_flight(), 0);
        e.mark_removed();
        assert!(e.is_removed());
        assert_eq!(e.open_slot(), None);
        assert_eq!(e.in_flight(), 0);

        let zero = Endpoint::new(EndpointConfig::new("b").weight(0.0)).unwrap();
        assert!(
            zero.admission.slots.is_gated(),
            "born at weight 0, born gated"
        );
    }

    /// A slow start set by hand ramps from the moment it is set: never held back at the floor
    /// for a moment first, however the times fall within their milliseconds.
    #[tokio::test(start_paused = true)]
    async fn a_slow_start_set_by_hand_is_never_a_hold() {
        let e = Endpoint::new(EndpointConfig::new("a")).unwrap();
        for offset_us in [1, 250, 500, 999, 1_001] {
            tokio::time::advance(Duration::from_micros(offset_us)).await;
            let now = Instant::now();
            let until = now + Duration::from_millis(10_000) + Duration::from_micros(offset_us);
            e.set_health(Health::SlowStart { until });
            let at = crate::clock::LazyNow::at(now);
            assert!(
                e.health_allows(&at, false),
                "held back {offset_us} µs into a millisecond"
            );
            let weight = e.effective_weight(&at);
            assert!(weight <= 0.05 + 1e-9, "starts at the floor: {weight}");
            let halfway = crate::clock::LazyNow::at(now + (until - now) / 2);
            let weight = e.effective_weight(&halfway);
            assert!((weight - 0.5).abs() < 0.01, "half way: {weight}");
        }
    }

    /// Two writers racing health against weight leave the gate true to the final state.
    #[test]
    fn racing_writers_leave_the_gate_true_to_the_last_state() {
        let e = Endpoint::new(EndpointConfig::new("a")).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        for round in 0..200 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 0..50 {
                        let h = if i % 2 == 0 {
                            Health::Ejected { until: later }
                        } else {
                            Health::Healthy
                        };
                        e.set_health(h);
                    }
                });
                s.spawn(|| {
                    for i in 0..50 {
                        e.set_weight(if (i + round) % 3 == 0 { 0.0 } else { 1.0 });
                    }
                });
            });
            let open = e.health() == Health::Healthy && e.weight() > 0.0;
            assert_eq!(e.admission.slots.is_gated(), !open, "round {round}");
        }
    }

    /// The pool's ejected count follows each endpoint in and out of ejection, refuses a
    /// second ejection past the bound, and forgets an endpoint that leaves.
    #[test]
    fn the_ejected_count_follows_health_and_removal() {
        let pool = Arc::new(PoolState::default());
        let e: Vec<_> = (0..4)
            .map(|i| Endpoint::in_pool(EndpointConfig::new(format!("e{i}")), &pool).unwrap())
            .collect();
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(pool.members(), 4);
        assert!(e[0].eject(later, 1, 0.5));
        assert!(e[0].eject(later, 1, 0.5), "a re-ejection is always allowed");
        assert!(e[1].eject(later, 1, 0.5));
        assert_eq!(pool.ejected(), 2);
        assert!(!e[2].eject(later, 1, 0.5), "a third of four is past half");
        assert_eq!(e[2].health(), Health::Healthy);
        e[0].set_health(Health::Healthy);
        assert_eq!(pool.ejected(), 1);
        e[2].set_health(Health::Ejected { until: later });
        assert_eq!(pool.ejected(), 2, "a health set by hand counts too");
        e[2].mark_removed();
        assert_eq!((pool.members(), pool.ejected()), (3, 1));
        e[2].set_health(Health::Ejected { until: later });
        assert_eq!(pool.ejected(), 1, "a removed endpoint is not counted");
        drop(e);
        assert_eq!((pool.members(), pool.ejected()), (0, 0));
    }
}
