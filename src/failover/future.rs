//! [`ResponseFuture`]: the first attempt polled in place, and the attempts after it boxed.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{
    attempts::{give_up, Attempts, Stop},
    context::Context as Shared,
    head_copy::HeadCopy,
    step::{is_done, judge, Failed, Step},
    Replay, ResponseBody,
};
use crate::{error::BoxError, hints::Judged};

/// What a request through [`Failover`](super::Failover) comes to.
type Answer<B> = Result<Response<ResponseBody<B>>, BoxError>;

pin_project! {
    /// The response future of [`Failover`](super::Failover). The first attempt is polled in
    /// place, without an allocation, when nothing needs more than its response head (no
    /// hedge, deadline, first-chunk wait or continuation). A retry, and every request under
    /// those settings, runs the attempts as one boxed state machine: one allocation, in the
    /// layer that may send several requests.
    pub struct ResponseFuture<S, B, RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        RB: Body,
    {
        #[pin]
        state: State<S, B, RB>,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        RB: Body,
    {
        /// The first attempt, in place.
        First {
            #[pin]
            call: S::Future,
            // What a retry needs (the head and a copy of the body), or why none can be sent.
            retry: Option<Result<Retry<B>, Stop>>,
            shared: Arc<Shared<S>>,
        },
        /// The attempts after it, or all of them.
        Boxed {
            future: Pin<Box<dyn Future<Output = Answer<RB>> + Send>>,
        },
    }
}

/// What a retry needs from the first attempt: a copy of the head and of the body.
pub(crate) struct Retry<B> {
    pub(crate) head: HeadCopy,
    pub(crate) template: B,
}

impl<S, B, RB> ResponseFuture<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    pub(crate) fn first(
        call: S::Future,
        retry: Result<Retry<B>, Stop>,
        shared: Arc<Shared<S>>,
        span: tracing::Span,
    ) -> Self {
        Self {
            state: State::First {
                call,
                retry: Some(retry),
                shared,
            },
            span,
        }
    }

    pub(crate) fn boxed(
        future: Pin<Box<dyn Future<Output = Answer<RB>> + Send>>,
        span: tracing::Span,
    ) -> Self {
        Self {
            state: State::Boxed { future },
            span,
        }
    }
}

impl<S, B, RB> std::fmt::Debug for ResponseFuture<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Judged + Unpin + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Output = Answer<RB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _span = this.span.enter();
        let answer = ready!(poll_state(this.state, cx));
        super::span_fields::record_answer(this.span, &answer);
        Poll::Ready(answer)
    }
}

/// Polls the attempts: the first in place, then, after a retriable failure, the boxed rest.
fn poll_state<S, B, RB>(
    mut state: Pin<&mut State<S, B, RB>>,
    cx: &mut Context<'_>,
) -> Poll<Answer<RB>>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Judged + Unpin + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    loop {
        match state.as_mut().project() {
            StateProj::First {
                call,
                retry,
                shared,
            } => {
                let result = match ready!(call.poll(cx)) {
                    // The common answer passes on at once, as `judge` would pass it.
                    Ok(response) if is_done(&response) => {
                        return Poll::Ready(Ok(response.map(|body| ResponseBody::new(None, body))));
                    }
                    result => result,
                };
                let retry_timeouts = shared.settings.retry_timeouts;
                let mut failed = match judge(result, None, retry_timeouts) {
                    Step::Done(response) => return Poll::Ready(Ok(response)),
                    Step::Fail(error) => {
                        return Poll::Ready(give_up(Vec::new(), None, Stop::Error(error)))
                    }
                    Step::Retry(failed) => failed,
                };
                let retry = retry.take().expect("polled after completion");
                // A head copy that no longer parses cannot be sent again either.
                let retry = retry.and_then(|Retry { head, template }| {
                    head.into_head()
                        .map(|head| (head, template))
                        .ok_or(Stop::NotReplayable)
                });
                let (head, template) = match retry {
                    Ok(retry) => retry,
                    Err(stop) => {
                        // The in-place attempt is never hedged: one failure.
                        let Failed {
                            attempt, answer, ..
                        } = failed.swap_remove(0);
                        return Poll::Ready(give_up(vec![attempt], answer, stop));
                    }
                };
                let settings = Arc::clone(&shared.settings);
                let service = shared.service.clone();
                let mut attempts = Attempts::new(settings, service, head, Some(template));
                attempts.failed(failed);
                state.set(State::Boxed {
                    future: Box::pin(attempts.run(None)),
                });
            }
            StateProj::Boxed { future } => return future.as_mut().poll(cx),
        }
    }
}
