//! [`ResponseFuture`]: judges a response's head (or error) by the verdict `Balance` gave it,
//! and hands a success on to the body to be judged at its end.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;

use super::{body::Watch, HealthPolicy, ResponseBody};
use crate::{
    error::{BoxError, EndpointError},
    hints::{Judged, Served},
};

pin_project! {
    /// The response future of [`HealthFilter`](super::HealthFilter).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Handed on to the body's watch when the response arrives.
        policy: Option<Arc<HealthPolicy>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, policy: Arc<HealthPolicy>) -> Self {
        Self {
            inner,
            policy: Some(policy),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body + Judged,
{
    type Output = Result<http::Response<ResponseBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let policy = this.policy.take().expect("polled after completion");
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let watch = parts.extensions.get::<Served>().and_then(|served| {
                    let head = served.verdict();
                    match body.verdict() {
                        // The body ended already: its verdict is the whole response's.
                        Some(verdict) => {
                            policy.judge_sent(served.endpoint(), verdict, Some(served.sent()));
                            None
                        }
                        // A success is decided at the end of the body: a stream may still
                        // break, and gRPC puts its status in the trailers.
                        None if head.is_success() => Some(Watch::new(
                            Arc::clone(served.endpoint()),
                            policy,
                            served.sent(),
                        )),
                        None => {
                            policy.judge_sent(served.endpoint(), head, Some(served.sent()));
                            None
                        }
                    }
                });
                Poll::Ready(Ok(http::Response::from_parts(
                    parts,
                    ResponseBody::new(body, watch),
                )))
            }
            Err(error) => {
                let error = error.into();
                if let Some(failed) = error.downcast_ref::<EndpointError>() {
                    policy.judge_error(failed);
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
