//! The shared HTTP client: one connection pool and one TLS configuration for many upstreams.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::connect::HttpConnector,
    rt::{TokioExecutor, TokioTimer},
};
use rustls::pki_types::{pem::PemObject, CertificateDer};

use super::error::ClientError;
use crate::error::BoxError;

/// The body type the pooled client sends.
pub(crate) type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

type Pooled = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, RequestBody>;

/// A pooled HTTP/1.1 and HTTP/2 client with TLS (rustls, ring), shared by the
/// [`Upstream`](super::Upstream)s made from it: connections to the same host are reused
/// across them. Cheap to clone.
///
/// HTTPS upstreams are verified against the Mozilla root store (webpki roots) and any CA
/// added with [`ClientBuilder::ca_pem`]; HTTP/2 is used where the server offers it by ALPN,
/// HTTP/1.1 otherwise. Plain `http://` upstreams speak HTTP/1.1, or HTTP/2 with prior
/// knowledge (h2c) when [`ClientBuilder::http2_prior_knowledge`] is set.
#[derive(Clone)]
pub struct Client {
    pub(crate) pooled: Pooled,
    /// The same TCP and TLS settings, offering only HTTP/1.1 by ALPN: a WebSocket upgrade
    /// is an HTTP/1.1 request. Not pooled: a session keeps its connection.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) websocket: HttpsConnector<HttpConnector>,
    settings: Arc<ClientBuilder>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with the default settings: webpki roots, a 10 s connect timeout, idle
    /// connections kept for 90 s.
    pub fn new() -> Result<Self, ClientError> {
        Self::builder().build()
    }

    /// Settings for a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }
}

/// How to build a [`Client`]. Every setting has a default; [`build`](Self::build) checks them.
#[derive(Clone)]
pub struct ClientBuilder {
    webpki_roots: bool,
    roots: Vec<CertificateDer<'static>>,
    error: Option<ClientError>,
    connect_timeout: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: usize,
    tcp_keepalive: Option<Duration>,
    http2_keep_alive_interval: Option<Duration>,
    http2_prior_knowledge: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            webpki_roots: true,
            roots: Vec::new(),
            error: None,
            connect_timeout: Some(Duration::from_secs(10)),
            pool_idle_timeout: Some(Duration::from_secs(90)),
            pool_max_idle_per_host: 256,
            tcp_keepalive: Some(Duration::from_secs(60)),
            http2_keep_alive_interval: None,
            http2_prior_knowledge: false,
        }
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("webpki_roots", &self.webpki_roots)
            .field("extra_roots", &self.roots.len())
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("http2_keep_alive_interval", &self.http2_keep_alive_interval)
            .field("http2_prior_knowledge", &self.http2_prior_knowledge)
            .finish()
    }
}

impl ClientBuilder {
    /// Whether to trust the Mozilla root store (on by default). Off, only the CAs added with
    /// [`ca_pem`](Self::ca_pem) or [`ca_der`](Self::ca_der) are trusted.
    pub fn webpki_roots(mut self, on: bool) -> Self {
        self.webpki_roots = on;
        self
    }

    /// Also trusts the CA certificates in this PEM text (one or more `CERTIFICATE` blocks):
    /// a private CA, or a self-signed server's certificate. A PEM without a certificate, or
    /// one that does not parse, makes [`build`](Self::build) fail.
    pub fn ca_pem(mut self, pem: &[u8]) -> Self {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            match cert {
                Ok(cert) => {
                    self.roots.push(cert);
                    found += 1;
                }
                Err(e) => {
                    self.error.get_or_insert(ClientError::InvalidCertificate {
                        reason: format!("the PEM does not parse: {e}"),
                    });
                }
            }
        }
        if found == 0 {
            self.error.get_or_insert(ClientError::InvalidCertificate {
                reason: "the PEM holds no CERTIFICATE block".into(),
            });
        }
        self
    }

    /// Also trusts this DER-encoded CA certificate.
    pub fn ca_der(mut self, der: impl Into<Vec<u8>>) -> Self {
        self.roots.push(CertificateDer::from(der.into()));
        self
    }

    /// How long a TCP connect may take (10 s by default; `None` for no limit).
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long an idle connection is kept for reuse (90 s by default; `None` for ever).
    pub fn pool_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections are kept per host (256 by default).
    pub fn pool_max_idle_per_host(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// TCP keep-alive probes after this much idleness (60 s by default; `None` for off).
    pub fn tcp_keepalive(mut self, interval: Option<Duration>) -> Self {
        self.tcp_keepalive = interval;
        self
    }

    /// HTTP/2 PING frames at this interval, to notice a dead connection (off by default).
    pub fn http2_keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.http2_keep_alive_interval = interval;
        self
    }

    /// Speaks HTTP/2 to every upstream without negotiating it: h2c over plain TCP, and h2
    /// over TLS (a server that picks HTTP/1.1 by ALPN then fails). Off by default.
    pub fn http2_prior_knowledge(mut self, on: bool) -> Self {
        self.http2_prior_knowledge = on;
        self
    }

    /// The client, or why these settings cannot make one.
    pub fn build(self) -> Result<Client, ClientError> {
        if let Some(error) = self.error.clone() {
            return Err(error);
        }
        for (option, value) in [
            ("connect_timeout", self.connect_timeout),
            ("tcp_keepalive", self.tcp_keepalive),
            ("http2_keep_alive_interval", self.http2_keep_alive_interval),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(ClientError::InvalidOption {
                    option: option.into(),
                    reason: "must be more than zero (None turns it off)".into(),
                });
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| ClientError::InvalidCertificate {
                    reason: e.to_string(),
                })?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls {
                reason: "no trusted roots: keep the webpki roots or add a CA".into(),
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls {
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(self.connect_timeout);
        http.set_keepalive(self.tcp_keepalive);
        // A WebSocket upgrade is an HTTP/1.1 request: offer only that by ALPN, so that a
        // server able to speak HTTP/2 does not pick it.
        let mut http1_only = tls.clone();
        http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        let websocket = HttpsConnector::from((http.clone(), http1_only));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(self.http2_prior_knowledge)
            .http2_keep_alive_interval(self.http2_keep_alive_interval);
        let pooled = builder.build(https);
        Ok(Client {
            pooled,
            websocket,
            settings: Arc::new(self),
        })
    }
}
