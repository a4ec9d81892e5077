//! Property tests: random sequences of picks, completions, failures, cancellations, endpoint
//! inserts and removals, weight changes and health changes, checked after every step.
//!
//! Invariants:
//! - every endpoint's in-flight count equals the number of live guards on it (never negative,
//!   never leaked), and is back to 0 when the guards are gone;
//! - a removed endpoint, an endpoint of weight 0 and an excluded endpoint are never picked; an
//!   ejected one only in panic mode, when no healthy endpoint has room;
//! - no endpoint ever holds more than its maximum concurrency;
//! - a pick fails only when no endpoint could take the request, and then with a typed error;
//! - a removed endpoint announces its drain once its last guard is gone;
//! - in the limit, picks follow the weights.

mod openai;
#[path = "../support/openai_reference.rs"]
mod reference;

use std::{sync::Arc, time::Duration};

use proptest::prelude::*;
use tokio::time::Instant;
use tower::Layer;
use tower_ai_balance::{
    error::{NoEndpoints, Overloaded},
    hints::{Cost, Exclude, WithHints},
    load::LoadGuard,
    pick::Strategy as Pick,
    BalanceLayer, Endpoint, EndpointConfig, Health, Pool,
};

const KEYS: u8 = 6;

#[derive(Clone, Copy, Debug)]
struct Unit;

#[derive(Clone, Debug)]
enum Op {
    Pick {
        exclude: Option<u8>,
        cost: u8,
    },
    Complete(usize),
    Fail(usize),
    Cancel(usize),
    Insert {
        key: u8,
        weight: u8,
        max: Option<u8>,
    },
    Remove(u8),
    SetWeight(u8, u8),
    Eject(u8),
    Heal(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (proptest::option::of(0..KEYS), 1u8..4).prop_map(|(exclude, cost)| Op::Pick { exclude, cost }),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Fail),
        2 => any::<usize>().prop_map(Op::Cancel),
        2 => (0..KEYS, 0u8..4, proptest::option::of(1u8..4))
            .prop_map(|(key, weight, max)| Op::Insert { key, weight, max }),
        1 => (0..KEYS).prop_map(Op::Remove),
        1 => (0..KEYS, 0u8..4).prop_map(|(k, w)| Op::SetWeight(k, w)),
        1 => (0..KEYS).prop_map(Op::Eject),
        1 => (0..KEYS).prop_map(Op::Heal),
    ]
}

fn strategy() -> impl Strategy<Value = Pick> {
    prop_oneof![
        Just(Pick::PowerOfTwoChoices),
        Just(Pick::LeastLoaded),
        Just(Pick::PeakEwma),
        Just(Pick::RoundRobin),
        Just(Pick::Random),
        Just(Pick::Weighted),
        Just(Pick::LeastWork),
        Just(Pick::LeastWorkScan),
        Just(Pick::CostAware { max_load: 0.5 }),
    ]
}

fn key(k: u8) -> String {
    format!("e{k}")
}

/// Whether `e` could take a request now, health aside.
fn open(e: &Endpoint, exclude: Option<&str>) -> bool {
    !e.is_removed()
        && e.weight() > 0.0
        && exclude != Some(e.key().as_str())
        && e.max_concurrency().map_or(true, |m| e.in_flight() < m)
}

fn healthy(e: &Endpoint) -> bool {
    matches!(e.health(), Health::Healthy)
}

/// The model: every endpoint ever made, and the live guards.
struct World {
    /// Whether picks route to every endpoint when health leaves none.
    panic_mode: bool,
    pool: Pool<Unit>,
    ever: Vec<Arc<Endpoint>>,
    guards: Vec<LoadGuard>,
    drains: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    fn check(&self) {
        for e in &self.ever {
            let held = self
                .guards
                .iter()
                .filter(|g| Arc::ptr_eq(g.endpoint(), e))
                .count();
            assert_eq!(
                e.in_flight(),
                held,
                "{}: in-flight against live guards",
                e.key()
            );
            if let Some(max) = e.max_concurrency() {
                assert!(e.in_flight() <= max, "{}: over its limit", e.key());
            }
        }
    }

    fn pick(&mut self, strategy: Pick, exclude: Option<u8>, cost: u8) {
        let balance = BalanceLayer::builder()
            .strategy(strategy)
            .panic_mode(self.panic_mode)
            .build()
            .unwrap()
            .layer(self.pool.clone());
        let mut request = WithHints::new(());
        request.extensions.insert(Cost(u64::from(cost)));
        let excluded = exclude.map(key);
        if let Some(k) = excluded.as_deref().and_then(|k| self.pool.get(k)) {
            let mut x = Exclude::new();
            x.insert(&k);
            request.extensions.insert(x);
        }
        let live = self.pool.endpoints();
        let any_open_healthy = live
            .iter()
            .any(|e| open(e, excluded.as_deref()) && healthy(e));
        match balance.pick(&request) {
            Ok((Unit, guard)) => {
                let e = guard.endpoint();
                assert!(!e.is_removed(), "picked a removed endpoint");
                assert!(e.weight() > 0.0, "picked an endpoint of weight 0");
                assert_ne!(
                    Some(e.key().as_str()),
                    excluded.as_deref(),
                    "picked an excluded endpoint"
                );
                if !healthy(e) {
                    assert!(
                        !any_open_healthy,
                        "picked {:?} over a healthy endpoint",
                        e.health()
                    );
                }
                self.guards.push(guard);
            }
            Err(error) => {
                assert!(
                    error.is::<NoEndpoints>() || error.is::<Overloaded>(),
                    "untyped error: {error}"
                );
                assert!(
                    !any_open_healthy,
                    "failed ({error}) with a healthy endpoint open"
                );
            }
        }
    }

    fn apply(&mut self, op: Op, strategy: Pick) {
        let take = |guards: &mut Vec<LoadGuard>, i: usize| {
            (!guards.is_empty()).then(|| guards.swap_remove(i % guards.len()))
        };
        match op {
            Op::Pick { exclude, cost } => self.pick(strategy, exclude, cost),
            Op::Complete(i) => {
                if let Some(g) = take(&mut self.guards, i) {
                    g.complete();
                }
            }
            Op::Fail(i) => {
                if let Some(mut g) = take(&mut self.guards, i) {
                    g.fail();
                    g.complete();
                }
            }
            Op::Cancel(i) => drop(take(&mut self.guards, i)),
            Op::Insert {
                key: k,
                weight,
                max,
            } => {
                let mut config = EndpointConfig::new(key(k)).weight(f64::from(weight));
                if let Some(max) = max {
                    config = config.max_concurrency(usize::from(max));
                }
                let known = self.pool.get(&key(k)).is_some();
                match self.pool.insert(config, Unit) {
                    Ok(e) => {
                        assert!(!known);
                        self.ever.push(e);
                    }
                    Err(_) => assert!(known, "refused a new key"),
                }
            }
            Op::Remove(k) => {
                if let Some(e) = self.pool.remove(&key(k)) {
                    assert!(e.is_removed());
                    // The drain must be announced once its last guard is gone.
                    self.drains
                        .push(tokio::spawn(async move { e.drained().await }));
                }
            }
            Op::SetWeight(k, w) => {
                let known = self.pool.get(&key(k)).is_some();
                assert_eq!(self.pool.set_weight(&key(k), f64::from(w)).is_ok(), known);
            }
            Op::Eject(k) => {
                if let Some(e) = self.pool.get(&key(k)) {
                    e.set_health(Health::Ejected {
                        until: Instant::now() + Duration::from_secs(3600),
                    });
                }
            }
            Op::Heal(k) => {
                if let Some(e) = self.pool.get(&key(k)) {
                    e.set_health(Health::Healthy);
                }
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn counters_match_guards_and_picks_respect_the_pool(
        ops in proptest::collection::vec(op(), 1..120),
        strategy in strategy(),
        panic_routing in any::<bool>(),
    ) {
        runtime().block_on(async move {
            let pool = Pool::new();
            let mut world = World { pool, panic_mode: panic_routing, ever: Vec::new(), guards: Vec::new(), drains: Vec::new() };
            for op in ops {
                world.apply(op, strategy);
                world.check();
            }
            world.guards.clear();
            for e in &world.ever {
                assert_eq!(e.in_flight(), 0, "{}: leaked a slot", e.key());
                assert_eq!(e.outstanding(), 0, "{}: leaked cost", e.key());
            }
            for drain in world.drains {
                tokio::time::timeout(Duration::from_secs(1), drain)
                    .await
                    .expect("a removed endpoint announces its drain")
                    .unwrap();
            }
        });
    }

    #[test]
    fn picks_follow_weights_in_the_limit(weights in proptest::collection::vec(1u8..8, 2..6)) {
        let pool = Pool::new();
        for (i, w) in weights.iter().enumerate() {
            pool.insert(EndpointConfig::new(key(i as u8)).weight(f64::from(*w)), Unit).unwrap();
        }
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let request = WithHints::new(());

        // Weighted: each pick independent, shares in proportion.
        let balance = BalanceLayer::builder().strategy(Pick::Weighted).build().unwrap().layer(pool.clone());
        let mut counts = vec![0usize; weights.len()];
        let n = 20_000;
        for _ in 0..n {
            let (Unit, guard) = balance.pick(&request).unwrap();
            let i: usize = guard.endpoint().key().as_str()[1..].parse().unwrap();
            counts[i] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            let share = counts[i] as f64 / n as f64;
            let expected = f64::from(*w) / total;
            prop_assert!((share - expected).abs() < 0.03, "weighted: endpoint {i} got {share:.3}, expected {expected:.3}");
        }

        // Power of two choices with every request held: in-flight in proportion to weight.
        let balance = BalanceLayer::new().layer(pool.clone());
        let held: Vec<_> = (0..(total as usize) * 40).map(|_| balance.pick(&request).unwrap().1).collect();
        for (i, w) in weights.iter().enumerate() {
            let e = pool.get(&key(i as u8)).unwrap();
            let share = e.in_flight() as f64 / held.len() as f64;
            let expected = f64::from(*w) / total;
            prop_assert!((share - expected).abs() < 0.05, "p2c: endpoint {i} holds {share:.3}, expected {expected:.3}");
        }
        drop(held);
        prop_assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
    }
}

/// The parsers the fuzz targets in `fuzz/` exercise, fed one input each as those do.
fn parse_everything(data: &[u8]) {
    use tower_ai_balance::failover::{Continuation, OpenAiChat};
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let _ = tower_ai_balance::classify::parse_retry_after(&value, now);
    }
    // On what serde_json reads, the request reader reads the same.
    let read = tower_ai_balance::route::OpenAiRequest::parse(data);
    if let Some(expected) = reference::reference(data) {
        assert_eq!(
            read.map_err(drop),
            expected.map(Some),
            "{}",
            String::from_utf8_lossy(data)
        );
    }
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (original, streamed) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let _ = OpenAiChat.continue_body(original, streamed);
    let _ = tower_ai_balance::engines::OrcaReport::parse(data);
    let _ = tower_ai_balance::engines::from_prometheus(data, tokio::time::Instant::now());
}

/// The fuzz targets' seed corpus (and any reproducer saved beside it) on the stable
/// toolchain, so that `cargo test` runs what `cargo fuzz` starts from.
#[test]
fn the_fuzz_seeds_parse_without_panicking() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut seeds = 0;
    for target in std::fs::read_dir(&corpus).expect("fuzz/corpus") {
        for file in std::fs::read_dir(target.unwrap().path()).unwrap() {
            parse_everything(&std::fs::read(file.unwrap().path()).unwrap());
            seeds += 1;
        }
    }
    assert!(seeds >= 6, "only {seeds} seeds");
}

proptest! {
    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&data);
    }

    #[test]
    fn parsers_never_panic_on_near_json(
        model in "[a-z0-9-]{0,12}",
        content in ".{0,40}",
        tokens in any::<i64>(),
        stream in any::<bool>(),
        streamed in "(data: [^\n]{0,60}\n\n){0,4}",
        retry in "[0-9 ,:A-Za-z-]{0,40}",
    ) {
        let original = format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":{content:?}}}],"max_tokens":{tokens},"stream":{stream}}}"#
        );
        parse_everything(original.as_bytes());
        let mut joined = original.into_bytes();
        joined.push(0);
        joined.extend_from_slice(streamed.as_bytes());
        parse_everything(&joined);
        parse_everything(retry.as_bytes());
    }
}
