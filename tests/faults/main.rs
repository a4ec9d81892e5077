//! Fault injection over real HTTP on loopback: 20,000 mixed requests (unary and streamed, some
//! cancelled by the client) through Failover, HealthFilter and Balance, while six simulated
//! model servers crash and restart (refusing connections meanwhile), reset mid-body, hang past
//! the timeout, send garbage, stall, answer 500, 503 and 429, and recover.
//!
//! Every request must end in a response or a typed error, each counted; the counts must add up;
//! every endpoint's in-flight count must return to 0; after the faults stop, the stack must
//! serve again; and once everything is dropped, no task may be left running.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt;
use http_body_util::BodyExt;
use model_server::{chat_request, Mode, ModelServer, Spec, Upstream};
use rand::{Rng, SeedableRng};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    error::{AttemptsFailed, NotReplayable, Stalled},
    failover::{FailoverLayer, RetryBudget},
    health::HealthFilterLayer,
    BalanceLayer, EndpointConfig, EndpointError, HealthPolicy, NoEndpoints, Overloaded, Pool,
};

const REQUESTS: usize = 20_000;
const SERVERS: usize = 6;
const TIMEOUT: Duration = Duration::from_millis(250);

/// How each request ended.
#[derive(Default)]
struct Tally(parking_lot::Mutex<BTreeMap<&'static str, u64>>);

impl Tally {
    fn count(&self, outcome: &'static str) {
        *self.0.lock().entry(outcome).or_default() += 1;
    }
    fn get(&self, outcome: &str) -> u64 {
        self.0.lock().get(outcome).copied().unwrap_or(0)
    }
    fn total(&self) -> u64 {
        self.0.lock().values().sum()
    }
}

/// The name of a typed error from the stack; `None` if it is not one of the crate's.
fn typed(e: &tower_ai_balance::BoxError) -> Option<&'static str> {
    if let Some(a) = e.downcast_ref::<AttemptsFailed>() {
        return Some(match a.gave_up() {
            tower_ai_balance::error::GaveUp::Attempts => "error: attempts failed",
            tower_ai_balance::error::GaveUp::Budget => "error: retry budget spent",
            tower_ai_balance::error::GaveUp::NoEndpoints => "error: attempts failed, none left",
            tower_ai_balance::error::GaveUp::Deadline => "error: deadline",
            _ => "error: attempts failed (other)",
        });
    }
    if e.is::<NoEndpoints>() {
        return Some("error: no endpoints");
    }
    if e.is::<Overloaded>() {
        return Some("error: overloaded");
    }
    if e.is::<EndpointError>() {
        return Some("error: endpoint error");
    }
    if e.is::<NotReplayable>() {
        return Some("error: not replayable");
    }
    None
}

/// What a failed body's error was.
fn body_error(e: &tower_ai_balance::BoxError) -> &'static str {
    if e.is::<Stalled>()
        || e.downcast_ref::<EndpointError>()
            .is_some_and(|e| e.inner().is::<Stalled>())
    {
        "body: stalled (idle timeout)"
    } else if e.is::<hyper::Error>()
        || e.downcast_ref::<EndpointError>()
            .is_some_and(|e| e.inner().is::<hyper::Error>())
    {
        "body: connection broke mid-stream"
    } else {
        "body: other error"
    }
}

/// The faults a server is put through, with weights.
const FAULTS: [(Mode, u32); 9] = [
    (Mode::Fail, 6),
    (Mode::Unavailable, 6),
    (Mode::RateLimit(1), 6),
    (Mode::Hang, 6),
    (Mode::ResetMidStream, 6),
    (Mode::ResetBeforeFirstChunk, 6),
    (Mode::ErrorEvent, 6),
    (Mode::StallAfterFirst, 6),
    (Mode::Garbage, 6),
];

fn random_fault(rng: &mut impl Rng) -> Mode {
    let total: u32 = FAULTS.iter().map(|(_, w)| w).sum();
    let mut roll = rng.random_range(0..total);
    for (mode, w) in FAULTS {
        if roll < w {
            return mode;
        }
        roll -= w;
    }
    unreachable!("the roll is below the total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_requests_under_faults_all_accounted_for() {
    tokio::time::timeout(Duration::from_secs(300), run())
        .await
        .expect("the fault test finished");
}

async fn run() {
    let client = Upstream::client();
    let pool = Pool::new();
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let spec = Spec::new(
            format!("s{i}"),
            Duration::from_millis(2),
            Duration::from_millis(1),
        );
        let server = ModelServer::spawn(spec).await;
        pool.insert(
            EndpointConfig::new(format!("s{i}")),
            Upstream::new(client.clone(), server.uri()),
        )
        .unwrap();
        servers.push(server);
    }
    let servers = Arc::new(servers);
    let mut policy = HealthPolicy::default();
    policy.base_ejection = Duration::from_millis(50);
    policy.max_ejection = Duration::from_millis(400);
    let stack = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .attempts(3)
                .budget(RetryBudget::new(0.5, 200).unwrap())
                .first_chunk(TIMEOUT)
                .build()
                .unwrap(),
        )
        .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
        .layer(
            BalanceLayer::builder()
                .timeout(TIMEOUT)
                .idle_timeout(TIMEOUT)
                .build()
                .unwrap(),
        )
        .service(pool.clone());

    // The faults: every 10 ms, a healthy server may fail in one of the ways above, or crash,
    // for 20 to 150 ms, then recover; at most two of the six are failing at once.
    let faulting = Arc::new(AtomicBool::new(true));
    let (crashes, modes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let chaos = {
        let (servers, faulting, crashes, modes) = (
            Arc::clone(&servers),
            Arc::clone(&faulting),
            Arc::clone(&crashes),
            Arc::clone(&modes),
        );
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            // For each failing server: when it recovers, and whether it crashed.
            let mut failing: [Option<(tokio::time::Instant, bool)>; SERVERS] = [None; SERVERS];
            while faulting.load(SeqCst) {
                let now = tokio::time::Instant::now();
                for (i, f) in failing.iter_mut().enumerate() {
                    if let Some((until, crashed)) = *f {
                        if until <= now {
                            servers[i].set_mode(Mode::Normal);
                            if crashed {
                                servers[i]
                                    .restart()
                                    .await
                                    .expect("restart on the same port");
                            }
                            *f = None;
                        }
                    }
                }
                let i = rng.random_range(0..SERVERS);
                if failing[i].is_none() && failing.iter().flatten().count() < 2 {
                    let until = now + Duration::from_millis(rng.random_range(20..150));
                    let crash = rng.random_range(0..8) == 0;
                    if crash {
                        servers[i].crash();
                        crashes.fetch_add(1, SeqCst);
                    } else {
                        servers[i].set_mode(random_fault(&mut rng));
                        modes.fetch_add(1, SeqCst);
                    }
                    failing[i] = Some((until, crash));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Recovery: every server back and healthy.
            for (i, f) in failing.iter().enumerate() {
                servers[i].set_mode(Mode::Normal);
                if matches!(f, Some((_, true))) {
                    servers[i]
                        .restart()
                        .await
                        .expect("restart on the same port");
                }
            }
        })
    };

    let tally = Arc::new(Tally::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let plans: Vec<(bool, u64, u32)> = (0..REQUESTS)
        .map(|_| {
            (
                rng.random_bool(0.5),
                rng.random_range(1..6),
                rng.random_range(0..100),
            )
        })
        .collect();
    futures_util::stream::iter(plans)
        .for_each_concurrent(64, |(stream, tokens, client)| {
            let (stack, tally) = (stack.clone(), Arc::clone(&tally));
            async move {
                let call = stack.oneshot(chat_request(tokens, stream));
                // 5%: the client gives up before the response.
                let response = if client < 5 {
                    let wait = Duration::from_millis(1 + u64::from(client) * 4);
                    match tokio::time::timeout(wait, call).await {
                        Ok(r) => r,
                        Err(_) => return tally.count("cancelled before the response"),
                    }
                } else {
                    call.await
                };
                let response = match response {
                    Ok(r) => r,
                    Err(e) => match typed(&e) {
                        Some(outcome) => return tally.count(outcome),
                        None => panic!("an untyped error: {e:?}"),
                    },
                };
                if !response.status().is_success() {
                    return tally.count("response: error status");
                }
                let mut body = response.into_body();
                // 5%: the client drops the stream after its first frame.
                if client >= 95 {
                    return match body.frame().await {
                        Some(Err(e)) => tally.count(body_error(&e)),
                        _ => tally.count("cancelled mid-body"),
                    };
                }
                match body.collect().await {
                    Ok(_) => tally.count("response: complete"),
                    Err(e) => tally.count(body_error(&e)),
                }
            }
        })
        .await;

    faulting.store(false, SeqCst);
    chaos.await.unwrap();

    let outcomes = tally.0.lock().clone();
    eprintln!("{REQUESTS} requests: {outcomes:#?}");
    eprintln!(
        "faults: {} mode changes, {} crashes; server-side requests received: {}",
        modes.load(SeqCst),
        crashes.load(SeqCst),
        servers
            .iter()
            .map(|s| s.stats.received.load(SeqCst))
            .sum::<u64>()
    );
    assert_eq!(
        tally.total(),
        REQUESTS as u64,
        "every request is counted once"
    );
    assert!(
        tally.get("response: complete") > REQUESTS as u64 / 2,
        "{outcomes:#?}"
    );
    assert!(
        crashes.load(SeqCst) >= 5 && modes.load(SeqCst) >= 50,
        "too few faults"
    );
    // The faults showed: failed attempts were re-sent (the servers saw more requests than
    // the clients sent), and streams broke after their first token (never replayed).
    let received: u64 = servers.iter().map(|s| s.stats.received.load(SeqCst)).sum();
    assert!(received > REQUESTS as u64, "no attempt was re-sent");
    assert!(
        outcomes.keys().any(|k| k.starts_with("body")),
        "{outcomes:#?}"
    );
    assert!(tally.get("cancelled before the response") > 0);
    assert!(tally.get("cancelled mid-body") > 0);

    // Nothing leaked: every slot came back once the bodies were dropped.
    for e in pool.endpoints() {
        assert_eq!(e.in_flight(), 0, "{} leaked a slot", e.key());
        assert_eq!(e.outstanding(), 0, "{} leaked cost", e.key());
    }

    // Recovery: once ejections lapse, every request succeeds again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut served = 0;
    for _ in 0..200 {
        let response = stack.clone().oneshot(chat_request(2, true)).await;
        if let Ok(r) = response {
            if r.status().is_success() && r.into_body().collect().await.is_ok() {
                served += 1;
            }
        }
    }
    assert_eq!(served, 200, "the stack recovered");

    // No task is left running once the stack, the pool, the client and the servers are gone.
    drop((stack, pool, client));
    drop(Arc::into_inner(servers).expect("the chaos task let go"));
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut alive = metrics.num_alive_tasks();
    for _ in 0..100 {
        if alive == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        alive = metrics.num_alive_tasks();
    }
    assert_eq!(alive, 0, "tasks left running");
}
