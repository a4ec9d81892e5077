//! Fixed workloads to count instructions with callgrind, which repeats exactly where timings on
//! a noisy machine do not:
//!
//! ```sh
//! cargo bench --bench callgrind --no-run
//! valgrind --tool=callgrind target/release/deps/callgrind-<hash> stack   # or balance, pick
//! ```
//!
//! - `stack`: 20,000 requests through Failover, StreamAffinity, HealthFilter and Balance over 8
//!   always-ready endpoints, one at a time on a current-thread runtime;
//! - `balance`: the same through `Balance` alone;
//! - `pick`: 1,000,000 picks by power of two choices at 1,000 endpoints with two filters (an
//!   `Exclude` of two and one ejected endpoint).
//!
//! Divide the total by the count (setup is a few percent). Run without an argument (as `cargo
//! bench` does), it does all three once and prints nothing.

use std::{hint::black_box, time::Duration};

use http::Request;
use tower::{Layer, Service, ServiceExt};
use tower_ai_balance::{
    hints::Exclude,
    pick::{self, Filter},
    BalanceLayer, EndpointConfig, Health, Pool,
};

#[path = "support/rng.rs"]
mod rng;
use rng::ThreadRng;

#[path = "support/endpoint.rs"]
mod endpoint;

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
        Some("stack") => stack(true),
        Some("balance") => stack(false),
        Some("pick") => picks(),
        Some("slot") => slots(),
        _ => {
            stack(true);
            stack(false);
            picks();
        }
    }
}
