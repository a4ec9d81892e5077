//! A layer that answers a stack's errors as OpenAI-format responses.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::openai_response;
use crate::error::BoxError;

/// Answers the inner service's errors with [`openai_response`]: the service never fails
/// (`Error = Infallible`), so it mounts on axum with `Router::route_service`.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_ai_balance::{http_error::OpenAiErrorsLayer, BalanceLayer, Pool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let pool = Pool::<tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>>::new();
/// let stack = ServiceBuilder::new()
///     .layer(OpenAiErrorsLayer::new())
///     .layer(BalanceLayer::new())
///     .service(pool);
/// // An empty pool: no endpoints, answered 503.
/// let response = stack.oneshot(Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiErrorsLayer {
    _priv: (),
}

impl OpenAiErrorsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for OpenAiErrorsLayer {
    type Service = OpenAiErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenAiErrors::new(inner)
    }
}

/// The service of [`OpenAiErrorsLayer`].
#[derive(Debug, Clone)]
pub struct OpenAiErrors<S> {
    inner: S,
}

impl<S> OpenAiErrors<S> {
    /// Answers `inner`'s errors.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// A layer of this service.
    pub fn layer() -> OpenAiErrorsLayer {
        OpenAiErrorsLayer::new()
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

impl<S, R, B> Service<R> for OpenAiErrors<S>
where
    S: Service<R, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<Either<B, Full<Bytes>>>;
    type Error = Infallible;
    type Future = ResponseFuture<S, R>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the inner service's readiness, and its error, are met in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Ready {
                inner,
                request: Some(request),
            },
        }
    }
}

pin_project! {
    /// The response future of [`OpenAiErrors`].
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R>
    where
        S: Service<R>,
    {
        Ready { inner: S, request: Option<R> },
        Called { #[pin] future: S::Future },
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, R, B> Future for ResponseFuture<S, R>
where
    S: Service<R, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = loop {
            match this.state.as_mut().project() {
                StateProj::Ready { inner, request } => {
                    if let Err(e) = ready!(inner.poll_ready(cx)) {
                        break Err(e.into());
                    }
                    let Some(request) = request.take() else {
                        break Err("polled after completion".into());
                    };
                    let future = inner.call(request);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => break ready!(future.poll(cx)).map_err(Into::into),
            }
        };
        Poll::Ready(Ok(match result {
            Ok(response) => response.map(Either::Left),
            Err(error) => openai_response(&error).map(Either::Right),
        }))
    }
}
