//! A response body that translates an Anthropic event stream into an OpenAI one as it flows.

use std::{
    fmt,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;

use super::{error::ResponseError, stream::StreamTranslator};
use crate::error::BoxError;

pin_project! {
    /// An Anthropic Messages event stream, read as an OpenAI `chat.completion.chunk` stream
    /// (see [`StreamTranslator`]). Ends when `message_stop` has been translated (the upstream's
    /// stream is dropped then), and fails with a [`ResponseError`] when the stream is cut,
    /// malformed or sends an `error` event (after passing that event on in OpenAI's format).
    pub struct ChatStream<B> {
        #[pin]
        inner: B,
        translator: StreamTranslator,
        error: Option<ResponseError>,
        ended: bool,
    }
}

impl<B> ChatStream<B> {
    /// Translates `inner`; `include_usage` as in [`StreamTranslator::new`].
    pub fn new(inner: B, include_usage: bool) -> Self {
        Self {
            inner,
            translator: StreamTranslator::new(include_usage),
            error: None,
            ended: false,
        }
    }
}

impl<B> fmt::Debug for ChatStream<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatStream")
            .field("done", &self.translator.is_done())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ChatStream<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(error) = this.error.take() {
                *this.ended = true;
                return Poll::Ready(Some(Err(error.into())));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers: nothing to translate
                    };
                    let bytes = data.copy_to_bytes(data.remaining());
                    if let Err(e) = this.translator.push(&bytes, &mut out) {
                        *this.error = Some(e);
                    }
                    if this.translator.is_done() {
                        *this.ended = true;
                    }
                }
                Some(Err(e)) => {
                    *this.ended = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    if let Err(e) = this.translator.finish(&mut out) {
                        *this.error = Some(e);
                    } else {
                        *this.ended = true;
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.error.is_none()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test]
    async fn a_cut_upstream_stream_fails_the_body() {
        let frames = vec![Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\n",
        )))];
        let body = ChatStream::new(StreamBody::new(futures_util::stream::iter(frames)), false);
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<ResponseError>());
    }
}
