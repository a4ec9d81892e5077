//! The gateway over HTTPS upstreams of both formats, with a CA made at test time, serving a
//! client that speaks to it as the OpenAI SDK does (JSON and SSE), and `GET /v1/models` from
//! the upstreams' own lists.

use std::{net::SocketAddr, sync::atomic::Ordering::SeqCst, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower_ai_balance::client::Client;

use crate::{
    gateway::Gateway,
    get,
    model_server::{ModelServer, Spec},
    parse_upstream, send, serve,
    support::{openai_stream, stream_text, TestCa},
};

/// An HTTPS front for `backend` on loopback: TLS (HTTP/1.1 by ALPN) with a certificate of
/// `ca`, the bytes relayed to the plain-HTTP server behind it.
async fn https_front(ca: &TestCa, backend: SocketAddr) -> SocketAddr {
    let acceptor = TlsAcceptor::from(ca.server(&[b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn chat(addr: SocketAddr, model: &str, stream: bool) -> Request<Full<Bytes>> {
    // As the OpenAI SDK sends it: its key as a bearer token, JSON, and SSE accepted.
    let body = serde_json::json!({
        "model": model, "stream": stream, "max_tokens": 3,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say something."}
        ],
    });
    Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("authorization", "Bearer sk-client")
        .header("user-agent", "OpenAI/Python 1.55.0")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

#[tokio::test]
async fn a_stock_client_is_served_over_https_upstreams_of_both_formats() {
    let ca = TestCa::new();
    let fast = |name: &str| Spec::new(name, Duration::from_millis(2), Duration::from_millis(2));
    let openai = ModelServer::spawn(fast("openai")).await;
    let anthropic = ModelServer::spawn(fast("anthropic")).await;
    let openai_url = format!(
        "https://localhost:{}/v1",
        https_front(&ca, openai.addr).await.port()
    );
    let anthropic_url = format!(
        "https://localhost:{}",
        https_front(&ca, anthropic.addr).await.port()
    );

    let mut gw = Gateway::default();
    // The OpenAI-format upstream names no model: the gateway lists what it says it serves.
    gw.upstreams
        .push(parse_upstream(&format!("{openai_url},key=sk-openai,tier=1")).unwrap());
    gw.upstreams.push(
        parse_upstream(&format!(
            "{anthropic_url},format=anthropic,key=sk-ant,model=claude-sonnet-4-5,models=claude"
        ))
        .unwrap(),
    );
    gw.client = Some(
        Client::builder()
            .webpki_roots(false)
            .ca_pem(ca.ca_pem.as_bytes())
            .build()
            .unwrap(),
    );
    let (addr, _pool) = serve(gw).await;

    let (status, models) = get(addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = (models["data"].as_array().unwrap().iter())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude", "sim"], "{models}");

    for (model, server, key_header, key) in [
        ("sim", &openai, "authorization", "Bearer sk-openai"),
        ("claude", &anthropic, "x-api-key", "sk-ant"),
    ] {
        let before = server.stats.received.load(SeqCst);
        let (head, body) = send(chat(addr, model, false)).await;
        assert_eq!(head.status, StatusCode::OK, "{model}: {body:?}");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["object"], "chat.completion", "{json}");
        assert_eq!(json["choices"][0]["message"]["role"], "assistant");
        assert_eq!(json["choices"][0]["message"]["content"], "t0 t1 t2 ");

        let (head, body) = send(chat(addr, model, true)).await;
        assert_eq!(head.status, StatusCode::OK, "{model}: {body:?}");
        assert!(head.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let chunks = openai_stream(&body);
        assert_eq!(stream_text(&chunks), "t0 t1 t2 ", "{model}");

        assert_eq!(server.stats.received.load(SeqCst), before + 2, "{model}");
        // Each upstream gets its own key, never the client's.
        let seen = server.stats.last_headers.lock().clone();
        assert_eq!(seen[key_header], key, "{model}");
        let all: Vec<_> = seen.values().map(|v| v.as_bytes().to_vec()).collect();
        assert!(
            !all.iter().any(|v| v.windows(9).any(|w| w == b"sk-client")),
            "{model}: the client's key reached the upstream: {seen:?}"
        );
    }
    // The Anthropic upstream was asked for its own model name, in its own format.
    let last: serde_json::Value =
        serde_json::from_slice(&anthropic.stats.last_body.lock()).unwrap();
    assert_eq!(last["model"], "claude-sonnet-4-5");
    assert_eq!(last["system"], "Be brief.");
}

#[tokio::test]
async fn models_of_an_upstream_down_at_start_are_listed_once_it_answers() {
    let server = ModelServer::spawn(Spec::new(
        "late",
        Duration::from_millis(1),
        Duration::from_millis(1),
    ))
    .await;
    server.crash();
    let mut gw = Gateway::default();
    gw.upstreams
        .push(parse_upstream(&server.uri().to_string()).unwrap());
    gw.models_every = Duration::from_millis(50);
    let (addr, _pool) = serve(gw).await;
    let ids = || async {
        let (_, list) = get(addr, "/v1/models").await;
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        (list["data"].as_array().unwrap().iter())
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(ids().await.is_empty(), "nothing to list while it is down");
    server.restart().await.unwrap();
    let mut listed = Vec::new();
    for _ in 0..400 {
        listed = ids().await;
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(listed, ["sim"], "asked again, and listed");
}

#[tokio::test]
async fn an_anthropic_upstreams_own_models_are_listed_in_openai_format() {
    let ca = TestCa::new();
    let fast = |name: &str| Spec::new(name, Duration::from_millis(2), Duration::from_millis(2));
    let (openai, anthropic) = (
        ModelServer::spawn(fast("openai")).await,
        ModelServer::spawn(fast("anthropic")).await,
    );
    let openai_url = format!(
        "https://localhost:{}/v1",
        https_front(&ca, openai.addr).await.port()
    );
    let anthropic_url = format!(
        "https://localhost:{}",
        https_front(&ca, anthropic.addr).await.port()
    );
    let mut gw = Gateway::default();
    // Neither names a model: both are asked, each in its own format and with its own key.
    gw.upstreams
        .push(parse_upstream(&format!("{openai_url},key=sk-openai")).unwrap());
    gw.upstreams
        .push(parse_upstream(&format!("{anthropic_url},format=anthropic,key=sk-ant")).unwrap());
    gw.client = Some(
        Client::builder()
            .webpki_roots(false)
            .ca_pem(ca.ca_pem.as_bytes())
            .build()
            .unwrap(),
    );
    let (addr, _pool) = serve(gw).await;
    let (status, models) = get(addr, "/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = (models["data"].as_array().unwrap().iter())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    // All three of the Anthropic list's models, from its two pages, and the OpenAI one's.
    let mut expected = crate::model_server::ANTHROPIC_MODELS.to_vec();
    expected.push("sim");
    expected.sort();
    assert_eq!(ids, expected, "{models}");
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["object"] == "model"));
}
