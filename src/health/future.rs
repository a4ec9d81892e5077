use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;

use super::{ResponseBody, Shared, Watch};
use crate::{
    classify::Outcome,
    error::{BoxError, EndpointError},
    hints::Served,
};

pin_project! {
    /// The response future of [`HealthFilter`](super::HealthFilter).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Handed on to the body's watch when the response arrives.
        shared: Option<Arc<Shared>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared: Some(shared),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<http::Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let shared = this.shared.take().expect("polled after completion");
        match result {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let watch = parts.extensions.get::<Served>().and_then(|served| {
                    let head = shared
                        .classify
                        .classify_response(parts.status, &parts.headers);
                    if head == Outcome::Success && !body.is_end_stream() {
                        // A success is decided at the end of the body: a stream may still
                        // break, and gRPC puts its status in the trailers. A body already
                        // finished is judged now, without a watch.
                        Some(Watch::new(Arc::clone(&served.0), shared))
                    } else {
                        shared.record(&served.0, head);
                        None
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
                    let outcome = shared.classify.classify_error(failed.inner());
                    shared.record(failed.endpoint(), outcome);
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
