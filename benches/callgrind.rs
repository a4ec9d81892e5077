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

use std::{
    convert::Infallible,
    future::{ready, Ready},
    hint::black_box,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Service, ServiceExt};
use tower_ai_balance::{
    affinity::StreamAffinityLayer,
    failover::FailoverLayer,
    health::HealthFilterLayer,
    hints::Exclude,
    pick::{self, Filter},
    BalanceLayer, EndpointConfig, Health, Pool, ThreadRng,
};

/// An endpoint that is always ready and answers at once with an empty body.
#[derive(Clone, Copy)]
struct Instant200;

impl Service<Request<()>> for Instant200 {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
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
    let pool = Pool::new();
    for i in 0..8 {
        pool.insert(format!("e{i}"), Instant200).unwrap();
    }
    rt.block_on(async move {
        if four {
            let svc = tower::ServiceBuilder::new()
                .layer(FailoverLayer::new())
                .layer(StreamAffinityLayer::header(http::HeaderName::from_static(
                    "x-session-id",
                )))
                .layer(HealthFilterLayer::new(&pool))
                .layer(BalanceLayer::new())
                .service(pool);
            requests(svc, 20_000).await;
        } else {
            let svc = tower::ServiceBuilder::new()
                .layer(BalanceLayer::new())
                .service(pool);
            requests(svc, 20_000).await;
        }
    });
}

fn picks() {
    let pool: Pool<()> = Pool::new();
    pool.extend((0..1000).map(|i| (EndpointConfig::new(format!("e{i}")), ())))
        .unwrap();
    let snapshot = pool.snapshot();
    let endpoints = pool.endpoints();
    let mut exclude = Exclude::new();
    exclude.insert(&endpoints[0]);
    exclude.insert(&endpoints[500]);
    endpoints[1].set_health(Health::Ejected {
        until: tokio::time::Instant::now() + Duration::from_secs(3600),
    });
    for _ in 0..1_000_000 {
        let filter = Filter::new().exclude(&exclude);
        black_box(pick::p2c(snapshot.entries(), &filter, &mut ThreadRng));
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("stack") => stack(true),
        Some("balance") => stack(false),
        Some("pick") => picks(),
        _ => {
            stack(true);
            stack(false);
            picks();
        }
    }
}
