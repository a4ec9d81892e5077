//! An OpenAI-compatible gateway: `POST /v1/chat/completions` (streaming and not),
//! `GET /v1/models` and `GET /metrics` (Prometheus text), over HTTPS or HTTP upstreams of
//! OpenAI's or Anthropic's format, balanced with the whole stack (Failover, Route,
//! StreamAffinity, HealthFilter, Balance).
//!
//! ```sh
//! cargo run --release --example gateway                       # embedded simulated upstreams
//! cargo run --release --example gateway -- --listen 127.0.0.1:8080 \
//!     --upstream http://10.0.0.5:8000/v1,models=llama-3-70b \
//!     --upstream https://api.anthropic.com,format=anthropic,key=env:ANTHROPIC_API_KEY,model=claude-sonnet-4-5,models=llama-3-70b,tier=1
//! curl -N localhost:8080/v1/chat/completions -H 'content-type: application/json' \
//!     -d '{"model":"llama-3-70b","stream":true,"messages":[{"role":"user","content":"hi"}]}'
//! ```
//!
//! Upstreams come from `--upstream URL[,key=K|env:VAR][,format=openai|anthropic]
//! [,model=UPSTREAM_MODEL][,tier=N][,weight=W][,models=a|b][,max_concurrency=N]` (repeated),
//! and from `--config FILE`: a TOML file of `tower_ai_balance::config::Settings` (endpoints
//! whose key is their URL, with the labels `format`, `key_env` and `upstream_model`; the
//! health policy; the balance, failover and affinity settings; health probes and the engines'
//! metrics scrape). `--ca FILE` trusts a private CA besides the public roots. With no upstream, three simulated model servers start on
//! loopback (plain HTTP).
//!
//! Request bodies are limited to 16 MiB each and 256 MiB together (a `413`, or a `503` with
//! `Retry-After`); a stream's response head must come within 30 s (`balance.timeout`), a
//! non-streamed answer's within 30 s plus 250 ms per token it may generate. Errors are
//! OpenAI-format answers that name no upstream. `GET /v1/models` lists the models the
//! upstreams are configured with, and those the upstreams that name none list themselves
//! (OpenAI's or Anthropic's list; asked at start and every minute). A client that disconnects mid-stream cancels
//! the upstream request. Ctrl-C shuts down gracefully.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/model_server.rs"]
mod model_server;

use std::time::Duration;

use tower_ai_balance::{client::Client, BoxError};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut gw = gateway::Gateway::default();
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--upstream" => gw.upstreams.push(value()?.parse()?),
            "--config" => gw.settings = toml::from_str(&std::fs::read_to_string(value()?)?)?,
            "--ca" => {
                gw.client = Some(
                    Client::builder()
                        .ca_pem(&std::fs::read(value()?)?)
                        .build()?,
                )
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    // ---- Not the gateway: simulated upstreams, when none is given. ----
    let mut simulated = Vec::new();
    if gw.upstreams.is_empty() {
        for (i, ttft) in [15u64, 15, 40].into_iter().enumerate() {
            let spec = model_server::Spec::new(
                format!("sim-{i}"),
                Duration::from_millis(ttft),
                Duration::from_millis(10),
            );
            let server = model_server::ModelServer::spawn(spec).await;
            gw.upstreams.push(server.uri().to_string().parse()?);
            simulated.push(server);
        }
        println!(
            "no upstreams given: {} simulated model servers on loopback",
            simulated.len()
        );
    }
    // ---- End of the simulated upstreams. ----
    let (app, pool) = gw.build().await?;
    for e in pool.endpoints() {
        println!("upstream {} (tier {})", e.key(), e.tier());
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("shutting down");
        })
        .await?;
    Ok(())
}
