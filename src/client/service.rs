//! The upstream endpoint service: one base URL, its credentials and its wire format.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower_service::Service;

use super::{
    body::ResponseBody,
    config::{Format, UpstreamConfig},
    error::ClientError,
    headers::{clean_response, forward},
    http_client::{Client, RequestBody},
    url::BaseUrl,
};
use crate::{endpoint::Key, error::BoxError, hints::ServeAs, json::write::openai_error_body};

#[cfg(feature = "anthropic")]
mod anthropic_models;

/// An endpoint's service: sends each request to one upstream over a shared [`Client`].
/// `Clone + Send + Sync`, cheap to clone; a `tower::Service` for any request body of
/// [`Bytes`] (buffered ones such as `Full<Bytes>` can be replayed by `Failover`).
///
/// For each request it:
/// - joins the base URL's path and query with the request's (`https://h/openai/v1` and
///   `/chat/completions` make `https://h/openai/v1/chat/completions`; a request path that
///   starts with the version segment the base ends with, such as `/v1/...` on a base ending
///   in `/v1`, does not repeat it);
/// - sends `Host` (HTTP/1.1) or `:authority` (HTTP/2) of the upstream, not the client's;
/// - forwards only the allowed request headers ([`FORWARDED`](super::FORWARDED), plus
///   [`UpstreamConfig::forward_header`]), never the client's credentials or hop-by-hop
///   headers, and adds the upstream's own credentials and fixed headers;
/// - sends a request that `Balance` serves as another model than it names (a model alias:
///   [`ServeAs`]) naming that model in its JSON body's `"model"`, as
///   [`RewriteModel`](crate::route::RewriteModel) does;
/// - sets `content-length` from the body it sends (or none, for a streamed body);
/// - answers an upstream's `401`/`403`/`407` (its credentials refused) with `502` and an
///   OpenAI-format error, without the provider's message, which may quote the key;
/// - drops hop-by-hop headers and `set-cookie` from the answer.
/// - answers a request whose path has a `.` or `..` segment (also percent-encoded, or
///   between `\\` or `%2f`) with `400` itself: joined under the base path it could leave it.
///
/// With [`Format::Anthropic`] (feature `anthropic`), a chat-completions request is sent to
/// `/v1/messages` as an Anthropic Messages request and its answer, streamed or not, comes
/// back in OpenAI's format; `GET .../models` asks the upstream's `/v1/models` (every page)
/// and answers OpenAI's model list; a request the translation cannot carry is answered `400` with
/// the [`RequestError`](crate::anthropic::RequestError) in the response's extensions, and
/// reaches no upstream.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    base: BaseUrl,
    key: Key,
    format: Format,
    inject: Vec<(HeaderName, HeaderValue)>,
    forward: Vec<HeaderName>,
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    upstream_model: Option<Arc<str>>,
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    default_max_tokens: u64,
    #[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
    max_buffered: usize,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.inner.inject.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Upstream")
            .field("key", &self.inner.key)
            .field("base", &self.inner.base)
            .field("format", &self.inner.format)
            .field("headers", &names)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The upstream `config` describes, reached through `client`.
    pub fn new(client: &Client, config: &UpstreamConfig) -> Result<Self, ClientError> {
        if let Some(error) = &config.error {
            return Err(error.clone());
        }
        let inject = config
            .credentials
            .iter()
            .chain(&config.fixed)
            .cloned()
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                client: client.clone(),
                base: config.base.clone(),
                key: config.key().clone(),
                format: config.format,
                inject,
                forward: config.forward.clone(),
                upstream_model: config.upstream_model.clone(),
                default_max_tokens: config.default_max_tokens,
                max_buffered: config.max_buffered,
            }),
        })
    }

    /// The endpoint's key.
    pub fn key(&self) -> &Key {
        &self.inner.key
    }

    /// The wire format it speaks.
    pub fn format(&self) -> Format {
        self.inner.format
    }

    /// The client it sends through.
    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Its base URL.
    pub(crate) fn base(&self) -> &BaseUrl {
        &self.inner.base
    }

    /// What a WebSocket session to this upstream is made of: the client it connects with,
    /// the base URL, the headers it adds and the client headers it forwards.
    #[cfg(feature = "websocket")]
    pub(crate) fn websocket_parts(
        &self,
    ) -> (
        &Client,
        &BaseUrl,
        &[(HeaderName, HeaderValue)],
        &[HeaderName],
    ) {
        let inner = &*self.inner;
        (&inner.client, &inner.base, &inner.inject, &inner.forward)
    }
}

impl<B> Service<Request<B>> for Upstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client is always ready: it connects, or waits for a connection, per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        ResponseFuture {
            future: Box::pin(async move {
                if crate::dot_segments::has_dot_segment(request.uri().path()) {
                    // Joined under the base path, it would leave it, with this upstream's
                    // credentials: answered here, reaching no upstream.
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        "the request's path has a `.` or `..` segment",
                        "invalid_request_error",
                        Some("invalid_path"),
                    ));
                }
                match inner.format {
                    Format::OpenAi => inner.pass_through(request).await,
                    #[cfg(feature = "anthropic")]
                    Format::Anthropic => inner.anthropic(request).await,
                }
            }),
        }
    }
}

/// The response future of [`Upstream`].
pub struct ResponseFuture {
    future: Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future.as_mut().poll(cx)
    }
}

impl Inner {
    /// The request to send upstream: the joined URI, the allowed headers, the upstream's
    /// credentials, a true `content-length`. HTTP/1.1 unless the connection negotiates HTTP/2.
    fn request(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        client_headers: &HeaderMap,
        body: RequestBody,
        length: Option<u64>,
    ) -> Result<Request<RequestBody>, BoxError> {
        let mut headers = forward(client_headers, &self.forward);
        for (name, value) in &self.inject {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(length) = length {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = self.base.join(path, query)?;
        // No `Host`: the client sets the upstream's from the URI (HTTP/1.1), or sends it as
        // `:authority` (HTTP/2).
        *request.headers_mut() = headers;
        Ok(request)
    }

    async fn pass_through<B>(&self, request: Request<B>) -> Result<Response<ResponseBody>, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let (body, length) = match parts.extensions.get::<ServeAs>() {
            // Sent as another model than the body names (an alias): the body, read whole
            // (it is in memory: routing read it), names the model this upstream serves.
            Some(ServeAs(model)) => {
                let bytes = match read(body, self.max_buffered).await {
                    Ok(bytes) => bytes,
                    Err(e) if e.is::<super::ResponseTooLarge>() => return Ok(too_large()),
                    Err(e) => return Err(e),
                };
                let bytes = crate::route::rewrite(&bytes, model).unwrap_or(bytes);
                let length = bytes.len() as u64;
                let body = http_body_util::Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync();
                (body, Some(length))
            }
            None => {
                let length = body.size_hint().exact();
                (body.map_err(Into::into).boxed_unsync(), length)
            }
        };
        let request = self.request(
            parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
            body,
            length,
        )?;
        let response = self.client.pooled.request(request).await?;
        Ok(answer(response, ResponseBody::incoming))
    }

    #[cfg(feature = "anthropic")]
    async fn anthropic<B>(&self, request: Request<B>) -> Result<Response<ResponseBody>, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use crate::anthropic::{to_chat_completion, to_messages, RequestOptions};

        let (parts, body) = request.into_parts();
        if parts.method == Method::GET && parts.uri.path().ends_with("/models") {
            return self.anthropic_models(&parts.headers).await;
        }
        if parts.method != Method::POST || !parts.uri.path().ends_with("/chat/completions") {
            return Ok(error(
                StatusCode::NOT_FOUND,
                "this upstream serves only POST /v1/chat/completions and GET /v1/models",
                "invalid_request_error",
                Some("unsupported_endpoint"),
            ));
        }
        let bytes = match read(body, self.max_buffered).await {
            Ok(bytes) => bytes,
            Err(e) if e.is::<super::ResponseTooLarge>() => return Ok(too_large()),
            Err(e) => return Err(e),
        };
        // The model this upstream is asked for: its own name for it if it has one, else the
        // model the request is served as (for an alias), else the request's.
        let served_as = parts.extensions.get::<ServeAs>().map(|s| &*s.0);
        let options = RequestOptions {
            default_max_tokens: self.default_max_tokens,
            model: self
                .upstream_model
                .as_deref()
                .or(served_as)
                .map(str::to_owned),
        };
        let translated = match to_messages(&bytes, &options) {
            Ok(translated) => translated,
            Err(refused) => {
                let mut response = error(
                    StatusCode::BAD_REQUEST,
                    &refused.to_string(),
                    "invalid_request_error",
                    Some("unsupported"),
                );
                response.extensions_mut().insert(refused);
                return Ok(response);
            }
        };
        let mut headers = parts.headers;
        headers.remove(header::CONTENT_ENCODING);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(if translated.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        let length = translated.body.len() as u64;
        let body = http_body_util::Full::new(Bytes::from(translated.body))
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = self.request(
            Method::POST,
            "/v1/messages",
            None,
            &headers,
            body,
            Some(length),
        )?;
        let response = self.client.pooled.request(request).await?;
        if refused_credentials(response.status()) {
            return Ok(answer(response, ResponseBody::incoming));
        }
        let (mut parts, body) = response.into_parts();
        if !parts.status.is_success() {
            return Ok(self.anthropic_error(parts, body).await);
        }
        clean_response(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_ENCODING);
        if translated.stream {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            return Ok(Response::from_parts(
                parts,
                ResponseBody::anthropic(body, translated.include_usage),
            ));
        }
        let message = read(body, self.max_buffered).await?;
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let completion = to_chat_completion(&message, created)?;
        json(&mut parts.headers, completion.len());
        Ok(Response::from_parts(parts, ResponseBody::full(completion)))
    }
}

impl Inner {
    /// An Anthropic error answer (not a refusal of the credentials) in OpenAI's format.
    #[cfg(feature = "anthropic")]
    async fn anthropic_error(
        &self,
        mut parts: http::response::Parts,
        body: Incoming,
    ) -> Response<ResponseBody> {
        clean_response(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_ENCODING);
        let bytes = read(body, self.max_buffered.min(1 << 20))
            .await
            .unwrap_or_default();
        let upstream = parts.status;
        let (status, body) = crate::anthropic::to_openai_error(upstream, &bytes);
        parts.status = status;
        // An overload is a reason to come back soon, as a 429 is: say when.
        if upstream.as_u16() == 529 && !parts.headers.contains_key(header::RETRY_AFTER) {
            parts
                .headers
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        json(&mut parts.headers, body.len());
        Response::from_parts(parts, ResponseBody::full(body))
    }
}

/// An upstream's answer for the client: its own, less what the client must not see; or,
/// when the upstream refused the gateway's credentials, a `502` of the gateway's own.
fn answer(
    response: Response<Incoming>,
    body: fn(Incoming) -> ResponseBody,
) -> Response<ResponseBody> {
    if refused_credentials(response.status()) {
        return error(
            StatusCode::BAD_GATEWAY,
            "the upstream refused the gateway's credentials",
            "server_error",
            Some("upstream_auth_failed"),
        );
    }
    let (mut parts, incoming) = response.into_parts();
    clean_response(&mut parts.headers);
    Response::from_parts(parts, body(incoming))
}

/// 401, 403, 407: the upstream refused the credentials the gateway sent.
fn refused_credentials(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 407)
}

/// The answer to a request body over the buffering limit, which reaches no upstream.
fn too_large() -> Response<ResponseBody> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is too large",
        "invalid_request_error",
        Some("request_too_large"),
    )
}

/// An OpenAI-format error answer made by the client itself.
fn error(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response<ResponseBody> {
    let body = openai_error_body(message, kind, code);
    let mut response = Response::new(ResponseBody::full(body.clone()));
    *response.status_mut() = status;
    json(response.headers_mut(), body.len());
    response
}

fn json(headers: &mut HeaderMap, length: usize) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// Reads a body whole, up to `limit` bytes.
async fn read<B>(body: B, limit: usize) -> Result<Bytes, BoxError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(super::ResponseTooLarge::new(limit).into())
        }
        Err(e) => Err(e),
    }
}
