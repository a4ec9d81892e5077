//! Tests of the request path's promises: nothing held after cancellation, failure,
//! timeout or retry; retries that re-send the request as it was, within the budget; a 429
//! passed through when nothing else can be tried; affinity and health as promised.
#![allow(unreachable_pub)]

mod script;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    failover::{Continuation, FailoverLayer, Hedge, RetryBudget},
    hints::Served,
    BalanceLayer, EndpointConfig, Pool,
};

use crate::script::{endpoint, Log, Script, Svc, Then};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn request() -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"stream\":true}")))
        .unwrap()
}

fn total_in_flight<S: Clone>(pool: &Pool<S>) -> usize {
    pool.endpoints().iter().map(|e| e.in_flight()).sum()
}

fn served_by<B>(r: &http::Response<B>) -> String {
    r.extensions()
        .get::<Served>()
        .unwrap()
        .endpoint()
        .key()
        .as_str()
        .to_owned()
}

/// Lets spawned work and timers run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A request waiting in `Balance`'s queue when `Failover`'s deadline drops it leaves no place
/// in the queue and no slot: a later request is served as soon as the endpoint frees up.
#[tokio::test(start_paused = true)]
async fn a_queued_request_dropped_by_the_deadline_holds_nothing() {
    let log = Log::default();
    let pool = Pool::new();
    // The first request's body stays open until the test drops it; every later one is quick.
    pool.insert(
        EndpointConfig::new("a").max_concurrency(1),
        endpoint("a", &log, |i| {
            if i == 0 {
                Script::ok(&[(0, "x")], Then::Hang)
            } else {
                Script::ok(&[(0, "y")], Then::End)
            }
        }),
    )
    .unwrap();
    let balance = BalanceLayer::builder()
        .queue(8, Duration::from_secs(60))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::builder().deadline(ms(100)).build().unwrap())
        .layer(balance)
        .service(pool.clone());
    let held = svc.clone().oneshot(request()).await.unwrap();
    assert_eq!(total_in_flight(&pool), 1);
    let e = svc
        .clone()
        .oneshot(request())
        .await
        .expect_err("waits past the deadline");
    eprintln!("{e}");
    assert_eq!(total_in_flight(&pool), 1, "only the open body holds a slot");
    drop(held);
    assert_eq!(total_in_flight(&pool), 0);
    let r = tokio::time::timeout(ms(10), svc.clone().oneshot(request()))
        .await
        .expect("served at once")
        .unwrap();
    drop(r);
    assert_eq!(total_in_flight(&pool), 0);
}

/// A hedge under a first-chunk wait: the slow side has sent its head but not its first chunk
/// when the hedge wins; dropping it releases its slot, and the winner's body, dropped
/// mid-stream, releases the other.
#[tokio::test(start_paused = true)]
async fn a_hedge_that_wins_before_the_first_chunk_releases_the_losers_head() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        "slow",
        endpoint("slow", &log, |_| Script::ok(&[(5_000, "late")], Then::End)),
    )
    .unwrap();
    pool.insert(
        "fast",
        endpoint("fast", &log, |_| {
            Script::ok(&[(10, "a"), (10, "b")], Then::Hang)
        }),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(30))
                .hedge(Hedge::After(ms(50)))
                .budget(RetryBudget::new(1.0, 100).unwrap())
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    // Make "slow" take the first attempt: exclude nothing, but try until it does.
    let mut tries = 0;
    loop {
        tries += 1;
        let r = svc.clone().oneshot(request()).await.unwrap();
        let who = served_by(&r);
        let mut body = r.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
        settle().await;
        assert_eq!(total_in_flight(&pool), 0, "after a response from {who}");
        if log.calls_to("slow") > 0 || tries > 20 {
            break;
        }
    }
    assert!(log.calls_to("slow") > 0, "slow took a first attempt");
}

/// The continuation request is in flight (its head not yet back) when the caller drops the
/// body: its slot is released, and so is every other.
struct Echo;
impl Continuation for Echo {
    fn continue_body(&self, original: &[u8], _streamed: &[u8]) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(original))
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_dropped_while_its_continuation_is_sent_holds_nothing() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").tier(0),
        endpoint("a", &log, |_| Script::ok(&[(0, "data: 1\n\n")], Then::Fail)),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("b").tier(1),
        endpoint("b", &log, |_| {
            Script::ok(&[(0, "data: 2\n\n")], Then::End).head_after(10_000)
        }),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .continuation(Echo)
                .budget(RetryBudget::new(1.0, 100).unwrap())
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let r = svc.oneshot(request()).await.unwrap();
    assert_eq!(served_by(&r), "a");
    let mut body = r.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: 1\n\n");
    // The stream breaks; the continuation goes to b, whose head takes 10 s.
    let poll = tokio::time::timeout(ms(100), body.frame()).await;
    assert!(poll.is_err(), "the continuation is pending");
    assert_eq!(log.calls_to("b"), 1, "the continuation was sent");
    assert_eq!(
        pool.get("a").unwrap().in_flight(),
        0,
        "the broken stream released a"
    );
    assert_eq!(pool.get("b").unwrap().in_flight(), 1);
    drop(body);
    settle().await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// With a budget that allows no retry, a continuation is not sent either.
#[tokio::test(start_paused = true)]
async fn an_empty_budget_sends_no_continuation_and_no_hedge() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").tier(0),
        endpoint("a", &log, |_| {
            Script::ok(&[(0, "data: 1\n\n")], Then::Fail).head_after(100)
        }),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("b").tier(1),
        endpoint("b", &log, |_| Script::ok(&[(0, "data: 2\n\n")], Then::End)),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .continuation(Echo)
                .hedge(Hedge::After(ms(10)))
                .budget(RetryBudget::new(0.0, 0).unwrap())
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let r = svc.oneshot(request()).await.unwrap();
    assert_eq!(served_by(&r), "a");
    let mut body = r.into_body();
    let _ = body.frame().await.unwrap().unwrap();
    let e = body
        .frame()
        .await
        .unwrap()
        .expect_err("the break reaches the caller");
    eprintln!("{e}");
    assert_eq!(log.calls_to("b"), 0, "nothing was sent to b");
    drop(body);
    assert_eq!(total_in_flight(&pool), 0);
}

fn quick_policy() -> tower_ai_balance::HealthPolicy {
    let mut p = tower_ai_balance::HealthPolicy::default();
    p.consecutive_failures = 2;
    p.base_ejection = Duration::from_secs(1);
    p.max_ejection = Duration::from_secs(60);
    p.trials = 1;
    p.slow_start = None;
    p
}

fn excluding(pool: &Pool<Svc>, keys: &[&str]) -> Request<Full<Bytes>> {
    let mut r = request();
    let mut x = tower_ai_balance::hints::Exclude::new();
    for k in keys {
        x.insert(&pool.get(k).unwrap());
    }
    r.extensions_mut().insert(x);
    r
}

/// A stream that was already running when its endpoint was ejected, and breaks after the
/// ejection ended, is late news, as it is while the ejection is in force: it is no failed
/// trial, and does not eject the endpoint again for twice as long before any trial was sent.
#[tokio::test(start_paused = true)]
async fn a_stream_from_before_an_ejection_that_breaks_after_it_is_no_failed_trial() {
    let log = Log::default();
    let pool = a_and_b(&log, |i| match i {
        0 => Script::ok(&[(0, "x"), (1_500, "y")], Then::Fail),
        1 | 2 => Script::status(500, &[], "broken"),
        _ => Script::ok(&[(0, "fine")], Then::End),
    });
    let svc = health_over_balance(&pool, quick_health());
    let a = pool.get("a").unwrap();
    // The long stream starts on a, healthy.
    let stream = svc.clone().oneshot(excluding(&pool, &["b"])).await.unwrap();
    let mut stream = stream.into_body();
    stream.frame().await.unwrap().unwrap();
    // Two failures eject a for 1 s.
    for _ in 0..2 {
        let r = svc.clone().oneshot(excluding(&pool, &["b"])).await.unwrap();
        assert_eq!(r.status(), 500);
        drop(r.into_body().collect().await);
    }
    assert!(
        matches!(a.health(), tower_ai_balance::Health::Ejected { .. }),
        "{:?}",
        a.health()
    );
    // The stream breaks at 1.5 s, after the ejection ended and before any trial.
    stream.frame().await.unwrap().unwrap();
    let broke = stream.frame().await.unwrap();
    assert!(broke.is_err());
    drop(stream);
    let now = tokio::time::Instant::now();
    if let tower_ai_balance::Health::Ejected { until } = a.health() {
        assert!(
            until <= now,
            "a was ejected again by a request sent before its first ejection: {:?} more",
            until - now
        );
    }
    // The trial goes to a and brings it back.
    let r = svc
        .clone()
        .oneshot(excluding(&pool, &["b"]))
        .await
        .expect("a takes its trial request");
    assert_eq!(served_by(&r), "a");
    drop(r.into_body().collect().await);
    assert_eq!(total_in_flight(&pool), 0);
}

/// A retry re-sends the request as the caller built it: method, URI, every header value in
/// order with its sensitive flag, and the body; on both of `Failover`'s paths (the first
/// attempt in place, and the boxed attempts a deadline needs).
#[tokio::test(start_paused = true)]
async fn a_retry_resends_method_uri_headers_with_their_flags_and_body() {
    for deadline in [None, Some(Duration::from_secs(60))] {
        let log = Log::default();
        let pool = Pool::new();
        pool.insert(
            EndpointConfig::new("a").tier(0),
            endpoint("a", &log, |_| Script::status(503, &[], "down")),
        )
        .unwrap();
        pool.insert(
            EndpointConfig::new("b").tier(1),
            endpoint("b", &log, |_| Script::ok(&[(0, "ok")], Then::End)),
        )
        .unwrap();
        let mut failover = FailoverLayer::builder();
        if let Some(d) = deadline {
            failover = failover.deadline(d);
        }
        let svc = ServiceBuilder::new()
            .layer(failover.build().unwrap())
            .layer(BalanceLayer::new())
            .service(pool.clone());
        let mut key = http::HeaderValue::from_static("Bearer sk-secret");
        key.set_sensitive(true);
        let request = Request::builder()
            .method("PATCH")
            .uri("http://gw.internal:8080/v1/chat/completions?x=1&y=%20")
            .header("authorization", key)
            .header("x-multi", "1")
            .header("content-type", "application/json")
            .header("x-multi", "2")
            .header("x-empty", "")
            .body(Full::new(Bytes::from_static(b"{\"messages\":[]}")))
            .unwrap();
        let r = svc.oneshot(request).await.unwrap();
        assert_eq!(served_by(&r), "b", "{deadline:?}");
        drop(r);
        let seen = log.seen.lock();
        assert_eq!(seen.len(), 2);
        let (first, retry) = (&seen[0].1, &seen[1].1);
        assert_eq!(retry.method, first.method);
        assert_eq!(retry.method, "PATCH");
        assert_eq!(retry.uri, first.uri);
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.body, "{\"messages\":[]}");
        let all = |h: &http::HeaderMap| {
            h.iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&retry.headers), all(&first.headers), "{deadline:?}");
        assert!(retry.headers["authorization"].is_sensitive());
        drop(seen);
        assert_eq!(total_in_flight(&pool), 0);
    }
}

/// A `Cost` hint at its extreme (a caller's own estimate, unchecked) neither panics in a
/// cost-aware pick nor in the pool's metrics, and is given back in full.
#[tokio::test(start_paused = true)]
async fn costs_at_their_extreme_neither_panic_nor_leak() {
    use tower_ai_balance::{hints::Cost, pick::Strategy};
    for strategy in [
        Strategy::PowerOfTwoChoices,
        Strategy::LeastLoaded,
        Strategy::PeakEwma,
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::Weighted,
        Strategy::LeastWork,
        Strategy::LeastWorkScan,
        Strategy::CostAware { max_load: 0.75 },
    ] {
        let log = Log::default();
        let pool = Pool::new();
        for name in ["a", "b"] {
            pool.insert(
                name,
                endpoint(name, &log, |_| Script::ok(&[(0, "x")], Then::Hang)),
            )
            .unwrap();
        }
        let svc = ServiceBuilder::new()
            .layer(BalanceLayer::builder().strategy(strategy).build().unwrap())
            .service(pool.clone());
        let mut held = Vec::new();
        for cost in [u64::MAX, u64::MAX, u64::MAX - 1, 2, 1] {
            let mut r = request();
            r.extensions_mut().insert(Cost(cost));
            held.push(svc.clone().oneshot(r).await.unwrap());
        }
        let _ = pool.metrics();
        for e in pool.endpoints() {
            let _ = e.outstanding();
        }
        drop(held);
        for e in pool.endpoints() {
            assert_eq!((e.in_flight(), e.outstanding()), (0, 0), "{strategy:?}");
        }
    }
}

/// A body that says it has `u64::MAX` bytes left and gives one chunk, then hangs.
struct Boundless {
    sent: bool,
}

impl http_body::Body for Boundless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if std::mem::replace(&mut self.sent, true) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"data: 1\n\n",
            )))))
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(u64::MAX)
    }
}

/// `Failover`'s body under a first-chunk wait adds the held chunk to the inner body's size
/// hint: an inner hint at its extreme neither panics nor wraps.
#[tokio::test(start_paused = true)]
async fn a_size_hint_at_its_extreme_survives_the_held_first_chunk() {
    let pool = Pool::new();
    pool.insert(
        "a",
        tower::service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Boundless { sent: false }))
        }),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(5))
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let r = svc.oneshot(request()).await.unwrap();
    let hint = http_body::Body::size_hint(r.body());
    assert!(hint.lower() <= hint.upper().unwrap_or(u64::MAX));
    assert!(hint.lower() >= 9, "{hint:?}");
    drop(r);
    assert_eq!(pool.get("a").unwrap().in_flight(), 0);
}

/// The only endpoint's 429 reaches the caller as it was (status, `Retry-After`, rate-limit
/// headers, body), whatever else `Failover` is set to do, and holds no slot.
#[tokio::test(start_paused = true)]
async fn the_only_429_passes_through_under_every_failover_setting() {
    type Make = fn() -> FailoverLayer;
    let settings: Vec<(&str, Make)> = vec![
        ("default", || FailoverLayer::new()),
        ("deadline", || {
            FailoverLayer::builder()
                .deadline(Duration::from_secs(60))
                .build()
                .unwrap()
        }),
        ("first chunk", || {
            FailoverLayer::builder()
                .first_chunk(Duration::from_secs(5))
                .build()
                .unwrap()
        }),
        ("hedge", || {
            FailoverLayer::builder()
                .hedge(Hedge::After(ms(10)))
                .build()
                .unwrap()
        }),
        ("continuation", || {
            FailoverLayer::builder().continuation(Echo).build().unwrap()
        }),
        ("one attempt", || {
            FailoverLayer::builder().attempts(1).build().unwrap()
        }),
    ];
    for (name, layer) in settings {
        let log = Log::default();
        let pool = Pool::new();
        pool.insert(
            "a",
            endpoint("a", &log, |_| {
                Script::status(
                    429,
                    &[
                        ("retry-after", "7"),
                        ("x-ratelimit-remaining-requests", "0"),
                        ("content-type", "application/json"),
                    ],
                    "{\"error\":\"slow down\"}",
                )
            }),
        )
        .unwrap();
        let svc = ServiceBuilder::new()
            .layer(layer())
            .layer(tower_ai_balance::HealthFilterLayer::new())
            .layer(BalanceLayer::new())
            .service(pool.clone());
        let r = svc
            .oneshot(request())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.status(), 429, "{name}");
        assert_eq!(r.headers()["retry-after"], "7", "{name}");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0", "{name}");
        assert_eq!(log.calls_to("a"), 1, "{name}");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "{\"error\":\"slow down\"}", "{name}");
        assert_eq!(total_in_flight(&pool), 0, "{name}");
    }
}

/// Rate-limit headers and `Retry-After` values of every odd shape, on a 200, a 429 and a 503,
/// from an endpoint with a quota (whose figures the headers correct): nothing panics, every
/// answer is a response or a typed error, and nothing stays held.
#[tokio::test(start_paused = true)]
async fn odd_rate_limit_headers_never_panic_or_hold_a_slot() {
    const VALUES: [&str; 22] = [
        "0",
        "-1",
        "1e9",
        "1.5",
        "99999999999999999999999999",
        "18446744073709551615",
        "18446744073709551616",
        "",
        " ",
        "NaN",
        "inf",
        "1h1h1h1h",
        "0.000000001ns",
        "9999999999999h",
        "1.5.5s",
        ".s",
        "5m-3s",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "9999-12-31T23:59:59.999999999999Z",
        "0000-01-01T00:00:00+23:59",
        "2026-02-30T25:61:61Z",
    ];
    const NAMES: [&str; 9] = [
        "retry-after",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "anthropic-ratelimit-tokens-reset",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ];
    let quota = tower_ai_balance::endpoint::Quota::new()
        .requests_per_minute(1_000_000)
        .tokens_per_minute(u64::MAX);
    for status in [200u16, 429, 503] {
        for value in VALUES {
            let log = Log::default();
            let pool = Pool::new();
            let headers: Vec<(&'static str, &'static str)> =
                NAMES.iter().map(|n| (*n, value)).collect();
            for name in ["a", "b"] {
                let headers = headers.clone();
                pool.insert(
                    EndpointConfig::new(name).quota(quota.clone()),
                    endpoint(name, &log, move |_| Script::status(status, &headers, "x")),
                )
                .unwrap();
            }
            let svc = ServiceBuilder::new()
                .layer(FailoverLayer::new())
                .layer(tower_ai_balance::HealthFilterLayer::new())
                .layer(BalanceLayer::new())
                .service(pool.clone());
            for _ in 0..3 {
                match svc.clone().oneshot(request()).await {
                    Ok(r) => drop(r.into_body().collect().await),
                    Err(e) => drop(e),
                }
            }
            assert_eq!(total_in_flight(&pool), 0, "{status} {value:?}");
        }
    }
}

/// Retries, hedges and continuations all draw on one budget shared by the layer's clones:
/// with a floor of 2 a second and no deposits, 10 failing requests at once get 2 retries.
#[tokio::test(start_paused = true)]
async fn concurrent_failures_share_the_retry_budget_across_clones() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").tier(0),
        endpoint("a", &log, |_| Script::status(500, &[], "no").head_after(10)),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("b").tier(1),
        endpoint("b", &log, |_| Script::ok(&[(0, "ok")], Then::End)),
    )
    .unwrap();
    let layer = FailoverLayer::builder()
        .budget(RetryBudget::new(0.0, 2).unwrap())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let calls: Vec<_> = (0..10).map(|_| svc.clone().oneshot(request())).collect();
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(log.calls_to("a"), 10);
    assert_eq!(log.calls_to("b"), 2, "two retries in the second");
    assert_eq!(ok, 2);
    drop(results);
    assert_eq!(total_in_flight(&pool), 0);
}

/// A body of given chunks that says it has ended once the last is taken, as a body of known
/// length does.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

type ChunkedSvc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    http::Response<Chunks>,
    std::convert::Infallible,
>;

/// An endpoint that answers with `chunks`.
fn chunked(chunks: Vec<Bytes>) -> ChunkedSvc {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let chunks = chunks.clone();
        async move { Ok(http::Response::new(Chunks(chunks.into()))) }
    }))
}

/// An answer whose one chunk is an error event counts as its endpoint's failure under a
/// first-chunk wait, and is retried elsewhere, also when an empty data frame comes before it.
#[tokio::test(start_paused = true)]
async fn an_error_event_after_an_empty_frame_counts_as_a_failure() {
    for empty_first in [false, true] {
        let pool = Pool::new();
        let event = Bytes::from_static(b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n");
        let chunks = if empty_first {
            vec![Bytes::new(), event]
        } else {
            vec![event]
        };
        pool.insert(EndpointConfig::new("a").tier(0), chunked(chunks))
            .unwrap();
        pool.insert(
            EndpointConfig::new("b").tier(1),
            chunked(vec![Bytes::from_static(b"data: {}\n\n")]),
        )
        .unwrap();
        let svc = ServiceBuilder::new()
            .layer(
                FailoverLayer::builder()
                    .first_chunk(Duration::from_secs(5))
                    .build()
                    .unwrap(),
            )
            .layer(BalanceLayer::new())
            .service(pool.clone());
        let r = svc.oneshot(request()).await.unwrap();
        assert_eq!(served_by(&r), "b", "empty first: {empty_first}");
        drop(r.into_body().collect().await);
        let a = pool.get("a").unwrap();
        assert_eq!(a.failures(), 1, "empty first: {empty_first}");
        assert_eq!(total_in_flight(&pool), 0);
    }
}

/// Upstream settings of every odd shape (URLs, keys, headers, command-line specs) are refused
/// with an error or accepted, never a panic; an accepted one builds a pool.
#[test]
fn odd_upstream_settings_never_panic() {
    use tower_ai_balance::client::{UpstreamConfig, Upstreams};
    const URLS: [&str; 20] = [
        "",
        " ",
        "http://",
        "https://",
        "http://:0",
        "http://[::1",
        "http://[::1]:99999",
        "https://user:pa%ss@host",
        "https://%zz:%@host/",
        "http://a@b@c/",
        "http://h/%",
        "http://h/v1?",
        "http://h/v1?#",
        "ftp://h",
        "//h/v1",
        "http://h:/v1/",
        "http://h/v1//",
        "http://\u{e9}.com/",
        "http://h/\u{1F600}",
        "HTTP://H/V1",
    ];
    for url in URLS {
        let _ = format!("{:?}", UpstreamConfig::new(url).map(|c| c.key().clone()));
        if let Ok(config) = UpstreamConfig::new(url) {
            for (name, value) in [
                ("x-a", "b\r\nc"),
                ("bad name", "v"),
                ("", ""),
                ("authorization", "\u{1F600}"),
                ("x-api-key", "\0"),
            ] {
                let c = config.clone().header(name, value);
                let _ = Upstreams::new().add(c).build_pool();
                let c = config.clone().key_header(name, value);
                let _ = Upstreams::new().add(c).build_pool();
                let c = config.clone().forward_header(name);
                let _ = Upstreams::new().add(c).build_pool();
            }
            let c = config
                .clone()
                .api_key("sk-\n")
                .weight(f64::NAN)
                .max_concurrency(0)
                .max_buffered(0)
                .default_max_tokens(u64::MAX);
            let _ = Upstreams::new().add(c).build_pool();
        }
        for options in [
            ",tier=-1",
            ",weight=NaN",
            ",weight=inf",
            ",max_concurrency=0",
            ",models=",
            ",models=|||",
            ",key=",
            ",key=env:",
            ",format=",
            ",format=anthropic,model=",
            ",=",
            ",",
            ",tier=1,tier=1",
        ] {
            let spec = format!("{url}{options}");
            if let Ok(c) = spec.parse::<UpstreamConfig>() {
                let _ = Upstreams::new().add(c).build_pool();
            }
        }
    }
}

/// Usage figures at and past `u64::MAX`, summed (Anthropic's input counts the cached
/// tokens in) and split anywhere: read without a panic.
#[test]
fn usage_figures_at_their_extreme_never_panic() {
    use tower_ai_balance::usage::UsageReader;
    let bodies = [
        concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":18446744073709551615,",
            "\"cache_read_input_tokens\":18446744073709551615,\"cache_creation_input_tokens\":18446744073709551615,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":184467440737095516150000}}\n\n",
        ),
        "{\"usage\":{\"prompt_tokens\":18446744073709551615,\"completion_tokens\":18446744073709551615,\"total_tokens\":18446744073709551615,\"prompt_tokens_details\":{\"cached_tokens\":18446744073709551615}}}",
        "data: {\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":1e400,\"prompt_tokens_details\":{\"cached_tokens\":99999999999999999999999999999}}}\n\n",
        "data: {\"usage\":{\"prompt_tokens\":1.5e3,\"completion_tokens\":0.0000001,\"prompt_tokens_details\":{\"cached_tokens\":-0}}}\n\n",
        "data: {\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":18446744073709551615}}\n\n",
    ];
    for body in bodies {
        for step in 1..=body.len() {
            let mut reader = UsageReader::new();
            for piece in body.as_bytes().chunks(step) {
                reader.push(piece);
            }
            let _ = reader.usage();
        }
    }
}

/// With many endpoints (ids beyond the exclusion mask's 64 bits), each retry goes to an
/// endpoint not tried yet: no endpoint is sent the request twice.
#[tokio::test(start_paused = true)]
async fn a_hundred_retries_never_revisit_an_endpoint() {
    const N: usize = 130;
    let log = Log::default();
    let pool = Pool::new();
    let names: Vec<&'static str> = (0..N)
        .map(|i| &*Box::leak(format!("e{i}").into_boxed_str()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let good = i == N - 1;
        pool.insert(
            *name,
            endpoint(name, &log, move |_| {
                if good {
                    Script::ok(&[(0, "ok")], Then::End)
                } else {
                    Script::status(503, &[], "no")
                }
            }),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .attempts(N)
                .budget(RetryBudget::new(0.0, 10_000).unwrap())
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone());
    let r = svc.oneshot(request()).await.unwrap();
    assert_eq!(served_by(&r), names[N - 1]);
    drop(r);
    for name in &names {
        assert!(
            log.calls_to(name) <= 1,
            "{name} was sent {} times",
            log.calls_to(name)
        );
    }
    assert_eq!(log.calls_to(names[N - 1]), 1);
    assert_eq!(total_in_flight(&pool), 0);
}

/// An endpoint's script for the back-off tests: two failures (the first two requests), a 429
/// with `Retry-After: 100` (the third), then fine answers. `slow` delays the failures' heads,
/// so that they are still in flight when the 429 comes.
fn fails_then_backs_off(slow: bool) -> impl Fn(usize) -> Script + Send + Sync + 'static {
    move |i| match i {
        0 | 1 if slow => Script::status(500, &[], "broken").head_after(10),
        0 | 1 => Script::status(500, &[], "broken"),
        2 => Script::status(429, &[("retry-after", "100")], "slow down"),
        _ => Script::ok(&[(0, "fine")], Then::End),
    }
}

/// The stack the back-off tests run: `HealthFilter` over `Balance` without panic mode.
type HealthStack = tower_ai_balance::health::HealthFilter<tower_ai_balance::Balance<Svc>>;

/// `HealthFilter` over `Balance` without panic mode.
fn health_over_balance(
    pool: &Pool<Svc>,
    health: tower_ai_balance::HealthFilterLayer,
) -> HealthStack {
    ServiceBuilder::new()
        .layer(health)
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone())
}

fn quick_health() -> tower_ai_balance::HealthFilterLayer {
    tower_ai_balance::HealthFilterLayer::builder()
        .policy(quick_policy())
        .build()
        .unwrap()
}

/// Endpoint `a` scripted by `script` and `b` always fine.
fn a_and_b(log: &Log, script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Pool<Svc> {
    let pool = Pool::new();
    pool.insert("a", endpoint("a", log, script)).unwrap();
    pool.insert(
        "b",
        endpoint("b", log, |_| Script::ok(&[(0, "b")], Then::End)),
    )
    .unwrap();
    pool
}

/// Two requests that fail slowly on the endpoint `others` leave, then its 429 while they are
/// in flight, then their failures.
async fn two_failures_around_a_429(svc: &HealthStack, pool: &Pool<Svc>, others: &[&str]) {
    let slow: Vec<_> = (0..2)
        .map(|_| svc.clone().oneshot(excluding(pool, others)))
        .collect();
    let slow = tokio::spawn(futures_util::future::join_all(slow));
    settle().await;
    let limited = svc.clone().oneshot(excluding(pool, others)).await.unwrap();
    assert_eq!(limited.status(), 429);
    drop(limited);
    for r in slow.await.unwrap() {
        drop(r.unwrap().into_body().collect().await);
    }
}

/// Five seconds on, far before the 100 s `Retry-After`: `send` reaches `name` no more.
async fn no_request_within_the_back_off(log: &Log, name: &str, send: impl std::future::Future) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = log.calls_to(name);
    send.await;
    assert_eq!(
        log.calls_to(name),
        calls,
        "a request reached {name} 5 s into its 100 s Retry-After"
    );
}

/// An endpoint cooling down for its `Retry-After` is ejected by failures of requests that
/// were already in flight: the ejection, shorter than the cooldown, must not end the
/// provider's back-off early. No request reaches it before its `Retry-After`.
#[tokio::test(start_paused = true)]
async fn an_ejection_does_not_cut_a_cooldown_short() {
    let log = Log::default();
    let pool = a_and_b(&log, fails_then_backs_off(true));
    let svc = health_over_balance(&pool, quick_health());
    let a = pool.get("a").unwrap();
    two_failures_around_a_429(&svc, &pool, &["b"]).await;
    // The two failures ejected a for 1 s.
    assert!(
        matches!(a.health(), tower_ai_balance::Health::Ejected { .. }),
        "{:?}",
        a.health()
    );
    no_request_within_the_back_off(&log, "a", svc.clone().oneshot(excluding(&pool, &["b"]))).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// An ejected endpoint whose trial request (after the ejection ended) is answered 429 with a
/// `Retry-After` gets no more requests before that time: the back-off holds whatever state
/// health was in.
#[tokio::test(start_paused = true)]
async fn a_429_to_a_trial_request_holds_the_endpoint_back_for_its_retry_after() {
    let log = Log::default();
    let pool = a_and_b(&log, fails_then_backs_off(false));
    let svc = health_over_balance(&pool, quick_health());
    let a = pool.get("a").unwrap();
    for _ in 0..2 {
        let r = svc.clone().oneshot(excluding(&pool, &["b"])).await.unwrap();
        drop(r.into_body().collect().await);
    }
    assert!(matches!(
        a.health(),
        tower_ai_balance::Health::Ejected { .. }
    ));
    // The ejection (1 s) ends; the trial is answered 429, Retry-After 100 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = svc.clone().oneshot(excluding(&pool, &["b"])).await.unwrap();
    assert_eq!(r.status(), 429);
    drop(r.into_body().collect().await);
    no_request_within_the_back_off(&log, "a", svc.clone().oneshot(excluding(&pool, &["b"]))).await;
    assert_eq!(total_in_flight(&pool), 0);
}

/// Probes that succeed bring an ejected endpoint back early, but not into a provider's
/// `Retry-After`: an endpoint ejected while it cooled down (or rate-limited while ejected)
/// gets no request before its back-off ends, however its probes go.
#[tokio::test(start_paused = true)]
async fn good_probes_do_not_end_a_providers_back_off_early() {
    let log = Log::default();
    let pool = a_and_b(&log, fails_then_backs_off(true));
    let health = quick_health();
    let mut probes = tower_ai_balance::health::ProbeConfig::default();
    probes.interval = ms(500);
    let probing = health.spawn_probes(
        &pool,
        |_e: std::sync::Arc<tower_ai_balance::Endpoint>| async { true },
        probes,
    );
    let svc = health_over_balance(&pool, health);
    two_failures_around_a_429(&svc, &pool, &["b"]).await;
    // Several rounds of good probes pass during the five seconds.
    no_request_within_the_back_off(&log, "a", svc.clone().oneshot(excluding(&pool, &["b"]))).await;
    probing.abort();
}

/// The last attempt goes past the tiers tried only when a tier beyond can serve: when the
/// tier beyond is all cooling down (its provider said wait), the attempt stays in the tier
/// tried, as it does when the tier beyond has no endpoint at all.
#[tokio::test(start_paused = true)]
async fn a_cooling_tier_beyond_does_not_take_the_last_attempt() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("a").tier(0),
        endpoint("a", &log, |_| Script::status(500, &[], "broken")),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("d").tier(0),
        endpoint("d", &log, |_| Script::ok(&[(0, "d")], Then::End)),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("c").tier(1),
        endpoint("c", &log, |_| {
            Script::status(429, &[("retry-after", "100")], "slow down")
        }),
    )
    .unwrap();
    let mut policy = quick_policy();
    policy.consecutive_failures = 1_000;
    let svc = ServiceBuilder::new()
        .layer(
            FailoverLayer::builder()
                .attempts(2)
                .budget(RetryBudget::new(1.0, 1_000).unwrap())
                .build()
                .unwrap(),
        )
        .layer(
            tower_ai_balance::HealthFilterLayer::builder()
                .policy(policy)
                .build()
                .unwrap(),
        )
        .layer(BalanceLayer::builder().panic_mode(false).build().unwrap())
        .service(pool.clone());
    // c answers 429: it cools down for 100 s.
    let r = svc
        .clone()
        .oneshot(excluding(&pool, &["a", "d"]))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    drop(r);
    let mut failed = Vec::new();
    for _ in 0..20 {
        match svc.clone().oneshot(request()).await {
            Ok(r) => assert_eq!(served_by(&r), "d"),
            Err(e) => failed.push(e.to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 20 failed though d was never tried: {}",
        failed.len(),
        failed.first().map_or("", |s| s.as_str())
    );
    assert_eq!(total_in_flight(&pool), 0);
}

/// An endpoint cooling down that fails when it may not be ejected (the pool's ejected share
/// is spent) is held back instead; the hold must not end its `Retry-After` early either.
#[tokio::test(start_paused = true)]
async fn a_hold_back_does_not_cut_a_cooldown_short() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        "x",
        endpoint("x", &log, |_| Script::status(500, &[], "broken")),
    )
    .unwrap();
    pool.insert("y", endpoint("y", &log, fails_then_backs_off(true)))
        .unwrap();
    let mut policy = quick_policy();
    policy.base_ejection = Duration::from_secs(60);
    let health = tower_ai_balance::HealthFilterLayer::builder()
        .policy(policy)
        .build()
        .unwrap();
    let svc = health_over_balance(&pool, health);
    // x is ejected: half of two, the most that may be.
    for _ in 0..2 {
        let r = svc.clone().oneshot(excluding(&pool, &["y"])).await.unwrap();
        drop(r.into_body().collect().await);
    }
    assert!(matches!(
        pool.get("x").unwrap().health(),
        tower_ai_balance::Health::Ejected { .. }
    ));
    // Two requests in flight on y, then its 429; then the two fail, and y is held back.
    two_failures_around_a_429(&svc, &pool, &["x"]).await;
    no_request_within_the_back_off(&log, "y", svc.clone().oneshot(request())).await;
}
