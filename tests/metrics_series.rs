//! The `/metrics` text read back by a maintained Prometheus parser (`prometheus-parse`): each
//! series written once whatever the endpoints and models are named, and the outcome counters
//! true and never going back while requests finish.

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use prometheus_parse::{Scrape, Value};
use tokio::time::Instant;
use tower_ai_balance::{metrics::EndpointMetrics, EndpointConfig, Pool};

/// Every sample's name and labels, failing on one written twice.
fn unique_series(text: &str) -> Scrape {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    let mut seen = BTreeSet::new();
    for s in &scrape.samples {
        let mut labels: Vec<_> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        assert!(
            seen.insert((s.metric.clone(), labels.clone())),
            "{} {labels:?} written twice in\n{text}",
            s.metric
        );
    }
    scrape
}

#[test]
fn a_model_named_as_the_rests_label_is_written_once() {
    let pool: Pool<()> = Pool::new();
    let any = pool.insert("gpu-0", ()).unwrap();
    let configured = pool
        .insert(
            EndpointConfig::new("gpu-1").model("_OTHER").model("llama"),
            (),
        )
        .unwrap();
    // A client names the model; an endpoint of any model learns the names it counts.
    any.count_tokens(Some("_OTHER"), 3, 1, 0);
    any.count_tokens(Some("x"), 5, 1, 0);
    configured.count_tokens(Some("_OTHER"), 7, 1, 0);
    configured.count_tokens(Some("qwen"), 11, 1, 0);
    let scrape = unique_series(&pool.metrics().prometheus());
    let other = |endpoint: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "ai_balance_input_tokens_total"
                    && s.labels.get("endpoint") == Some(endpoint)
                    && s.labels.get("model") == Some("_OTHER")
            })
            .map(|s| match s.value {
                Value::Counter(v) | Value::Untyped(v) => v,
                _ => panic!("not a counter"),
            })
    };
    assert_eq!(other("gpu-0"), Some(3.0));
    assert_eq!(other("gpu-1"), Some(18.0));
}

#[test]
fn keys_shown_alike_without_credentials_are_still_two_series() {
    let pool: Pool<()> = Pool::new();
    pool.insert("https://a:one@api.example.com/v1", ()).unwrap();
    pool.insert("https://b:two@api.example.com/v1", ()).unwrap();
    pool.insert("https://api.example.com/v1?api-key=three", ())
        .unwrap();
    pool.insert("https://api.example.com/v1", ()).unwrap();
    let text = pool.metrics().prometheus();
    unique_series(&text);
    for secret in ["a:one", "b:two", "api-key", "three"] {
        assert!(!text.contains(secret), "{secret} shown");
    }
    // A key with nothing to hide is shown as it is; the label of each is the same at every
    // scrape.
    assert!(text.contains("endpoint=\"https://api.example.com/v1\""));
    assert_eq!(text, pool.metrics().prometheus());
}

#[test]
fn the_success_counter_never_counts_a_failure_nor_goes_back() {
    let pool: Pool<()> = Pool::new();
    let e = pool.insert("gpu-0", ()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failing = {
        let (e, stop) = (Arc::clone(&e), Arc::clone(&stop));
        std::thread::spawn(move || {
            let now = Instant::now();
            while !stop.load(SeqCst) {
                e.observe_completion(Duration::from_millis(1), true, now);
            }
        })
    };
    let mut last_failures = 0;
    for _ in 0..200_000 {
        let m = EndpointMetrics::of(&e, Instant::now());
        let [success, failure, _] = m.outcomes();
        assert_eq!(success, 0, "only failures finished");
        assert!(failure >= last_failures, "{failure} after {last_failures}");
        last_failures = failure;
    }
    stop.store(true, SeqCst);
    failing.join().unwrap();
}
