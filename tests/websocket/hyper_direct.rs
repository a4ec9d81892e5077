//! The hyper integration: a server that takes the upgrade itself (`websocket::accept`, then
//! `Session::serve_io` on hyper's upgraded connection), over a pool of this module's own
//! `ws://` upstreams.

use std::{convert::Infallible, sync::atomic::Ordering::SeqCst};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::Layer;
use tower_ai_balance::{
    http_error::openai_response,
    websocket::{self, Proxy, Upstream},
    BalanceLayer, Pool,
};

use super::{close, eventually, open, server_of, servers};

async fn realtime(
    proxy: Proxy<Upstream>,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let upgrade = hyper::upgrade::on(&mut request);
    let (head, _) = request.into_parts();
    if let Err(not) = websocket::accept(&head, None) {
        return Ok(not.response().map(|()| Full::default()));
    }
    let session = match proxy.connect(&head).await {
        Ok(session) => session,
        Err(error) => return Ok(openai_response(&error)),
    };
    let response = websocket::accept(&head, session.protocol()).unwrap();
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            session.serve_io(TokioIo::new(upgraded)).await;
        }
    });
    Ok(response.map(|()| Full::default()))
}

#[tokio::test]
async fn a_hyper_server_proxies_sessions_to_plain_websocket_upstreams() {
    let servers = servers(2).await;
    let pool = Pool::new();
    for s in &servers {
        let upstream = Upstream::new(&format!("ws://{}/v1", s.addr))
            .unwrap()
            .api_key("sk-gateway")
            .unwrap();
        pool.insert(s.spec.name.as_str(), upstream).unwrap();
    }
    let proxy = Proxy::new(BalanceLayer::new().layer(pool.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |r| realtime(proxy.clone(), r));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        }
    });

    let mut sessions = Vec::new();
    for _ in 0..4 {
        let (mut ws, _) = open(addr, &[("authorization", "Bearer sk-client")])
            .await
            .unwrap();
        server_of(&mut ws).await;
        sessions.push(ws);
    }
    assert_eq!(
        pool.endpoints()
            .iter()
            .map(|e| e.in_flight())
            .sum::<usize>(),
        4
    );
    for s in &servers {
        let seen = s.stats.last_headers.lock().clone();
        if s.stats.ws_accepted.load(SeqCst) > 0 {
            assert_eq!(seen["authorization"], "Bearer sk-gateway");
        }
    }
    for ws in sessions {
        close(ws).await;
    }
    assert!(eventually(|| pool.endpoints().iter().all(|e| e.in_flight() == 0)).await);

    // Not an upgrade: refused before any upstream is touched.
    let plain = plain_get(addr).await;
    assert_eq!(plain, 400);
    accept.abort();
}

/// A plain `GET /v1/realtime` over HTTP/1.1: the status.
async fn plain_get(addr: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /v1/realtime HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    text[9..12].parse().unwrap()
}
