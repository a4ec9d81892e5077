//! Throughput of the balancer around ready endpoint services, side by side with calling one
//! service directly and with tower's p2c `Balance` behind a `Buffer` (what tower users need to
//! share a balancer across tasks), with 1 and 64 concurrent callers on a 2-worker runtime.
//! `tower-ai-balance` is `Balance` alone; `four layers` is Failover, StreamAffinity,
//! HealthFilter and Balance.
//!
//! Two workloads, side by side in one run:
//! - `stack-real`, the one that counts: a chat-completions POST with six headers and a 300-byte
//!   JSON body, an endpoint that holds an `Arc` and is cloned per request as hyper's client is,
//!   and a six-event SSE answer that the caller reads to its end (`support/real.rs`);
//! - `stack`, the minimal one: `Request<()>` to a `Copy` endpoint that answers an empty body,
//!   which shows the layers' floor.
//!
//! `cargo bench --bench stack` (or `-- stack-real` for the realistic group alone). Each
//! iteration is one request; the summary at the end prints each contender's time per request
//! and its ratio to the direct call. `STACK_CPU=1 cargo bench --bench stack` instead prints
//! each contender's CPU time per request on the realistic request, and each outer layer's
//! alone over `Balance`: figures that other work on a noisy machine moves far less.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{
    balance::p2c,
    buffer::Buffer,
    discover::ServiceList,
    load::{CompleteOnResponse, PendingRequests},
    Layer, Service, ServiceExt,
};
use tower_ai_balance::{
    affinity::StreamAffinityLayer, failover::FailoverLayer, health::HealthFilterLayer, BalanceLayer,
};

#[path = "support/endpoint.rs"]
mod endpoint;
use endpoint::Instant200;

#[path = "support/real.rs"]
mod real;

const ENDPOINTS: usize = 8;
const CALLERS: [usize; 2] = [1, 64];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `iters` requests split over `callers` tasks, each with its own clone of `svc`.
fn drive<S>(rt: &tokio::runtime::Runtime, svc: S, callers: usize, iters: u64) -> Duration
where
    S: Service<Request<()>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async move {
        let per_caller = (iters as usize).div_ceil(callers);
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..per_caller {
                        let response = svc
                            .ready()
                            .await
                            .unwrap()
                            .call(Request::new(()))
                            .await
                            .unwrap();
                        drop(response);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

/// Runs `iters` realistic requests split over `callers` tasks, each reading its answer to the
/// end.
fn drive_real<S, B>(rt: &tokio::runtime::Runtime, svc: S, callers: usize, iters: u64) -> Duration
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
    B: Body + Unpin + Send + 'static,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async move {
        let per_caller = (iters as usize).div_ceil(callers);
        let start = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|caller| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..per_caller {
                        let request = real::request((caller + i) as u64);
                        let response = svc.ready().await.unwrap().call(request).await.unwrap();
                        std::hint::black_box(real::read_to_end(response).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

fn realistic(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("stack-real");
    for callers in CALLERS {
        group.bench_with_input(BenchmarkId::new("direct", callers), &callers, |b, &n| {
            b.iter_custom(|iters| drive_real(rt, real::Upstream::new(), n, iters))
        });

        let ours = tower::ServiceBuilder::new()
            .layer(BalanceLayer::new())
            .service(real::pool(ENDPOINTS));
        group.bench_with_input(
            BenchmarkId::new("tower-ai-balance", callers),
            &callers,
            |b, &n| b.iter_custom(|iters| drive_real(rt, ours.clone(), n, iters)),
        );

        let four = endpoint::four_layers(real::pool(ENDPOINTS));
        group.bench_with_input(
            BenchmarkId::new("four layers", callers),
            &callers,
            |b, &n| b.iter_custom(|iters| drive_real(rt, four.clone(), n, iters)),
        );

        group.bench_with_input(
            BenchmarkId::new("tower p2c + Buffer", callers),
            &callers,
            |b, &n| {
                let buffered = tower_p2c_real(rt);
                b.iter_custom(|iters| drive_real(rt, buffered.clone(), n, iters))
            },
        );
    }
    group.finish();
}

/// Tower's p2c `Balance` over the realistic endpoints, behind a `Buffer` (made on the runtime,
/// which runs its worker).
fn tower_p2c_real(rt: &tokio::runtime::Runtime) -> TowerReal {
    let services: Vec<_> = (0..ENDPOINTS)
        .map(|_| PendingRequests::new(real::Upstream::new(), CompleteOnResponse::default()))
        .collect();
    rt.block_on(async { Buffer::new(p2c::Balance::new(ServiceList::new(services)), 1024) })
}

type RealRequest = Request<Full<Bytes>>;
type RealList = ServiceList<Vec<PendingRequests<real::Upstream, CompleteOnResponse>>>;
type RealP2c = p2c::Balance<RealList, RealRequest>;
type TowerReal = Buffer<RealRequest, <RealP2c as Service<RealRequest>>::Future>;

fn benches(c: &mut Criterion) {
    let rt = runtime();
    realistic(c, &rt);
    let mut group = c.benchmark_group("stack");
    for callers in CALLERS {
        group.bench_with_input(BenchmarkId::new("direct", callers), &callers, |b, &n| {
            b.iter_custom(|iters| drive(&rt, Instant200, n, iters))
        });

        let ours = tower::ServiceBuilder::new()
            .layer(BalanceLayer::new())
            .service(endpoint::pool(ENDPOINTS));
        group.bench_with_input(
            BenchmarkId::new("tower-ai-balance", callers),
            &callers,
            |b, &n| b.iter_custom(|iters| drive(&rt, ours.clone(), n, iters)),
        );

        let four = endpoint::four_layers(endpoint::pool(ENDPOINTS));
        group.bench_with_input(
            BenchmarkId::new("four layers", callers),
            &callers,
            |b, &n| b.iter_custom(|iters| drive(&rt, four.clone(), n, iters)),
        );

        group.bench_with_input(
            BenchmarkId::new("tower p2c + Buffer", callers),
            &callers,
            |b, &n| {
                let services: Vec<_> = (0..ENDPOINTS)
                    .map(|_| PendingRequests::new(Instant200, CompleteOnResponse::default()))
                    .collect();
                let buffered = rt.block_on(async {
                    Buffer::new(p2c::Balance::new(ServiceList::new(services)), 1024)
                });
                b.iter_custom(|iters| drive(&rt, buffered.clone(), n, iters))
            },
        );
    }
    group.finish();
}

#[path = "support/ratios.rs"]
mod ratios;

#[path = "support/cpu.rs"]
mod cpu;

/// With `STACK_CPU=1`: the realistic request through each contender and through each outer
/// layer alone over `Balance`, 400,000 requests each, three rounds, printed as CPU time and
/// wall-clock time per request. CPU time is what a request costs the cores, which other work
/// on a noisy machine moves far less than wall-clock time; with 64 callers on 2 workers the
/// wall-clock time is about half of it.
fn cpu_rounds() {
    let rt = runtime();
    let n: u64 = 400_000;
    for callers in CALLERS {
        println!("\n{callers} caller(s): per request, CPU time and wall-clock time");
        for round in 1..=3 {
            let run = |name: &str, time: &mut dyn FnMut(u64) -> Duration| {
                time(20_000);
                let before = cpu::seconds();
                let wall = time(n);
                let cpu = cpu::seconds()
                    .zip(before)
                    .map(|(a, b)| (a - b) * 1e9 / n as f64);
                println!(
                    "  round {round} {name:<28} cpu {:>7} ns  wall {:>7.0} ns",
                    cpu.map_or("-".into(), |c| format!("{c:.0}")),
                    wall.as_nanos() as f64 / n as f64
                );
            };
            let balance = BalanceLayer::new().layer(real::pool(ENDPOINTS));
            run("direct", &mut |i| {
                drive_real(&rt, real::Upstream::new(), callers, i)
            });
            run("tower-ai-balance", &mut |i| {
                drive_real(&rt, balance.clone(), callers, i)
            });
            let failover = FailoverLayer::new().layer(balance.clone());
            run("Failover over Balance", &mut |i| {
                drive_real(&rt, failover.clone(), callers, i)
            });
            let affinity =
                StreamAffinityLayer::header(endpoint::session_header()).layer(balance.clone());
            run("StreamAffinity over Balance", &mut |i| {
                drive_real(&rt, affinity.clone(), callers, i)
            });
            let health = HealthFilterLayer::new().layer(balance.clone());
            run("HealthFilter over Balance", &mut |i| {
                drive_real(&rt, health.clone(), callers, i)
            });
            let four = endpoint::four_layers(real::pool(ENDPOINTS));
            run("four layers", &mut |i| {
                drive_real(&rt, four.clone(), callers, i)
            });
            let buffered = tower_p2c_real(&rt);
            run("tower p2c + Buffer", &mut |i| {
                drive_real(&rt, buffered.clone(), callers, i)
            });
        }
    }
}

fn main() {
    if std::env::var_os("STACK_CPU").is_some() {
        cpu_rounds();
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c);
    c.final_summary();
    for n in CALLERS {
        ratios::print(
            &format!(
                "realistic request: time per request with {n} concurrent callers, against a direct call"
            ),
            "stack-real",
            &format!("direct/{n}"),
            &["tower-ai-balance", "four layers", "tower p2c + Buffer"].map(|s| format!("{s}/{n}")),
        );
        ratios::print_overhead(
            &format!("realistic request, {n} callers: time over the direct call, against tower's"),
            "stack-real",
            &format!("direct/{n}"),
            &format!("tower p2c + Buffer/{n}"),
            &["tower-ai-balance", "four layers"].map(|s| format!("{s}/{n}")),
        );
    }
    for n in CALLERS {
        ratios::print(
            &format!("minimal request: time per request with {n} concurrent callers, against a direct call"),
            "stack",
            &format!("direct/{n}"),
            &["tower-ai-balance", "four layers", "tower p2c + Buffer"].map(|s| format!("{s}/{n}")),
        );
    }
}
