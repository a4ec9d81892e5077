//! The snapshot swap under parallel picks (arc-swap is invisible to loom, so this is a stress
//! test on real threads): endpoints are removed and re-added while threads pick from the pool.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use tower_ai_balance::{hints::WithHints, Balance, Endpoint, EndpointConfig, Pool};

#[test]
fn parallel_picks_never_take_an_endpoint_removed_before_they_began() {
    let pool: Pool<()> = Pool::new();
    for i in 0..4 {
        pool.insert(EndpointConfig::new(format!("e{i}")).max_concurrency(3), ())
            .unwrap();
    }
    // Every endpoint removed so far, in order; `done` counts those whose removal returned.
    let removed = Arc::new(parking_lot::Mutex::new(Vec::<Arc<Endpoint>>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let picks = Arc::new(AtomicUsize::new(0));

    let pickers: Vec<_> = (0..3)
        .map(|t| {
            let (pool, removed, done, stop, picks) = (
                pool.clone(),
                Arc::clone(&removed),
                Arc::clone(&done),
                Arc::clone(&stop),
                Arc::clone(&picks),
            );
            std::thread::spawn(move || {
                let balance = Balance::new(pool);
                let request = WithHints::new(());
                let mut held = Vec::new();
                let mut n = 0u64;
                while !stop.load(SeqCst) {
                    let before = done.load(SeqCst);
                    if let Ok(((), guard)) = balance.pick(&request) {
                        let e = Arc::clone(guard.endpoint());
                        let gone = removed.lock()[..before].iter().any(|r| Arc::ptr_eq(r, &e));
                        assert!(!gone, "picked {} after its removal returned", e.key());
                        picks.fetch_add(1, SeqCst);
                        held.push(guard);
                    }
                    n += 1;
                    // Hold a few requests across swaps, releasing them out of order.
                    if held.len() > 2 || n % 7 == t {
                        let i = (n as usize) % held.len().max(1);
                        if i < held.len() {
                            drop(held.swap_remove(i));
                        }
                    }
                }
            })
        })
        .collect();

    // At least 200 swaps and 10,000 picks, however slow the machine: the loop counts work
    // done, and the time only lets a fast machine do more of it.
    let mut generation = 0;
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline || picks.load(SeqCst) < 10_000 || generation < 200 {
        let key = format!("e{}", generation % 4);
        if let Some(e) = pool.remove(&key) {
            removed.lock().push(e);
            done.fetch_add(1, SeqCst);
        }
        pool.insert(EndpointConfig::new(key).max_concurrency(3), ())
            .unwrap();
        generation += 1;
        std::thread::yield_now();
    }
    stop.store(true, SeqCst);
    for p in pickers {
        p.join().expect("a picker failed");
    }

    let removed = removed.lock();
    for e in removed.iter().chain(pool.endpoints().iter()) {
        assert_eq!(e.in_flight(), 0, "{} leaked a slot", e.key());
    }
    // Every removed endpoint announced its drain.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for e in removed.iter() {
            tokio::time::timeout(Duration::from_secs(1), e.drained())
                .await
                .expect("drain announced");
        }
    });
}
