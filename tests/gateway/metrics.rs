//! The gateway's `/metrics` after traffic with a retry and an ejection: read by a maintained
//! Prometheus text parser (`prometheus-parse`), every counter and histogram series the same
//! before and after the ejection, the histograms complete, and the layers' counts there.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use prometheus_parse::{Scrape, Value};

use crate::{
    gateway,
    model_server::{Mode, ModelServer, Spec, Upstream},
};

/// Three upstreams behind the gateway's own pool and routes.
async fn start() -> (SocketAddr, Vec<ModelServer>) {
    let mut servers = Vec::new();
    let mut gw = gateway::Gateway::default();
    for i in 0..3 {
        let s = ModelServer::spawn(Spec::new(
            format!("m{i}"),
            Duration::from_millis(2),
            Duration::from_millis(1),
        ))
        .await;
        gw.upstreams
            .push(crate::parse_upstream(&format!("{},models=sim", s.uri())).unwrap());
        servers.push(s);
    }
    let (addr, _pool) = crate::serve(gw).await;
    (addr, servers)
}

async fn chat(addr: SocketAddr) -> StatusCode {
    let body = r#"{"model":"sim","max_tokens":2,"messages":[{"role":"user","content":"Hi."}]}"#;
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = Upstream::client().request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

async fn scrape(addr: SocketAddr) -> String {
    let request = Request::get(format!("http://{addr}/metrics"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = Upstream::client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The text as the parser reads it, after checking that it read every sample line: each line
/// is one sample, except a histogram's `_bucket` lines, which make one sample per series.
fn parse(text: &str) -> Scrape {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).expect("the parser accepts the text");
    let sample_lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let buckets = sample_lines.clone().filter(|l| l.contains("_bucket{"));
    let histograms = scrape
        .samples
        .iter()
        .filter(|s| matches!(s.value, Value::Histogram(_)))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines.count() - buckets.count() + histograms,
        "the parser skipped a line it could not read:\n{text}"
    );
    scrape
}

/// The name and sorted labels of every counter and histogram series, and of the health
/// gauge's.
fn series(scrape: &Scrape) -> BTreeSet<String> {
    scrape
        .samples
        .iter()
        .filter(|s| {
            matches!(s.value, Value::Counter(_) | Value::Histogram(_))
                || s.metric == "ai_balance_health"
                || s.metric.ends_with("_sum")
                || s.metric.ends_with("_count")
        })
        .map(|s| {
            let mut labels: Vec<_> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            format!("{}{{{}}}", s.metric, labels.join(","))
        })
        .collect()
}

/// The value of the sample named `metric` whose labels include all of `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {metric} with {labels:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{metric} is not a single value"),
    }
}

#[tokio::test]
async fn metrics_keep_their_series_through_an_ejection_and_parse_as_prometheus_text() {
    let (addr, servers) = start().await;
    for _ in 0..12 {
        assert_eq!(chat(addr).await, StatusCode::OK);
    }
    let before = scrape(addr).await;
    let before = parse(&before);

    // One upstream fails every request: its failures are retried elsewhere until the health
    // layer ejects it.
    servers[0].set_mode(Mode::Fail);
    let failing = servers[0].uri().to_string();
    let failing = failing.trim_end_matches('/');
    let mut text = String::new();
    for _ in 0..200 {
        assert_eq!(chat(addr).await, StatusCode::OK, "retried elsewhere");
        text = scrape(addr).await;
        if text.contains(&format!(
            "ai_balance_health{{endpoint=\"{failing}/\",tier=\"0\",state=\"ejected\"}} 1"
        )) || text.contains(&format!(
            "ai_balance_health{{endpoint=\"{failing}\",tier=\"0\",state=\"ejected\"}} 1"
        )) {
            break;
        }
    }
    let after = parse(&text);
    let endpoint = after
        .samples
        .iter()
        .find(|s| s.metric == "ai_balance_health" && s.labels.get("state") == Some("ejected"))
        .and_then(|s| {
            matches!(s.value, Value::Gauge(v) if v == 1.0).then(|| s.labels.get("endpoint"))
        })
        .flatten()
        .unwrap_or_else(|| panic!("an endpoint was ejected:\n{text}"))
        .to_owned();
    assert!(endpoint.starts_with(failing), "{endpoint} is {failing}");

    assert_eq!(
        series(&before),
        series(&after),
        "the ejection started or ended a series"
    );
    let on = [("endpoint", endpoint.as_str())];
    let cause = [
        ("endpoint", endpoint.as_str()),
        ("cause", "consecutive_failures"),
    ];
    assert_eq!(value(&after, "ai_balance_ejections_total", &cause), 1.0);
    let failed = [("endpoint", endpoint.as_str()), ("outcome", "failure")];
    assert!(value(&after, "ai_balance_requests_total", &failed) >= 5.0);
    assert!(value(&after, "ai_balance_retries_total", &[]) >= 5.0);
    assert_eq!(
        value(&after, "ai_balance_failovers_total", &[]),
        0.0,
        "one tier"
    );

    // Every endpoint's histograms: cumulative buckets to +Inf, with their sum and count.
    let mut histograms = 0;
    for s in &after.samples {
        let Value::Histogram(buckets) = &s.value else {
            continue;
        };
        histograms += 1;
        assert_eq!(buckets.len(), 18, "{}", s.metric);
        let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
        let mut counts: Vec<_> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        counts.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(counts.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = value(&after, &format!("{}_count", s.metric), &labels);
        assert_eq!(count, inf.count);
        let sum = value(&after, &format!("{}_sum", s.metric), &labels);
        assert!(
            sum >= 0.0 && (count == 0.0) == (sum == 0.0),
            "{} {sum} {count}",
            s.metric
        );
    }
    assert_eq!(histograms, 6, "two histograms for each of three endpoints");
    let served = value(&after, "ai_balance_request_duration_seconds_count", &on);
    assert!(served >= 5.0, "the failures' durations too");
}

/// Sends a chat request and reads the usage the answer reported, streamed or not (a stream
/// reports it only when asked to).
async fn chat_usage(addr: SocketAddr, prompt: &str, stream: Option<bool>) -> (u64, u64) {
    let mut body = serde_json::json!({
        "model": "sim", "max_tokens": 3,
        "messages": [{"role": "user", "content": prompt}],
    });
    if let Some(include_usage) = stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({ "include_usage": include_usage });
    }
    let request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = Upstream::client().request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&text).unwrap();
    let documents: Vec<serde_json::Value> = match stream {
        None => vec![serde_json::from_str(text).unwrap()],
        Some(_) => text
            .split("\n\n")
            .filter_map(|event| event.strip_prefix("data: "))
            .filter(|data| *data != "[DONE]")
            .map(|data| serde_json::from_str(data).unwrap())
            .collect(),
    };
    let usage: Vec<_> = documents
        .iter()
        .filter(|d| d["usage"].is_object())
        .collect();
    match usage[..] {
        [] => (0, 0),
        [u] => (
            u["usage"]["prompt_tokens"].as_u64().unwrap(),
            u["usage"]["completion_tokens"].as_u64().unwrap(),
        ),
        _ => panic!("one usage: {text}"),
    }
}

#[tokio::test]
async fn metrics_count_the_tokens_the_servers_reported_per_endpoint_and_model() {
    let (addr, _servers) = start().await;
    let before = parse(&scrape(addr).await);
    let prompts = [
        "Hi.",
        "What is the capital of France?",
        "one two three four five",
        "Tell me a joke",
    ];
    let (mut input, mut output) = (0, 0);
    for i in 0..24 {
        // Answers, streams that ask for their usage, and streams that do not.
        let (prompt, stream) = (prompts[i % 4], [None, Some(true), Some(false)][i % 3]);
        let reported = chat_usage(addr, prompt, stream).await;
        let words = prompt.split_whitespace().count() as u64;
        let want = if stream == Some(false) {
            (0, 0)
        } else {
            (words, 3)
        };
        assert_eq!(reported, want, "the server reports real counts");
        input += reported.0;
        output += reported.1;
    }
    let text = scrape(addr).await;
    let after = parse(&text);
    assert_eq!(series(&before), series(&after), "no series appeared");
    let sum = |metric: &str, model: &str| -> f64 {
        after
            .samples
            .iter()
            .filter(|s| s.metric == metric && s.labels.get("model") == Some(model))
            .map(|s| match s.value {
                Value::Counter(v) => v,
                _ => panic!("{metric} is a counter"),
            })
            .sum()
    };
    assert_eq!(
        sum("ai_balance_input_tokens_total", "sim"),
        input as f64,
        "{text}"
    );
    assert_eq!(sum("ai_balance_output_tokens_total", "sim"), output as f64);
    assert_eq!(sum("ai_balance_cached_input_tokens_total", "sim"), 0.0);
    assert_eq!(sum("ai_balance_input_tokens_total", "_OTHER"), 0.0);
    // The tokens are counted where they were served.
    for s in after.samples.iter().filter(|s| {
        s.metric == "ai_balance_output_tokens_total" && s.labels.get("model") == Some("sim")
    }) {
        let endpoint = s.labels.get("endpoint").unwrap();
        let served = [("endpoint", endpoint), ("outcome", "success")];
        if matches!(s.value, Value::Counter(v) if v > 0.0) {
            assert!(value(&after, "ai_balance_requests_total", &served) > 0.0);
        }
    }
}
