use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::BoxError;

pin_project! {
    /// The body of a response that passed [`Failover`](super::Failover): the endpoint's body,
    /// after the first frame that was read to decide the attempt had succeeded. A failure after
    /// that reaches the caller as an error in the body; nothing is replayed.
    #[derive(Debug)]
    pub struct ResponseBody<B: Body> {
        first: Option<Frame<B::Data>>,
        #[pin]
        inner: B,
    }
}

impl<B: Body> ResponseBody<B> {
    pub(crate) fn new(first: Option<Frame<B::Data>>, inner: B) -> Self {
        Self { first, inner }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        this.inner
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(data) = self.first.as_ref().and_then(Frame::data_ref) {
            let extra = bytes::Buf::remaining(data) as u64;
            hint.set_lower(hint.lower() + extra);
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + extra);
            }
        }
        hint
    }
}
