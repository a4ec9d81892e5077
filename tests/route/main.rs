//! Routing by content, capability and cost, and balancing by outstanding work.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

mod aliases;
mod openai;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    capability::{Require, Unmet, Unsatisfiable},
    load::LoadGuard,
    pick::{Filter, Picker, Strategy},
    route::{OpenAiRequest, OpenAiRules, RouteLayer, Rules},
    BalanceLayer, Endpoint, EndpointConfig, Pool,
};

use crate::support::{echo, finish, served, Echo, Held};

fn required(require: Require) -> Request<Full<Bytes>> {
    let mut r = Request::new(Full::new(Bytes::new()));
    r.extensions_mut().insert(require);
    r
}

fn chat(model: &str, prompt_chars: usize, max_tokens: u32) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": model, "max_tokens": max_tokens, "stream": true,
        "messages": [{"role": "user", "content": "x".repeat(prompt_chars)}],
    });
    Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn a_request_for_a_model_never_reaches_an_endpoint_without_it() {
    let pool: Pool<Echo> = Pool::new();
    pool.insert(EndpointConfig::new("a-only").model("A"), echo("a-only"))
        .unwrap();
    pool.insert(EndpointConfig::new("b-only").model("B"), echo("b-only"))
        .unwrap();
    pool.insert(
        EndpointConfig::new("a-and-b").model("A").model("B"),
        echo("a-and-b"),
    )
    .unwrap();
    pool.insert(EndpointConfig::new("any"), echo("any"))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let r = svc
            .clone()
            .oneshot(required(Require::model("A")))
            .await
            .unwrap();
        let key = served(&r).key().to_string();
        assert_ne!(key, "b-only");
        seen.insert(key);
    }
    assert_eq!(seen.len(), 3, "every endpoint with A took some: {seen:?}");
    // A model nobody names goes to the endpoint that serves any; without it, a typed error.
    let r = svc
        .clone()
        .oneshot(required(Require::model("C")))
        .await
        .unwrap();
    assert_eq!(served(&r).key().as_str(), "any");
    pool.remove("any");
    let e = svc
        .oneshot(required(Require::model("C")))
        .await
        .expect_err("nobody serves C");
    let e = e.downcast_ref::<Unsatisfiable>().expect("Unsatisfiable");
    assert_eq!(e.unmet(), &Unmet::Model("C".into()));
    assert!(e.to_string().contains("\"C\""), "{e}");
}

#[tokio::test]
async fn a_100k_token_prompt_never_reaches_an_8k_context_endpoint() {
    let pool: Pool<Echo> = Pool::new();
    for (name, context) in [("small-0", 8_192), ("small-1", 8_192), ("long", 131_072)] {
        pool.insert(
            EndpointConfig::new(name)
                .model("llama")
                .max_context(context),
            echo(name),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(OpenAiRules(Rules::new())))
        .layer(BalanceLayer::new())
        .service(pool);
    for _ in 0..200 {
        let r = svc
            .clone()
            .oneshot(chat("llama", 400_000, 1000))
            .await
            .unwrap();
        assert_eq!(served(&r).key().as_str(), "long");
    }
    let mut small = 0;
    for _ in 0..200 {
        let r = svc.clone().oneshot(chat("llama", 400, 100)).await.unwrap();
        small += usize::from(served(&r).key().as_str().starts_with("small"));
    }
    assert!(
        small > 100,
        "short prompts use the small endpoints too: {small}"
    );
    let e = svc
        .oneshot(chat("llama", 800_000, 1000))
        .await
        .expect_err("too long for any");
    assert_eq!(
        e.downcast_ref::<Unsatisfiable>().unwrap().unmet(),
        &Unmet::Context(201_000)
    );
}

#[tokio::test]
async fn traffic_stays_on_the_cheap_endpoints_until_their_threshold_then_spills() {
    let held = Held::default();
    let pool = Pool::new();
    for (name, price) in [
        ("cheap-0", 0.1),
        ("cheap-1", 0.1),
        ("dear-0", 1.0),
        ("dear-1", 1.0),
    ] {
        pool.insert(
            EndpointConfig::new(name)
                .max_concurrency(4)
                .price(price, price),
            held.service(name),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .strategy(Strategy::CostAware { max_load: 0.75 })
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let mut keys = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let r = svc
            .clone()
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        keys.push(served(&r).key().to_string());
        bodies.push(r.into_body());
    }
    // 3 of 4 slots on each cheap endpoint is the threshold: the 7th request spills.
    assert!(keys[..6].iter().all(|k| k.starts_with("cheap")), "{keys:?}");
    assert!(keys[6..].iter().all(|k| k.starts_with("dear")), "{keys:?}");
    for name in ["cheap-0", "cheap-1", "dear-0", "dear-1"] {
        held.release(name);
    }
    for b in bodies {
        finish(b).await;
    }
    // With room again, it goes back to the cheap ones.
    let r = svc
        .oneshot(
            Request::builder()
                .header("x-quick", "1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(served(&r).key().as_str().starts_with("cheap"));
}

/// A virtual-time run of tiny and huge requests: returns the time-averaged max/mean outstanding
/// work across endpoints.
fn imbalance(strategy: Strategy) -> f64 {
    let endpoints: Vec<Arc<Endpoint>> = (0..8)
        .map(|i| Endpoint::new(EndpointConfig::new(format!("e{i}"))).unwrap())
        .collect();
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(17);
    let picker = Picker::new(strategy);
    let t0 = tokio::time::Instant::now();
    let mut running: Vec<(u64, LoadGuard)> = Vec::new();
    let (mut sum, mut samples) = (0.0, 0);
    for tick in 0..20_000u64 {
        // One arrival a tick: 90% tiny (50 tokens), 10% huge (5,000 tokens); each endpoint
        // serves 120 tokens a tick, so the pool runs at about 60% of capacity.
        let cost = if rand::RngCore::next_u32(&mut rng) % 10 == 0 {
            5_000
        } else {
            50
        };
        let filter = Filter::new().cost(cost);
        let i = picker.pick(&endpoints, &filter, &mut rng).unwrap();
        let now = t0 + Duration::from_millis(tick);
        let guard = LoadGuard::acquire_at(&endpoints[i], cost, now).unwrap();
        let done = tick + cost.div_ceil(120) * endpoints[i].in_flight() as u64;
        running.push((done, guard));
        running.retain(|(done, _)| *done > tick);
        let work: Vec<f64> = endpoints.iter().map(|e| e.outstanding() as f64).collect();
        let mean = work.iter().sum::<f64>() / work.len() as f64;
        if tick > 1000 && mean > 0.0 {
            sum += work.iter().cloned().fold(0.0, f64::max) / mean;
            samples += 1;
        }
    }
    sum / samples as f64
}

#[test]
fn least_outstanding_work_keeps_work_more_even_than_least_connections() {
    let by_work = imbalance(Strategy::LeastWork);
    let by_work_scan = imbalance(Strategy::LeastWorkScan);
    let by_connections = imbalance(Strategy::LeastLoaded);
    eprintln!(
        "max/mean outstanding work, tiny and huge requests: least work (p2c) {by_work:.2}, least work (scan) {by_work_scan:.2}, least connections (scan) {by_connections:.2}"
    );
    assert!(
        by_work_scan < by_connections,
        "{by_work_scan} vs {by_connections}"
    );
    assert!(by_work < by_connections, "{by_work} vs {by_connections}");
}

#[tokio::test]
async fn the_json_extractor_reads_the_request_and_leaves_the_body_intact() {
    let request = chat("llama-70b", 4_000, 300);
    let before = request.body().clone().collect().await.unwrap().to_bytes();
    let info = OpenAiRequest::read(request.body()).unwrap().unwrap();
    assert_eq!(info.model.as_deref(), Some("llama-70b"));
    assert_eq!((info.prompt_tokens, info.max_tokens), (1_000, 300));
    let after = request.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(before, after);
    assert!(OpenAiRequest::parse(b"not json").is_err());
    assert_eq!(OpenAiRequest::parse(b"").unwrap(), None, "nothing to read");
    let info = OpenAiRequest::parse(br#"{"model":"x","input":"an embedding"}"#)
        .unwrap()
        .unwrap();
    assert_eq!(
        info.model.as_deref(),
        Some("x"),
        "neither messages nor prompt: the model still counts"
    );
}
