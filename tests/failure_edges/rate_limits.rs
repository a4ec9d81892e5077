//! A provider's explicit back-off is honoured, panic mode or not; when every endpoint that
//! could serve is cooling down the request fails at once, saying when the first comes back;
//! the only attempt's own 429 reaches the caller; 529 and 503 with `Retry-After` are rate
//! limits too.

use std::{sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    error::{AttemptsFailed, GaveUp},
    health::HealthFilterLayer,
    BalanceLayer, FailoverLayer, Health, RateLimited,
};

use crate::{
    gateway,
    model_server::{chat_request, Mode, ModelServer, Spec, Upstream},
    support::{http_pool, ms, read_to_end},
};

/// `d` is about `secs` seconds: at most that (a cooldown ends on a millisecond, rounded up),
/// and not much less (it counts down from when the answer came).
#[track_caller]
fn about(d: Duration, secs: u64) {
    let secs = Duration::from_secs(secs);
    assert!(
        d > secs - Duration::from_secs(5) && d <= secs + ms(1),
        "{d:?}, expected about {secs:?}"
    );
}

fn received(servers: &[ModelServer]) -> u64 {
    servers.iter().map(|s| s.stats.received.load(SeqCst)).sum()
}

#[tokio::test]
async fn cooling_endpoints_get_no_request_before_their_time_even_in_panic_mode() {
    let (pool, servers) = http_pool(2, ms(1), ms(1)).await;
    for s in &servers {
        s.set_mode(Mode::RateLimit(60));
    }
    // Every default: panic mode is on.
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let first = svc.clone().oneshot(chat_request(1, false)).await;
    let error = first.expect_err("both rate-limit");
    let failed = error
        .downcast_ref::<AttemptsFailed>()
        .expect("AttemptsFailed");
    assert_eq!(
        (failed.attempts().len(), failed.gave_up()),
        (2, GaveUp::NoEndpoints),
        "{error}"
    );
    about(failed.retry_after().expect("when to come back"), 60);
    assert_eq!(received(&servers), 2);
    for e in pool.endpoints() {
        assert!(matches!(e.health(), Health::CoolingDown { .. }), "{e:?}");
    }

    for _ in 0..20 {
        let error = svc
            .clone()
            .oneshot(chat_request(1, false))
            .await
            .expect_err("nothing may serve before the cooldown ends");
        let limited = error
            .downcast_ref::<RateLimited>()
            .unwrap_or_else(|| panic!("{error}"));
        about(limited.retry_after(), 60);
    }
    assert_eq!(
        received(&servers),
        2,
        "no request reached a cooling endpoint"
    );
}

#[tokio::test]
async fn the_gateway_answers_429_with_retry_after_when_every_upstream_cools_down() {
    let mut gw = gateway::Gateway::default();
    let mut servers = Vec::new();
    for i in 0..2 {
        let s = ModelServer::spawn(Spec::new(format!("m{i}"), ms(1), ms(1))).await;
        s.set_mode(Mode::RateLimit(60));
        gw.upstreams
            .push(format!("{},models=sim", s.uri()).parse().unwrap());
        servers.push(s);
    }
    let (app, _pool) = gw.build().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Upstream::client();
    let mut last = None;
    for _ in 0..3 {
        let body = r#"{"model":"sim","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;
        let request = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        last = Some((status, retry_after, body));
    }
    let (status, retry_after, body) = last.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let secs: u64 = retry_after
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((56..=61).contains(&secs), "Retry-After: {secs}");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["type"], "rate_limit_error", "{error}");
    assert!(error["error"]["message"].is_string(), "{error}");
    assert_eq!(
        received(&servers),
        2,
        "only the first request reached the upstreams"
    );
}

#[tokio::test]
async fn the_only_attempts_own_429_reaches_the_caller_with_its_body_and_headers() {
    let (pool, servers) = http_pool(1, ms(1), ms(1)).await;
    servers[0].set_mode(Mode::RateLimit(30));
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let response = svc
        .clone()
        .oneshot(chat_request(1, false))
        .await
        .expect("the upstream's own answer");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers().clone();
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    let body = read_to_end(response.into_body()).await.unwrap();
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        error["error"]["code"], "rate_limit_exceeded",
        "the provider's body"
    );
    assert!(matches!(
        pool.endpoints()[0].health(),
        Health::CoolingDown { .. }
    ));
    assert_eq!(pool.endpoints()[0].in_flight(), 0);
    // While it cools down, the next request is not sent: a typed error says when.
    let error = svc
        .oneshot(chat_request(1, false))
        .await
        .expect_err("cooling");
    assert!(error.is::<RateLimited>(), "{error}");
    assert_eq!(servers[0].stats.received.load(SeqCst), 1);
}

#[tokio::test]
async fn a_529_and_a_503_with_retry_after_cool_down_like_a_429() {
    let (pool, servers) = http_pool(1, ms(1), ms(1)).await;
    let svc = ServiceBuilder::new()
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone());
    let endpoint = pool.endpoints()[0].clone();

    // OpenAI's overload: 503 with Retry-After.
    servers[0].set_mode(Mode::Overloaded(7));
    let response = svc.clone().oneshot(chat_request(1, false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    read_to_end(response.into_body()).await.unwrap();
    let Health::CoolingDown { until } = endpoint.health() else {
        panic!("{:?}", endpoint.health())
    };
    about(until - tokio::time::Instant::now(), 7);
    endpoint.set_health(Health::Healthy);

    // Anthropic's overload: 529 (here on the Messages API's path).
    let messages = r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = Request::post("/v1/messages")
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .body(Full::new(Bytes::from(messages)))
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 529);
    read_to_end(response.into_body()).await.unwrap();
    let Health::CoolingDown { until } = endpoint.health() else {
        panic!(
            "a 529 is a rate limit, not a failure: {:?}",
            endpoint.health()
        )
    };
    about(until - tokio::time::Instant::now(), 7);
    let error = svc
        .oneshot(chat_request(1, false))
        .await
        .expect_err("cooling");
    assert!(error.is::<RateLimited>(), "{error}");
}
