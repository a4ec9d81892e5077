//! The body of an upstream's answer: passed through, translated as it streams, or whole.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::BoxError;

/// The response body of an [`Upstream`](super::Upstream): the upstream's own body, an
/// Anthropic stream translated as it flows, or a body the client made whole (a translated
/// answer, an error).
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    Incoming(Incoming),
    Full(Option<Bytes>),
    #[cfg(feature = "anthropic")]
    Anthropic(Box<crate::anthropic::ChatStream<Incoming>>),
}

impl ResponseBody {
    pub(crate) fn incoming(body: Incoming) -> Self {
        Self {
            kind: Kind::Incoming(body),
        }
    }

    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())),
        }
    }

    #[cfg(feature = "anthropic")]
    pub(crate) fn anthropic(body: Incoming, include_usage: bool) -> Self {
        Self {
            kind: Kind::Anthropic(Box::new(crate::anthropic::ChatStream::new(
                body,
                include_usage,
            ))),
        }
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Incoming(_) => "incoming",
            Kind::Full(_) => "full",
            #[cfg(feature = "anthropic")]
            Kind::Anthropic(_) => "anthropic",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            #[cfg(feature = "anthropic")]
            Kind::Anthropic(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Incoming(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
            #[cfg(feature = "anthropic")]
            Kind::Anthropic(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Incoming(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            #[cfg(feature = "anthropic")]
            Kind::Anthropic(body) => body.size_hint(),
        }
    }
}
