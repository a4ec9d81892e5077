//! Every failure a layer finds counts against its endpoint exactly once: an error event or a
//! stall before the first chunk (found by `Failover`), a stall mid-stream (ended by
//! `Balance`'s idle timeout), and a continuation that fails (and the break it followed).

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    failover::{FailoverLayer, OpenAiChat},
    health::HealthFilterLayer,
    BalanceLayer, Endpoint, EndpointConfig, Health, HealthPolicy, Pool,
};

use crate::{
    support::ms,
    wire::{delta, sse, whole, WireBody},
};

type Upstream = BoxCloneSyncService<Request<Full<Bytes>>, Response<WireBody>, Infallible>;

/// An endpoint service that answers each request with `answer()`.
fn upstream(answer: fn() -> Response<WireBody>) -> Upstream {
    BoxCloneSyncService::new(tower::service_fn(
        move |_: Request<Full<Bytes>>| async move { Ok::<_, Infallible>(answer()) },
    ))
}

/// 200 and an event stream that sends `first` (if any) and then nothing, ever.
fn stalls_after(first: Option<&'static str>) -> Response<WireBody> {
    let first = first.map(|text| Ok(Frame::data(delta("c", text))));
    let stream = futures_util::stream::iter(first).chain(futures_util::stream::pending());
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn error_event() -> Response<WireBody> {
    sse(
        vec![Bytes::from_static(
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        )],
        false,
    )
}

fn clean() -> Response<WireBody> {
    sse(vec![delta("spare", "fine")], false)
}

fn breaks_mid_way() -> Response<WireBody> {
    sse(vec![delta("c", "Once upon a time")], true)
}

fn answers_500() -> Response<WireBody> {
    whole(500, "application/json", r#"{"error":{"message":"boom"}}"#)
}

fn chat() -> Request<Full<Bytes>> {
    let body = r#"{"model":"m","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Ejects on the second failure in a row, whatever the pool's share.
fn two_strikes() -> HealthFilterLayer {
    let mut policy = HealthPolicy::default();
    policy.consecutive_failures = 2;
    policy.max_ejected_fraction = 1.0;
    policy.base_ejection = Duration::from_secs(600);
    policy.max_ejection = Duration::from_secs(600);
    HealthFilterLayer::builder().policy(policy).build().unwrap()
}

fn ejected(e: &Endpoint) -> bool {
    matches!(e.health(), Health::Ejected { .. })
}

/// Two requests, each failing once on `watched`: after the first, one failure and still in
/// (two counted would eject it); after the second, two and ejected (none counted would not).
async fn counts_once_each_time<S, F, Fut>(pool: &Pool<S>, watched: &[Arc<Endpoint>], run: F)
where
    S: Clone,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for n in 1..=2u64 {
        run().await;
        for e in watched {
            assert_eq!(e.failures(), n, "{}: failures after {n}", e.key());
            assert_eq!(
                ejected(e),
                n == 2,
                "{}: {:?} after {n}",
                e.key(),
                e.health()
            );
        }
        assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
    }
}

#[tokio::test(start_paused = true)]
async fn failures_found_before_the_first_chunk_count_once() {
    for (what, answer) in [
        ("an error event", error_event as fn() -> Response<WireBody>),
        ("a stall before the first chunk", || stalls_after(None)),
    ] {
        let pool = Pool::new();
        let bad = pool
            .insert(EndpointConfig::new("bad").tier(0), upstream(answer))
            .unwrap();
        pool.insert(EndpointConfig::new("spare").tier(1), upstream(clean))
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(
                FailoverLayer::builder()
                    .first_chunk(ms(1_000))
                    .build()
                    .unwrap(),
            )
            .layer(two_strikes())
            .layer(BalanceLayer::new())
            .service(pool.clone());
        eprintln!("{what}");
        counts_once_each_time(&pool, &[bad], || async {
            let response = svc.clone().oneshot(chat()).await.unwrap();
            response.into_body().collect().await.unwrap();
        })
        .await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_ended_by_the_idle_timeout_counts_once() {
    let pool = Pool::new();
    let stalled = pool
        .insert(
            EndpointConfig::new("stalls"),
            upstream(|| stalls_after(Some("t0"))),
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(two_strikes())
        .layer(
            BalanceLayer::builder()
                .idle_timeout(ms(1_000))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    counts_once_each_time(&pool, &[stalled], || async {
        let response = svc.clone().oneshot(chat()).await.unwrap();
        let error = response.into_body().collect().await.expect_err("stalled");
        assert!(error.to_string().contains("sent nothing"), "{error}");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_continuation_and_the_break_before_it_count_once_each() {
    let pool = Pool::new();
    let broken = pool
        .insert(
            EndpointConfig::new("breaks").tier(0),
            upstream(breaks_mid_way),
        )
        .unwrap();
    let refuses = pool
        .insert(
            EndpointConfig::new("answers-500").tier(1),
            upstream(answers_500),
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .continuation(OpenAiChat)
                .build()
                .unwrap(),
        )
        .layer(two_strikes())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    counts_once_each_time(&pool, &[broken, refuses], || async {
        let response = svc.clone().oneshot(chat()).await.unwrap();
        response
            .into_body()
            .collect()
            .await
            .expect_err("the stream ends broken");
    })
    .await;
}

/// 200 and a stream that opens with a keep-alive comment in a frame of its own (as proxies
/// that queue requests send while they wait), then an error event.
fn comment_then_error_event() -> Response<WireBody> {
    sse(
        vec![
            Bytes::from_static(b": keep-alive\n\n"),
            Bytes::from_static(b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n"),
        ],
        false,
    )
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_comment_is_not_the_first_chunk() {
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("bad").tier(0),
        upstream(comment_then_error_event),
    )
    .unwrap();
    pool.insert(EndpointConfig::new("spare").tier(1), upstream(clean))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(ms(1_000))
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let response = svc.oneshot(chat()).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("overloaded") && text.contains("fine"),
        "{text}"
    );
}
