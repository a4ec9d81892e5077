//! The OpenAI-compatible gateway example, started on loopback and driven by a real HTTP client:
//! completions streamed and not, `/v1/models` and `/metrics`, HTTPS upstreams of both formats,
//! a configuration file, and the hardening of what it forwards, shows and holds.
#![allow(unreachable_pub)]

#[path = "../../examples/support/gateway.rs"]
mod gateway;
mod metrics;
#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[allow(dead_code)]
#[path = "../client/support.rs"]
mod support;

mod checks;
mod config;
mod hardening;
mod https;

use std::{net::SocketAddr, sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_ai_balance::{client, Pool};

use crate::model_server::{ModelServer, Spec, Upstream};

/// An upstream as a `--upstream` flag gives it.
pub fn parse_upstream(spec: &str) -> Result<client::UpstreamConfig, client::ClientError> {
    spec.parse()
}

/// A gateway serving on an ephemeral loopback port.
pub async fn serve(gw: gateway::Gateway) -> (SocketAddr, Pool<client::Upstream>) {
    let (app, pool) = gw.build().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, pool)
}

struct Running {
    addr: SocketAddr,
    pool: Pool<client::Upstream>,
    servers: Vec<Option<ModelServer>>,
}

async fn start(n: usize) -> Running {
    let mut servers = Vec::new();
    let mut gw = gateway::Gateway::default();
    for i in 0..n {
        let s = ModelServer::spawn(Spec::new(
            format!("m{i}"),
            Duration::from_millis(2),
            Duration::from_millis(5),
        ))
        .await;
        gw.upstreams
            .push(crate::parse_upstream(&format!("{},models=sim|llama,tier=0", s.uri())).unwrap());
        servers.push(Some(s));
    }
    let (addr, pool) = serve(gw).await;
    Running {
        addr,
        pool,
        servers,
    }
}

/// The whole answer of a request to the gateway.
pub async fn send(request: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let response = Upstream::client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// A chat completion of `tokens` tokens for model `sim`, with the client's own key.
pub fn completion(addr: SocketAddr, tokens: u64, stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "sim", "stream": stream, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Say something."}],
    });
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer client-key")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A `GET` of `path` from the gateway: its status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = Upstream::client().request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn completions_arrive_intact_in_openai_format_streamed_or_not() {
    let gw = start(3).await;
    let client = Upstream::client();

    let response = client.request(completion(gw.addr, 3, false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["choices"][0]["message"]["content"], "t0 t1 t2 ");

    let response = client.request(completion(gw.addr, 4, true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 5, "{text}");
    let mut content = String::new();
    for event in &events[..4] {
        let chunk: serde_json::Value =
            serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        content.push_str(chunk["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert_eq!(content, "t0 t1 t2 t3 ");
    assert_eq!(events[4], "data: [DONE]");

    let (status, models) = get(gw.addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama", "sim"]);

    // An unknown model is a clean 404 in OpenAI's error format, not a mis-route.
    let mut unknown = completion(gw.addr, 1, false);
    *unknown.body_mut() = Full::new(Bytes::from(
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    ));
    let response = client.request(unknown).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_slot_upstream_too() {
    let gw = start(2).await;
    let response = Upstream::client()
        .request(completion(gw.addr, 10_000, true))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    let in_flight = |gw: &Running| {
        gw.pool
            .endpoints()
            .iter()
            .map(|e| e.in_flight())
            .sum::<usize>()
    };
    assert_eq!(in_flight(&gw), 1);
    drop(body);
    let upstream = |gw: &Running| {
        gw.servers
            .iter()
            .flatten()
            .map(|s| s.stats.in_flight.load(SeqCst))
            .sum::<usize>()
    };
    for _ in 0..200 {
        if in_flight(&gw) == 0 && upstream(&gw) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_flight(&gw), 0, "the gateway released the slot");
    assert_eq!(upstream(&gw), 0, "the upstream request was cancelled");
}

#[tokio::test]
async fn an_upstream_shut_down_mid_test_is_routed_around() {
    let mut gw = start(3).await;
    let client = Upstream::client();
    for _ in 0..20 {
        let r = client.request(completion(gw.addr, 2, false)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.into_body().collect().await.unwrap();
    }
    drop(gw.servers[0].take());
    for _ in 0..60 {
        let r = client.request(completion(gw.addr, 2, true)).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "routed around the dead upstream"
        );
        let text = r.into_body().collect().await.unwrap().to_bytes();
        assert!(text.ends_with(b"data: [DONE]\n\n"));
    }
}

/// Checks the Prometheus text exposition format, line by line.
pub fn parse_prometheus(text: &str) -> Result<usize, String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed = std::collections::HashSet::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !valid_name(name)
                || !["gauge", "counter", "histogram", "summary", "untyped"].contains(&kind)
            {
                return Err(format!("bad TYPE: {line}"));
            }
            typed.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !valid_name(name) {
                return Err(format!("bad HELP: {line}"));
            }
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
            value
                .parse::<f64>()
                .map_err(|_| format!("bad value: {line}"))?;
            let name = series.split('{').next().unwrap();
            // A histogram's series are its name with a suffix.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            if !valid_name(name) || !typed.contains(family) {
                return Err(format!("unknown or untyped metric: {line}"));
            }
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .ok_or(format!("bad labels: {line}"))?;
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").ok_or(format!("bad label: {line}"))?;
                    if !valid_name(k) || v.trim_end_matches('"').contains('\n') {
                        return Err(format!("bad label: {line}"));
                    }
                }
            }
            samples += 1;
        }
    }
    Ok(samples)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let gw = start(2).await;
    for _ in 0..5 {
        let r = Upstream::client()
            .request(completion(gw.addr, 2, false))
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
    }
    let (status, text) = get(gw.addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(samples >= 14, "{samples} samples\n{text}");
    let requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("ai_balance_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(requests, 5.0, "{text}");
    assert!(
        parse_prometheus("ai_balance_x{a=\"1\"} 1").is_err(),
        "the checker rejects untyped metrics"
    );
}
