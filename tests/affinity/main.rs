//! The StreamAffinity layer: the same key to the same endpoint, across replicas, with bounded
//! loads, through removals and ejections, and for SSE streams on loopback.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    affinity::{hash_key, PromptPrefix, StreamAffinityLayer},
    pick::{self, Filter},
    BalanceLayer, EndpointConfig, Health, Pool,
};

use crate::{
    model_server::chat_request,
    support::{echo, finish, http_pool, served, Echo, Held},
};

const SESSION: HeaderName = HeaderName::from_static("x-session-id");

fn keyed(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .header(SESSION, key)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn echo_pool(names: &[&'static str]) -> Pool<Echo> {
    let pool = Pool::new();
    for name in names {
        pool.insert(*name, echo(name)).unwrap();
    }
    pool
}

/// Where each of `keys` goes in `pool` when nothing is in flight.
fn placement(pool: &Pool<Echo>, keys: &[String]) -> Vec<String> {
    let endpoints = pool.endpoints();
    keys.iter()
        .map(|k| {
            let i =
                pick::rendezvous(&endpoints, &Filter::new(), hash_key(k.as_bytes()), 1.25).unwrap();
            endpoints[i].key().to_string()
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("session-{i}")).collect()
}

const TEN: [&str; 10] = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"];

#[tokio::test]
async fn the_same_key_reaches_the_same_endpoint_across_1000_requests() {
    let pool = echo_pool(&TEN[..8]);
    let svc = ServiceBuilder::new()
        .layer(StreamAffinityLayer::header(SESSION))
        .layer(BalanceLayer::new())
        .service(pool);
    let first = served(&svc.clone().oneshot(keyed("chat-7")).await.unwrap())
        .key()
        .clone();
    for _ in 0..1000 {
        let r = svc.clone().oneshot(keyed("chat-7")).await.unwrap();
        assert_eq!(served(&r).key(), &first);
    }
    // Different keys spread over the endpoints.
    let mut used = std::collections::HashSet::new();
    for k in keys(200) {
        used.insert(
            served(&svc.clone().oneshot(keyed(&k)).await.unwrap())
                .key()
                .clone(),
        );
    }
    assert_eq!(used.len(), 8, "200 keys should reach all 8 endpoints");
}

#[tokio::test]
async fn two_replicas_with_their_own_pools_pick_the_same_endpoint_for_the_same_key() {
    // Built in different orders, so every endpoint has a different id in each.
    let a = echo_pool(&TEN);
    let mut reversed = TEN;
    reversed.reverse();
    let b = echo_pool(&reversed);
    let keys = keys(1000);
    assert_eq!(placement(&a, &keys), placement(&b, &keys));
}

#[tokio::test]
async fn removing_one_of_ten_endpoints_moves_only_the_keys_it_held() {
    let pool = echo_pool(&TEN);
    let keys = keys(10_000);
    let before = placement(&pool, &keys);
    pool.remove("e3").unwrap();
    let after = placement(&pool, &keys);
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(b, "e3", "a key moved off an endpoint that stayed");
            moved += 1;
        } else {
            assert_ne!(b, "e3");
        }
    }
    let share = moved as f64 / keys.len() as f64;
    eprintln!("removing 1 of 10 endpoints moved {share:.4} of 10,000 keys");
    assert!(
        (share - 0.1).abs() < 0.02,
        "moved {share}, expected 1/10 ± 0.02"
    );
}

#[tokio::test]
async fn weights_are_respected() {
    let pool = Pool::new();
    for (name, w) in [("w1", 1.0), ("w2", 2.0), ("w3", 3.0)] {
        pool.insert(EndpointConfig::new(name).weight(w), echo(name))
            .unwrap();
    }
    let keys = keys(30_000);
    let placed = placement(&pool, &keys);
    for (name, expected) in [("w1", 1.0 / 6.0), ("w2", 2.0 / 6.0), ("w3", 3.0 / 6.0)] {
        let share = placed.iter().filter(|p| *p == name).count() as f64 / keys.len() as f64;
        assert!(
            (share - expected).abs() < 0.02,
            "{name}: {share} vs {expected}"
        );
    }
}

#[tokio::test]
async fn a_hot_key_flooding_the_balancer_stays_within_the_load_bound() {
    let held = Held::default();
    let pool = Pool::new();
    for name in TEN {
        pool.insert(name, held.service(name)).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            StreamAffinityLayer::builder(tower_ai_balance::affinity::Header(SESSION))
                .bound(1.25)
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut bodies = Vec::new();
    for _ in 0..1000 {
        bodies.push(
            svc.clone()
                .oneshot(keyed("everyone"))
                .await
                .unwrap()
                .into_body(),
        );
    }
    let loads: Vec<usize> = pool.endpoints().iter().map(|e| e.in_flight()).collect();
    let average = 1000.0 / 10.0;
    let max = *loads.iter().max().unwrap();
    eprintln!("one hot key, 1000 requests over 10 endpoints: {loads:?}");
    assert!(
        max as f64 <= 1.25 * average + 1.0,
        "{max} over the bound: {loads:?}"
    );
    // Bounded loads fill the key's first endpoints up to the bound, in the key's order: 1000
    // requests at 125 each take exactly 8.
    assert_eq!(loads.iter().filter(|&&l| l > 0).count(), 8, "{loads:?}");
    for name in TEN {
        held.release(name);
    }
    for b in bodies {
        finish(b).await;
    }
}

#[tokio::test]
async fn affinity_yields_to_health_and_returns_in_stateless_mode() {
    let pool = echo_pool(&TEN[..5]);
    let svc = ServiceBuilder::new()
        .layer(StreamAffinityLayer::header(SESSION))
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let home = served(&svc.clone().oneshot(keyed("chat-1")).await.unwrap());
    home.set_health(Health::Ejected {
        until: tokio::time::Instant::now() + Duration::from_secs(60),
    });
    let away = served(&svc.clone().oneshot(keyed("chat-1")).await.unwrap());
    assert_ne!(away.key(), home.key(), "never to an ejected endpoint");
    for _ in 0..50 {
        let r = svc.clone().oneshot(keyed("chat-1")).await.unwrap();
        assert_eq!(
            served(&r).key(),
            away.key(),
            "the next in the key's order, consistently"
        );
    }
    home.set_health(Health::Healthy);
    let back = served(&svc.clone().oneshot(keyed("chat-1")).await.unwrap());
    assert_eq!(back.key(), home.key(), "stateless affinity returns home");
}

#[tokio::test]
async fn the_remembering_table_follows_a_key_that_moved_and_stays_bounded() {
    let pool = echo_pool(&TEN[..5]);
    let layer = StreamAffinityLayer::builder(tower_ai_balance::affinity::Header(SESSION))
        .remember(1000, Duration::from_secs(600))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let home = served(&svc.clone().oneshot(keyed("chat-1")).await.unwrap());
    // Removed: the key moves, and the table follows it.
    pool.remove(home.key().as_str()).unwrap();
    let moved = served(&svc.clone().oneshot(keyed("chat-1")).await.unwrap());
    assert_ne!(moved.key(), home.key());
    pool.insert(home.key().clone(), echo("back")).unwrap();
    for _ in 0..20 {
        let r = svc.clone().oneshot(keyed("chat-1")).await.unwrap();
        assert_eq!(
            served(&r).key(),
            moved.key(),
            "strict stickiness: it stays where it moved"
        );
    }
    // A flood of distinct keys leaves the table at its capacity.
    for i in 0..20_000 {
        svc.clone()
            .oneshot(keyed(&format!("flood-{i}")))
            .await
            .unwrap();
    }
    let (kept, capacity) = (layer.remembered(), layer.capacity());
    eprintln!("20,000 distinct keys: the table holds {kept} of a capacity of {capacity}");
    assert!(
        kept <= capacity && kept >= capacity / 2,
        "{kept} of {capacity}"
    );
}

#[tokio::test]
async fn a_prompt_prefix_keys_requests_that_share_it_and_leaves_the_body_intact() {
    let pool = echo_pool(&TEN);
    let svc = ServiceBuilder::new()
        .layer(StreamAffinityLayer::new(PromptPrefix(64)))
        .layer(BalanceLayer::new())
        .service(pool);
    let ask = |question: &str| {
        let body = format!(
            r#"{{"model":"m","stream":true,"messages":[{{"role":"system","content":"You are a careful assistant for the billing team."}},{{"role":"user","content":"{question}"}}]}}"#
        );
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let first = served(&svc.clone().oneshot(ask("one")).await.unwrap())
        .key()
        .clone();
    for q in ["two", "three", "a much longer question than the others"] {
        assert_eq!(
            served(&svc.clone().oneshot(ask(q)).await.unwrap()).key(),
            &first
        );
    }
    // The extractor peeks; the endpoint still gets the whole body.
    let request = ask("intact");
    let expected = request.body().clone().collect().await.unwrap().to_bytes();
    let mut affinity = StreamAffinityLayer::new(PromptPrefix(64)).layer(tower::service_fn(
        |req: Request<Full<Bytes>>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
        },
    ));
    use tower::Layer;
    let echoed = affinity.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(
        echoed.into_body().collect().await.unwrap().to_bytes(),
        expected
    );
}

#[tokio::test]
async fn an_sse_stream_stays_on_its_endpoint_and_a_reconnect_returns_to_it() {
    let (pool, servers) = http_pool(4, Duration::from_millis(2), Duration::from_millis(10)).await;
    let svc = ServiceBuilder::new()
        .layer(StreamAffinityLayer::header(SESSION))
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let stream_request = |last_event: Option<&str>| {
        let mut r = chat_request(1000, true);
        r.headers_mut().insert(SESSION, "stream-9".parse().unwrap());
        if let Some(id) = last_event {
            r.headers_mut().insert("last-event-id", id.parse().unwrap());
        }
        r
    };
    let response = svc.clone().oneshot(stream_request(None)).await.unwrap();
    let home = served(&response);
    let server = servers
        .iter()
        .find(|s| s.spec.name == home.key().as_str())
        .unwrap();
    let mut body = response.into_body();
    // Other traffic comes and goes while the stream runs; the stream stays where it is.
    for i in 0..40 {
        let r = svc.clone().oneshot(chat_request(1, false)).await.unwrap();
        crate::support::read_to_end(r.into_body()).await.unwrap();
        if i % 10 == 0 {
            body.frame().await.unwrap().unwrap();
            assert_eq!(home.in_flight(), 1);
            assert_eq!(
                server
                    .stats
                    .in_flight
                    .load(std::sync::atomic::Ordering::SeqCst),
                1
            );
        }
    }
    drop(body);
    // The client reconnects with the same key: it finds its instance again.
    let again = svc
        .oneshot(stream_request(Some("chatcmpl-4")))
        .await
        .unwrap();
    assert_eq!(served(&again).key(), home.key());
    drop(again);
}

#[tokio::test]
async fn the_remembering_table_keeps_small_integer_keys_up_to_its_capacity() {
    // A key function may return user ids as they are: 0, 1, 2, ...
    let layer = StreamAffinityLayer::builder(|r: &Request<Full<Bytes>>| {
        r.headers()
            .get("x-user-id")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    })
    .remember(10_000, Duration::from_secs(600))
    .build()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .layer(BalanceLayer::new())
        .service(echo_pool(&TEN));
    let user = |id: u64| {
        Request::builder()
            .header("x-user-id", id)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut home = Vec::new();
    for id in 0..2_000 {
        home.push(served(&svc.clone().oneshot(user(id)).await.unwrap()));
    }
    assert_eq!(
        layer.remembered(),
        2_000,
        "of a capacity of {}",
        layer.capacity()
    );
    for (id, home) in home.iter().enumerate() {
        let again = served(&svc.clone().oneshot(user(id as u64)).await.unwrap());
        assert_eq!(again.key(), home.key(), "user {id}");
    }
}

#[tokio::test]
async fn a_prompt_prefix_of_any_length_never_panics() {
    let pool = echo_pool(&TEN);
    // "messages" is not the first key: the prefix starts part-way into the body.
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hello"}]}"#;
    let request = || {
        Request::post("/v1/chat/completions")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    for n in [usize::MAX, usize::MAX - 1, usize::MAX / 2, 1 << 40, 0] {
        let svc = ServiceBuilder::new()
            .layer(StreamAffinityLayer::new(PromptPrefix(n)))
            .layer(BalanceLayer::new())
            .service(pool.clone());
        svc.oneshot(request()).await.unwrap();
    }
    // A prefix longer than the body keys the whole of it from "messages" on, whatever its length.
    let key = |n| tower_ai_balance::affinity::ExtractKey::extract(&PromptPrefix(n), &request());
    let from_messages = tower_ai_balance::affinity::hash_key(
        &body.as_bytes()[body.find("\"messages\"").unwrap()..],
    );
    assert_eq!(key(usize::MAX), Some(from_messages));
    assert_eq!(key(1 << 40), Some(from_messages));
    assert_eq!(key(0), None, "an empty prefix is no key");
}
