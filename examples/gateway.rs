//! An OpenAI-compatible gateway: `POST /v1/chat/completions` (streaming and not) and
//! `GET /v1/models`, balanced over upstreams with the whole stack (Failover, Route,
//! StreamAffinity, HealthFilter, Balance), and `GET /metrics` in Prometheus text.
//!
//! ```sh
//! cargo run --release --example gateway                       # embedded simulated upstreams
//! cargo run --release --example gateway -- --listen 127.0.0.1:8080 \
//!     --upstream http://127.0.0.1:9001,tier=0,models=llama-3-70b \
//!     --upstream https://api.example.com,key=$KEY,tier=1,models=gpt-4o
//! curl -N localhost:8080/v1/chat/completions -H 'content-type: application/json' \
//!     -d '{"model":"llama-3-70b","stream":true,"messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Upstreams come from `--upstream URL[,key=K][,tier=N][,models=a|b][,weight=W]` (repeated),
//! or from the `GATEWAY_UPSTREAMS` environment variable (the same, separated by spaces). With
//! none, three simulated model servers start on loopback. A stock OpenAI client pointed at the
//! gateway works; a client that disconnects mid-stream cancels the upstream request and frees
//! its slot. Ctrl-C shuts down gracefully. (This example speaks plain HTTP to upstreams.)

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/model_server.rs"]
mod model_server;

use std::time::Duration;

use model_server::{ModelServer, Spec};

#[tokio::main]
async fn main() -> Result<(), tower_ai_balance::BoxError> {
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut upstreams = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen ADDR")?,
            "--upstream" => upstreams.push(gateway::parse_upstream(
                &args.next().ok_or("--upstream SPEC")?,
            )?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if upstreams.is_empty() {
        if let Ok(env) = std::env::var("GATEWAY_UPSTREAMS") {
            for spec in env.split_whitespace() {
                upstreams.push(gateway::parse_upstream(spec)?);
            }
        }
    }
    let mut embedded = Vec::new();
    if upstreams.is_empty() {
        for (i, ttft) in [15u64, 15, 40].into_iter().enumerate() {
            let server = ModelServer::spawn(Spec::new(
                format!("sim-{i}"),
                Duration::from_millis(ttft),
                Duration::from_millis(10),
            ))
            .await;
            upstreams.push(gateway::parse_upstream(&format!("{}", server.uri()))?);
            embedded.push(server);
        }
        println!(
            "no upstreams given: {} simulated model servers on loopback",
            embedded.len()
        );
    }
    let pool = gateway::pool(&upstreams)?;
    for e in pool.endpoints() {
        println!("upstream {} (tier {})", e.key(), e.tier());
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, gateway::app(pool))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("shutting down");
        })
        .await?;
    Ok(())
}
