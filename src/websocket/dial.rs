//! Opening a session's upstream: the TCP connection, TLS for `wss`, and the WebSocket
//! handshake, which the upstream may refuse.

use std::fmt;

use http::{header, request, HeaderMap, HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, protocol::WebSocketConfig, Error as WsError},
    WebSocketStream,
};

use super::Upstream;
use crate::{
    classify::{Classify, Outcome},
    error::BoxError,
};

/// The connection a session's frames travel on, whatever carries it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The upstream's side of a session.
pub(crate) type UpstreamSocket = WebSocketStream<Box<dyn Io>>;

/// An upstream that took the session.
pub(crate) struct Dialed {
    pub(crate) socket: UpstreamSocket,
    /// The subprotocol the upstream chose (one of those offered).
    pub(crate) protocol: Option<HeaderValue>,
}

/// Why an upstream did not take a session.
pub(crate) enum DialError {
    /// It answered the handshake with another status than 101.
    Refused {
        status: StatusCode,
        headers: HeaderMap,
    },
    /// The connection, TLS or the handshake failed.
    Failed(BoxError),
}

impl DialError {
    /// The verdict, by the stack's classifier: a refusal by its status (401, 403 and 407
    /// say the gateway's credentials were refused, the endpoint's failure as for HTTP), any
    /// other failure as an error.
    pub(crate) fn verdict(&self, classify: &dyn Classify) -> Outcome {
        match self {
            DialError::Refused { status, .. } if matches!(status.as_u16(), 401 | 403 | 407) => {
                Outcome::Failure
            }
            DialError::Refused { status, headers } => classify.classify_response(*status, headers),
            DialError::Failed(error) => classify.classify_error(&**error),
        }
    }
}

impl fmt::Debug for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused { status, .. } => write!(f, "the upstream answered {status}"),
            DialError::Failed(e) => write!(f, "{e}"),
        }
    }
}

fn failed(e: impl Into<BoxError>) -> DialError {
    DialError::Failed(e.into())
}

/// Connects to `upstream` for a client whose upgrade request was `head`, offering
/// `protocols`, and completes the handshake.
pub(crate) async fn dial(
    upstream: &Upstream,
    head: &request::Parts,
    protocols: Option<&HeaderValue>,
    config: WebSocketConfig,
) -> Result<Dialed, DialError> {
    let (uri, headers) = upstream
        .handshake(head.uri.path(), head.uri.query(), &head.headers)
        .map_err(DialError::Failed)?;
    let io = connect(upstream, &uri).await?;
    let mut request = uri.into_client_request().map_err(failed)?;
    request.headers_mut().extend(headers);
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, protocols.clone());
    }
    match tokio_tungstenite::client_async_with_config(request, io, Some(config)).await {
        Ok((socket, response)) => Ok(Dialed {
            socket,
            protocol: response
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .cloned(),
        }),
        Err(WsError::Http(response)) => Err(DialError::Refused {
            status: response.status(),
            headers: response.headers().clone(),
        }),
        Err(e) => Err(failed(e)),
    }
}

/// The TCP connection, with TLS for `wss`: through the `client` feature's connector (its
/// roots, connect timeout and keep-alive; HTTP/1.1 by ALPN), or plain TCP without it.
#[cfg(feature = "client")]
async fn connect(upstream: &Upstream, uri: &Uri) -> Result<Box<dyn Io>, DialError> {
    use std::sync::OnceLock;

    use tower_service::Service;

    static DEFAULT: OnceLock<Result<crate::client::Client, crate::client::ClientError>> =
        OnceLock::new();
    let client = match upstream.http_client() {
        Some(client) => client,
        None => DEFAULT
            .get_or_init(crate::client::Client::new)
            .as_ref()
            .map_err(|e| failed(e.clone()))?,
    };
    // The connector speaks of `http` and `https`.
    let mut parts = uri.clone().into_parts();
    let tls = parts.scheme.as_ref().map(|s| s.as_str()) == Some("wss");
    parts.scheme = Some(if tls { "https" } else { "http" }.parse().map_err(failed)?);
    let target = Uri::from_parts(parts).map_err(failed)?;
    let mut connector = client.websocket.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(failed)?;
    let stream = connector.call(target).await.map_err(failed)?;
    Ok(Box::new(hyper_util::rt::TokioIo::new(stream)))
}

/// Plain TCP: `wss` needs the `client` feature's TLS.
#[cfg(not(feature = "client"))]
async fn connect(_upstream: &Upstream, uri: &Uri) -> Result<Box<dyn Io>, DialError> {
    if uri.scheme_str() == Some("wss") {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "wss:// upstreams need the `client` feature",
        )));
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(failed)?;
    let _ = stream.set_nodelay(true);
    Ok(Box::new(stream))
}

/// An error for a handshake that took too long.
pub(crate) fn timed_out(after: std::time::Duration) -> DialError {
    DialError::Failed(Box::new(crate::error::Timeout::new(after)))
}
