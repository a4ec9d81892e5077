use std::{
    sync::{
        atomic::{AtomicU64, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use rand::{Rng, SeedableRng};
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    hints::Cost, BalanceLayer, BoxError, EndpointConfig, EndpointError, Overloaded, Pool,
};

type Body = UnsyncBoxBody<Bytes, BoxError>;

/// An endpoint that fails in every way a real one does: errors before answering, 500s,
/// streams that break midway, slow streams.
fn flaky(seed: u64) -> BoxCloneSyncService<Request<Full<Bytes>>, Response<Body>, BoxError> {
    let rng = Arc::new(parking_lot::Mutex::new(rand::rngs::StdRng::seed_from_u64(
        seed,
    )));
    BoxCloneSyncService::new(tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let roll: u32 = rng.lock().random_range(0..100);
        let frames: usize = rng.lock().random_range(1..6);
        let think = Duration::from_micros(rng.lock().random_range(0..2000));
        async move {
            tokio::time::sleep(think).await;
            match roll {
                0..=9 => Err::<Response<Body>, BoxError>("refused".into()),
                10..=19 => {
                    let mut r = Response::new(
                        Full::new(Bytes::from("boom"))
                            .map_err(|e| match e {})
                            .boxed_unsync(),
                    );
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(r)
                }
                _ => {
                    let breaks = roll < 35;
                    let body = futures_util::stream::iter(0..frames).then(move |i| async move {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        if breaks && i + 1 == frames {
                            Err::<_, BoxError>("reset mid-body".into())
                        } else {
                            Ok(http_body::Frame::data(Bytes::from("tok ")))
                        }
                    });
                    Ok(Response::new(BodyExt::boxed_unsync(StreamBody::new(
                        body.boxed(),
                    ))))
                }
            }
        }
    }))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    endpoint_errors: AtomicU64,
    overloaded: AtomicU64,
    body_errors: AtomicU64,
    cancelled: AtomicU64,
    dropped_mid_body: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_return_to_zero_after_10000_requests_with_cancellations_and_failures() {
    let pool = Pool::new();
    for i in 0..8u64 {
        let config = EndpointConfig::new(format!("e{i}")).max_concurrency(3 + i as usize % 2);
        pool.insert(config, flaky(i)).unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .queue(64, Duration::from_millis(1))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let tally = Arc::new(Tally::default());
    let requests = 10_000u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let plans: Vec<(u32, u64)> = (0..requests)
        .map(|_| (rng.random_range(0..100), rng.random_range(1..1000)))
        .collect();

    futures_util::stream::iter(plans)
        .for_each_concurrent(64, |(client, cost)| {
            let (svc, tally) = (svc.clone(), Arc::clone(&tally));
            async move {
                let mut req = Request::new(Full::new(Bytes::new()));
                req.extensions_mut().insert(Cost(cost));
                let call = svc.oneshot(req);
                // 10%: the client gives up before the response (cancelling mid-call).
                let response = if client < 10 {
                    match tokio::time::timeout(Duration::from_micros(u64::from(client) * 150), call)
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => {
                            tally.cancelled.fetch_add(1, SeqCst);
                            return;
                        }
                    }
                } else {
                    call.await
                };
                match response {
                    Ok(r) => {
                        let mut body = r.into_body();
                        // 10%: the client drops the stream after its first frame.
                        if client >= 90 {
                            let _ = body.frame().await;
                            tally.dropped_mid_body.fetch_add(1, SeqCst);
                            return;
                        }
                        match body.collect().await {
                            Ok(_) => tally.ok.fetch_add(1, SeqCst),
                            Err(_) => tally.body_errors.fetch_add(1, SeqCst),
                        };
                    }
                    Err(e) if e.is::<EndpointError>() => {
                        tally.endpoint_errors.fetch_add(1, SeqCst);
                    }
                    Err(e) if e.is::<Overloaded>() => {
                        tally.overloaded.fetch_add(1, SeqCst);
                    }
                    Err(e) => panic!("untyped error: {e}"),
                }
            }
        })
        .await;

    let t = &*tally;
    let counts = [
        &t.ok,
        &t.endpoint_errors,
        &t.overloaded,
        &t.body_errors,
        &t.cancelled,
        &t.dropped_mid_body,
    ]
    .map(|c| c.load(SeqCst));
    eprintln!(
        "ok, endpoint errors, overloaded, body errors, cancelled, dropped mid-body: {counts:?}"
    );
    assert_eq!(
        counts.iter().sum::<u64>(),
        requests,
        "every request is accounted for: {counts:?}"
    );
    for (i, c) in counts.iter().enumerate() {
        assert!(
            *c > 0,
            "outcome {i} never happened, the test lost its teeth: {counts:?}"
        );
    }
    for e in pool.endpoints() {
        assert_eq!(e.in_flight(), 0, "{} leaks in-flight", e.key());
        assert_eq!(e.outstanding(), 0, "{} leaks outstanding work", e.key());
    }
}
