//! What reaches an upstream: the joined path, its own Host and credentials, the allowed
//! headers, a true content-length; and what never shows: a URL's userinfo.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    client::{Client, Upstream, UpstreamConfig, Upstreams},
    failover::FailoverLayer,
    http_error::openai_response,
    BalanceLayer, BoxError,
};

use crate::{
    post, send,
    support::{json, refusing_port, Recorder},
};

/// A request as a client sends it, with its own credentials and connection headers.
fn client_request(body: &str) -> Request<Full<Bytes>> {
    let mut request = post("/chat/completions?stream_hint=1", body);
    for (k, v) in [
        ("authorization", "Bearer client-secret"),
        ("proxy-authorization", "Basic Y2xpZW50"),
        ("cookie", "session=client-cookie"),
        ("x-api-key", "client-x-api-key"),
        ("api-key", "client-api-key"),
        ("connection", "keep-alive, x-trace-me"),
        ("x-trace-me", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("proxy-connection", "keep-alive"),
        ("host", "gateway.internal:8080"),
        ("content-length", "3"),
        ("x-request-id", "req-42"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("user-agent", "OpenAI/Python 1.0"),
        ("accept", "application/json"),
    ] {
        request.headers_mut().insert(
            http::HeaderName::from_static(k),
            http::HeaderValue::from_static(v),
        );
    }
    request
}

#[tokio::test]
async fn only_the_upstreams_own_credentials_and_allowed_headers_arrive() {
    let server = Recorder::ok(None).await;
    let base = format!(
        "http://127.0.0.1:{}/openai/v1?api-version=2024-06-01",
        server.addr.port()
    );
    let body = r#"{"model":"m","messages":[]}"#;
    let config = UpstreamConfig::new(&base)
        .unwrap()
        .api_key("upstream-secret")
        .header("openai-organization", "org-gateway");
    send(&Client::new().unwrap(), config, client_request(body))
        .await
        .unwrap();
    let seen = server.last();
    assert_eq!(
        seen.target,
        "/openai/v1/chat/completions?api-version=2024-06-01&stream_hint=1"
    );
    let h = &seen.headers;
    assert_eq!(h["authorization"], "Bearer upstream-secret");
    assert_eq!(h["openai-organization"], "org-gateway");
    assert_eq!(
        h["host"],
        format!("127.0.0.1:{}", server.addr.port()).as_str()
    );
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    assert_eq!(seen.body, body);
    for forwarded in [
        "x-request-id",
        "traceparent",
        "user-agent",
        "accept",
        "content-type",
    ] {
        assert!(h.contains_key(forwarded), "{forwarded} is forwarded");
    }
    for dropped in [
        "proxy-authorization",
        "cookie",
        "x-api-key",
        "api-key",
        "x-trace-me",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
        "transfer-encoding",
    ] {
        assert!(!h.contains_key(dropped), "{dropped} must not be forwarded");
    }
    // `connection` itself is the client's hyper connection header, never the client's.
    assert_ne!(
        h.get("connection").map(|v| v.to_str().unwrap()),
        Some("keep-alive, x-trace-me")
    );
    let raw = format!("{h:?}");
    for secret in [
        "client-secret",
        "client-cookie",
        "client-x-api-key",
        "client-api-key",
    ] {
        assert!(!raw.contains(secret), "{secret} reached the upstream");
    }
}

#[tokio::test]
async fn a_streamed_body_goes_without_a_length_and_arrives_whole() {
    let server = Recorder::ok(None).await;
    let upstream = Upstream::new(
        &Client::new().unwrap(),
        &UpstreamConfig::new(&format!("http://127.0.0.1:{}", server.addr.port())).unwrap(),
    )
    .unwrap();
    let chunks = futures_util::stream::iter(
        ["{\"a\":", "1}"].map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c)))),
    );
    let mut request = Request::post("/v1/x")
        .header("content-length", "999")
        .body(StreamBody::new(chunks))
        .unwrap();
    request
        .headers_mut()
        .insert("te", "trailers".parse().unwrap());
    let response = upstream.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen = server.last();
    assert_eq!(seen.body, "{\"a\":1}");
    assert!(!seen.headers.contains_key("content-length"));
}

#[tokio::test]
async fn each_upstream_receives_its_own_key() {
    let (a, b) = (Recorder::ok(None).await, Recorder::ok(None).await);
    let pool = Upstreams::new()
        .add(
            UpstreamConfig::new(&format!("http://127.0.0.1:{}", a.addr.port()))
                .unwrap()
                .api_key("key-a"),
        )
        .add(
            UpstreamConfig::new(&format!("http://127.0.0.1:{}", b.addr.port()))
                .unwrap()
                .key_header("api-key", "key-b"),
        )
        .build_pool()
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool);
    for _ in 0..40 {
        let response = stack.clone().oneshot(client_request("{}")).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    assert!(
        a.count() > 0 && b.count() > 0,
        "{} / {}",
        a.count(),
        b.count()
    );
    assert_eq!(a.count() + b.count(), 40);
    for seen in a.seen.lock().iter() {
        assert_eq!(seen.headers["authorization"], "Bearer key-a");
        assert!(!seen.headers.contains_key("api-key"));
    }
    for seen in b.seen.lock().iter() {
        assert_eq!(seen.headers["api-key"], "key-b");
        assert!(!seen.headers.contains_key("authorization"));
    }
}

#[tokio::test]
async fn userinfo_is_sent_as_basic_auth_and_never_shown() {
    let server = Recorder::ok(None).await;
    let with_userinfo =
        |port: u16| format!("http://alice:t0ps3cret@127.0.0.1:{port}/v1?key=q5ecret");
    let config = UpstreamConfig::new(&with_userinfo(server.addr.port())).unwrap();
    send(
        &Client::new().unwrap(),
        config.clone(),
        post("/v1/models", "{}"),
    )
    .await
    .unwrap();
    let seen = server.last();
    // alice:t0ps3cret
    assert_eq!(seen.headers["authorization"], "Basic YWxpY2U6dDBwczNjcmV0");
    assert_eq!(seen.target, "/v1/models?key=q5ecret");

    // A failing upstream with credentials in its URL: nothing that can be printed shows them.
    let dead = refusing_port().await;
    let pool = Upstreams::new()
        .add(
            UpstreamConfig::new(&with_userinfo(dead.port()))
                .unwrap()
                .tier(0),
        )
        .add(config.clone().name("second").tier(1))
        .build_pool()
        .unwrap();
    server.seen.lock().clear();
    let stack = ServiceBuilder::new()
        .layer(FailoverLayer::builder().attempts(1).build().unwrap())
        .layer(
            BalanceLayer::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        )
        .service(pool.clone());
    let error: BoxError = stack.oneshot(post("/v1/x", "{}")).await.unwrap_err();
    let response = openai_response(&error);
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let mut printed = vec![
        format!("{error}"),
        format!("{error:?}"),
        String::from_utf8(body.to_vec()).unwrap(),
        format!("{pool:?}"),
        pool.metrics().prometheus(),
        format!("{config:?}"),
        format!(
            "{:?}",
            UpstreamConfig::new("http://bob:hunter2@h/").unwrap()
        ),
        format!(
            "{}",
            UpstreamConfig::new("ftp://bob:hunter2@h/?k=q5ecret").unwrap_err()
        ),
    ];
    for e in pool.endpoints() {
        printed.push(e.key().to_string());
    }
    for text in &printed {
        for secret in ["t0ps3cret", "alice", "q5ecret", "hunter2", "bob", "YWxpY2U"] {
            assert!(!text.contains(secret), "{secret} shown in {text}");
        }
    }
}

#[tokio::test]
async fn an_upstream_refusing_the_gateways_key_is_a_bad_gateway() {
    let server = Recorder::start(None, |_| {
        json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"message":"Incorrect API key provided: sk-upstr*****cret"}}"#,
        )
    })
    .await;
    let config = UpstreamConfig::new(&format!("http://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .api_key("sk-upstream-secret");
    let (head, body) = send(
        &Client::new().unwrap(),
        config,
        post("/v1/chat/completions", "{}"),
    )
    .await
    .unwrap();
    assert_eq!(head.status(), StatusCode::BAD_GATEWAY);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(!text.contains("sk-upstr"), "{text}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "upstream_auth_failed");
}

#[tokio::test]
async fn a_path_with_dot_segments_is_refused_before_any_upstream() {
    let server = Recorder::ok(None).await;
    let base = format!("http://127.0.0.1:{}/openai/v1", server.addr.port());
    let client = Client::new().unwrap();
    let config = || {
        UpstreamConfig::new(&base)
            .unwrap()
            .api_key("upstream-secret")
    };
    for path in [
        "/../admin",
        "/chat/../../admin",
        "/%2e%2e/admin",
        "/.%2E/admin",
        "/./chat/completions",
        "/chat/..%2f..%2fadmin",
        "/chat\\..\\..\\admin",
    ] {
        let request = Request::post(format!("http://gateway{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let (head, body) = send(&client, config(), request).await.unwrap();
        assert_eq!(head.status(), StatusCode::BAD_REQUEST, "{path}");
        assert!(
            String::from_utf8_lossy(&body).contains("invalid_path"),
            "{path}: {body:?}"
        );
    }
    assert_eq!(server.count(), 0, "no such request reached the upstream");
    // Dots inside a segment are a model's name, not a dot segment.
    let (head, _) = send(&client, config(), post("/models/llama-3.1-8b", "{}"))
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(server.last().target, "/openai/v1/models/llama-3.1-8b");
}
