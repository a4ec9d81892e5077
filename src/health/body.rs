use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::Shared;
use crate::{classify::Outcome, endpoint::Endpoint};

/// A response that began well, waiting for its end to be judged.
#[derive(Debug)]
pub(crate) struct Watch {
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
}

impl Watch {
    pub(crate) fn new(endpoint: Arc<Endpoint>, shared: Arc<Shared>) -> Self {
        Self { endpoint, shared }
    }

    fn judge(self, outcome: Outcome) {
        self.shared.record(&self.endpoint, outcome);
    }
}

pin_project! {
    /// A response body whose end (clean, broken, or trailers with a status) is judged against
    /// the endpoint that served it. A body the client drops early is not judged.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        watch: Option<Watch>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// `watch` is `None` for a response already judged (a failure, or a finished body).
    pub(crate) fn new(inner: B, watch: Option<Watch>) -> Self {
        Self { inner, watch }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(watch) = this.watch.take() {
            match &result {
                None => watch.judge(Outcome::Success),
                Some(Err(_)) => watch.judge(Outcome::Failure),
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => {
                        let outcome = watch
                            .shared
                            .classify
                            .classify_trailers(Outcome::Success, trailers);
                        watch.judge(outcome);
                    }
                    None if this.inner.is_end_stream() => watch.judge(Outcome::Success),
                    None => *this.watch = Some(watch),
                },
            }
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
