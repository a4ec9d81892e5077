//! The policy's choices, through its public surface only.

use std::{sync::Arc, time::Duration};

use rand::{rngs::SmallRng, SeedableRng};
use tokio::time::Instant;
use tower_ai_balance::{
    engines::{from_prometheus, LoadReport},
    hints::Exclude,
    load::LoadGuard,
    pick::Filter,
    prefix::{Choice, EngineLoad, PrefixIndex, PrefixPolicy},
    Endpoint, EndpointConfig, Health,
};

use crate::{endpoints, fresh, policy, prompt};

fn key(endpoints: &[Arc<Endpoint>], c: &Choice) -> String {
    endpoints[c.index].key().to_string()
}

/// A filter that leaves only endpoint `keep`.
fn only(endpoints: &[Arc<Endpoint>], keep: usize) -> Exclude {
    let mut x = Exclude::new();
    for (i, e) in endpoints.iter().enumerate() {
        if i != keep {
            x.insert(e);
        }
    }
    x
}

#[test]
fn a_continuation_goes_where_its_prefix_is() {
    let (eps, p, mut rng) = (endpoints(8), policy(), SmallRng::seed_from_u64(1));
    let first = prompt(1, 10);
    let c = p
        .pick(&eps, &Filter::new(), &first, 5_000, &mut rng)
        .unwrap();
    assert_eq!(c.cached_blocks, 0);
    p.placed(&eps[c.index], &first, &c)
        .first_token(Instant::now());
    let next = [first.clone(), vec![77, 78]].concat();
    let d = p
        .pick(&eps, &Filter::new(), &next, 6_000, &mut rng)
        .unwrap();
    assert_eq!((d.index, d.cached_blocks), (c.index, 10));
    assert_eq!(d.new_tokens, 6_000 - 10 * 512);
    // A prompt that shares only the first block is not drawn there by it.
    let other = prompt(2, 10);
    let e = p
        .pick(&eps, &Filter::new(), &other, 5_000, &mut rng)
        .unwrap();
    assert!(e.cached_blocks <= 1);
}

#[test]
fn independent_replicas_agree_where_a_new_prefix_goes() {
    let (a, b) = (endpoints(8), endpoints(8));
    let (pa, pb) = (policy(), policy());
    // Every endpoint holds the shared first block in both replicas' eyes.
    for (ea, eb) in a.iter().zip(&b) {
        pa.index().stored(ea, &[0]);
        pb.index().stored(eb, &[0]);
    }
    let mut counts = [0usize; 8];
    for id in 1..=400 {
        let p = prompt(id, 12);
        let ca = pa
            .pick(
                &a,
                &Filter::new(),
                &p,
                6_000,
                &mut SmallRng::seed_from_u64(id),
            )
            .unwrap();
        let cb = pb
            .pick(
                &b,
                &Filter::new(),
                &p,
                6_000,
                &mut SmallRng::seed_from_u64(!id),
            )
            .unwrap();
        assert_eq!(key(&a, &ca), key(&b, &cb), "prompt {id}");
        counts[ca.index] += 1;
    }
    // Rendezvous hashing spreads new prefixes: every endpoint gets some, none twice its share.
    assert!(
        counts.iter().all(|&c| (10..=100).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn the_shared_first_block_does_not_pile_everything_on_one_endpoint() {
    // Every prompt begins with block 0: whoever served the first burst holds it. Placements
    // without a first token yet build a backlog that the others outweigh.
    let (eps, p, mut rng) = (endpoints(8), policy(), SmallRng::seed_from_u64(3));
    let mut counts = [0usize; 8];
    let mut held = Vec::new();
    for id in 1..=64 {
        let blocks = prompt(id, 10);
        let c = p
            .pick(&eps, &Filter::new(), &blocks, 5_000, &mut rng)
            .unwrap();
        counts[c.index] += 1;
        held.push(p.placed(&eps[c.index], &blocks, &c));
    }
    assert!(counts.iter().all(|&c| (4..=14).contains(&c)), "{counts:?}");
    // Once they have all answered, nothing is queued anywhere.
    for mut h in held {
        h.first_token(Instant::now());
    }
    for i in 0..8 {
        let x = only(&eps, i);
        let c = p
            .pick(
                &eps,
                &Filter::new().exclude(&x),
                &prompt(999, 4),
                2_000,
                &mut rng,
            )
            .unwrap();
        assert_eq!(c.index, i);
        assert!(
            (c.expected - (2_000.0 - 512.0) / 40_000.0).abs() < 1e-9,
            "{c:?}"
        );
    }
}

#[test]
fn a_hot_prefix_spreads_in_the_same_order_for_every_replica() {
    // Requests that share 39 blocks and add 20 of their own, none answering yet: the holder's
    // queue grows until computing the prefix again elsewhere is cheaper, then the next
    // endpoints take it, in an order every replica computes alike.
    let run = || {
        let (eps, p, mut rng) = (endpoints(8), policy(), SmallRng::seed_from_u64(9));
        let hot: Vec<u64> = (0..39).map(|i| 500 + i).collect();
        let mut held = Vec::new();
        let mut order = Vec::new();
        for id in 0..120u64 {
            let blocks = [
                hot.clone(),
                (0..20).map(|i| 10_000 * (id + 1) + i).collect(),
            ]
            .concat();
            let c = p
                .pick(&eps, &Filter::new(), &blocks, 59 * 512, &mut rng)
                .unwrap();
            order.push(key(&eps, &c));
            held.push(p.placed(&eps[c.index], &blocks, &c));
        }
        order
    };
    let order = run();
    assert_eq!(order, run());
    // The first holder keeps it for a while: a cached prefix is worth a queue.
    assert!(order[1..20].iter().all(|k| *k == order[0]), "{order:?}");
    let mut used: Vec<&String> = order.iter().collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 3, "{used:?}");
}

#[test]
fn the_engines_kv_events_steer_it() {
    let (eps, p, mut rng) = (endpoints(4), policy(), SmallRng::seed_from_u64(5));
    let blocks = prompt(7, 30);
    p.index().stored(&eps[3], &blocks);
    let c = p
        .pick(&eps, &Filter::new(), &blocks, 30 * 512, &mut rng)
        .unwrap();
    assert_eq!((c.index, c.cached_blocks), (3, 30));
    p.index().removed(&eps[3], &blocks[1..]);
    let c = p
        .pick(
            &eps,
            &Filter::new().exclude(&only(&eps, 3)),
            &blocks,
            30 * 512,
            &mut rng,
        )
        .unwrap();
    assert_eq!(c.cached_blocks, 1);
}

#[test]
fn only_eligible_endpoints_are_taken() {
    let (eps, p, mut rng) = (endpoints(4), policy(), SmallRng::seed_from_u64(6));
    let blocks = prompt(1, 8);
    p.index().stored(&eps[0], &blocks);
    let mut x = Exclude::new();
    x.insert(&eps[0]);
    eps[1].set_health(Health::Ejected {
        until: Instant::now() + Duration::from_secs(60),
    });
    for _ in 0..50 {
        let c = p
            .pick(&eps, &Filter::new().exclude(&x), &blocks, 4_000, &mut rng)
            .unwrap();
        assert!(c.index >= 2, "{c:?}");
    }
    x.insert(&eps[2]);
    x.insert(&eps[3]);
    assert!(p
        .pick(&eps, &Filter::new().exclude(&x), &blocks, 4_000, &mut rng)
        .is_none());
    let none: [Arc<Endpoint>; 0] = [];
    assert!(p
        .pick(&none, &Filter::new(), &blocks, 4_000, &mut rng)
        .is_none());
    // A prompt too short for a full block still goes somewhere.
    assert!(p.pick(&eps, &Filter::new(), &[], 0, &mut rng).is_some());
}

#[test]
fn a_placement_counts_until_its_first_token_or_its_drop() {
    let (eps, p, mut rng) = (endpoints(2), policy(), SmallRng::seed_from_u64(8));
    let just_e0 = only(&eps, 0);
    let expected = |p: &PrefixPolicy, rng: &mut SmallRng| {
        p.pick(
            &eps,
            &Filter::new().exclude(&just_e0),
            &fresh(5, 4),
            2_048,
            rng,
        )
        .unwrap()
        .expected
    };
    let alone = 2_048.0 / 40_000.0;
    assert!((expected(&p, &mut rng) - alone).abs() < 1e-9);
    let big = Choice {
        index: 0,
        cached_blocks: 0,
        new_tokens: 400_000,
        expected: 0.0,
    };
    let mut placement = p.placed(&eps[0], &fresh(1, 8), &big);
    assert!((expected(&p, &mut rng) - (10.0 + alone)).abs() < 1e-9);
    // Elsewhere is now better.
    let c = p
        .pick(&eps, &Filter::new(), &fresh(6, 4), 2_048, &mut rng)
        .unwrap();
    assert_eq!(c.index, 1);
    placement.first_token(Instant::now());
    assert!((expected(&p, &mut rng) - alone).abs() < 1e-9);
    drop(placement);
    assert!((expected(&p, &mut rng) - alone).abs() < 1e-9);
    // A request cancelled before its first token leaves nothing behind either.
    drop(p.placed(&eps[0], &fresh(2, 8), &big));
    assert!((expected(&p, &mut rng) - alone).abs() < 1e-9);
}

#[test]
fn other_routers_work_is_read_from_fresh_reports_only() {
    let (eps, mut rng) = (endpoints(2), SmallRng::seed_from_u64(10));
    let p = policy().report_age(Duration::from_secs(1));
    let t0 = Instant::now();
    // One placement of 8,192 new tokens sets the average size of a request.
    let sized = Choice {
        index: 0,
        cached_blocks: 0,
        new_tokens: 8_192,
        expected: 0.0,
    };
    p.placed(&eps[1], &fresh(1, 16), &sized).first_token(t0);
    p.report(
        &eps[0],
        EngineLoad {
            waiting: 5,
            running: 16,
            ..EngineLoad::default()
        },
        t0,
    );
    let x = only(&eps, 0);
    let at = |secs: f64| {
        Filter::new()
            .exclude(&x)
            .at(t0 + Duration::from_secs_f64(secs))
    };
    let c = p
        .pick(&eps, &at(0.5), &fresh(3, 4), 2_048, &mut rng)
        .unwrap();
    assert!(
        (c.expected - (5.0 * 8_192.0 + 2_048.0) / 40_000.0).abs() < 1e-9,
        "{c:?}"
    );
    let c = p
        .pick(
            &eps,
            &Filter::new().at(t0 + Duration::from_millis(500)),
            &fresh(3, 4),
            2_048,
            &mut rng,
        )
        .unwrap();
    assert_eq!(c.index, 1, "the reported queue steers away");
    let stale = p
        .pick(&eps, &at(2.0), &fresh(3, 4), 2_048, &mut rng)
        .unwrap();
    assert!(
        (stale.expected - 2_048.0 / 40_000.0).abs() < 1e-9,
        "{stale:?}"
    );
    // This router's own requests are in the report already: not counted twice.
    let mut mine = Vec::new();
    for i in 0..3 {
        mine.push(p.placed(&eps[0], &fresh(10 + i, 4), &sized));
    }
    p.report(
        &eps[0],
        EngineLoad {
            waiting: 3,
            running: 1,
            ..EngineLoad::default()
        },
        t0,
    );
    let c = p
        .pick(&eps, &at(0.1), &fresh(3, 4), 2_048, &mut rng)
        .unwrap();
    assert!(
        (c.expected - (3.0 * 8_192.0 + 2_048.0) / 40_000.0).abs() < 1e-9,
        "{c:?}"
    );
}

#[test]
fn another_routers_prefill_under_way_counts_less_what_it_has_computed_since() {
    let (eps, mut rng) = (endpoints(2), SmallRng::seed_from_u64(12));
    let p = policy().report_age(Duration::from_secs(5));
    let t0 = Instant::now();
    // e0 reports 20,000 prompt tokens scheduled and not computed: half a second's prefill.
    p.report(
        &eps[0],
        EngineLoad {
            waiting: 0,
            running: 1,
            prefilling: 20_000,
        },
        t0,
    );
    let x = only(&eps, 0);
    let on_e0 = |secs: f64, rng: &mut SmallRng| {
        let filter = Filter::new()
            .exclude(&x)
            .at(t0 + Duration::from_secs_f64(secs));
        p.pick(&eps, &filter, &fresh(3, 4), 2_048, rng).unwrap()
    };
    let own = 2_048.0 / 40_000.0;
    let c = on_e0(0.0, &mut rng);
    assert!((c.expected - (0.5 + own)).abs() < 1e-9, "{c:?}");
    let c = on_e0(0.2, &mut rng);
    assert!((c.expected - (0.3 + own)).abs() < 1e-6, "{c:?}");
    let c = on_e0(0.7, &mut rng);
    assert!((c.expected - own).abs() < 1e-9, "{c:?}");
    // Without the filter the idle engine wins while the prefill lasts.
    let c = p
        .pick(
            &eps,
            &Filter::new().at(t0 + Duration::from_millis(100)),
            &fresh(3, 4),
            2_048,
            &mut rng,
        )
        .unwrap();
    assert_eq!(c.index, 1);

    // The prefill under way may be this router's own, which it counts already.
    let mine = p.placed(
        &eps[1],
        &fresh(4, 4),
        &Choice {
            index: 1,
            cached_blocks: 0,
            new_tokens: 20_000,
            expected: 0.0,
        },
    );
    p.report(
        &eps[1],
        EngineLoad {
            waiting: 0,
            running: 1,
            prefilling: 20_000,
        },
        t0,
    );
    let x = only(&eps, 1);
    let c = p
        .pick(
            &eps,
            &Filter::new().exclude(&x).at(t0),
            &fresh(3, 4),
            2_048,
            &mut rng,
        )
        .unwrap();
    assert!((c.expected - (0.5 + own)).abs() < 1e-9, "{c:?}");
    drop(mine);
}

#[test]
fn an_endpoints_own_load_report_counts_without_a_call() {
    let (eps, mut rng) = (endpoints(2), SmallRng::seed_from_u64(13));
    let p = policy().report_age(Duration::from_secs(5));
    let q = policy().report_age(Duration::from_secs(5));
    let t0 = Instant::now();
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    // A vLLM scrape of e0: one request running, 20,000 prompt tokens scheduled and not cached,
    // none computed yet (half a second's prefill), none of them this router's.
    let metrics = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\n\
        vllm:prefix_cache_queries_total 26000\nvllm:prefix_cache_hits_total 6000\n\
        vllm:prompt_tokens_by_source_total{source=\"local_compute\"} 0\n";
    let report = from_prometheus(metrics.as_bytes(), t0).unwrap();
    assert_eq!(report.prefilling, Some(20_000));
    eps[0].report(&report.local_in_flight(0));

    let x = only(&eps, 0);
    let mut on_e0 = |secs: f64| {
        let filter = Filter::new().exclude(&x).at(at(secs));
        p.pick(&eps, &filter, &fresh(3, 4), 2_048, &mut rng)
            .unwrap()
            .expected
    };
    let own = 2_048.0 / 40_000.0;
    let near = |a: f64, b: f64| (a - b).abs() < 1e-6;
    // Read before this router placed anything there, and again once it has a record.
    assert!(near(on_e0(0.0), 0.5 + own));
    assert!(near(on_e0(0.2), 0.3 + own));
    let c = p
        .pick(
            &eps,
            &Filter::new().at(at(0.1)),
            &fresh(3, 4),
            2_048,
            &mut rng,
        )
        .unwrap();
    assert_eq!(c.index, 1, "the idle engine wins while the prefill lasts");
    drop(p.placed(&eps[0], &fresh(5, 1), &Choice { index: 0, ..c }));
    let mut on_e0 = |secs: f64| {
        let filter = Filter::new().exclude(&x).at(at(secs));
        p.pick(&eps, &filter, &fresh(3, 4), 2_048, &mut rng)
            .unwrap()
            .expected
    };
    assert!(near(on_e0(0.2), 0.3 + own));

    // The policy given the same figures directly expects the same.
    let others = endpoints(2);
    let y = only(&others, 0);
    let load = EngineLoad {
        waiting: 0,
        running: 1,
        prefilling: 20_000,
    };
    q.report(&others[0], load, t0);
    let filter = Filter::new().exclude(&y).at(at(0.2));
    let direct = q
        .pick(
            &others,
            &filter,
            &fresh(3, 4),
            2_048,
            &mut SmallRng::seed_from_u64(1),
        )
        .unwrap();
    assert!(near(direct.expected, 0.3 + own));

    // A newer report replaces it; a report given directly counts while it is the newer one.
    eps[0].report(&LoadReport::new(at(0.3)).waiting(0).running(0).prefilling(0));
    assert!(near(on_e0(0.3), own));
    p.report(
        &eps[0],
        EngineLoad {
            prefilling: 40_000,
            ..load
        },
        at(0.4),
    );
    assert!(near(on_e0(0.4), 1.0 + own));
    eps[0].report(&LoadReport::new(at(0.5)).running(1).prefilling(4_000));
    assert!(near(on_e0(0.5), 0.1 + own));
    // A stale one counts no more; a report that gives no queue does not replace one that does.
    assert!(near(on_e0(5.6), own));
    eps[0].report(&LoadReport::new(at(6.0)).running(1).prefilling(8_000));
    assert!(near(on_e0(6.0), 0.2 + own));
    eps[0].report(&LoadReport::new(at(6.1)).kv_usage(0.5));
    assert!(near(on_e0(6.1), 0.1 + own));
}

#[test]
fn a_full_engine_waits_for_a_slot() {
    let (eps, mut rng) = (endpoints(2), SmallRng::seed_from_u64(11));
    let p = policy().slots(2).unwrap();
    let t0 = Instant::now();
    // One request that held its slot for 5 s after its first token.
    let c = p
        .pick(&eps, &Filter::new(), &fresh(1, 4), 2_048, &mut rng)
        .unwrap();
    let mut done = p.placed(&eps[c.index], &fresh(1, 4), &c);
    done.first_token(t0);
    done.finished(t0 + Duration::from_secs(5));
    // Three requests in flight on e0: two over its limit, counting this one.
    let guards: Vec<_> = (0..3)
        .map(|_| LoadGuard::acquire(&eps[0], 1).unwrap())
        .collect();
    let c = p
        .pick(&eps, &Filter::new(), &fresh(2, 4), 2_048, &mut rng)
        .unwrap();
    assert_eq!(c.index, 1);
    let x = only(&eps, 0);
    let c = p
        .pick(
            &eps,
            &Filter::new().exclude(&x),
            &fresh(2, 4),
            2_048,
            &mut rng,
        )
        .unwrap();
    assert!(
        (c.expected - (2.0 * 5.0 / 2.0 + 2_048.0 / 40_000.0)).abs() < 1e-9,
        "{c:?}"
    );
    drop(guards);
}

#[test]
fn a_heavier_endpoint_prefills_faster() {
    let eps = vec![
        Endpoint::new(EndpointConfig::new("small")).unwrap(),
        Endpoint::new(EndpointConfig::new("large").weight(2.0)).unwrap(),
    ];
    let (p, mut rng) = (policy(), SmallRng::seed_from_u64(12));
    for id in 0..50 {
        let c = p
            .pick(&eps, &Filter::new(), &prompt(id, 20), 10_000, &mut rng)
            .unwrap();
        assert_eq!(c.index, 1);
        assert!((c.expected - 10_000.0 / 80_000.0).abs() < 1e-9);
    }
}

#[test]
fn settings_out_of_range_are_refused() {
    let index = || Arc::new(PrefixIndex::new(10));
    assert!(PrefixPolicy::new(index(), 0).is_err());
    let p = || PrefixPolicy::new(index(), 16).unwrap();
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(p().prefill_rate(rate).is_err());
    }
    assert!(p().slots(0).is_err());
    assert!(p().replicas(0).is_err());
    for bad in [-0.1, f64::NAN] {
        assert!(p().work_weight(bad).is_err());
        assert!(p().spread(bad).is_err());
    }
    assert!(p()
        .replicas(4)
        .and_then(|p| p.spread(0.0))
        .and_then(|p| p.work_weight(0.0))
        .is_ok());
}

#[test]
fn many_threads_pick_and_place_and_leave_nothing_queued() {
    let eps = endpoints(8);
    let p = PrefixPolicy::new(Arc::new(PrefixIndex::new(256)), 512)
        .and_then(|p| p.prefill_rate(40_000.0))
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (eps, p) = (&eps, &p);
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(t);
                let mut held = Vec::new();
                for i in 0..2_000u64 {
                    let blocks = prompt(t * 100 + i % 97, 2 + (i % 40) as usize);
                    let c = p
                        .pick(
                            eps,
                            &Filter::new(),
                            &blocks,
                            512 * blocks.len() as u64,
                            &mut rng,
                        )
                        .unwrap();
                    held.push(p.placed(&eps[c.index], &blocks, &c));
                    if i % 3 == 0 {
                        held.pop();
                    }
                    if held.len() > 16 {
                        held.remove(0).first_token(Instant::now());
                    }
                }
            });
        }
    });
    let mut rng = SmallRng::seed_from_u64(99);
    for i in 0..8 {
        assert!(p.index().len(&eps[i]) <= 256);
        let c = p
            .pick(
                &eps,
                &Filter::new().exclude(&only(&eps, i)),
                &fresh(12_345, 4),
                2_048,
                &mut rng,
            )
            .unwrap();
        assert!(
            (c.expected - 2_048.0 / 40_000.0).abs() < 1e-9,
            "endpoint {i}: {c:?}"
        );
    }
}
