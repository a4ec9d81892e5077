//! What the gateway forwards, shows and holds: the client's credentials and hop-by-hop headers
//! stay behind, upstream URLs with credentials are never shown, a slow healthy generation is
//! not timed out by its head, request bodies in flight are bounded, and a body routing cannot
//! read is a 400.

use std::{net::SocketAddr, sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_ai_balance::Health;

use crate::{
    completion,
    gateway::Gateway,
    get,
    model_server::{Mode, ModelServer, Spec},
    parse_upstream, send, serve,
    support::refusing_port,
};

fn quick(name: &str) -> Spec {
    Spec::new(name, Duration::from_millis(1), Duration::from_millis(1))
}

/// Sends `head` (request line and headers, CRLF-separated, without the blank line) and `body`
/// as raw HTTP/1.1 bytes, and reads the answer to the end (the request says
/// `Connection: close`).
async fn raw(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn client_credentials_and_hop_by_hop_headers_reach_no_upstream() {
    // Tier 0 refuses connections; tier 1 is a third-party provider in Anthropic's format.
    let down = refusing_port().await;
    let provider = ModelServer::spawn(quick("provider")).await;
    let raw_upstream = ModelServer::spawn(quick("raw")).await;
    let mut gw = Gateway::default();
    gw.upstreams
        .push(parse_upstream(&format!("http://{down},models=sim")).unwrap());
    gw.upstreams.push(
        parse_upstream(&format!(
            "{},format=anthropic,key=sk-provider,model=claude,models=sim,tier=1",
            provider.uri()
        ))
        .unwrap(),
    );
    gw.upstreams
        .push(parse_upstream(&format!("{},models=raw", raw_upstream.uri())).unwrap());
    let (addr, _pool) = serve(gw).await;
    let secrets = [
        "authorization: Bearer sk-client",
        "proxy-authorization: Basic Y2xpZW50OnNlY3JldA==",
        "cookie: session=client-session",
        "x-api-key: sk-client-x",
        "api-key: sk-client-azure",
        // Hop-by-hop: connection and what it names (even an otherwise forwarded header),
        // keep-alive, te, upgrade.
        "connection: close, x-request-id, x-hop",
        "x-hop: hop-value",
        "x-request-id: named-by-connection",
        "keep-alive: timeout=5",
        "te: trailers",
        "upgrade: websocket",
        // Forwarded, as the control.
        "x-correlation-id: corr-1",
        "content-type: application/json",
    ]
    .join("\r\n");
    for (model, server) in [("raw", &raw_upstream), ("sim", &provider)] {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":2,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let head = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway.test\r\n{secrets}");
        let answer = raw(addr, &head, &body).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{model}: {answer}");
        assert_eq!(server.stats.received.load(SeqCst), 1, "{model}");
        let seen = server.stats.last_headers.lock().clone();
        for name in [
            "proxy-authorization",
            "cookie",
            "api-key",
            "x-hop",
            "x-request-id",
            "keep-alive",
            "te",
            "upgrade",
        ] {
            assert!(
                !seen.contains_key(name),
                "{model}: {name} forwarded: {seen:?}"
            );
        }
        assert_eq!(seen["x-correlation-id"], "corr-1", "{model}");
        let connection = seen.get("connection").map(|v| v.to_str().unwrap());
        assert!(
            !connection.unwrap_or("").contains("x-"),
            "{model}: the client's connection header was forwarded: {connection:?}"
        );
        let text = format!("{seen:?}");
        for secret in ["sk-client", "client-session", "gateway.test"] {
            assert!(
                !text.contains(secret),
                "{model}: {secret} reached it: {text}"
            );
        }
    }
    // The provider got its own key; the raw upstream got no key at all.
    assert_eq!(
        provider.stats.last_headers.lock()["x-api-key"],
        "sk-provider"
    );
    let raw_seen = raw_upstream.stats.last_headers.lock().clone();
    assert!(!raw_seen.contains_key("authorization") && !raw_seen.contains_key("x-api-key"));
}

#[tokio::test]
async fn an_upstream_url_with_credentials_is_shown_to_no_client() {
    let down = refusing_port().await;
    let mut gw = Gateway::default();
    gw.upstreams.push(
        parse_upstream(&format!(
            "http://admin:hunter2-token@{down}/v1?api-key=query-secret,models=sim"
        ))
        .unwrap(),
    );
    let (addr, _pool) = serve(gw).await;
    let (head, body) = send(completion(addr, 2, false)).await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(head.status.is_server_error(), "{:?} {body}", head.status);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"]["message"].is_string(), "{body}");
    assert!(
        !body.contains(&down.to_string()),
        "an internal address: {body}"
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(metrics.contains("ai_balance_"), "{metrics}");
    for shown in [&body, &metrics] {
        for secret in ["hunter2", "admin:", "query-secret", "api-key="] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
    }
}

#[tokio::test]
async fn a_slow_healthy_non_streamed_generation_succeeds_and_ejects_nothing() {
    // The head limit for a stream is 200 ms, and a non-streamed answer of 12 tokens takes
    // about 10 + 11 x 40 = 450 ms to be written: more than twice the head limit, as 75 s is
    // beside the 60 s a fixed per-attempt timeout allowed. Each token it may generate adds
    // 500 ms to its limit.
    let servers = [
        ModelServer::spawn(Spec::new(
            "a",
            Duration::from_millis(10),
            Duration::from_millis(40),
        ))
        .await,
        ModelServer::spawn(Spec::new(
            "b",
            Duration::from_millis(10),
            Duration::from_millis(40),
        ))
        .await,
        ModelServer::spawn(Spec::new(
            "c",
            Duration::from_millis(10),
            Duration::from_millis(40),
        ))
        .await,
    ];
    let mut gw = Gateway::default();
    for s in &servers {
        gw.upstreams
            .push(parse_upstream(&s.uri().to_string()).unwrap());
    }
    gw.first_byte = Duration::from_millis(200);
    gw.per_token = Duration::from_millis(500);
    let (addr, pool) = serve(gw).await;
    for i in 0..5 {
        let (head, body) = send(completion(addr, 12, false)).await;
        assert_eq!(head.status, StatusCode::OK, "request {i}: {body:?}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["usage"]["completion_tokens"], 12);
        let ran: u64 = servers.iter().map(|s| s.stats.requests.load(SeqCst)).sum();
        assert_eq!(ran, i + 1, "request {i} ran on one server only");
    }
    for e in pool.endpoints() {
        assert_eq!(e.health(), Health::Healthy, "{}", e.key());
        assert_eq!(e.failures(), 0, "{}", e.key());
    }
    // A stream's head still has its own short limit: a server that never answers fails fast.
    for s in &servers {
        s.set_mode(Mode::Hang);
    }
    let (head, _) = send(completion(addr, 12, true)).await;
    assert!(head.status.is_server_error(), "{:?}", head.status);
}

/// A completion request whose body is `size` bytes long.
fn sized(addr: SocketAddr, size: usize) -> Request<Full<Bytes>> {
    let prefix = r#"{"model":"sim","max_tokens":1,"messages":[{"role":"user","content":""#;
    let suffix = r#""}]}"#;
    let filler = "x".repeat(size - prefix.len() - suffix.len());
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{prefix}{filler}{suffix}"))))
        .unwrap()
}

fn body_bytes(metrics: &str) -> u64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with("gateway_request_body_bytes "))
        .unwrap_or_else(|| panic!("no body gauge: {metrics}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn request_bodies_in_flight_hold_at_most_the_gateway_budget() {
    let server = ModelServer::spawn(quick("m")).await;
    let mut gw = Gateway::default();
    gw.upstreams
        .push(parse_upstream(&server.uri().to_string()).unwrap());
    gw.max_body = 100_000;
    gw.max_bodies = 150_000;
    let (addr, _pool) = serve(gw).await;

    // One body of 80 kB held upstream (the server does not answer), as a slow upstream would.
    server.set_mode(Mode::Hang);
    let held = tokio::spawn(send(sized(addr, 80_000)));
    for _ in 0..1000 {
        if server.stats.received.load(SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.stats.received.load(SeqCst), 1);

    // Another 80 kB does not fit beside it: refused unread, 503 with Retry-After.
    let (head, body) = send(sized(addr, 80_000)).await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert!(head.headers.contains_key("retry-after"));
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(error["error"]["message"].is_string());
    assert_eq!(
        server.stats.received.load(SeqCst),
        1,
        "it reached no upstream"
    );
    assert_eq!(body_bytes(&get(addr, "/metrics").await.1), 80_000);
    // Over the per-body limit: 413.
    let (head, _) = send(sized(addr, 100_001)).await;
    assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);

    // The client of the held request goes away: its body's share is given back.
    held.abort();
    let _ = held.await;
    let mut left = u64::MAX;
    for _ in 0..1000 {
        left = body_bytes(&get(addr, "/metrics").await.1);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0, "the cancelled request's body is released");
    server.set_mode(Mode::Normal);
    let (head, _) = send(sized(addr, 80_000)).await;
    assert_eq!(head.status, StatusCode::OK);
}

#[tokio::test]
async fn a_body_routing_cannot_read_is_a_400() {
    let server = ModelServer::spawn(quick("m")).await;
    let mut gw = Gateway::default();
    gw.upstreams
        .push(parse_upstream(&format!("{},models=sim", server.uri())).unwrap());
    let (addr, _pool) = serve(gw).await;
    for bad in [
        r#"{"model":"sim","messages":[{"role":"user","content":"cut sh"#,
        r#"{"model":42,"messages":[]}"#,
        r#"{"model":"sim","model":"other","messages":[]}"#,
    ] {
        let mut request = completion(addr, 1, false);
        *request.body_mut() = Full::new(Bytes::from(bad));
        let (head, body) = send(request).await;
        assert_eq!(head.status, StatusCode::BAD_REQUEST, "{bad}: {body:?}");
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    }
    assert_eq!(server.stats.received.load(SeqCst), 0);
}
