//! The whole stack behind axum: axum's streamed `Body` buffered for Failover, a body over the
//! limit refused with 413 before any upstream, and failover from a tier that refuses
//! connections to an Anthropic tier, streamed, or overloaded.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering::SeqCst, time::Duration};

use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::{client::legacy::Client as HyperClient, rt::TokioExecutor};
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    buffered::BufferBodyLayer,
    client::{Upstream, UpstreamConfig, Upstreams},
    error::AttemptsFailed,
    failover::FailoverLayer,
    http_error::{openai_response, OpenAiErrorsLayer},
    BalanceLayer, BoxError, HealthFilterLayer, Pool,
};

use crate::{
    model_server::{chat_request, Mode, ModelServer, Spec},
    support::{openai_stream, refusing_port, stream_text},
};

const LIMIT: usize = 64 << 10;

/// The few lines a user writes: buffer, fail over, judge health, balance; errors as
/// OpenAI-format answers; axum serves it.
fn app(pool: Pool<Upstream>) -> Router {
    let stack = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .layer(BufferBodyLayer::new(LIMIT))
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .layer(HealthFilterLayer::new())
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .service(pool);
    Router::new().route_service("/v1/chat/completions", stack)
}

async fn serve(pool: Pool<Upstream>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app(pool)).await.unwrap() });
    addr
}

async fn call<B>(request: Request<B>) -> (Response<()>, Bytes)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let client = HyperClient::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        Response::from_parts(parts, ()),
        body.collect().await.unwrap().to_bytes(),
    )
}

fn chat(addr: SocketAddr, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model": "gpt-4o", "stream": stream, "max_tokens": 4,
        "messages": [{"role": "user", "content": "hello"}]});
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-key")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn axum_bodies_are_buffered_and_bodies_over_the_limit_reach_no_upstream() {
    let server = ModelServer::spawn(Spec::new(
        "m",
        Duration::from_millis(1),
        Duration::from_millis(1),
    ))
    .await;
    let pool = Upstreams::new()
        .add(
            UpstreamConfig::new(&server.uri().to_string())
                .unwrap()
                .model("gpt-4o"),
        )
        .build_pool()
        .unwrap();
    let addr = serve(pool).await;

    let (head, body) = call(chat(addr, false)).await;
    assert_eq!(head.status(), StatusCode::OK);
    let completion: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(server.stats.received.load(SeqCst), 1);

    // Over the limit with a content-length, and streamed without one.
    let big = format!("{{\"model\":\"gpt-4o\",\"pad\":\"{}\"}}", "x".repeat(LIMIT));
    let (head, body) = call(
        Request::post(format!("http://{addr}/v1/chat/completions"))
            .body(Full::new(Bytes::from(big.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "request_too_large");
    let chunks: Vec<Result<_, Infallible>> = big
        .into_bytes()
        .chunks(4096)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let (head, _) = call(
        Request::post(format!("http://{addr}/v1/chat/completions"))
            .body(StreamBody::new(futures_util::stream::iter(chunks)))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        server.stats.received.load(SeqCst),
        1,
        "no oversized body reached the upstream"
    );
}

/// Tier 0: an upstream that refuses connections. Tier 1: the simulated Anthropic server.
async fn tiers() -> (Pool<Upstream>, ModelServer) {
    let claude = ModelServer::spawn(Spec::new(
        "claude",
        Duration::from_millis(1),
        Duration::from_millis(1),
    ))
    .await;
    let dead = refusing_port().await;
    let pool = Upstreams::new()
        .add(
            UpstreamConfig::new(&format!("http://{dead}/v1"))
                .unwrap()
                .api_key("self-hosted")
                .model("gpt-4o"),
        )
        .add(
            UpstreamConfig::new(&format!("http://{}", claude.addr))
                .unwrap()
                .anthropic("sk-ant")
                .upstream_model("claude-sim")
                .model("gpt-4o")
                .tier(1),
        )
        .build_pool()
        .unwrap();
    (pool, claude)
}

#[tokio::test]
async fn a_stream_fails_over_from_a_dead_tier_to_anthropic() {
    let (pool, claude) = tiers().await;
    let addr = serve(pool).await;
    let (head, body) = call(chat(addr, true)).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-type"], "text/event-stream");
    let chunks = openai_stream(&body);
    assert_eq!(stream_text(&chunks), "t0 t1 t2 t3 ");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
    assert_eq!(claude.stats.received.load(SeqCst), 1);
    // Not streamed either.
    let (head, body) = call(chat(addr, false)).await;
    assert_eq!(head.status(), StatusCode::OK);
    let completion: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "t0 t1 t2 t3 "
    );
}

#[tokio::test]
async fn an_overloaded_anthropic_tier_is_a_typed_error_and_a_503_with_retry_after() {
    let (pool, claude) = tiers().await;
    claude.set_mode(Mode::Overloaded(3));
    // The typed error, from the stack itself.
    let stack = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let error = stack.oneshot(chat_request(4, true)).await.unwrap_err();
    let failed = error
        .downcast_ref::<AttemptsFailed>()
        .expect("AttemptsFailed");
    assert_eq!(failed.attempts().len(), 2);
    assert_eq!(failed.retry_after(), Some(Duration::from_secs(3)));
    let response = openai_response(&error);
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "3");

    // The same through axum.
    let addr = serve(pool).await;
    let (head, body) = call(chat(addr, true)).await;
    assert_eq!(head.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = head.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    let error: Value = serde_json::from_slice(&body).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("sk-ant"),
        "{message}"
    );
}

#[tokio::test]
async fn an_anthropic_stream_that_opens_with_an_error_fails_over_before_its_first_chunk() {
    let spec = |name: &str| Spec::new(name, Duration::from_millis(1), Duration::from_millis(1));
    let claude = ModelServer::spawn(spec("claude")).await;
    let vllm = ModelServer::spawn(spec("vllm")).await;
    claude.set_mode(Mode::ErrorEvent);
    let pool = Upstreams::new()
        .add(
            UpstreamConfig::new(&format!("http://{}", claude.addr))
                .unwrap()
                .anthropic("k")
                .model("gpt-4o"),
        )
        .add(
            UpstreamConfig::new(&format!("http://{}/v1", vllm.addr))
                .unwrap()
                .model("gpt-4o")
                .tier(1),
        )
        .build_pool()
        .unwrap();
    let addr = serve(pool).await;
    let (head, body) = call(chat(addr, true)).await;
    assert_eq!(head.status(), StatusCode::OK);
    let chunks = openai_stream(&body);
    assert_eq!(stream_text(&chunks), "t0 t1 t2 t3 ");
    assert_eq!(chunks[0]["id"], "chatcmpl-vllm");
    assert_eq!(claude.stats.received.load(SeqCst), 1);
    assert_eq!(vllm.stats.received.load(SeqCst), 1);
}
