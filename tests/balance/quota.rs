//! Provider quotas through `Balance`: a quota spent is a full endpoint (the pick moves on, the
//! request waits for the refill or fails saying when), every reservation comes back, and a
//! five-minute run at 1.5× the quota stays within it in every 60-second window, near full.
//!
//! The providers here are in-process services that enforce their own quota over a true
//! sliding 60-second window (a log of what they served), answer 429 beyond it, and send
//! OpenAI's rate-limit headers: what the router sees of a hosted provider.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    endpoint::{Quota, QuotaKind, Reservation},
    hints::Tokens,
    http_error::ErrorReply,
    BalanceLayer, EndpointConfig, Pool, QuotaExhausted,
};

use crate::support::served;

type Provider = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

const MINUTE: Duration = Duration::from_secs(60);

/// What a simulated provider served: when, and how many tokens (prompt and output).
#[derive(Default)]
struct Log {
    served: parking_lot::Mutex<Vec<(Instant, u64)>>,
    refused: AtomicU64,
}

impl Log {
    /// Tokens served in the 60 s before `at` (inclusive of `at`, exclusive of `at - 60 s`).
    fn window(&self, at: Instant) -> u64 {
        self.served
            .lock()
            .iter()
            .filter(|(t, _)| *t <= at && *t + MINUTE > at)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A provider with a quota of `tpm` tokens per sliding minute: a request says its prompt's
/// tokens and the output it will produce in `x-usage: input,output`; the provider counts both
/// when it takes the request, refuses with 429 what would exceed its quota, and answers after
/// `latency` with the usage and OpenAI's rate-limit headers.
fn provider(tpm: u64, latency: Duration, log: &Arc<Log>, headers: bool) -> Provider {
    let log = Arc::clone(log);
    BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
        let log = Arc::clone(&log);
        async move {
            let usage = req
                .headers()
                .get("x-usage")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(','))
                .map(|(i, o)| (i.parse::<u64>().unwrap(), o.parse::<u64>().unwrap()))
                .expect("x-usage");
            let now = Instant::now();
            let used = log.window(now);
            let tokens = usage.0 + usage.1;
            let remaining = tpm.saturating_sub(used);
            let reset = |served: &[(Instant, u64)]| {
                // Whole again when the newest request leaves the window.
                served
                    .last()
                    .map_or(Duration::ZERO, |(t, _)| *t + MINUTE - now)
            };
            let mut response = if tokens > remaining {
                log.refused.fetch_add(1, SeqCst);
                let mut r = Response::new(Full::new(Bytes::from_static(b"rate limited")));
                *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                r
            } else {
                log.served.lock().push((now, tokens));
                tokio::time::sleep(latency).await;
                let mut r = Response::new(Full::new(Bytes::new()));
                r.extensions_mut().insert(Tokens::new(usage.0, usage.1));
                r
            };
            if !headers {
                return Ok(response);
            }
            let remaining = tpm.saturating_sub(log.window(Instant::now()));
            let reset = {
                let served = log.served.lock();
                reset(&served)
            };
            let h = response.headers_mut();
            h.insert("x-ratelimit-limit-tokens", tpm.into());
            h.insert("x-ratelimit-remaining-tokens", remaining.into());
            let reset = format!("{}ms", reset.as_millis());
            h.insert("x-ratelimit-reset-tokens", reset.parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    }))
}

/// A request of `input` prompt tokens asking for at most `max` and producing `output`.
fn request(input: u64, max: u64, output: u64) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .header("x-usage", format!("{input},{output}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut().insert(Tokens::new(input, max));
    req
}

/// What a reader of the response's `usage` does: settles the reservation to it.
fn settle<B>(response: &Response<B>) {
    if let (Some(r), Some(used)) = (
        response.extensions().get::<Reservation>(),
        response.extensions().get::<Tokens>(),
    ) {
        r.settle(*used);
    }
}

/// Done-when: five minutes of virtual time at 1.5× the two endpoints' combined quota, requests
/// waiting in `Balance`'s queue for quota to return. Every sliding 60 s window of each
/// provider stays within its quota and, once the first minute has passed, reaches 90% of it;
/// no provider answers 429.
#[tokio::test(start_paused = true)]
async fn five_minutes_at_one_and_a_half_times_the_quota_stay_within_it_and_near_full() {
    five_minutes(false).await;
}

/// The same five minutes with the providers' rate-limit headers on every answer: a provider's
/// sliding window refills by what it served a minute before, so its figures must not make the
/// router spend faster than its own even refill allows.
#[tokio::test(start_paused = true)]
async fn five_minutes_with_the_providers_headers_stay_within_the_quota_and_near_full() {
    five_minutes(true).await;
}

async fn five_minutes(headers: bool) {
    const QUOTAS: [u64; 2] = [60_000, 40_000];
    let pool = Pool::new();
    let logs: Vec<Arc<Log>> = QUOTAS.iter().map(|_| Arc::default()).collect();
    for (i, (&tpm, log)) in QUOTAS.iter().zip(&logs).enumerate() {
        let config = EndpointConfig::new(format!("p{i}")).quota(
            Quota::new()
                .tokens_per_minute(tpm)
                .requests_per_minute(10_000),
        );
        pool.insert(config, provider(tpm, Duration::from_secs(2), log, headers))
            .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(256, Duration::from_secs(20))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    // Requests of 300-700 prompt tokens asking for 200-600 and producing half to all of it
    // (about 800 tokens on average), at 1.5 × 100,000 tokens per minute.
    let combined: u64 = QUOTAS.iter().sum();
    let per_request = 800.0;
    let interval = Duration::from_secs_f64(60.0 / (1.5 * combined as f64 / per_request));
    let start = Instant::now();
    let (served_ok, overloaded) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let limited = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut seed = 22u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut i = 0u32;
    while start.elapsed() < 5 * MINUTE {
        let input = 300 + next(401);
        let max = 200 + next(401);
        let output = max / 2 + next(max / 2 + 1);
        let (svc, ok, over) = (svc.clone(), Arc::clone(&served_ok), Arc::clone(&overloaded));
        let limited = Arc::clone(&limited);
        tasks.push(tokio::spawn(async move {
            match svc.oneshot(request(input, max, output)).await {
                Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                    limited.fetch_add(1, SeqCst);
                }
                Ok(response) => {
                    settle(&response);
                    ok.fetch_add(1, SeqCst);
                }
                Err(e) => {
                    assert!(
                        e.is::<tower_ai_balance::Overloaded>(),
                        "only a wait that times out or a full queue fails: {e}"
                    );
                    over.fetch_add(1, SeqCst);
                }
            }
        }));
        i += 1;
        tokio::time::sleep_until(start + interval * i).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = start + 5 * MINUTE;
    for ((&tpm, log), name) in QUOTAS.iter().zip(&logs).zip(["p0", "p1"]) {
        let (mut max, mut min) = (0, u64::MAX);
        let mut at = start;
        while at <= end {
            let w = log.window(at);
            max = max.max(w);
            if at >= start + MINUTE {
                min = min.min(w);
            }
            at += Duration::from_millis(250);
        }
        // Every window ends at some request's arrival: check those too.
        let arrivals: Vec<Instant> = log.served.lock().iter().map(|(t, _)| *t).collect();
        for t in arrivals {
            max = max.max(log.window(t));
        }
        println!(
            "{name} (provider headers {}): quota {tpm} tokens/min; any 60 s window used at \
             most {max} ({:.1}%), at least {min} ({:.1}%) after the first minute; 429s: {}",
            if headers { "on" } else { "off" },
            100.0 * max as f64 / tpm as f64,
            100.0 * min as f64 / tpm as f64,
            log.refused.load(SeqCst)
        );
        assert!(max <= tpm, "{name}: a 60 s window used {max} of {tpm}");
        assert!(
            min * 10 >= tpm * 9,
            "{name}: a window used only {min} of {tpm}"
        );
        assert_eq!(log.refused.load(SeqCst), 0, "{name} answered 429");
    }
    println!(
        "offered {i} requests: {} served, {} turned away by the queue",
        served_ok.load(SeqCst),
        overloaded.load(SeqCst)
    );
    for e in pool.endpoints() {
        assert_eq!(e.in_flight(), 0);
        for level in e.quota_levels(Instant::now()) {
            assert_eq!(
                level.in_flight, 0,
                "every reservation was settled or given back"
            );
        }
    }
}

/// One endpoint whose quota allows one request at once: with a queue the second waits for the
/// refill and is served then; without one it fails at once, saying when quota returns, and
/// `http_error` makes that a 429 with `Retry-After`.
#[tokio::test(start_paused = true)]
async fn a_spent_quota_waits_for_its_refill_or_fails_saying_when_it_returns() {
    let pool = Pool::new();
    let log = Arc::new(Log::default());
    pool.insert(
        EndpointConfig::new("p").quota(Quota::new().requests_per_minute(60).burst(0.02)),
        provider(1_000_000, Duration::ZERO, &log, true),
    )
    .unwrap();
    let queued = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(8, Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let start = Instant::now();
    queued.clone().oneshot(request(1, 1, 1)).await.unwrap();
    let second = queued.clone().oneshot(request(1, 1, 1)).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(served(&second).key().as_str(), "p");
    // 59 requests a minute refill after a burst of 1: the next fits 60/59 s later.
    assert!(
        waited >= Duration::from_millis(1_010) && waited < Duration::from_millis(1_030),
        "served {waited:?} after it queued"
    );

    let direct = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let err = direct.oneshot(request(1, 1, 1)).await.unwrap_err();
    let quota = err
        .downcast_ref::<QuotaExhausted>()
        .expect("QuotaExhausted");
    let retry = quota.retry_after();
    assert!(retry > Duration::from_secs(1) && retry <= Duration::from_millis(1_020));
    let answer = ErrorReply::from_error(&*err);
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.retry_after_duration(), Some(retry));
    let response = answer.into_response();
    assert_eq!(
        response.headers()["retry-after"],
        "2",
        "whole seconds, rounded up"
    );
    assert_eq!(log.refused.load(SeqCst), 0);
}

/// A quota spent in the first tier sends requests to the next tier, not to a 429. Another
/// client of the same key has spent 8,000 of the first tier's 10,000 tokens: the router's own
/// accounting would allow its whole burst of 5,000, but the provider's headers on the first
/// answer say what is really left, so the first tier serves two requests and the rest go to
/// the next tier, none refused.
#[tokio::test(start_paused = true)]
async fn a_spent_quota_spills_to_the_next_tier() {
    let pool = Pool::new();
    let (first, second) = (Arc::new(Log::default()), Arc::new(Log::default()));
    pool.insert(
        EndpointConfig::new("quota").quota(Quota::new().tokens_per_minute(10_000).burst(0.5)),
        provider(10_000, Duration::ZERO, &first, true),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("spill").tier(1),
        provider(u64::MAX, Duration::ZERO, &second, true),
    )
    .unwrap();
    first.served.lock().push((Instant::now(), 8_000));
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let mut tiers = [0, 0];
    for _ in 0..20 {
        let r = svc.clone().oneshot(request(500, 500, 500)).await.unwrap();
        settle(&r);
        tiers[served(&r).tier() as usize] += 1;
    }
    assert_eq!(
        tiers,
        [2, 18],
        "the 2,000 tokens the provider has left, then the next tier"
    );
    assert_eq!(first.refused.load(SeqCst), 0);
}

/// Requests that fail before a response, are cancelled while waiting for one, or are refused
/// by the provider give their whole reservation back; served ones keep their usage.
#[tokio::test(start_paused = true)]
async fn failed_and_cancelled_requests_give_their_reservation_back() {
    let pool = Pool::new();
    let failing =
        BoxCloneSyncService::new(tower::service_fn(|req: Request<Full<Bytes>>| async move {
            match req.headers().get("x-do").map(|v| v.as_bytes()) {
                Some(b"fail") => Err::<Response<Full<Bytes>>, _>(std::io::Error::other("refused")),
                Some(b"hang") => std::future::pending().await,
                _ => Ok(Response::new(Full::new(Bytes::new()))),
            }
        }));
    let e = pool
        .insert(
            EndpointConfig::new("p").quota(
                Quota::new()
                    .requests_per_minute(1_000)
                    .input_tokens_per_minute(100_000)
                    .output_tokens_per_minute(100_000)
                    .burst(0.5),
            ),
            failing,
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let at = Instant::now();
    let before = e.quota_levels(at);
    let mut fail = request(700, 300, 0);
    fail.headers_mut().insert("x-do", "fail".parse().unwrap());
    assert!(svc.clone().oneshot(fail).await.is_err());
    assert_eq!(
        e.quota_levels(at),
        before,
        "a failed request leaves no trace"
    );
    let mut hang = request(700, 300, 0);
    hang.headers_mut().insert("x-do", "hang".parse().unwrap());
    let cancelled = tokio::time::timeout(Duration::from_millis(10), svc.clone().oneshot(hang));
    assert!(cancelled.await.is_err());
    assert_eq!(
        e.quota_levels(at),
        before,
        "a cancelled request leaves no trace"
    );
    let ok = svc.clone().oneshot(request(700, 300, 0)).await.unwrap();
    let at = Instant::now();
    let used = |kind| {
        e.quota_levels(at)
            .into_iter()
            .find(|l| l.kind == kind)
            .unwrap()
            .used
    };
    assert_eq!(
        (used(QuotaKind::InputTokens), used(QuotaKind::OutputTokens)),
        (700, 300),
        "served without a usage: the estimate stands"
    );
    ok.extensions()
        .get::<Reservation>()
        .unwrap()
        .settle(Tokens::new(700, 42));
    assert_eq!(used(QuotaKind::OutputTokens), 42);
}

/// Under the `MeteringLayer`, the usage the answer reports settles the reservation: the
/// window is charged what the provider says was used, not the estimate.
#[tokio::test(start_paused = true)]
async fn the_answers_usage_settles_the_reservation() {
    let answer = r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":4}}"#;
    let server = tower::service_fn(move |_: Request<Full<Bytes>>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(answer))))
    });
    let pool = Pool::new();
    let e = pool
        .insert(
            EndpointConfig::new("p").quota(Quota::new().tokens_per_minute(100_000).burst(0.5)),
            server,
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(tower_ai_balance::metering::MeteringLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let response = svc.oneshot(request(500, 1_000, 0)).await.unwrap();
    let used = |e: &tower_ai_balance::Endpoint| e.quota_levels(Instant::now())[0].used;
    assert_eq!(used(&e), 1_500, "the estimate until the answer's end");
    crate::support::read_to_end(response.into_body())
        .await
        .unwrap();
    assert_eq!(used(&e), 34, "the usage the answer reported");
}
