//! The per-attempt timeout gives the endpoint's slot back only after the timed-out call is
//! gone: with `max_concurrency(1)`, the upstream never runs two calls at once.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    error::{EndpointError, Timeout},
    BalanceLayer, EndpointConfig, Pool,
};

use crate::support::ms;

/// Calls running on the upstream now, and the most ever at once.
#[derive(Default)]
struct Live {
    now: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
}

/// One running call; it ends when the upstream's future is dropped.
struct Running(Arc<Live>);

impl Running {
    fn start(live: &Arc<Live>) -> Self {
        let now = live.now.fetch_add(1, SeqCst) + 1;
        live.most.fetch_max(now, SeqCst);
        live.calls.fetch_add(1, SeqCst);
        Self(Arc::clone(live))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

type Upstream = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An upstream that takes every call and never answers, counting the calls it runs.
fn hung(live: Arc<Live>) -> Upstream {
    BoxCloneSyncService::new(tower::service_fn(move |_: Request<Full<Bytes>>| {
        let running = Running::start(&live);
        async move {
            let _running = running;
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_is_dropped_before_its_slot_goes_to_a_waiter() {
    let live = Arc::new(Live::default());
    let pool = Pool::new();
    let endpoint = pool
        .insert(
            EndpointConfig::new("one-at-a-time").max_concurrency(1),
            hung(Arc::clone(&live)),
        )
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            BalanceLayer::builder()
                .timeout(ms(100))
                .queue(4, ms(10_000))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let request = || Request::new(Full::new(Bytes::from_static(b"{}")));

    // The first call takes the only slot; a second request waits for it.
    let mut first = Box::pin(svc.clone().oneshot(request()));
    let waiter = tokio::spawn(svc.clone().oneshot(request()));
    // The first times out. Its future is still held (a caller may keep a finished future
    // for a while: in a select, a join, a collection of futures).
    let error = (&mut first).await.expect_err("timed out");
    let timed_out = error
        .downcast_ref::<EndpointError>()
        .is_some_and(|e| e.inner().is::<Timeout>());
    assert!(timed_out, "{error}");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(ms(10)).await;
    assert_eq!(
        live.calls.load(SeqCst),
        2,
        "the waiter got the slot and called"
    );
    assert_eq!(
        live.most.load(SeqCst),
        1,
        "never two calls at once on a max_concurrency(1) endpoint"
    );
    drop(first);
    let _ = waiter.await.unwrap().expect_err("the waiter times out too");
    assert_eq!(live.now.load(SeqCst), 0);
    assert_eq!(endpoint.in_flight(), 0);
}
