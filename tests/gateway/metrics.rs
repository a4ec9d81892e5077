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
