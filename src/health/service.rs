//! [`HealthFilter`]: the service that judges each response and error against the endpoint
//! that produced it.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{HealthPolicy, ResponseBody, ResponseFuture};
use crate::{error::BoxError, hints::Judged, per_clone::PerClone};

/// Watches each response and error for the endpoint that produced it, and ejects, cools down
/// or restores that endpoint. See the [module docs](crate::health).
#[derive(Clone)]
pub struct HealthFilter<S> {
    inner: S,
    policy: PerClone<HealthPolicy>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for HealthFilter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthFilter")
            .field("inner", &self.inner)
            .field("policy", &**self.policy.get())
            .finish()
    }
}

impl<S> HealthFilter<S> {
    pub(crate) fn new(inner: S, policy: &HealthPolicy) -> Self {
        Self {
            inner,
            policy: PerClone::new(policy.clone()),
        }
    }
}

impl<S, Req, B> Service<Req> for HealthFilter<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body + Judged,
{
    type Response = http::Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // A clone that serves many requests copies the policy for itself.
        let policy = Arc::clone(self.policy.for_request(HealthPolicy::clone));
        ResponseFuture::new(self.inner.call(request), policy)
    }
}
