//! Request bodies buffered into replayable ones, within a size limit.
//!
//! `Failover` sends a request again only if its body can be replayed ([`Replay`]); axum's and
//! hyper's bodies are streams, which cannot. [`BufferBodyLayer`] reads any request body
//! (`http_body::Body`) into a [`Full<Bytes>`] before the request goes on, so the layers below
//! can retry and hedge it, and sets its `content-length`. A body over the limit, by its
//! `content-length` or as it is read, fails the request with [`BodyTooLarge`] (an HTTP
//! `413` by [`http_error`](crate::http_error)) and reaches no upstream.
//!
//! [`Replay`]: crate::failover::Replay
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full, StreamBody};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{buffered::{BodyTooLarge, BufferBodyLayer}, failover::FailoverLayer, BalanceLayer, EndpointConfig, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let pool = Pool::new();
//! pool.insert(EndpointConfig::new("a"), service_fn(|r: Request<Full<Bytes>>| async move {
//!     let body = r.into_body().collect().await?.to_bytes();
//!     Ok::<_, Infallible>(Response::new(Full::new(body)))
//! }))?;
//! let stack = ServiceBuilder::new()
//!     .layer(BufferBodyLayer::new(1 << 20))
//!     .layer(FailoverLayer::new())
//!     .layer(BalanceLayer::new())
//!     .service(pool);
//! // A streamed body, as axum and hyper give.
//! let chunks = futures_util::stream::iter([Ok::<_, Infallible>(http_body::Frame::data(Bytes::from("{}")))]);
//! let response = stack.clone().oneshot(Request::new(StreamBody::new(chunks))).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "{}");
//!
//! let big = Request::new(Full::new(Bytes::from(vec![b' '; 2 << 20])));
//! assert!(stack.oneshot(big).await.unwrap_err().is::<BodyTooLarge>());
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::{header, request::Parts, HeaderValue, Request};
use http_body::Body;
use http_body_util::{combinators::Collect, BodyExt, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::BoxError;

/// A request body over the limit of a [`BufferBodyLayer`]; it was not sent on.
#[derive(Debug, Clone)]
pub struct BodyTooLarge {
    limit: usize,
}

impl BodyTooLarge {
    pub(crate) fn new(limit: usize) -> Self {
        Self { limit }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body exceeds the limit of {} bytes",
            self.limit
        )
    }
}

impl std::error::Error for BodyTooLarge {}

/// The request body could not be read (the client went away, or sent a broken body).
#[derive(Debug)]
pub struct RequestBodyError {
    source: BoxError,
}

impl fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body could not be read: {}", self.source)
    }
}

impl std::error::Error for RequestBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Buffers request bodies of at most `limit` bytes into [`Full<Bytes>`]. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    limit: usize,
}

impl BufferBodyLayer {
    /// Buffers bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody::new(inner, self.limit)
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
}

impl<S> BufferBody<S> {
    /// Buffers the bodies of requests to `inner`, at most `limit` bytes each.
    pub fn new(inner: S, limit: usize) -> Self {
        Self { inner, limit }
    }

    /// A layer of this service.
    pub fn layer(limit: usize) -> BufferBodyLayer {
        BufferBodyLayer::new(limit)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<Full<Bytes>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let too_large = declared.is_some_and(|n| n > self.limit as u64)
            || request.body().size_hint().lower() > self.limit as u64;
        let state = if too_large {
            State::Refused {
                error: Some(BodyTooLarge::new(self.limit).into()),
            }
        } else {
            // The service polled ready takes the call; a clone stays for the next one.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            let (parts, body) = request.into_parts();
            State::Collecting {
                collect: Limited::new(body, self.limit).collect(),
                parts: Some(parts),
                inner: Some(inner),
                limit: self.limit,
            }
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The response future of [`BufferBody`]: reads the body, then calls the inner service.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<Full<Bytes>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        Refused { error: Option<BoxError> },
        Collecting {
            #[pin]
            collect: Collect<Limited<B>>,
            parts: Option<Parts>,
            inner: Option<S>,
            limit: usize,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| "polled after completion".into());
                    return Poll::Ready(Err(error));
                }
                StateProj::Collecting {
                    collect,
                    parts,
                    inner,
                    limit,
                } => {
                    let bytes = match ready!(collect.poll(cx)) {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) if e.is::<LengthLimitError>() => {
                            return Poll::Ready(Err(BodyTooLarge::new(*limit).into()))
                        }
                        Err(e) => return Poll::Ready(Err(RequestBodyError { source: e }.into())),
                    };
                    let (Some(mut parts), Some(mut inner)) = (parts.take(), inner.take()) else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    // The body is now whole: its length is known and it is not chunked.
                    parts.headers.remove(header::TRANSFER_ENCODING);
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    let request = Request::from_parts(parts, Full::new(bytes));
                    State::Calling {
                        future: inner.call(request),
                    }
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
            };
            this.state.set(next);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::{
        convert::Infallible,
        sync::{
            atomic::{AtomicUsize, Ordering::SeqCst},
            Arc,
        },
    };

    use http::Response;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tower::{service_fn, ServiceExt};

    use super::*;

    type Echo =
        tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

    /// A service that counts its calls and echoes what it got, its call count, and `limit`.
    fn echo(limit: usize) -> (Echo, Arc<AtomicUsize>, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let inner = service_fn(move |request: Request<Full<Bytes>>| {
            counted.fetch_add(1, SeqCst);
            async move {
                let length = request.headers()[header::CONTENT_LENGTH].clone();
                assert!(!request.headers().contains_key(header::TRANSFER_ENCODING));
                let body = request.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(length, body.len().to_string().as_str());
                Ok::<_, Infallible>(Response::new(Full::new(body)))
            }
        });
        (Echo::new(inner), calls, limit)
    }

    fn chunks(
        parts: Vec<Result<&'static str, &'static str>>,
    ) -> StreamBody<impl futures_core::Stream<Item = Result<Frame<Bytes>, BoxError>>> {
        StreamBody::new(futures_util::stream::iter(parts.into_iter().map(|p| {
            p.map(|s| Frame::data(Bytes::from(s)))
                .map_err(BoxError::from)
        })))
    }

    #[tokio::test]
    async fn a_streamed_body_within_the_limit_is_sent_whole_with_its_length() {
        let (inner, calls, limit) = echo(6);
        let svc = BufferBody::new(inner, limit);
        let mut request = Request::new(chunks(vec![Ok("abc"), Ok("def")]));
        request.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let response = svc.clone().oneshot(request).await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "abcdef"
        );
        let over = svc
            .oneshot(Request::new(chunks(vec![Ok("abc"), Ok("defg")])))
            .await;
        assert_eq!(
            over.unwrap_err()
                .downcast_ref::<BodyTooLarge>()
                .unwrap()
                .limit(),
            6
        );
        assert_eq!(calls.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let (inner, calls, limit) = echo(10);
        let never = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let mut request = Request::new(never);
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        let error = BufferBody::new(inner, limit)
            .oneshot(request)
            .await
            .unwrap_err();
        assert!(error.is::<BodyTooLarge>());
        assert_eq!(calls.load(SeqCst), 0);
    }

    #[tokio::test]
    async fn a_broken_body_is_a_request_body_error() {
        let (inner, calls, limit) = echo(100);
        let request = Request::new(chunks(vec![Ok("ab"), Err("client went away")]));
        let error = BufferBody::new(inner, limit)
            .oneshot(request)
            .await
            .unwrap_err();
        assert!(error.is::<RequestBodyError>());
        assert_eq!(
            crate::http_error::openai_response(&error).status(),
            http::StatusCode::BAD_REQUEST
        );
        assert_eq!(calls.load(SeqCst), 0);
    }
}
