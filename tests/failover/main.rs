//! The Failover layer over real HTTP on loopback: retries elsewhere, tiers, the budget,
//! replay, the first-chunk boundary, stalls and hedging.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

use std::{
    sync::atomic::{AtomicUsize, Ordering::SeqCst},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    error::{AttemptsFailed, GaveUp, NotReplayable, Stalled},
    failover::{FailoverLayer, Hedge, NoReplay, RetryBudget},
    health::HealthFilterLayer,
    BalanceLayer, EndpointConfig, HealthPolicy, Pool,
};

use crate::{
    model_server::{chat_request, Mode, ModelServer, Spec, Upstream},
    support::{http_pool, ms, read_to_end, served, HttpService},
};

/// Servers with the given (name, tier, time to first token), in one pool.
async fn tiered(specs: &[(&str, u32, u64)]) -> (Pool<HttpService>, Vec<ModelServer>) {
    let pool = Pool::new();
    let client = Upstream::client();
    let mut servers = Vec::new();
    for (name, tier, ttft) in specs {
        let s = ModelServer::spawn(Spec::new(*name, ms(*ttft), ms(2))).await;
        pool.insert(
            EndpointConfig::new(*name).tier(*tier),
            Upstream::new(client.clone(), s.uri()),
        )
        .unwrap();
        servers.push(s);
    }
    (pool, servers)
}

fn quick_policy() -> HealthPolicy {
    let mut p = HealthPolicy::default();
    p.base_ejection = ms(300);
    p.max_ejection = ms(600);
    p.slow_start = None;
    p
}

fn received(s: &ModelServer) -> u64 {
    s.stats.received.load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_three_returning_503_10000_idempotent_requests_all_succeed() {
    let (pool, servers) = http_pool(3, ms(0), ms(0)).await;
    servers[0].set_mode(Mode::Unavailable);
    let failover = FailoverLayer::new();
    let svc = ServiceBuilder::new()
        .layer(failover.clone())
        .layer(
            HealthFilterLayer::builder()
                .policy(quick_policy())
                .build()
                .unwrap(),
        )
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let ok = Arc::new(AtomicUsize::new(0));
    futures_util::StreamExt::for_each_concurrent(futures_util::stream::iter(0..10_000), 32, |_| {
        let (svc, ok) = (svc.clone(), Arc::clone(&ok));
        async move {
            let r = svc
                .oneshot(chat_request(1, false))
                .await
                .expect("every request succeeds");
            assert_eq!(r.status(), StatusCode::OK);
            read_to_end(r.into_body()).await.unwrap();
            ok.fetch_add(1, SeqCst);
        }
    })
    .await;
    assert_eq!(ok.load(SeqCst), 10_000);
    let sent: u64 = servers.iter().map(received).sum();
    eprintln!(
        "1 of 3 answering 503: 10,000 requests all succeeded, with {} retries ({} reached the 503 endpoint)",
        sent - 10_000,
        received(&servers[0])
    );
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
}

#[tokio::test]
async fn with_all_of_tier_0_down_requests_succeed_on_tier_1_and_return_when_it_heals() {
    let (pool, servers) = tiered(&[("gpu-0", 0, 1), ("gpu-1", 0, 1), ("provider", 1, 1)]).await;
    servers[0].set_mode(Mode::Fail);
    servers[1].set_mode(Mode::Fail);
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(
            HealthFilterLayer::builder()
                .policy(quick_policy())
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    for _ in 0..100 {
        let r = svc
            .clone()
            .oneshot(chat_request(1, false))
            .await
            .expect("served by tier 1");
        assert_eq!(served(&r).key().as_str(), "provider");
        read_to_end(r.into_body()).await.unwrap();
    }
    let wasted = received(&servers[0]) + received(&servers[1]);
    eprintln!("tier 0 down: 100 requests served by tier 1; {wasted} attempts reached tier 0");
    assert!(wasted <= 20, "tier 0 kept being tried: {wasted}");

    servers[0].set_mode(Mode::Normal);
    servers[1].set_mode(Mode::Normal);
    tokio::time::sleep(ms(700)).await;
    let mut on_tier_0 = 0;
    for _ in 0..50 {
        let r = svc.clone().oneshot(chat_request(1, false)).await.unwrap();
        on_tier_0 += usize::from(served(&r).key().as_str().starts_with("gpu"));
        read_to_end(r.into_body()).await.unwrap();
    }
    assert!(on_tier_0 >= 45, "only {on_tier_0} of 50 back on tier 0");
}

#[tokio::test]
async fn during_a_total_outage_the_budget_holds_retries_to_its_ratio() {
    let (pool, servers) = http_pool(3, ms(0), ms(0)).await;
    for s in &servers {
        s.set_mode(Mode::Fail);
    }
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .budget(RetryBudget::new(0.2, 0).unwrap())
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut gave_up = std::collections::HashMap::new();
    for _ in 0..1000 {
        let e = svc
            .clone()
            .oneshot(chat_request(1, false))
            .await
            .expect_err("all fail");
        let failed = e.downcast_ref::<AttemptsFailed>().expect("AttemptsFailed");
        *gave_up
            .entry(format!("{:?}", failed.gave_up()))
            .or_insert(0) += 1;
    }
    let sent: u64 = servers.iter().map(received).sum();
    let retries = sent - 1000;
    eprintln!("total outage, 1000 requests, budget 20%: {retries} retries; gave up: {gave_up:?}");
    assert!(
        retries <= 200,
        "{retries} retries for 1000 requests with a 20% budget"
    );
    assert!(retries >= 190, "the budget was not used: {retries}");
}

type Streamed = Request<NoReplay<Full<Bytes>>>;

#[tokio::test]
async fn a_body_that_cannot_be_replayed_gives_not_replayable_and_is_never_sent_empty() {
    let (http, servers) = tiered(&[("broken", 0, 1), ("spare", 1, 1)]).await;
    servers[0].set_mode(Mode::Unavailable);
    // Endpoints that take a streamed (non-replayable) upload.
    let unwrap: fn(Streamed) -> Request<Full<Bytes>> = |r| r.map(NoReplay::into_inner);
    let pool = Pool::new();
    let client = Upstream::client();
    for (e, server) in http.endpoints().iter().zip(&servers) {
        let service = ServiceBuilder::new()
            .map_request(unwrap)
            .service(Upstream::new(client.clone(), server.uri()));
        pool.insert(e.config(), service).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(BalanceLayer::new())
        .service(pool);
    let body = r#"{"stream":false,"max_tokens":1}"#;
    let request = Request::post("/v1/chat/completions")
        .body(NoReplay::new(Full::new(Bytes::from(body))))
        .unwrap();
    let e = svc.oneshot(request).await.expect_err("cannot be retried");
    let e = e.downcast_ref::<NotReplayable>().expect("NotReplayable");
    assert_eq!(e.attempts().len(), 1);
    assert_eq!(received(&servers[1]), 0, "no retry was sent, empty or not");
}

async fn clean_stream_after(mode: Mode) {
    let (pool, servers) = tiered(&[("flaky", 0, 1), ("steady", 1, 1)]).await;
    servers[0].set_mode(mode);
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool);
    let r = svc.oneshot(chat_request(5, true)).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "steady", "{mode:?}");
    let body = String::from_utf8(read_to_end(r.into_body()).await.unwrap().to_vec()).unwrap();
    assert!(
        body.starts_with("data: {\"id\":\"chatcmpl-steady\""),
        "{body}"
    );
    assert!(
        body.ends_with("data: [DONE]\n\n") && !body.contains("error"),
        "{body}"
    );
    assert_eq!(received(&servers[0]), 1);
}

#[tokio::test]
async fn a_200_whose_stream_fails_before_its_first_chunk_fails_over_to_a_clean_stream() {
    clean_stream_after(Mode::ResetBeforeFirstChunk).await;
    clean_stream_after(Mode::ErrorEvent).await;
}

#[tokio::test]
async fn a_stream_that_fails_after_its_first_chunk_is_not_retried() {
    let (pool, servers) = tiered(&[("flaky", 0, 1), ("steady", 1, 1)]).await;
    servers[0].set_mode(Mode::ResetMidStream);
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(2))
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool);
    let r = svc.oneshot(chat_request(5, true)).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "flaky");
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: "));
    let error = loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stream ended cleanly"),
        }
    };
    // The connection broke mid-body: the caller sees it as an error, not a clean end.
    eprintln!("after the first chunk, the caller saw: {error}");
    assert_eq!(received(&servers[1]), 0, "nothing was replayed");
}

#[tokio::test]
async fn with_a_continuation_policy_a_stream_broken_mid_way_carries_on_from_another_endpoint() {
    let (pool, servers) = tiered(&[("flaky", 0, 1), ("steady", 1, 1)]).await;
    servers[0].set_mode(Mode::ResetMidStream);
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(2))
                .continuation(tower_ai_balance::failover::OpenAiChat)
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let r = svc.oneshot(chat_request(5, true)).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "flaky");
    let body = String::from_utf8(
        read_to_end(r.into_body())
            .await
            .expect("no error reaches the caller")
            .to_vec(),
    )
    .unwrap();
    assert!(
        body.starts_with("data: {\"id\":\"chatcmpl-flaky\""),
        "{body}"
    );
    assert!(
        body.contains("chatcmpl-steady") && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );
    // The continuation asked for the rest: the original messages plus the partial answer.
    let sent: serde_json::Value =
        serde_json::from_slice(&servers[1].stats.last_body.lock()).unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["role"], "assistant");
    assert_eq!(messages.last().unwrap()["content"], "t0 ");
    assert_eq!(sent["max_tokens"], 4);
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
}

#[tokio::test]
async fn a_stalled_stream_is_ended_by_the_idle_timeout_and_counted_against_its_endpoint() {
    let (pool, servers) = http_pool(1, ms(1), ms(1)).await;
    servers[0].set_mode(Mode::StallAfterFirst);
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(
            BalanceLayer::builder()
                .idle_timeout(ms(200))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let r = svc.oneshot(chat_request(50, true)).await.unwrap();
    let endpoint = served(&r);
    let mut body = r.into_body();
    body.frame().await.unwrap().unwrap();
    let started = tokio::time::Instant::now();
    let error = body
        .frame()
        .await
        .unwrap()
        .expect_err("ended by the idle timeout");
    assert!(
        error.downcast_ref::<Stalled>().is_some()
            || error.source().is_some_and(|s| s.is::<Stalled>()),
        "{error}"
    );
    assert!(started.elapsed() >= ms(190) && started.elapsed() < ms(1000));
    assert_eq!(endpoint.in_flight(), 0, "its load was released");
    assert_eq!(
        endpoint.failures(),
        1,
        "and it counted as the endpoint's failure"
    );
    drop(body);
}

#[tokio::test]
async fn a_hedge_answers_for_a_slow_endpoint_and_the_cancelled_attempt_releases_its_slot() {
    let (pool, servers) = tiered(&[("slow", 0, 2000), ("fast", 1, 5)]).await;
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .hedge(Hedge::After(ms(50)))
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let started = tokio::time::Instant::now();
    let r = svc.oneshot(chat_request(1, false)).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "fast");
    assert!(
        started.elapsed() < ms(1000),
        "the hedge answered, not the slow endpoint"
    );
    read_to_end(r.into_body()).await.unwrap();
    assert_eq!(
        pool.get("slow").unwrap().in_flight(),
        0,
        "the cancelled attempt released its slot"
    );
    for _ in 0..100 {
        if servers[0].stats.disconnected.load(SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(ms(10)).await;
    }
    assert_eq!(
        servers[0].stats.disconnected.load(SeqCst),
        1,
        "the slow server saw the cancel"
    );
}

#[tokio::test]
async fn when_every_endpoint_is_cooling_down_the_error_says_when_the_first_returns() {
    let (pool, servers) = http_pool(2, ms(0), ms(0)).await;
    servers[0].set_mode(Mode::RateLimit(3));
    servers[1].set_mode(Mode::RateLimit(7));
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool);
    let e = svc
        .oneshot(chat_request(1, false))
        .await
        .expect_err("both rate-limit");
    let e = e.downcast_ref::<AttemptsFailed>().expect("AttemptsFailed");
    assert_eq!(e.attempts().len(), 2, "{e}");
    assert_eq!(e.gave_up(), GaveUp::NoEndpoints, "{e}");
    let back = e.retry_after().expect("a time to come back");
    assert!(
        back > Duration::from_millis(2500) && back <= Duration::from_secs(3),
        "{back:?}: {e}"
    );
    eprintln!("{e}");
}
