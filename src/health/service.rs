use std::task::{Context, Poll};

use tower_service::Service;

use super::{ResponseFuture, Shared};
use crate::{error::BoxError, per_clone::PerClone};

/// Watches each response and error for the endpoint that produced it, and ejects, cools down
/// or restores that endpoint. See the [module docs](crate::health).
#[derive(Clone)]
pub struct HealthFilter<S> {
    inner: S,
    shared: PerClone<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for HealthFilter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthFilter")
            .field("inner", &self.inner)
            .field("policy", &self.shared.get().policy)
            .finish()
    }
}

impl<S> HealthFilter<S> {
    pub(crate) fn new(inner: S, shared: Shared) -> Self {
        Self {
            inner,
            shared: PerClone::new(shared),
        }
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
        let shared = std::sync::Arc::clone(self.shared.for_request(Shared::clone));
        ResponseFuture::new(self.inner.call(request), shared)
    }
}
