//! Request bodies buffered into replayable ones, within a size limit.
//!
//! `Failover` sends a request again only if its body can be replayed ([`Replay`]); axum's and
//! hyper's bodies are streams, which cannot. [`BufferBodyLayer`] reads any request body
//! (`http_body::Body`) into a [`Full<Bytes>`] before the request goes on, so the layers below
//! can retry and hedge it, and sets its `content-length`. A body over the limit, by its
//! `content-length` or as it is read, fails the request with [`BodyTooLarge`] (an HTTP
//! `413` by [`http_error`](crate::http_error)) and reaches no upstream.
//!
//! A gateway holds every body in memory until its request is done (for a retry, and while the
//! upstream reads it), so the bodies in flight together need a bound as well:
//! [`total_limit`](BufferBodyLayer::total_limit) caps the bytes all of a layer's bodies hold at
//! once. A body's share is taken before it is read (its `content-length`, or chunk by chunk as
//! it arrives) and given back when the last copy of the buffer is dropped; a body that does not
//! fit fails at once with [`BuffersFull`] (an HTTP `503` with `Retry-After`), unread. Each body
//! is read into one buffer of its final size (when its length is declared) and never copied.
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

use bytes::{Buf, Bytes};
use http::{header, request::Parts, HeaderValue, Request};
use http_body::Body;
use http_body_util::Full;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use self::budget::{Budget, Held, Reservation};
use crate::error::BoxError;

mod budget;

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

/// The request bodies in flight already hold the [`total_limit`](BufferBodyLayer::total_limit)
/// of a [`BufferBodyLayer`]: this one was refused, unread. Worth trying again soon.
#[derive(Debug, Clone)]
pub struct BuffersFull {
    total: usize,
}

impl BuffersFull {
    /// The total limit, in bytes.
    pub fn total_limit(&self) -> usize {
        self.total
    }
}

impl fmt::Display for BuffersFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request bodies in flight hold the limit of {} bytes",
            self.total
        )
    }
}

impl std::error::Error for BuffersFull {}

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
#[derive(Debug, Clone)]
pub struct BufferBodyLayer {
    limit: usize,
    budget: Option<Budget>,
}

impl BufferBodyLayer {
    /// Buffers bodies of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            budget: None,
        }
    }

    /// Bodies in flight hold at most `bytes` together, across every service this layer builds
    /// and their clones; a body that does not fit is refused with [`BuffersFull`]. A
    /// `total_limit` below the per-body limit lowers that too. Without it, only the per-body
    /// limit holds.
    pub fn total_limit(mut self, bytes: usize) -> Self {
        self.budget = Some(Budget::new(bytes));
        self
    }

    /// How many bytes the bodies this layer's services buffered hold now (0 without a
    /// [`total_limit`](Self::total_limit)): a gauge for metrics.
    pub fn buffered_bytes(&self) -> usize {
        self.budget.as_ref().map_or(0, Budget::used)
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            limit: self.limit,
            budget: self.budget.clone(),
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    limit: usize,
    budget: Option<Budget>,
}

impl<S> BufferBody<S> {
    /// Buffers the bodies of requests to `inner`, at most `limit` bytes each.
    pub fn new(inner: S, limit: usize) -> Self {
        Self {
            inner,
            limit,
            budget: None,
        }
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
        let hint = request.body().size_hint();
        let refused = |error: BoxError| ResponseFuture {
            state: State::Refused { error: Some(error) },
        };
        let limit = self
            .limit
            .min(self.budget.as_ref().map_or(usize::MAX, Budget::max));
        if declared.is_some_and(|n| n > limit as u64) || hint.lower() > limit as u64 {
            return refused(BodyTooLarge::new(limit).into());
        }
        // The body's share is taken before it is read: its whole declared length at once (the
        // buffer is made that size), else as it arrives.
        let expected = declared.or(hint.exact()).unwrap_or(0) as usize;
        let mut reservation = Reservation::new(self.budget.as_ref());
        if !reservation.grow(expected) {
            return refused(self.full());
        }
        // The service polled ready takes the call; a clone stays for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = request.into_parts();
        ResponseFuture {
            state: State::Reading {
                body,
                buffer: Some(Held {
                    data: Vec::with_capacity(expected),
                    reservation,
                }),
                parts: Some(parts),
                inner: Some(inner),
                limit,
                total: self.budget.as_ref().map_or(0, Budget::max),
            },
        }
    }
}

impl<S> BufferBody<S> {
    fn full(&self) -> BoxError {
        BuffersFull {
            total: self.budget.as_ref().map_or(0, Budget::max),
        }
        .into()
    }
}

/// Appends `data` to `buffer`, growing it (and its reservation) as needed, within `limit`.
fn append(
    buffer: &mut Held,
    mut data: impl Buf,
    limit: usize,
    total: usize,
) -> Result<(), BoxError> {
    let needed = buffer.data.len().saturating_add(data.remaining());
    if needed > limit {
        return Err(BodyTooLarge::new(limit).into());
    }
    let capacity = buffer.data.capacity();
    if needed > capacity {
        // Doubling, within the limit: few reallocations for a body of unknown length.
        let wanted = needed.max(capacity.saturating_mul(2).min(limit));
        if !buffer.reservation.grow(wanted - capacity) {
            return Err(BuffersFull { total }.into());
        }
        buffer.data.reserve_exact(wanted - buffer.data.len());
    }
    while data.has_remaining() {
        let chunk = data.chunk();
        let n = chunk.len();
        buffer.data.extend_from_slice(chunk);
        data.advance(n);
    }
    Ok(())
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
        Reading {
            #[pin]
            body: B,
            buffer: Option<Held>,
            parts: Option<Parts>,
            inner: Option<S>,
            limit: usize,
            total: usize,
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
                StateProj::Reading {
                    mut body,
                    buffer,
                    parts,
                    inner,
                    limit,
                    total,
                } => {
                    let Some(held) = buffer.as_mut() else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    match ready!(body.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                if let Err(e) = append(held, data, *limit, *total) {
                                    return Poll::Ready(Err(e));
                                }
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            let source = e.into();
                            return Poll::Ready(Err(RequestBodyError { source }.into()));
                        }
                        None => {}
                    }
                    let (Some(held), Some(mut parts), Some(mut inner)) =
                        (buffer.take(), parts.take(), inner.take())
                    else {
                        return Poll::Ready(Err("polled after completion".into()));
                    };
                    let bytes = Bytes::from_owner(held);
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
    async fn bodies_in_flight_hold_at_most_the_total_limit_until_their_last_copy_drops() {
        // The inner service keeps each body until told to let go, as an upstream that is
        // still reading, or a replay kept for a retry, would.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let release = Arc::clone(&gate);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let inner = service_fn(move |request: Request<Full<Bytes>>| {
            counted.fetch_add(1, SeqCst);
            let gate = Arc::clone(&gate);
            async move {
                let _open = gate.acquire().await;
                drop(request);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        let layer = BufferBodyLayer::new(100).total_limit(150);
        let svc = layer.layer(inner);
        let sized = |n: usize| {
            let mut request = Request::new(chunks(vec![Ok("x"); n]));
            request
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            request
        };
        // 80 bytes declared: taken at once, before the body is read.
        let first = tokio::spawn(svc.clone().oneshot(sized(80)));
        while calls.load(SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.buffered_bytes(), 80);
        // 80 more do not fit; 70 do. A chunked body is counted as it arrives.
        let refused = svc.clone().oneshot(sized(80)).await.unwrap_err();
        assert_eq!(
            refused.downcast_ref::<BuffersFull>().unwrap().total_limit(),
            150
        );
        assert_eq!(
            crate::http_error::openai_response(&refused).status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        let over = svc
            .clone()
            .oneshot(Request::new(chunks(vec![Ok("0123456789"); 8])))
            .await
            .unwrap_err();
        assert!(over.is::<BuffersFull>(), "{over}");
        assert_eq!(
            layer.buffered_bytes(),
            80,
            "the refused bodies hold nothing"
        );
        let second = tokio::spawn(svc.clone().oneshot(sized(70)));
        while calls.load(SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(layer.buffered_bytes(), 150);
        release.add_permits(2);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(layer.buffered_bytes(), 0, "every share given back");
        assert_eq!(calls.load(SeqCst), 2);
        // Above the total, a body is too large whatever the per-body limit says.
        let error = BufferBodyLayer::new(1000)
            .total_limit(10)
            .layer(echo(0).0)
            .oneshot(sized(11))
            .await
            .unwrap_err();
        assert_eq!(error.downcast_ref::<BodyTooLarge>().unwrap().limit(), 10);
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
