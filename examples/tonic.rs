//! Client-side balancing of a gRPC service with tonic: four `grpc.health.v1` servers on
//! loopback (tonic-health, so no protoc at build time), one of which sheds every call with
//! `UNAVAILABLE` before sending any message; one tonic `Channel` per server as the endpoints of
//! a pool; and `Failover` over `HealthFilter` over `Balance` as the client's transport. Unary
//! `Check` calls and server-streaming `Watch` calls go through it; a call the failing server
//! answers is retried on another server, so every call succeeds, and the health layer soon
//! ejects the failing server. The example prints how the calls spread over the servers.
//!
//! `Failover` sends a request again only if its body can be replayed, and a tonic request body
//! is a stream. `BufferBodyLayer` reads each request body (a unary or server-streaming call's
//! one message) into a `Full<Bytes>` first, and each endpoint's `Channel` takes it back as a
//! tonic body through `MapRequest`. Client-streaming and bidirectional calls, whose bodies do
//! not end, belong on a transport without the buffer (and so without retries).
//!
//! ```sh
//! cargo run --release --example tonic
//! ```

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use tonic::transport::{Channel, Server};
use tonic_health::pb::{
    health_client::HealthClient,
    health_server::{Health, HealthServer},
    HealthCheckRequest, HealthCheckResponse,
};
use tower::{util::MapRequest, ServiceBuilder};
use tower_ai_balance::{
    buffered::BufferBodyLayer, failover::RetryBudget, health::HealthFilterLayer, hints::Served,
    pick::Strategy, BalanceLayer, BoxError, FailoverLayer, Pool,
};

/// Calls made per server: (server, unary calls, streams).
pub(crate) type Spread = BTreeMap<String, (u64, u64)>;

/// Where the calls went, and what became of the failing server.
#[derive(Debug)]
pub(crate) struct Report {
    /// The successful calls per server.
    pub(crate) spread: Spread,
    /// Calls the failing server answered with `UNAVAILABLE`, each retried elsewhere.
    pub(crate) retried: u64,
    /// Whether the health layer ejected the failing server.
    pub(crate) ejected: bool,
}

/// An endpoint's service: a tonic `Channel` that takes a buffered (replayable) body.
type Buffered =
    MapRequest<Channel, fn(http::Request<Full<Bytes>>) -> http::Request<tonic::body::Body>>;

fn to_tonic(request: http::Request<Full<Bytes>>) -> http::Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

/// A health service that sheds every call: a trailers-only `UNAVAILABLE`, before any message.
struct Shedding;

#[tonic::async_trait]
impl Health for Shedding {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Err(tonic::Status::unavailable("shedding load"))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unavailable("shedding load"))
    }
}

/// Serves on a free loopback port, keeping `keep` alive as long as the server; returns a
/// channel to it.
async fn serve(
    router: tonic::transport::server::Router,
    keep: impl Send + 'static,
) -> Result<Channel, BoxError> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    tokio::spawn(async move {
        let _keep = keep;
        router.serve(addr).await
    });
    loop {
        match Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
        {
            Ok(channel) => return Ok(channel),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Starts the servers, balances `unary` checks and `streams` watches over them, and returns
/// where the calls went.
pub(crate) async fn run(unary: usize, streams: usize) -> Result<Report, BoxError> {
    let pool: Pool<Buffered> = Pool::new();
    let to_tonic: fn(_) -> _ = to_tonic;
    for i in 0..3 {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let channel = serve(Server::builder().add_service(service), reporter).await?;
        pool.insert(format!("grpc-{i}"), MapRequest::new(channel, to_tonic))?;
    }
    let channel = serve(
        Server::builder().add_service(HealthServer::new(Shedding)),
        (),
    )
    .await?;
    let down = pool.insert("grpc-down", MapRequest::new(channel, to_tonic))?;

    let transport = ServiceBuilder::new()
        // Unary and server-streaming request bodies are one message: buffered, they can be
        // sent again (gRPC's default maximum message is 4 MiB).
        .layer(BufferBodyLayer::new(4 << 20))
        // One server in four fails every call until the health layer ejects it, and the
        // calls start all at once: more than the default budget (20% of requests) allows, so
        // this one lets half of the requests retry, plus 100 retries a second.
        .layer(
            FailoverLayer::builder()
                .budget(RetryBudget::new(0.5, 100)?)
                .build()?,
        )
        .layer(HealthFilterLayer::new())
        // Four servers: a full scan costs nothing and is exact, where two random choices can
        // leave one server out of a handful of long streams.
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
    Ok(Report {
        spread,
        retried: down.failures(),
        ejected: matches!(down.health(), tower_ai_balance::Health::Ejected { .. }),
    })
}

#[tokio::main]
#[allow(dead_code)]
async fn main() -> Result<(), BoxError> {
    let report = run(300, 6).await?;
    println!("300 unary Check calls and 6 streaming Watch calls over 4 gRPC servers, one failing:");
    for (server, (unary, streams)) in &report.spread {
        println!("  {server}: {unary} unary, {streams} streams");
    }
    println!(
        "  grpc-down: answered UNAVAILABLE {} times, each retried on another server; {}",
        report.retried,
        if report.ejected {
            "ejected"
        } else {
            "not ejected"
        }
    );
    Ok(())
}
