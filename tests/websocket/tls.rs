//! `wss://` upstreams over TLS with a certificate authority made at test time (rcgen): the
//! `client` feature's rustls settings verify the chain, ALPN offers HTTP/1.1 only (a
//! WebSocket upgrade is an HTTP/1.1 request), and an upstream whose certificate is not trusted
//! is refused before the session starts, counted against it, and failed over.

use std::{net::SocketAddr, sync::Arc};

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use parking_lot::Mutex;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::{rustls, TlsAcceptor};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    Message,
};
use tower::Layer;
use tower_ai_balance::{
    client::{Client, UpstreamConfig, Upstreams},
    websocket::{self, Proxy},
    BalanceLayer, Pool,
};

use super::{
    client_support::TestCa, close, eventually, next_event, open, realtime::spawn_gateway,
    server_of, servers, within,
};

/// What a `wss` server saw of one connection: the ALPN protocol TLS agreed on, and the
/// handshake's path and headers (`None` when no WebSocket handshake came).
#[derive(Debug, Clone)]
struct Seen {
    alpn: Option<Vec<u8>>,
    handshake: Option<(String, HeaderMap)>,
}

/// A WebSocket server behind TLS: sends `session.created` (server `wss`), then echoes text
/// messages as `echo` events until the client closes.
struct WssServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for WssServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WssServer {
    async fn start(tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let acceptor = TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection ends with the server.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (log, acceptor) = (Arc::clone(&log), acceptor.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let index = {
                        let mut log = log.lock();
                        log.push(Seen {
                            alpn: tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec),
                            handshake: None,
                        });
                        log.len() - 1
                    };
                    // tungstenite's callback type: its error is a whole response.
                    #[allow(clippy::result_large_err)]
                    let record = |request: &Request, response: Response| {
                        let target = request.uri().path_and_query().unwrap().to_string();
                        log.lock()[index].handshake = Some((target, request.headers().clone()));
                        Ok::<_, ErrorResponse>(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tls, record).await else {
                        return;
                    };
                    let created = r#"{"type":"session.created","server":"wss"}"#;
                    if ws.send(Message::text(created)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Text(text) = message {
                            let echo = serde_json::json!({"type": "echo", "data": text.as_str()});
                            if ws.send(Message::text(echo.to_string())).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

fn client_trusting(ca: &TestCa) -> Client {
    Client::builder()
        .webpki_roots(false)
        .ca_pem(ca.ca_pem.as_bytes())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_wss_session_verifies_the_chain_speaks_http1_and_sends_the_upstream_key() {
    let ca = TestCa::new();
    // The server would take HTTP/2 by ALPN if offered it.
    let server = WssServer::start(ca.server(&[b"h2", b"http/1.1"])).await;
    let pool = Upstreams::new()
        .client(client_trusting(&ca))
        .add(
            UpstreamConfig::new(&format!("https://localhost:{}/v1", server.addr.port()))
                .unwrap()
                .name("tls-0")
                .api_key("sk-gateway"),
        )
        .build_pool()
        .unwrap();
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, _) = open(addr, &[("authorization", "Bearer sk-client")])
        .await
        .expect("the session opens over TLS");
    assert_eq!(server_of(&mut ws).await, "wss");
    ws.send(Message::text("hello")).await.unwrap();
    let echo = within(next_event(&mut ws)).await.expect("an echo");
    assert_eq!(echo["data"], "hello");
    let endpoint = pool.get("tls-0").unwrap();
    assert_eq!(endpoint.in_flight(), 1, "the session holds its slot");

    let seen = server.seen();
    assert_eq!(seen.len(), 1, "one connection: {seen:?}");
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (target, headers) = seen[0].handshake.clone().expect("a WebSocket handshake");
    assert_eq!(target, "/v1/realtime?model=m");
    assert_eq!(headers["authorization"], "Bearer sk-gateway");
    assert_eq!(headers.get_all("authorization").iter().count(), 1);

    close(ws).await;
    assert!(eventually(|| endpoint.in_flight() == 0).await);
    assert_eq!((endpoint.requests(), endpoint.failures()), (1, 0));
    gateway.abort();
}

#[tokio::test]
async fn a_wss_upstream_with_an_untrusted_certificate_is_failed_over() {
    // The server's chain comes from a CA the gateway does not trust.
    let (theirs, ours) = (TestCa::new(), TestCa::new());
    let untrusted = WssServer::start(theirs.server(&[b"http/1.1"])).await;
    let plain = servers(1).await;
    let pool = Upstreams::new()
        .client(client_trusting(&ours))
        .add(
            UpstreamConfig::new(&format!("https://localhost:{}/v1", untrusted.addr.port()))
                .unwrap()
                .name("untrusted")
                .tier(0),
        )
        .add(
            UpstreamConfig::new(&format!("http://{}/v1", plain[0].addr))
                .unwrap()
                .name("gpu-0")
                .tier(1),
        )
        .build_pool()
        .unwrap();
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, _) = open(addr, &[]).await.expect("the session opens on gpu-0");
    assert_eq!(server_of(&mut ws).await, "gpu-0");
    let refused = pool.get("untrusted").unwrap();
    assert_eq!(refused.failures(), 1, "the TLS failure counted against it");
    assert_eq!(refused.in_flight(), 0);
    assert!(
        untrusted.seen().iter().all(|s| s.handshake.is_none()),
        "no WebSocket handshake went to an unverified server"
    );
    close(ws).await;
    gateway.abort();
}

#[tokio::test]
async fn the_module_upstream_takes_wss_with_a_given_client() {
    let ca = TestCa::new();
    let server = WssServer::start(ca.server(&[b"http/1.1"])).await;
    let pool = Pool::new();
    let upstream = websocket::Upstream::new(&format!("wss://127.0.0.1:{}/v1", server.addr.port()))
        .unwrap()
        .client(&client_trusting(&ca))
        .key_header("api-key", "sk-azure")
        .unwrap();
    pool.insert("wss-0", upstream).unwrap();
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let (addr, gateway) = spawn_gateway(proxy, None).await;

    let (mut ws, _) = open(addr, &[("api-key", "sk-client")]).await.unwrap();
    assert_eq!(server_of(&mut ws).await, "wss");
    let (_, headers) = server.seen()[0].handshake.clone().unwrap();
    assert_eq!(headers["api-key"], "sk-azure");
    assert_eq!(headers.get_all("api-key").iter().count(), 1);
    assert_eq!(pool.get("wss-0").unwrap().in_flight(), 1);
    close(ws).await;
    assert!(eventually(|| pool.get("wss-0").unwrap().in_flight() == 0).await);
    gateway.abort();
}
