//! One verdict per response: `Balance` judges each response once with the stack's one
//! classifier, and the load guard (the endpoint's counters and latency estimates),
//! `HealthFilter` and `Failover` all act on that verdict.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    classify::{Classify, DefaultClassifier, Outcome},
    health::HealthFilterLayer,
    hints::Served,
    BalanceLayer, EndpointConfig, FailoverLayer, Health, Pool,
};

type Body = BoxBody<Bytes, Infallible>;
type Upstream = BoxCloneSyncService<Request<Full<Bytes>>, Response<Body>, Infallible>;

/// How an upstream answers every request.
#[derive(Clone, Copy)]
enum Answer {
    /// This status and an empty body.
    Status(u16),
    /// 200 with `grpc-status` in the head and no body (a trailers-only gRPC answer).
    GrpcHead(&'static str),
    /// 200, one message, then `grpc-status` in the trailers.
    GrpcTrailers(&'static str),
    /// 200 with an SSE stream whose first event is an error.
    ErrorEvent,
}

fn upstream(answer: Answer) -> Upstream {
    BoxCloneSyncService::new(tower::service_fn(
        move |_req: Request<Full<Bytes>>| async move {
            let response = match answer {
                Answer::Status(code) => {
                    let mut r = Response::new(Full::new(Bytes::new()).boxed());
                    *r.status_mut() = StatusCode::from_u16(code).unwrap();
                    r
                }
                Answer::GrpcHead(code) => {
                    let mut r = Response::new(Full::new(Bytes::new()).boxed());
                    r.headers_mut()
                        .insert("grpc-status", HeaderValue::from_static(code));
                    r
                }
                Answer::GrpcTrailers(code) => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static(code));
                    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
                }
                Answer::ErrorEvent => Response::new(
                    Full::new(Bytes::from_static(
                        b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n",
                    ))
                    .boxed(),
                ),
            };
            Ok::<_, Infallible>(response)
        },
    ))
}

fn request() -> Request<Full<Bytes>> {
    Request::new(Full::new(Bytes::new()))
}

/// A gRPC server that fails fast (`UNAVAILABLE`, status 14) with HTTP 200 must look failing
/// to every part of the stack: ejected by health, and counted as failures in its own counters
/// and latency estimate, so that a least-latency picker is not drawn to it.
async fn a_grpc_failure_counts_everywhere(answer: Answer) {
    let pool = Pool::new();
    let failing = pool
        .insert(EndpointConfig::new("failing"), upstream(answer))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    for _ in 0..5 {
        let response = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert!(
        matches!(failing.health(), Health::Ejected { .. }),
        "five failures in a row eject"
    );
    assert_eq!(failing.requests(), 5);
    assert_eq!(
        failing.failures(),
        5,
        "the endpoint's own counters see the failures"
    );
    let ttfb = failing.ttfb_estimate(Instant::now()).unwrap();
    assert!(
        ttfb >= Duration::from_millis(900),
        "a fast failure never looks fast: {ttfb:?}"
    );
}

#[tokio::test]
async fn grpc_unavailable_in_the_head_counts_against_the_endpoint_everywhere() {
    a_grpc_failure_counts_everywhere(Answer::GrpcHead("14")).await;
}

#[tokio::test]
async fn grpc_unavailable_in_the_trailers_counts_against_the_endpoint_everywhere() {
    a_grpc_failure_counts_everywhere(Answer::GrpcTrailers("14")).await;
}

/// 418 is this deployment's "the upstream is broken", and 500 its "the request was bad".
#[derive(Clone, Copy)]
struct Inverted;

impl Classify for Inverted {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        match status.as_u16() {
            418 => Outcome::Failure,
            500 => Outcome::ClientError,
            _ => DefaultClassifier.classify_response(status, headers),
        }
    }
}

#[tokio::test]
async fn one_custom_classifier_is_obeyed_by_health_failover_and_the_load_guard() {
    let pool = Pool::new();
    let teapot = pool
        .insert(EndpointConfig::new("teapot"), upstream(Answer::Status(418)))
        .unwrap();
    let grumpy = pool
        .insert(EndpointConfig::new("grumpy"), upstream(Answer::Status(500)))
        .unwrap();
    let fine = pool
        .insert(EndpointConfig::new("fine"), upstream(Answer::Status(200)))
        .unwrap();
    let balance = BalanceLayer::builder()
        .classifier(Inverted)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(HealthFilterLayer::new())
        .layer(balance)
        .service(pool.clone());

    let mut answered_500 = 0;
    for _ in 0..90 {
        let response = svc.clone().oneshot(request()).await.unwrap();
        let served = response.extensions().get::<Served>().unwrap().clone();
        match response.status().as_u16() {
            // Failover retried every 418 elsewhere: the client never sees one.
            200 => assert_eq!(served.endpoint().key().as_str(), "fine"),
            500 => {
                // Not the endpoint's fault, so not retried, and not a failure.
                assert_eq!(served.endpoint().key().as_str(), "grumpy");
                assert_eq!(served.verdict(), Outcome::ClientError);
                answered_500 += 1;
            }
            other => panic!("answered {other}"),
        }
        response.into_body().collect().await.unwrap();
    }

    // The load guard: the teapot's answers are its failures, the grumpy one's are not.
    assert!(teapot.requests() >= 5);
    assert_eq!(teapot.failures(), teapot.requests());
    assert_eq!(grumpy.requests(), answered_500);
    assert_eq!(grumpy.failures(), 0);
    assert_eq!(fine.failures(), 0);
    // Health: the teapot is ejected, the grumpy endpoint is not.
    assert!(matches!(teapot.health(), Health::Ejected { .. }));
    assert_eq!(grumpy.health(), Health::Healthy);
    assert_eq!(fine.health(), Health::Healthy);
}

#[tokio::test]
async fn a_stream_failover_finds_broken_at_its_first_chunk_counts_against_its_endpoint_once() {
    let pool = Pool::new();
    let broken = pool
        .insert(
            EndpointConfig::new("broken").tier(0),
            upstream(Answer::ErrorEvent),
        )
        .unwrap();
    let spare = pool
        .insert(
            EndpointConfig::new("spare").tier(1),
            upstream(Answer::Status(200)),
        )
        .unwrap();
    let failover = FailoverLayer::builder()
        .first_chunk(Duration::from_secs(2))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(failover)
        .layer(HealthFilterLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    for i in 1..=5u64 {
        let response = svc.clone().oneshot(request()).await.unwrap();
        let served = response.extensions().get::<Served>().unwrap().clone();
        assert_eq!(served.endpoint().key().as_str(), "spare");
        response.into_body().collect().await.unwrap();
        // Each error event is one failure of the broken endpoint: no more, no less.
        assert_eq!((broken.requests(), broken.failures()), (i, i));
    }
    assert!(
        matches!(broken.health(), Health::Ejected { .. }),
        "five error events in a row eject"
    );
    assert_eq!((spare.failures(), spare.health()), (0, Health::Healthy));
}
