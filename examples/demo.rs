//! The main job: a scenario on loopback that shows the balancer at work and prints what
//! happened.
//!
//! ```sh
//! cargo run --release --example demo
//! ```
//!
//! Four simulated model servers run on loopback, speaking OpenAI chat completions with SSE
//! token streams: two fast GPUs and two slow ones, each slowing down once more sequences run
//! than its batch holds. A burst of mixed traffic (short classifications and long streamed
//! generations, arriving at random) goes through the `Balance` layer over a hyper client, once
//! with power of two choices (the default) and once with round-robin. For each, the demo prints
//! a table per endpoint (requests, peak in flight as the server saw it, p50 and p99 latency)
//! and the latency of short and long requests overall.
//!
//! Then 150 multi-turn chats run with and without `StreamAffinity`, and the demo prints the hit
//! rate each server's prefix cache saw and the time to first token.
//!
//! Then short requests go to four GPUs, one of them suddenly slow, with and without hedging in
//! `Failover`.
//!
//! Last, the same traffic runs through `Failover` over `HealthFilter` over `Balance` while things go wrong: one
//! GPU starts answering 500 and heals a second later, another answers 429 with
//! `Retry-After: 1` for a moment. The health layer's own events (ejected, cooling down, back in
//! service) are printed as they happen, with a table of what each endpoint answered beside what its clients saw.

#[path = "support/model_server.rs"]
mod model_server;

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use http_body_util::BodyExt;
use model_server::{chat_request, ModelServer, Spec, Upstream};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    affinity::StreamAffinityLayer,
    failover::{FailoverLayer, Hedge, RetryBudget},
    health::{HealthFilterLayer, ProbeConfig},
    hints::Served,
    pick::Strategy,
    BalanceLayer, EndpointConfig, HealthPolicy, Pool,
};

/// One request's plan: when it arrives, how many tokens, whether it streams.
#[derive(Clone, Copy)]
struct Plan {
    at: Duration,
    tokens: u64,
    stream: bool,
}

/// What happened to one request.
struct Outcome {
    endpoint: String,
    long: bool,
    latency: Duration,
    ok: bool,
    status: u16,
}

fn workload(seed: u64, n: usize) -> Vec<Plan> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at = Duration::ZERO;
    (0..n)
        .map(|_| {
            // Poisson arrivals, 300 requests per second on average; one in five is a streamed
            // generation of 20 to 100 tokens: about three quarters of the GPUs' capacity.
            let gap: f64 = -(1.0 - rng.random::<f64>()).ln() / 300.0;
            at += Duration::from_secs_f64(gap);
            if rng.random_bool(0.2) {
                Plan {
                    at,
                    tokens: rng.random_range(20..100),
                    stream: true,
                }
            } else {
                Plan {
                    at,
                    tokens: 1,
                    stream: false,
                }
            }
        })
        .collect()
}

fn servers() -> Vec<(Spec, f64)> {
    let fast = |n: &str| Spec::new(n, Duration::from_millis(15), Duration::from_millis(4)).batch(8);
    let slow =
        |n: &str| Spec::new(n, Duration::from_millis(40), Duration::from_millis(10)).batch(4);
    vec![
        (fast("gpu-fast-0"), 2.0),
        (fast("gpu-fast-1"), 2.0),
        (slow("gpu-slow-0"), 1.0),
        (slow("gpu-slow-1"), 1.0),
    ]
}

async fn start_servers() -> (Pool<Upstream>, Vec<ModelServer>) {
    let client = Upstream::client();
    let pool = Pool::new();
    let mut running = Vec::new();
    for (spec, weight) in servers() {
        let server = ModelServer::spawn(spec.clone()).await;
        let config = EndpointConfig::new(spec.name.as_str())
            .weight(weight)
            .label("base", server.uri().to_string().trim_end_matches('/'));
        pool.insert(config, Upstream::new(client.clone(), server.uri()))
            .expect("valid endpoint");
        running.push(server);
    }
    (pool, running)
}

/// Sends the planned traffic through `svc`, each request at its time.
async fn replay<S, B>(svc: S, plans: &[Plan]) -> Vec<Outcome>
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
            Error = tower_ai_balance::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = plans
        .iter()
        .map(|&plan| {
            let svc = svc.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(start + plan.at).await;
                let sent = Instant::now();
                let (endpoint, ok, status) =
                    match svc.oneshot(chat_request(plan.tokens, plan.stream)).await {
                        Ok(response) => {
                            let endpoint = response
                                .extensions()
                                .get::<Served>()
                                .map(|s| s.endpoint().key().to_string());
                            let status = response.status();
                            let ok =
                                response.into_body().collect().await.is_ok() && status.is_success();
                            (endpoint.unwrap_or_default(), ok, status.as_u16())
                        }
                        Err(_) => (String::from("-"), false, 0),
                    };
                Outcome {
                    endpoint,
                    long: plan.stream,
                    latency: sent.elapsed(),
                    ok,
                    status,
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("request task"));
    }
    outcomes
}

async fn run(strategy: Strategy, plans: &[Plan]) -> (Vec<Outcome>, Vec<(String, usize)>) {
    let (pool, running) = start_servers().await;
    let balancer = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .strategy(strategy)
                .build()
                .expect("valid settings"),
        )
        .service(pool.clone());
    let outcomes = replay(balancer, plans).await;
    assert!(
        pool.endpoints().iter().all(|e| e.in_flight() == 0),
        "load released"
    );
    let peaks = running
        .iter()
        .map(|s| (s.spec.name.clone(), s.stats.peak_in_flight.load(SeqCst)))
        .collect();
    (outcomes, peaks)
}

/// Multi-turn chats: 150 sessions of 4 turns each, one turn after another with a pause to
/// read. A turn that lands where its session's context is cached starts four times sooner.
async fn sessions_scenario() {
    println!("\nsessions: 150 chats of 4 turns each; a server that holds a chat's context answers its first token 4x sooner");
    println!(
        "  {:<42} {:>14} {:>10} {:>10}",
        "routing", "cache hit rate", "TTFT p50", "TTFT p99"
    );
    for (name, bound) in [
        ("power of two choices", None),
        ("StreamAffinity, load bound 1.25 (default)", Some(1.25)),
        ("StreamAffinity, load bound 2", Some(2.0)),
    ] {
        let (pool, running) = start_servers().await;
        let ttfts = if let Some(bound) = bound {
            let affinity = StreamAffinityLayer::builder(tower_ai_balance::affinity::Header(
                http::HeaderName::from_static("x-session-id"),
            ))
            .bound(bound)
            .build()
            .expect("valid settings");
            let svc = ServiceBuilder::new()
                .layer(affinity)
                .layer(BalanceLayer::new())
                .service(pool.clone());
            chats(svc).await
        } else {
            chats(
                ServiceBuilder::new()
                    .layer(BalanceLayer::new())
                    .service(pool.clone()),
            )
            .await
        };
        let hits: u64 = running
            .iter()
            .map(|s| s.stats.cache_hits.load(SeqCst))
            .sum();
        let misses: u64 = running
            .iter()
            .map(|s| s.stats.cache_misses.load(SeqCst))
            .sum();
        println!(
            "  {:<42} {:>13.0}% {:>10} {:>10}",
            name,
            100.0 * hits as f64 / (hits + misses).max(1) as f64,
            ms(percentile(&ttfts, 0.5)),
            ms(percentile(&ttfts, 0.99))
        );
    }
    println!("  (the best possible is 75%: every chat's first turn is a miss)");
}

/// Runs the chats; returns each turn's time to first token, sorted.
async fn chats<S, B>(svc: S) -> Vec<Duration>
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<B>,
            Error = tower_ai_balance::BoxError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let tasks: Vec<_> = (0..150u64)
        .map(|chat| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(chat);
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
                let mut ttfts = Vec::new();
                for _ in 0..4 {
                    let mut request = chat_request(rng.random_range(10..40), true);
                    request.headers_mut().insert(
                        "x-session-id",
                        format!("chat-{chat}").parse().expect("header"),
                    );
                    let sent = Instant::now();
                    let Ok(response) = svc.clone().oneshot(request).await else {
                        continue;
                    };
                    let mut body = response.into_body();
                    let _ = body.frame().await;
                    ttfts.push(sent.elapsed());
                    while let Some(Ok(_)) = body.frame().await {}
                    tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
                }
                ttfts
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("chat task"));
    }
    all.sort();
    all
}

/// Short requests over four GPUs, one of which is suddenly slow: with and without hedging.
async fn hedging_scenario() {
    println!("\nhedging: 600 short requests at 200/s; gpu-fast-1 takes 400 ms to answer");
    println!(
        "  {:<44} {:>9} {:>9} {:>9}",
        "failover", "p50", "p99", "p99.9"
    );
    let plans: Vec<Plan> = (0..600)
        .map(|i| Plan {
            at: Duration::from_millis(i * 5),
            tokens: 1,
            stream: false,
        })
        .collect();
    for (name, hedge) in [
        ("no hedging", None),
        (
            "hedge after 50 ms",
            Some(Hedge::After(Duration::from_millis(50))),
        ),
        (
            "hedge at p90 of recent answers (>= 20 ms)",
            Some(Hedge::Percentile {
                p: 0.9,
                floor: Duration::from_millis(20),
            }),
        ),
    ] {
        let (pool, running) = start_servers().await;
        let slow = Spec::new(
            "gpu-fast-1",
            Duration::from_millis(400),
            Duration::from_millis(4),
        );
        let slow_server = ModelServer::spawn(slow).await;
        pool.remove("gpu-fast-1");
        pool.insert(
            EndpointConfig::new("gpu-fast-1").weight(2.0),
            Upstream::new(Upstream::client(), slow_server.uri()),
        )
        .expect("valid endpoint");
        let mut builder =
            FailoverLayer::builder().budget(RetryBudget::new(0.5, 10).expect("valid budget"));
        if let Some(hedge) = hedge {
            builder = builder.hedge(hedge);
        }
        let layer = builder.build().expect("valid settings");
        let svc = ServiceBuilder::new()
            .layer(layer)
            .layer(BalanceLayer::new())
            .service(pool.clone());
        let outcomes = replay(svc, &plans).await;
        let lat = latencies(outcomes.iter());
        println!(
            "  {:<44} {:>9} {:>9} {:>9}",
            name,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(percentile(&lat, 0.999))
        );
        drop(running);
    }
}

/// The full stack while one GPU fails and heals and another rate-limits.
async fn health_scenario(plans: &[Plan]) {
    println!(
        "\nhealth: gpu-fast-1 answers 500 from 0.5 s to 1.5 s; gpu-slow-0 answers 429 (Retry-After: 1) from 1.0 s to 1.2 s"
    );
    let (pool, running) = start_servers().await;
    let mut policy = HealthPolicy::default();
    policy.base_ejection = Duration::from_millis(500);
    policy.slow_start = Some(Duration::from_secs(1));
    let health = HealthFilterLayer::builder()
        .policy(policy)
        .build()
        .expect("valid settings");
    let mut probes = ProbeConfig::default();
    probes.interval = Duration::from_millis(250);
    let probing = health.spawn_probes(&pool, model_server::http_probe(Upstream::client()), probes);
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(5))
                .build()
                .expect("valid settings"),
        )
        .layer(health)
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("valid settings"),
        )
        .service(pool.clone());

    let servers = std::sync::Arc::new(running);
    let faults = {
        let servers = std::sync::Arc::clone(&servers);
        tokio::spawn(async move {
            let at = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
            at(500).await;
            servers[1].set_mode(model_server::Mode::Fail);
            at(500).await;
            servers[2].set_mode(model_server::Mode::RateLimit(1));
            at(200).await;
            servers[2].set_mode(model_server::Mode::Normal);
            at(300).await;
            servers[1].set_mode(model_server::Mode::Normal);
        })
    };
    let outcomes = replay(svc, plans).await;
    faults.await.expect("fault script");
    probing.abort();

    // What each endpoint answered (every attempt, as its load guard judged it) beside what
    // the clients it finally served saw: a 500 that Failover retried elsewhere is a failure
    // on the left and never reaches a client.
    println!(
        "  {:<12} {:>8} {:>6} {:>6} {:>9}   {:>6} {:>6} {:>6}   {:>8} {:>9}   health at the end",
        "endpoint",
        "attempts",
        "ok",
        "failed",
        "cancelled",
        "200",
        "500",
        "429",
        "ejected",
        "cooldowns"
    );
    let metrics = pool.metrics();
    for m in &metrics.endpoints {
        let here: Vec<_> = outcomes.iter().filter(|o| o.endpoint == m.key).collect();
        let count = |s: u16| here.iter().filter(|o| o.status == s).count();
        let [ok, failed, cancelled] = m.outcomes();
        println!(
            "  {:<12} {:>8} {:>6} {:>6} {:>9}   {:>6} {:>6} {:>6}   {:>8} {:>9}   {}",
            m.key,
            ok + failed + cancelled,
            ok,
            failed,
            cancelled,
            count(200),
            count(500),
            count(429),
            m.ejections.iter().sum::<u64>(),
            m.cooldowns,
            m.state()
        );
    }
    println!(
        "  (left: what the endpoint answered, every attempt; right: what the clients it served saw)"
    );
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    let sent: u64 = servers.iter().map(|s| s.stats.received.load(SeqCst)).sum();
    println!(
        "  {} of {} requests succeeded; Failover sent {} attempts in all ({} retried elsewhere)",
        outcomes.len() - failed,
        outcomes.len(),
        sent,
        sent.saturating_sub(outcomes.len() as u64)
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn latencies<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Vec<Duration> {
    let mut v: Vec<_> = outcomes.filter(|o| o.ok).map(|o| o.latency).collect();
    v.sort();
    v
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn report(name: &str, outcomes: &[Outcome], peaks: &[(String, usize)]) {
    println!("\n{name}");
    println!(
        "  {:<12} {:>9} {:>8} {:>15} {:>9} {:>9}",
        "endpoint", "requests", "streams", "peak in flight", "p50", "p99"
    );
    for (endpoint, peak) in peaks {
        let here: Vec<_> = outcomes
            .iter()
            .filter(|o| &o.endpoint == endpoint)
            .collect();
        let lat = latencies(here.iter().copied());
        let streams = here.iter().filter(|o| o.long).count();
        println!(
            "  {:<12} {:>9} {:>8} {:>15} {:>9} {:>9}",
            endpoint,
            here.len(),
            streams,
            peak,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
    }
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    for (kind, long) in [("short requests", false), ("long streams", true)] {
        let lat = latencies(outcomes.iter().filter(|o| o.long == long));
        println!(
            "  {:<28} p50 {:>8}   p99 {:>8}",
            kind,
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
    }
    println!("  failed: {failed}");
}

#[tokio::main]
async fn main() {
    let plans = workload(7, 1200);
    let streams = plans.iter().filter(|p| p.stream).count();
    println!(
        "tower-ai-balance demo: {} requests in {:.1} s ({} streamed generations, {} short), over 4 simulated GPUs on loopback",
        plans.len(),
        plans.last().map_or(0.0, |p| p.at.as_secs_f64()),
        streams,
        plans.len() - streams
    );
    println!("  gpu-fast-*: 15 ms to first token, 4 ms per token, batch of 8 (weight 2)");
    println!("  gpu-slow-*: 40 ms to first token, 10 ms per token, batch of 4 (weight 1)");

    let mut summary = Vec::new();
    for (name, strategy) in [
        (
            "power of two choices (default)",
            Strategy::PowerOfTwoChoices,
        ),
        ("round-robin", Strategy::RoundRobin),
    ] {
        let (outcomes, peaks) = run(strategy, &plans).await;
        report(name, &outcomes, &peaks);
        let all = latencies(outcomes.iter());
        let peak = peaks.iter().map(|(_, p)| *p).max().unwrap_or(0);
        summary.push((name, percentile(&all, 0.5), percentile(&all, 0.99), peak));
    }

    println!("\nside by side");
    println!(
        "  {:<32} {:>9} {:>9} {:>20}",
        "strategy", "p50", "p99", "worst peak in flight"
    );
    for (name, p50, p99, peak) in &summary {
        println!(
            "  {:<32} {:>9} {:>9} {:>20}",
            name,
            ms(*p50),
            ms(*p99),
            peak
        );
    }

    sessions_scenario().await;
    hedging_scenario().await;

    // The health layer's events, as they happen, with the time since the demo began.
    tracing_subscriber::fmt()
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .init();
    health_scenario(&plans).await;
}
