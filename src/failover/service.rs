//! [`Failover`]: the service that re-issues failed attempts on other endpoints.

use std::{
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    attempts::{Attempts, Stop},
    context::Context,
    future::Retry,
    head_copy::HeadCopy,
    replay::Head,
    settings::Settings,
    Replay, ResponseFuture,
};
use crate::{error::BoxError, hints::Judged, per_clone::PerClone};

/// Re-issues failed attempts on other endpoints. See the [module docs](crate::failover).
#[derive(Clone, Debug)]
pub struct Failover<S> {
    inner: S,
    context: PerClone<Context<S>>,
}

impl<S: Clone> Failover<S> {
    pub(crate) fn new(inner: S, settings: Arc<Settings>) -> Self {
        let service = inner.clone();
        Self {
            inner,
            context: PerClone::new(Context { settings, service }),
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Failover<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Judged + Unpin + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<super::ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, RB>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span = super::span_fields::request_span(request.uri(), request.method());
        let inner = &self.inner;
        let context = self.context.for_request(|c| Context {
            settings: Arc::clone(&c.settings),
            service: inner.clone(),
        });
        let settings = &context.settings;
        settings.budget.deposit();
        if settings.head_is_enough() {
            // The first attempt takes the request as it is; a retry needs a copy of the head
            // and of the body, made only if a retry could be sent.
            let retry = Stop::before_retry(settings.attempts, 1, || request.body().replay()).map(
                |template| Retry {
                    head: HeadCopy::of(&request),
                    template,
                },
            );
            // The inner service was polled ready for this call; the inner layers log their
            // picks inside the request's span.
            let entered = span.enter();
            let call = self.inner.call(request);
            drop(entered);
            return ResponseFuture::first(call, retry, Arc::clone(context), span);
        }
        let (parts, body) = request.into_parts();
        let template = body.replay();
        // The ready service takes the first attempt; a clone stays for the next call.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let attempts = Attempts::new(
            Arc::clone(settings),
            service.clone(),
            Head::from(parts),
            template,
        );
        ResponseFuture::boxed(Box::pin(attempts.run(Some((service, body)))), span)
    }
}
