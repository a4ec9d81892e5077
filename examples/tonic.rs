//! Client-side balancing of a gRPC service with tonic: three `grpc.health.v1` servers on
//! loopback (tonic-health, so no protoc at build time), one tonic `Channel` per server as the
//! endpoints of a pool, and `HealthFilter` over `Balance` as the client's transport. Unary
//! `Check` calls and server-streaming `Watch` calls go through it; the example prints how the
//! calls spread over the servers.
//!
//! ```sh
//! cargo run --release --example tonic
//! ```

use std::{collections::BTreeMap, time::Duration};

use tonic::transport::{Channel, Server};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use tower::ServiceBuilder;
use tower_ai_balance::{
    health::HealthFilterLayer, hints::Served, pick::Strategy, BalanceLayer, BoxError, Pool,
};

/// Calls made per server: (server, unary calls, streams).
pub(crate) type Spread = BTreeMap<String, (u64, u64)>;

/// Starts the servers, balances `unary` checks and `streams` watches over them, and returns
/// where the calls went.
pub(crate) async fn run(unary: usize, streams: usize) -> Result<Spread, BoxError> {
    let pool: Pool<Channel> = Pool::new();
    for i in 0..3 {
        // Take a free loopback port, then serve on it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tokio::spawn(async move {
            let _keep = reporter;
            Server::builder().add_service(service).serve(addr).await
        });
        let channel = loop {
            match Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
            {
                Ok(channel) => break channel,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        pool.insert(format!("grpc-{i}"), channel)?;
    }
    let transport = ServiceBuilder::new()
        .layer(HealthFilterLayer::new())
        // Three servers: a full scan costs nothing and is exact, where two random choices
        // can leave one server out of a handful of long streams.
        .layer(
            BalanceLayer::builder()
                .strategy(Strategy::LeastLoaded)
                .build()
                .expect("valid settings"),
        )
        .service(pool.clone());
    let client = HealthClient::new(transport);

    let mut spread = Spread::new();
    let mut calls = Vec::new();
    for _ in 0..unary {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let response = client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            let served = response
                .extensions()
                .get::<Served>()
                .map(|s| s.endpoint().key().to_string());
            Ok::<_, tonic::Status>(served.unwrap_or_default())
        }));
    }
    for call in calls {
        spread.entry(call.await??).or_default().0 += 1;
    }
    // Server-streaming: each watch holds its server for as long as it is open.
    let mut open = Vec::new();
    for _ in 0..streams {
        let response = client
            .clone()
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await?;
        let served = response
            .extensions()
            .get::<Served>()
            .map(|s| s.endpoint().key().to_string())
            .unwrap_or_default();
        let mut stream = response.into_inner();
        let first = stream.message().await?.ok_or("the watch ended at once")?;
        assert_eq!(
            first.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        spread.entry(served).or_default().1 += 1;
        open.push(stream);
    }
    let held: usize = pool.endpoints().iter().map(|e| e.in_flight()).sum();
    assert_eq!(held, streams, "each open stream holds its server");
    drop(open);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let held: usize = pool.endpoints().iter().map(|e| e.in_flight()).sum();
    assert_eq!(held, 0, "closed streams release their servers");
    Ok(spread)
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), BoxError> {
    let spread = run(300, 6).await?;
    println!("300 unary Check calls and 6 streaming Watch calls over 3 gRPC servers:");
    for (server, (unary, streams)) in &spread {
        println!("  {server}: {unary} unary, {streams} streams");
    }
    Ok(())
}
