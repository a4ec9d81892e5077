use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{ResponseFuture, Shared};
use crate::error::BoxError;

/// Watches each response and error for the endpoint that produced it, and ejects, cools down
/// or restores that endpoint. See the [module docs](crate::health).
#[derive(Clone)]
pub struct HealthFilter<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for HealthFilter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthFilter")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<S> HealthFilter<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S, Req, B> Service<Req> for HealthFilter<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = http::Response<super::ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture::new(self.inner.call(request), Arc::clone(&self.shared))
    }
}
