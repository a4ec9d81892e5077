//! [`ResponseBody`]: a response body whose end is judged against the endpoint that served it,
//! with the verdict the body beneath took.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::HealthPolicy;
use crate::{classify::Outcome, endpoint::Endpoint, hints::Judged};

/// A response that began well, waiting for its end to be judged.
#[derive(Debug)]
pub(crate) struct Watch {
    endpoint: Arc<Endpoint>,
    policy: Arc<HealthPolicy>,
    /// When the request took its slot.
    sent: tokio::time::Instant,
}

impl Watch {
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        policy: Arc<HealthPolicy>,
        sent: tokio::time::Instant,
    ) -> Self {
        Self {
            endpoint,
            policy,
            sent,
        }
    }

    fn judge(self, outcome: Outcome) {
        self.policy
            .judge_sent(&self.endpoint, outcome, Some(self.sent));
    }
}

pin_project! {
    /// A response body whose end (clean, broken, stalled, or trailers with a status) is judged
    /// against the endpoint that served it, by the verdict the body it wraps took
    /// ([`Judged`]). A body the client drops early is not judged.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
    }
}

impl<B> ResponseBody<B> {
    /// `watch` is `None` for a response already judged (a failure, or a finished body).
    pub(crate) fn new(inner: B, watch: Option<Watch>) -> Self {
        Self { inner, watch }
    }
}

impl<B: Body + Judged> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // The frame passes as it is, not taken apart and put back together.
        let poll = this.inner.as_mut().poll_frame(cx);
        if poll.is_ready() && this.watch.is_some() {
            // The body beneath judged its end (or is still running).
            if let Some(verdict) = this.inner.verdict() {
                if let Some(watch) = this.watch.take() {
                    watch.judge(verdict);
                }
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Judged> Judged for ResponseBody<B> {
    fn verdict(&self) -> Option<Outcome> {
        self.inner.verdict()
    }

    fn report_failure(&mut self) {
        let ended = self.inner.verdict().is_some();
        self.inner.report_failure();
        if let Some(watch) = self.watch.take() {
            if !ended {
                watch.judge(Outcome::Failure);
            }
        }
    }
}
