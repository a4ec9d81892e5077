//! Load reports from the engines, over real HTTP on loopback: the scraper against simulated
//! model servers that answer `/metrics` in vLLM's and SGLang's formats with their real load,
//! and ORCA response headers, well formed and not; and the reports in the pick (`pick.rs`).

#[path = "../../examples/support/model_server.rs"]
mod model_server;
mod pick;
mod rounds;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use model_server::{chat_request, Engine, Mode, ModelServer, Spec, Upstream};
use proptest::prelude::*;
use tokio::time::Instant;
use tower::Layer;
use tower_ai_balance::{
    engines::{LatestReports, OrcaReport, ScrapeConfig, ScrapeError, Scraper},
    BalanceLayer, Endpoint, EndpointConfig, Pool,
};

fn scraper() -> Scraper<Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut config = ScrapeConfig::default();
    config.interval = Duration::from_millis(40);
    config.timeout = Duration::from_millis(400);
    Scraper::new(client).config(config)
}

/// Waits (up to a generous limit, so a slow machine never fails it) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Streams a long generation from `server`, holding it in flight until dropped.
fn hold_stream(server: &ModelServer) -> tokio::task::JoinHandle<()> {
    let upstream = Upstream::new(Upstream::client(), server.uri());
    tokio::spawn(async move {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        if let Ok(response) = upstream.oneshot(chat_request(100_000, true)).await {
            let _ = response.into_body().collect().await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_follow_the_servers_real_load_and_go_stale_when_it_stops_answering() {
    let spec = |name: &str, engine| {
        Spec::new(name, Duration::from_millis(5), Duration::from_millis(20))
            .batch(2)
            .metrics(engine)
            .kv_tokens(4096)
    };
    let vllm = ModelServer::spawn(spec("vllm", Engine::Vllm)).await;
    let sglang = ModelServer::spawn(spec("sglang", Engine::Sglang)).await;
    let pool = Pool::new();
    let client = Upstream::client();
    // Keys are socket addresses, as discovered endpoints' are: the default target is
    // http://{key}/metrics.
    let a = pool
        .insert(
            EndpointConfig::new(vllm.addr),
            Upstream::new(client.clone(), vllm.uri()),
        )
        .unwrap();
    let b = pool
        .insert(
            EndpointConfig::new(sglang.addr),
            Upstream::new(client, sglang.uri()),
        )
        .unwrap();
    let reports = LatestReports::new();
    let task = scraper().spawn(&pool, reports.clone());

    // Idle servers: reports arrive, and say so.
    until("a report from each", || {
        reports.get(&a).is_some() && reports.get(&b).is_some()
    })
    .await;
    let (ra, rb) = (reports.get(&a).unwrap(), reports.get(&b).unwrap());
    assert_eq!((ra.waiting, ra.running), (Some(0), Some(0)));
    assert_eq!((ra.kv_blocks, ra.kv_block_size), (Some(256), Some(16)));
    assert_eq!(
        (rb.waiting, rb.running, rb.kv_tokens),
        (Some(0), Some(0), Some(4096))
    );

    // Five long streams on a batch of two: two run, three wait, and their tokens fill the
    // KV cache; the reports show it.
    let streams: Vec<_> = (0..5).map(|_| hold_stream(&vllm)).collect();
    until("the vLLM server's load in its report", || {
        reports
            .get(&a)
            .is_some_and(|r| r.running == Some(2) && r.waiting == Some(3))
    })
    .await;
    let kv_then = reports.get(&a).unwrap().kv_usage.unwrap();
    assert!(kv_then > 0.0, "KV usage {kv_then}");
    until("the KV usage grows as tokens are generated", || {
        reports.get(&a).unwrap().kv_usage.unwrap() > kv_then
    })
    .await;
    // The other server's reports are unchanged.
    assert_eq!(reports.get(&b).unwrap().requests(), Some(0));
    let sg_streams: Vec<_> = (0..3).map(|_| hold_stream(&sglang)).collect();
    until("the SGLang server's load in its report", || {
        reports
            .get(&b)
            .is_some_and(|r| r.running == Some(2) && r.waiting == Some(1) && r.kv_usage > Some(0.0))
    })
    .await;
    for s in streams.iter().chain(&sg_streams) {
        s.abort();
    }
    until("the load gone from the reports", || {
        reports.get(&a).unwrap().requests() == Some(0)
            && reports.get(&b).unwrap().requests() == Some(0)
    })
    .await;
    assert_eq!(reports.get(&a).unwrap().kv_usage, Some(0.0));

    // A slot this router holds is recorded with the report, so the picker can tell its own
    // requests from the other routers'.
    let balance = BalanceLayer::new().layer(pool.clone());
    let request = Request::new(Full::new(Bytes::new()));
    let (_service, guard) = balance.pick(&request).unwrap();
    let held = pool
        .endpoints()
        .into_iter()
        .find(|e| e.in_flight() == 1)
        .unwrap();
    until("the held slot in a report", || {
        reports
            .get(&held)
            .is_some_and(|r| r.local_in_flight == Some(1))
    })
    .await;
    drop(guard);

    // The vLLM server stops answering: its last report keeps its time and ages, while the
    // other's keep coming.
    vllm.set_mode(Mode::Hang);
    let b_reports = |n: usize| {
        let reports = reports.clone();
        let b = Arc::clone(&b);
        async move {
            for _ in 0..n {
                let seen = reports.get(&b).unwrap().measured_at;
                until("a new report", || {
                    reports.get(&b).unwrap().measured_at > seen
                })
                .await;
            }
        }
    };
    b_reports(2).await; // any scrape of the vLLM server already answered has landed
    let last = reports.get(&a).unwrap();
    b_reports(3).await; // three rounds, each at least 36 ms after the last
    assert_eq!(
        reports.get(&a).unwrap(),
        last,
        "no report while it does not answer"
    );
    assert!(!last.is_fresh(Instant::now(), Duration::from_millis(100)));
    // It answers again: reports resume.
    vllm.set_mode(Mode::Normal);
    until("reports again", || {
        reports.get(&a).unwrap().measured_at > last.measured_at
    })
    .await;

    // A crashed server (connection refused) goes stale the same way.
    vllm.crash();
    b_reports(2).await;
    let last = reports.get(&a).unwrap();
    b_reports(3).await;
    assert_eq!(
        reports.get(&a).unwrap(),
        last,
        "no report from a crashed server"
    );

    // The task ends with the pool.
    drop((balance, pool, a, b, held));
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the scraper ends when the pool is dropped")
        .unwrap();
}

#[tokio::test]
async fn one_scrape_says_why_it_failed() {
    let server = ModelServer::spawn(Spec::new("m", Duration::ZERO, Duration::ZERO)).await;
    let scraper = scraper();
    let endpoint = |key: String| Endpoint::new(EndpointConfig::new(key)).unwrap();

    let ok = scraper
        .scrape(&endpoint(server.addr.to_string()))
        .await
        .unwrap();
    assert_eq!(ok.requests(), Some(0));
    assert!(matches!(
        scraper.scrape(&endpoint("no-address".into())).await,
        Err(ScrapeError::NoTarget)
    ));
    server.set_mode(Mode::Fail);
    assert!(matches!(
        scraper.scrape(&endpoint(server.addr.to_string())).await,
        Err(ScrapeError::Status(s)) if s == 500
    ));
    server.set_mode(Mode::Hang);
    assert!(matches!(
        scraper.scrape(&endpoint(server.addr.to_string())).await,
        Err(ScrapeError::Timeout)
    ));
    // A server whose /metrics is not an engine's, or is too long.
    server.set_mode(Mode::Normal);
    let not_metrics = EndpointConfig::new("x").label("metrics", format!("{}health", server.uri()));
    assert!(matches!(
        scraper.scrape(&Endpoint::new(not_metrics).unwrap()).await,
        Err(ScrapeError::NoMetrics)
    ));
    let mut config = ScrapeConfig::default();
    config.max_body = 64;
    let small = Scraper::new(Client::builder(TokioExecutor::new()).build_http()).config(config);
    assert!(matches!(
        small.scrape(&endpoint(server.addr.to_string())).await,
        Err(ScrapeError::Body(_))
    ));
    server.crash();
    assert!(matches!(
        scraper.scrape(&endpoint(server.addr.to_string())).await,
        Err(ScrapeError::Fetch(_))
    ));
}

/// Captures what tracing writes, to see the debug event a malformed header leaves.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn orca_headers_are_read_and_malformed_ones_ignored_with_a_debug_event() {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "endpoint-load-metrics",
        "TEXT cpu_utilization=0.3, rps_fractional=10, named_metrics.kv_cache_usage_perc=0.5, named_metrics.num_requests_waiting=4"
            .parse()
            .unwrap(),
    );
    let report = tower_ai_balance::engines::load_report(&headers).unwrap();
    assert_eq!((report.waiting, report.kv_usage), (Some(4), Some(0.5)));

    headers.insert(
        "endpoint-load-metrics",
        r#"JSON {"cpu_utilization":0.3,"named_metrics":{"num_requests_running":3,"kv_cache_usage_perc":0.25}}"#
            .parse()
            .unwrap(),
    );
    let report = tower_ai_balance::engines::load_report(&headers).unwrap();
    assert_eq!((report.running, report.kv_usage), (Some(3), Some(0.25)));

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        headers.insert(
            "endpoint-load-metrics",
            "TEXT cpu_utilization=lots".parse().unwrap(),
        );
        assert_eq!(tower_ai_balance::engines::load_report(&headers), None);
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        log.contains("DEBUG") && log.contains("ignoring a load report header"),
        "{log}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn orca_never_panics_on_arbitrary_bytes(
        prefix in prop::sample::select(vec!["", "TEXT ", "JSON ", "BIN "]),
        data in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut value = prefix.as_bytes().to_vec();
        value.extend_from_slice(&data);
        let _ = OrcaReport::parse(&value);
        if let Ok(value) = http::HeaderValue::from_bytes(&value) {
            let mut headers = http::HeaderMap::new();
            headers.insert("endpoint-load-metrics-bin", value.clone());
            let _ = OrcaReport::from_headers(&headers);
            headers.clear();
            headers.insert("endpoint-load-metrics", value);
            let _ = OrcaReport::from_headers(&headers);
        }
        let _ = tower_ai_balance::engines::from_prometheus(&data, Instant::now());
    }

    #[test]
    fn orca_never_panics_on_near_text_and_json(
        text in "TEXT ([a-z_.]{0,12}[=:][-+0-9.eEnaifNI]{0,8}, ?){0,6}",
        json in r#"JSON \{("[a-z_]{0,8}": ?(-?[0-9]{1,3}(\.[0-9]{1,3})?|"[0-9a-z]{0,4}"|\{("[a-z]{1,4}": ?[0-9]{1,2},?){0,3}\}|\[[0-9,]{0,6}\]|null|true),? ?){0,5}\}"#,
    ) {
        let _ = OrcaReport::parse(text.as_bytes());
        let _ = OrcaReport::parse(json.as_bytes());
    }

    /// The JSON reader agrees with serde_json on what it reads: every named metric a valid
    /// document holds comes back with its exact value, whatever the key's escapes.
    #[test]
    fn orca_json_matches_serde_json(
        metrics in proptest::collection::btree_map("\\PC{0,10}", -1e9f64..1e9, 0..6),
        cpu in proptest::option::of(0f64..1.0),
    ) {
        let mut doc = serde_json::json!({ "named_metrics": metrics });
        if let Some(cpu) = cpu {
            doc["cpu_utilization"] = serde_json::json!(cpu);
        }
        let text = format!("JSON {doc}");
        let report = OrcaReport::parse(text.as_bytes()).unwrap();
        prop_assert_eq!(report.cpu_utilization, cpu);
        let read: std::collections::BTreeMap<String, f64> = report.named_metrics.into_iter().collect();
        prop_assert_eq!(read, metrics);
    }
}
