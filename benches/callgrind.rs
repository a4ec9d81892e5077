//! Fixed workloads to count instructions with callgrind, which repeats exactly where timings on
//! a noisy machine do not:
//!
//! ```sh
//! cargo bench --bench callgrind --no-run
//! valgrind --tool=callgrind target/release/deps/callgrind-<hash> stack   # or balance, pick
//! ```
//!
//! - `stack-real`: 20,000 realistic requests (a chat POST with six headers and a 300-byte JSON
//!   body, to an endpoint cloned per request, its six-event SSE answer read to the end; see
//!   `support/real.rs`) through Failover, StreamAffinity, HealthFilter and Balance over 8
//!   endpoints, one at a time on a current-thread runtime;
//! - `balance-real`: the same through `Balance` alone; `direct-real`: the same to one endpoint;
//! - `failover-real`, `affinity-real`, `health-real`: the same through one outer layer over
//!   `Balance` (affinity by the `x-session-id` header), to see what each layer adds;
//! - `stack`: 20,000 minimal requests (`Request<()>`, an empty answer) through the four layers;
//! - `balance`: the same through `Balance` alone;
//! - `pick`: 1,000,000 picks by power of two choices at 1,000 endpoints with two filters (an
//!   `Exclude` of two and one ejected endpoint).
//!
//! Divide the total by the count (setup is a few percent). Run without an argument (as `cargo
//! bench` does), it does each once and prints nothing.

use std::{hint::black_box, time::Duration};

use http::Request;
use tower::{Layer, Service, ServiceExt};
use tower_ai_balance::{
    affinity::StreamAffinityLayer,
    failover::FailoverLayer,
    health::HealthFilterLayer,
    hints::Exclude,
    pick::{self, Filter},
    BalanceLayer, EndpointConfig, Health, Pool,
};

#[path = "support/rng.rs"]
mod rng;
use rng::ThreadRng;

#[path = "support/endpoint.rs"]
mod endpoint;

#[path = "support/real.rs"]
mod real;

async fn real_requests<S, B>(mut svc: S, n: usize)
where
    S: Service<Request<http_body_util::Full<bytes::Bytes>>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body + Unpin,
    B::Error: std::fmt::Debug,
{
    for i in 0..n {
        let request = real::request(i as u64);
        let response = svc.ready().await.unwrap().call(request).await.unwrap();
        black_box(real::read_to_end(response).await);
    }
}

fn real_stack(which: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = real::pool(8);
    let balance = BalanceLayer::new().layer(pool.clone());
    rt.block_on(async move {
        match which {
            "four" => real_requests(endpoint::four_layers(pool), 20_000).await,
            "balance" => real_requests(balance, 20_000).await,
            // Each outer layer alone over `Balance`, to see what each adds.
            "failover" => real_requests(FailoverLayer::new().layer(balance), 20_000).await,
            "affinity" => {
                let affinity = StreamAffinityLayer::header(endpoint::session_header());
                real_requests(affinity.layer(balance), 20_000).await
            }
            "health" => real_requests(HealthFilterLayer::new().layer(balance), 20_000).await,
            _ => real_requests(real::Upstream::new(), 20_000).await,
        }
    });
}

async fn requests<S>(mut svc: S, n: usize)
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let response = svc.ready().await.unwrap().call(Request::new(())).await;
        drop(black_box(response.unwrap()));
    }
}

fn stack(four: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = endpoint::pool(8);
    rt.block_on(async move {
        if four {
            requests(endpoint::four_layers(pool), 20_000).await;
        } else {
            requests(BalanceLayer::new().layer(pool), 20_000).await;
        }
    });
}

fn picks() {
    let pool: Pool<()> = Pool::new();
    pool.extend((0..1000).map(|i| (EndpointConfig::new(format!("e{i}")), ())))
        .unwrap();
    let endpoints = pool.endpoints();
    let mut exclude = Exclude::new();
    exclude.insert(&endpoints[0]);
    exclude.insert(&endpoints[500]);
    endpoints[1].set_health(Health::Ejected {
        until: tokio::time::Instant::now() + Duration::from_secs(3600),
    });
    for _ in 0..1_000_000 {
        let filter = Filter::new().exclude(&exclude);
        black_box(pick::p2c(&endpoints, &filter, &mut ThreadRng));
    }
}

fn slots() {
    let pool: Pool<()> = Pool::new();
    pool.extend((0..1000).map(|i| (EndpointConfig::new(format!("e{i}")), ())))
        .unwrap();
    let endpoints = pool.endpoints();
    let mut exclude = Exclude::new();
    exclude.insert(&endpoints[0]);
    exclude.insert(&endpoints[500]);
    endpoints[1].set_health(Health::Ejected {
        until: tokio::time::Instant::now() + Duration::from_secs(3600),
    });
    let t0 = tokio::time::Instant::now();
    for _ in 0..1_000_000 {
        let filter = Filter::new().exclude(&exclude);
        let i = pick::p2c(&endpoints, &filter, &mut ThreadRng).unwrap();
        black_box(tower_ai_balance::load::LoadGuard::acquire_at(
            &&*endpoints[i],
            1,
            t0,
        ));
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("stack-real") => real_stack("four"),
        Some("balance-real") => real_stack("balance"),
        Some("direct-real") => real_stack("direct"),
        Some("failover-real") => real_stack("failover"),
        Some("affinity-real") => real_stack("affinity"),
        Some("health-real") => real_stack("health"),
        Some("stack") => stack(true),
        Some("balance") => stack(false),
        Some("pick") => picks(),
        Some("slot") => slots(),
        _ => {
            real_stack("four");
            real_stack("balance");
            real_stack("direct");
            stack(true);
            stack(false);
            picks();
        }
    }
}
