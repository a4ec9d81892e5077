//! An OpenAI-compatible endpoint in front of two providers of different formats, in a few
//! lines: a self-hosted OpenAI-compatible server (tier 0) and an Anthropic Messages endpoint
//! (tier 1), both simulated on loopback. It streams a completion, crashes tier 0 and streams
//! again (now translated from Anthropic's events), then overloads tier 1 and shows the
//! OpenAI-format 503 with its Retry-After.
//!
//! ```sh
//! cargo run --example providers
//! ```

#[path = "support/model_server.rs"]
mod model_server;

use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use model_server::{Mode, ModelServer, Spec};
use tower::ServiceBuilder;
use tower_ai_balance::{
    buffered::BufferBodyLayer,
    client::{UpstreamConfig, Upstreams},
    failover::FailoverLayer,
    http_error::OpenAiErrorsLayer,
    BalanceLayer, BoxError, HealthFilterLayer,
};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let spec = |name: &str| Spec::new(name, Duration::from_millis(20), Duration::from_millis(5));
    let vllm = ModelServer::spawn(spec("vllm")).await;
    let claude = ModelServer::spawn(spec("claude")).await;

    // ---- What a user writes: the upstreams, the stack, the route. ----
    let pool = Upstreams::new()
        .add(UpstreamConfig::new(&format!("http://{}/v1", vllm.addr))?.model("gpt-4o"))
        .add(
            UpstreamConfig::new(&format!("http://{}", claude.addr))?
                .anthropic("sk-ant-...")
                .upstream_model("claude-sonnet-4-5")
                .model("gpt-4o")
                .tier(1),
        )
        .build_pool()?;
    let stack = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .layer(BufferBodyLayer::new(16 << 20))
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(30))
                .build()?,
        )
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool);
    let app = Router::new().route_service("/v1/chat/completions", stack);
    // ---- End of the user's code. ----

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("an OpenAI-compatible endpoint on http://{addr}/v1/chat/completions\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let ask = |stream: bool| {
        let body = serde_json::json!({"model": "gpt-4o", "stream": stream, "max_tokens": 5,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
        http::Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };

    println!("1. both tiers up: served by tier 0 (OpenAI format, passed through)");
    show(client.request(ask(true)).await?).await?;

    vllm.crash();
    println!("\n2. tier 0 crashed (connections refused): failed over to Anthropic, translated");
    show(client.request(ask(true)).await?).await?;

    claude.set_mode(Mode::Overloaded(3));
    println!("\n3. tier 1 overloaded (529 with retry-after: 3): an OpenAI-format error");
    show(client.request(ask(false)).await?).await?;
    println!(
        "\nrequests received: tier 0 {}, tier 1 {}",
        vllm.stats
            .received
            .load(std::sync::atomic::Ordering::SeqCst),
        claude
            .stats
            .received
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    Ok(())
}

async fn show(response: http::Response<hyper::body::Incoming>) -> Result<(), BoxError> {
    print!("   HTTP {}", response.status());
    if let Some(retry) = response.headers().get("retry-after") {
        print!(", retry-after: {}", retry.to_str()?);
    }
    println!();
    let body = response.into_body().collect().await?.to_bytes();
    for line in String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.is_empty())
    {
        println!("   {}", line.chars().take(150).collect::<String>());
    }
    Ok(())
}
