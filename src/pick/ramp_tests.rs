//! Tests that every strategy respects the slow-start ramp: an endpoint early in its ramp gets
//! about that share of what it would get at full weight, never the whole of it.

use std::{sync::Arc, time::Duration};

use rand::RngCore;
use tokio::time::Instant;

use super::*;
use crate::{hints::Affinity, rng::FastRng, EndpointConfig, Health};

/// How a request is placed: by a strategy, or by affinity (a fresh key each request, or a
/// remembered endpoint: the one that slow-starts).
#[derive(Debug, Clone, Copy)]
enum Way {
    Strategy(Strategy),
    Affinity,
    Remembered,
}

/// Every strategy (a new one fails to compile here until it is added) and both affinities.
fn every_way() -> Vec<Way> {
    let strategies = [
        Strategy::PowerOfTwoChoices,
        Strategy::LeastLoaded,
        Strategy::PeakEwma,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
        Strategy::LeastWork,
        Strategy::LeastWorkScan,
        Strategy::CostAware { max_load: 0.8 },
    ];
    for s in strategies {
        match s {
            Strategy::PowerOfTwoChoices
            | Strategy::LeastLoaded
            | Strategy::PeakEwma
            | Strategy::RoundRobin
            | Strategy::Random
            | Strategy::Weighted
            | Strategy::LeastWork
            | Strategy::LeastWorkScan
            | Strategy::CostAware { .. } => {}
        }
    }
    let mut ways: Vec<Way> = strategies.into_iter().map(Way::Strategy).collect();
    ways.extend([Way::Affinity, Way::Remembered]);
    ways
}

/// The share of `picks` requests that endpoint 0 (the cheapest of four of equal weight) takes,
/// each request ending before the next or all of them held; with `ramping`, endpoint 0 is at
/// 5% of its slow start.
fn share(way: Way, held: bool, ramping: bool) -> f64 {
    let endpoints: Vec<Arc<Endpoint>> = (0..4)
        .map(|i| {
            let price = if i == 0 { 0.1 } else { 1.0 };
            Endpoint::new(EndpointConfig::new(format!("e{i}")).price(price, price)).unwrap()
        })
        .collect();
    let t0 = Instant::now();
    if ramping {
        endpoints[0].set_health(Health::SlowStart {
            until: t0 + Duration::from_secs(100),
        });
    }
    // Five seconds into a ramp of a hundred.
    let filter = Filter::new().at(t0 + Duration::from_secs(5));
    if ramping {
        let ramp = filter.weight(&endpoints[0]) / endpoints[0].weight();
        assert!((0.049..0.06).contains(&ramp), "{ramp}");
    }
    let picker = match way {
        Way::Strategy(s) => Picker::new(s),
        _ => Picker::default(),
    };
    let mut rng = FastRng::seeded(21);
    let picks = if held { 400 } else { 4_000 };
    let mut first = 0;
    for _ in 0..picks {
        let i = match way {
            Way::Strategy(_) => picker.pick(&endpoints, &filter, &mut rng),
            Way::Affinity => affine(&endpoints, &filter, &Affinity::hashed(rng.next_u64())),
            Way::Remembered => {
                let mut affinity = Affinity::hashed(rng.next_u64());
                affinity.prefer = Some(endpoints[0].id());
                affine(&endpoints, &filter, &affinity)
            }
        }
        .expect("every endpoint can serve");
        first += usize::from(i == 0);
        if held {
            assert!(endpoints[i].try_acquire(1).is_some());
        }
    }
    first as f64 / picks as f64
}

#[test]
fn every_strategy_gives_an_endpoint_early_in_its_ramp_about_its_ramps_share() {
    // Every way is measured before any is judged, so a failure names them all.
    let mut table = String::new();
    let mut over = Vec::new();
    for way in every_way() {
        for held in [false, true] {
            let full = share(way, held, false);
            let ramping = share(way, held, true);
            let line = format!(
                "{way:?}, {}: {:.1}% of the requests at 5% of its ramp, {:.1}% at full weight",
                if held { "all held" } else { "one at a time" },
                ramping * 100.0,
                full * 100.0
            );
            // At 5% of its ramp it gets at most twice 5% of its share at full weight (and a
            // point for sampling noise); the rest goes to the endpoints at full weight.
            if ramping > 2.0 * 0.05 * full + 0.01 {
                over.push(line.clone());
            }
            table.push_str(&line);
            table.push('\n');
        }
    }
    eprintln!("{table}");
    assert!(
        over.is_empty(),
        "over their ramp's share:\n{}",
        over.join("\n")
    );
}

#[test]
fn cost_aware_scales_a_concurrency_limit_by_the_ramp() {
    // The cheapest endpoint, back at 5% of its ramp: without the ramp it would take 51 requests
    // (0.8 of 64) before the others see one.
    let endpoints: Vec<Arc<Endpoint>> = (0..4)
        .map(|i| {
            let price = if i == 0 { 0.1 } else { 1.0 };
            let config = EndpointConfig::new(format!("e{i}"))
                .price(price, price)
                .max_concurrency(64);
            Endpoint::new(config).unwrap()
        })
        .collect();
    let t0 = Instant::now();
    endpoints[0].set_health(Health::SlowStart {
        until: t0 + Duration::from_secs(100),
    });
    let filter = Filter::new().at(t0 + Duration::from_secs(5));
    let picker = Picker::new(Strategy::CostAware { max_load: 0.8 });
    let mut rng = FastRng::seeded(5);
    for _ in 0..150 {
        let i = picker.pick(&endpoints, &filter, &mut rng).unwrap();
        assert!(endpoints[i].try_acquire(1).is_some());
    }
    // 5% of 64 slots is 3.2, of which 0.8 is 2.56: it has room for three.
    assert!(
        endpoints[0].in_flight() <= 3,
        "{} in flight at 5% of its ramp",
        endpoints[0].in_flight()
    );
    assert_eq!(
        endpoints.iter().map(|e| e.in_flight()).sum::<usize>(),
        150,
        "the others take the rest"
    );
}
