//! [`ResponseFuture`]: wraps the answer's body in a [`MeteredBody`] whose
//! [`Meter`] names the endpoint that gave it.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;

use super::{model::Model, Meter, MeteredBody};
use crate::{endpoint::Reservation, hints::Served, usage::UsageBody};

pin_project! {
    /// The response future of [`Metering`](super::Metering).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        model: Model,
        span: tracing::Span,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, model: Model, span: tracing::Span) -> Self {
        Self { inner, model, span }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let endpoint = response
            .extensions()
            .get::<Served>()
            .map(|s| std::sync::Arc::clone(s.endpoint()));
        let model = match std::mem::take(this.model) {
            Model::Unnamed => None,
            Model::Named(model) => Some(model),
            Model::ServedAs(require) => endpoint
                .as_ref()
                .and_then(|e| require.serve_as(e).cloned())
                .or(require.model),
        };
        let meter = Meter {
            endpoint,
            model,
            span: std::mem::replace(this.span, tracing::Span::none()),
            reservation: response.extensions().get::<Reservation>().cloned(),
        };
        Poll::Ready(Ok(response.map(|body| UsageBody::new(body, meter))))
    }
}
