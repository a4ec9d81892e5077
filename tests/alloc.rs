//! A pick allocates nothing: counted with a global allocator that counts this thread's
//! allocations.

use tower_ai_balance::{
    hints::{Exclude, WithHints},
    load::LoadGuard,
    pick::{Filter, Picker, Strategy},
    Balance, EndpointConfig, Health, Pool,
};

#[path = "support/counting.rs"]
mod counting;
use counting::allocations_during;

/// A service that costs nothing to clone.
#[derive(Clone, Copy)]
struct Unit;

fn pool(n: usize) -> Pool<Unit> {
    let pool = Pool::new();
    for i in 0..n {
        pool.insert(
            EndpointConfig::new(format!("e{i}")).max_concurrency(1 << 20),
            Unit,
        )
        .unwrap();
    }
    pool
}

#[test]
fn a_pick_with_filters_allocates_nothing() {
    let pool = pool(1000);
    let endpoints = pool.endpoints();
    let mut exclude = Exclude::new();
    exclude.insert(&endpoints[3]);
    exclude.insert(&endpoints[500]);
    endpoints[7].set_health(Health::Ejected {
        until: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
    });
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
    // Warm up the clock.
    Picker::new(Strategy::PowerOfTwoChoices).pick(&endpoints, &Filter::new(), &mut rng);

    for strategy in [
        Strategy::PowerOfTwoChoices,
        Strategy::LeastLoaded,
        Strategy::PeakEwma,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
    ] {
        let picker = Picker::new(strategy);
        let n = allocations_during(|| {
            for _ in 0..10_000 {
                let filter = Filter::new().exclude(&exclude);
                let i = picker.pick(&endpoints, &filter, &mut rng).unwrap();
                assert!(!exclude.contains(&endpoints[i]));
            }
        });
        assert_eq!(n, 0, "{strategy:?} allocated {n} times in 10,000 picks");
    }

    // What the pick bench times: the pick with its slot taken and given back, by a borrowed
    // guard and by the owned one that Balance ties to the response.
    let t0 = tokio::time::Instant::now();
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            let filter = Filter::new().exclude(&exclude);
            let i = tower_ai_balance::pick::p2c(&endpoints, &filter, &mut rng).unwrap();
            let endpoint = &endpoints[i];
            drop(LoadGuard::acquire_at(&&**endpoint, 1, t0).unwrap());
            drop(LoadGuard::acquire_at(endpoint, 1, t0).unwrap());
        }
    });
    assert_eq!(n, 0, "a pick with its slot allocated {n} times in 10,000");
    assert!(endpoints.iter().all(|e| e.in_flight() == 0));
}

#[test]
fn balance_pick_with_hints_allocates_nothing() {
    // The whole hot path of `Balance`: snapshot load, hint lookup, filter, choice, slot, guard.
    let pool = pool(1000);
    let balance = Balance::new(pool.clone());
    let mut request = WithHints::new(());
    let mut exclude = Exclude::new();
    exclude.insert(&pool.endpoints()[1]);
    request.extensions.insert(exclude);
    drop(balance.pick(&request).unwrap());
    let n = allocations_during(|| {
        for _ in 0..10_000 {
            let (_service, guard) = balance.pick(&request).unwrap();
            drop(guard);
        }
    });
    assert_eq!(n, 0, "Balance::pick allocated {n} times in 10,000 picks");
    assert_eq!(
        pool.endpoints()
            .iter()
            .map(|e| e.in_flight())
            .sum::<usize>(),
        0
    );
}

#[test]
fn a_completion_with_its_histograms_and_counters_allocates_nothing() {
    // What every request writes when it ends: the estimates, the outcome counters, a bucket
    // and a sum in each histogram; and a cancellation's counter.
    let pool = pool(4);
    let endpoints = pool.endpoints();
    let t0 = tokio::time::Instant::now();
    let n = allocations_during(|| {
        for i in 0..10_000u64 {
            let endpoint = &endpoints[i as usize % 4];
            let mut guard = LoadGuard::acquire_at(endpoint, 1, t0).unwrap();
            guard.first_byte_at(t0 + std::time::Duration::from_millis(i % 300));
            if i % 7 == 0 {
                guard.fail();
            }
            guard.complete_at(t0 + std::time::Duration::from_millis(i % 3000));
            drop(LoadGuard::acquire_at(endpoint, 1, t0).unwrap());
        }
    });
    assert_eq!(n, 0, "10,000 completions allocated {n} times");
    let finished: u64 = endpoints
        .iter()
        .map(|e| e.duration_histogram().count())
        .sum();
    let cancelled: u64 = endpoints.iter().map(|e| e.cancelled()).sum();
    assert_eq!((finished, cancelled), (10_000, 10_000));
}
