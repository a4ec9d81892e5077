//! [`Metering`]: notes the model a request is sent for and the span it runs in, for the
//! [`Meter`](super::Meter) its answer's body will carry.

use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

use super::{model::Model, ResponseFuture};
use crate::capability::Require;

/// Reads the token usage of each answer as its body passes and counts it at the endpoint
/// that gave it, per model (see the [module](super)). Sits above `Balance`, whose
/// [`Served`](crate::hints::Served) names the endpoint, and below `Route`, whose
/// [`Require`] names the model.
#[derive(Debug, Clone)]
pub struct Metering<S> {
    inner: S,
}

impl<S> Metering<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for Metering<S>
where
    S: Service<Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<super::MeteredBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let model = Model::of(request.extensions().get::<Require>());
        let span = tracing::Span::current();
        ResponseFuture::new(self.inner.call(request), model, span)
    }
}
