//! Loopback servers for the client tests: a recording HTTP server (plain, h2c, or TLS with a
//! certificate made at test time), and helpers to read OpenAI answers.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    },
    TlsAcceptor,
};

/// A certificate authority and a server certificate for `localhost` and `127.0.0.1` it
/// signed, made now.
pub struct TestCa {
    pub ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tower-ai-balance test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Self {
            ca_pem: ca.pem(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// A server config offering these ALPN protocols.
    pub fn server(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone())),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// One request, as the server received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Version,
    /// The path and query.
    pub target: String,
    /// The `:authority` (HTTP/2), if the request had one.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Answer = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

/// A server that records every request and answers with `answer`.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Plain TCP (HTTP/1.1, or HTTP/2 with prior knowledge), or TLS with `tls`.
    pub async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        answer: impl Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let acceptor = tls.map(TlsAcceptor::from);
        let log = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (log, answer, acceptor) =
                    (Arc::clone(&log), Arc::clone(&answer), acceptor.clone());
                connections.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (log, answer) = (Arc::clone(&log), Arc::clone(&answer));
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let seen = Seen {
                                version: parts.version,
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/".into(), |p| p.to_string()),
                                authority: parts.uri.authority().map(|a| a.to_string()),
                                headers: parts.headers,
                                body,
                            };
                            let response = answer(&seen);
                            log.lock().push(seen);
                            Ok::<_, hyper::Error>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    /// A server that answers `200` with `{"ok":true}`.
    pub async fn ok(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start(tls, |_| json(StatusCode::OK, "{\"ok\":true}")).await
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().last().cloned().expect("a request arrived")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }
}

pub fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// A port on loopback where nothing listens: connections are refused.
pub async fn refusing_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The data payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8(body.to_vec())
        .unwrap()
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// Checks a well-formed OpenAI chat-completion stream: chunks, then `[DONE]`, nothing after.
/// Returns the chunks.
pub fn openai_stream(body: &[u8]) -> Vec<serde_json::Value> {
    let events = sse_data(body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    events[..events.len() - 1]
        .iter()
        .map(|e| {
            let chunk: serde_json::Value = serde_json::from_str(e).expect("a JSON chunk");
            assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
            chunk
        })
        .collect()
}

/// The text a chunk stream carries.
pub fn stream_text(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}
