//! Load reports in the pick: scraped from model servers over loopback HTTP, read from ORCA
//! response headers, and set by hand; saturation with and without Balance's queue.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use rand::{rngs::SmallRng, SeedableRng};
use tokio::time::Instant;
use tower::{service_fn, util::BoxCloneSyncService, Layer, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    engines::{OrcaFeedLayer, ToEndpoints},
    error::Overloaded,
    hints::Served,
    pick::{Filter, Picker, Strategy},
    report::{LoadReport, ReportPolicy},
    BalanceLayer, EndpointConfig, Pool,
};

use super::{
    model_server::{Engine, Mode, ModelServer, Spec, Upstream},
    scraper, until,
};

type Svc = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An engine that answers at once, with this `endpoint-load-metrics` header if any.
fn engine(orca: Option<&'static str>) -> Svc {
    BoxCloneSyncService::new(service_fn(move |_req: Request<Full<Bytes>>| async move {
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        if let Some(value) = orca {
            response
                .headers_mut()
                .insert("endpoint-load-metrics", value.parse().unwrap());
        }
        Ok::<_, Infallible>(response)
    }))
}

fn empty() -> Request<Full<Bytes>> {
    Request::new(Full::new(Bytes::new()))
}

/// How many of `n` picks through `balance` (each released at once) go to each endpoint key.
fn picks<S: Clone>(balance: &tower_ai_balance::Balance<S>, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (_service, guard) = balance.pick(&empty()).unwrap();
        *counts
            .entry(guard.endpoint().key().as_str().to_owned())
            .or_default() += 1;
    }
    counts
}

/// Two model servers, one (vLLM's `/metrics`) busy with streams from elsewhere (the other
/// routers' requests, which this router does not see), the other (SGLang's) idle. Scraped into
/// the pool, the reports send this router's picks to the idle one; when the busy one stops
/// answering, its report goes stale and the picks even out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_reports_steer_the_picks_until_they_go_stale() {
    let spec = |name: &str, engine| {
        Spec::new(name, Duration::from_millis(5), Duration::from_millis(20))
            .batch(2)
            .metrics(engine)
    };
    let busy = ModelServer::spawn(spec("busy", Engine::Vllm)).await;
    let idle = ModelServer::spawn(spec("idle", Engine::Sglang)).await;
    let pool = Pool::new();
    let client = Upstream::client();
    let a = pool
        .insert(
            EndpointConfig::new(busy.addr),
            Upstream::new(client.clone(), busy.uri()),
        )
        .unwrap();
    let b = pool
        .insert(
            EndpointConfig::new(idle.addr),
            Upstream::new(client, idle.uri()),
        )
        .unwrap();
    // Reports live a second: long enough that a loaded machine's late scrape does not let
    // one lapse while the picks below run.
    pool.set_report_policy(ReportPolicy::default().max_age(Duration::from_secs(1)))
        .unwrap();
    let task = scraper().spawn(&pool, ToEndpoints);
    let balance = BalanceLayer::new().layer(pool.clone());

    // Five long streams from "other routers": two run, three wait.
    let streams: Vec<_> = (0..5).map(|_| super::hold_stream(&busy)).collect();
    until("the busy server's load in the pick", || {
        a.load(Instant::now()) == Some(5) && b.load(Instant::now()) == Some(0)
    })
    .await;
    let report = a.latest_report().unwrap();
    assert_eq!((report.running, report.waiting), (Some(2), Some(3)));
    let counts = picks(&balance, 40);
    assert_eq!(counts.get(&idle.addr.to_string()), Some(&40), "{counts:?}");

    // Held picks count too: this router's own requests add to the idle one's load until it
    // is as loaded as the busy one is by its report, and the two-choice pick then shares.
    let mut held = Vec::new();
    for _ in 0..5 {
        let (_service, guard) = balance.pick(&empty()).unwrap();
        assert!(Arc::ptr_eq(guard.endpoint(), &b));
        held.push(guard);
    }
    drop(held);

    // The busy server stops answering: its report ages past a second and is ignored, and the
    // picks go to both again.
    busy.set_mode(Mode::Hang);
    until("the busy server's report stale", || {
        a.load(Instant::now()) == Some(0)
    })
    .await;
    assert_eq!(
        a.latest_report().unwrap().waiting,
        Some(3),
        "kept, but stale"
    );
    let counts = picks(&balance, 40);
    assert_eq!(counts.len(), 2, "both endpoints picked: {counts:?}");

    for s in streams {
        s.abort();
    }
    drop((balance, pool, a, b));
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the scraper ends when the pool is dropped")
        .unwrap();
}

/// Every strategy that compares load reads the others' requests by a fresh report.
#[tokio::test(start_paused = true)]
async fn each_load_comparing_strategy_reads_the_report() {
    let pool: Pool<()> = Pool::new();
    let a = pool.insert("a", ()).unwrap();
    let b = pool.insert("b", ()).unwrap();
    let c = pool.insert("c", ()).unwrap();
    // Twelve requests at `a` from other routers, one of them this router's.
    let _mine = tower_ai_balance::load::LoadGuard::acquire(&a, 1).unwrap();
    a.report(
        &LoadReport::new(Instant::now())
            .running(8)
            .waiting(4)
            .local_in_flight(1),
    );
    assert_eq!(a.load(Instant::now()), Some(12));
    // `b` reports nothing waiting or running; `c` has no report.
    b.report(&LoadReport::new(Instant::now()).running(0).waiting(0));
    let endpoints = pool.endpoints();
    let mut rng = SmallRng::seed_from_u64(3);
    for strategy in [
        Strategy::PowerOfTwoChoices,
        Strategy::LeastLoaded,
        Strategy::PeakEwma,
    ] {
        let picker = Picker::new(strategy);
        for _ in 0..50 {
            let i = picker
                .pick(&endpoints, &Filter::new(), &mut rng)
                .expect("an endpoint");
            assert!(!Arc::ptr_eq(&endpoints[i], &a), "{strategy:?} picked a");
        }
    }
    // The report ages past the default three seconds: `a` counts its own request alone.
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(a.load(Instant::now()), Some(1));
    assert_eq!(c.load(Instant::now()), Some(0));
    // Cleared, the endpoint is as it was without reports.
    a.clear_report();
    assert_eq!(a.latest_report(), None);
}

/// A saturated endpoint is full: the others take the traffic; when all are, a request fails
/// with `Overloaded` without a queue, and with one waits until a report frees an endpoint.
#[tokio::test(start_paused = true)]
async fn saturation_fills_endpoints_and_the_queue_waits_for_a_report() {
    let pool: Pool<Svc> = Pool::new();
    let a = pool.insert("a", engine(None)).unwrap();
    let b = pool.insert("b", engine(None)).unwrap();
    pool.set_report_policy(
        ReportPolicy::default()
            .max_waiting(8)
            .max_kv_usage(0.95)
            .max_age(Duration::from_secs(10)),
    )
    .unwrap();
    assert!(pool
        .set_report_policy(ReportPolicy::default().max_kv_usage(f64::NAN))
        .is_err());

    // Over the waiting threshold: `a` is full, and everything goes to `b`.
    a.report(&LoadReport::new(Instant::now()).waiting(9).running(4));
    assert_eq!(a.load(Instant::now()), None);
    let fail_fast = BalanceLayer::new().layer(pool.clone());
    let counts = picks(&fail_fast, 20);
    assert_eq!(counts.get("b"), Some(&20), "{counts:?}");
    // At the threshold is not over it.
    b.report(&LoadReport::new(Instant::now()).waiting(8));
    assert_eq!(b.load(Instant::now()), Some(8));
    // Over the KV-usage threshold: `b` is full too, and the request fails at once.
    b.report(&LoadReport::new(Instant::now()).waiting(0).kv_usage(0.97));
    assert_eq!(b.kv_usage_percent(Instant::now()), Some(97));
    let error = fail_fast.clone().oneshot(empty()).await.unwrap_err();
    assert!(error.is::<Overloaded>(), "{error}");

    // With a queue, the request waits; a report that frees `a` wakes it, and `a` serves it.
    let queued = BalanceLayer::builder()
        .queue(4, Duration::from_secs(30))
        .build()
        .unwrap()
        .layer(pool.clone());
    let waiting = tokio::spawn(queued.clone().oneshot(empty()));
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "waits while every endpoint is saturated"
    );
    a.report(&LoadReport::new(Instant::now()).waiting(2).running(4));
    let response = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("woken by the report")
        .unwrap()
        .unwrap();
    let served = response.extensions().get::<Served>().unwrap();
    assert!(Arc::ptr_eq(served.endpoint(), &a));
    drop(response); // its body held a slot at `a`

    // A queued request that no report frees fails with `Overloaded` when its wait ends.
    a.report(&LoadReport::new(Instant::now()).waiting(20));
    let short = BalanceLayer::builder()
        .queue(4, Duration::from_millis(200))
        .build()
        .unwrap()
        .layer(pool.clone());
    let error = short.oneshot(empty()).await.unwrap_err();
    assert!(error.is::<Overloaded>(), "{error}");

    // Saturation lasts as long as the report is fresh: past its age, both serve again.
    tokio::time::advance(Duration::from_secs(11)).await;
    let counts = picks(&fail_fast, 40);
    assert_eq!(counts.len(), 2, "{counts:?}");
}

/// ORCA headers on responses feed the pick through `OrcaFeedLayer`: an engine that reports a
/// long queue stops getting requests. Malformed headers, and ones that say nothing of the
/// engine's load, change nothing.
#[tokio::test]
async fn orca_headers_feed_the_pick_and_bad_ones_are_ignored() {
    let pool: Pool<Svc> = Pool::new();
    let a = pool
        .insert(
            "a",
            engine(Some(
                "TEXT named_metrics.num_requests_waiting=40, named_metrics.num_requests_running=8",
            )),
        )
        .unwrap();
    let b = pool
        .insert(
            "b",
            engine(Some(
                r#"JSON {"named_metrics": {"num_requests_running": 1}}"#,
            )),
        )
        .unwrap();
    let malformed = pool
        .insert(
            "m",
            engine(Some("TEXT named_metrics.num_requests_waiting=lots")),
        )
        .unwrap();
    let silent = pool
        .insert("s", engine(Some("TEXT cpu_utilization=0.9")))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(OrcaFeedLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());

    let mut served = HashMap::<String, usize>::new();
    for _ in 0..200 {
        let response = svc.clone().oneshot(empty()).await.unwrap();
        let key = response
            .extensions()
            .get::<Served>()
            .unwrap()
            .endpoint()
            .key();
        *served.entry(key.as_str().to_owned()).or_default() += 1;
    }
    // Reports arrived from the two well-formed headers, none from the others.
    let report = a.latest_report().expect("a's report");
    assert_eq!((report.waiting, report.running), (Some(40), Some(8)));
    assert_eq!(b.latest_report().unwrap().running, Some(1));
    assert_eq!(
        (malformed.latest_report(), silent.latest_report()),
        (None, None)
    );
    // Once `a` reported 48 requests (47 of them others'), the two-choice pick passes it over
    // for anything less: only its first answer, and any pick made while nothing else was
    // eligible, went there.
    let to_a = served.get("a").copied().unwrap_or(0);
    assert!(to_a <= 1, "{served:?}");
    assert_eq!(served.values().sum::<usize>(), 200);
    drop(svc);
}
