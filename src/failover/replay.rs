//! Sending a request again: the [`Replay`] trait for bodies that can be, [`NoReplay`] for
//! those that cannot, and the request's head that each attempt is built from.

use bytes::Bytes;
use http::{request::Parts, Request};
use http_body_util::{Empty, Full};

use crate::hints::{Exclude, Picked};

/// A request body that can be sent again for a retry or a hedge.
///
/// Buffered bodies can; a streamed upload cannot (wrap it in [`NoReplay`]), and a retry of such
/// a request fails with [`NotReplayable`](crate::error::NotReplayable) instead of being sent
/// empty.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a streamed request body, which `Failover` cannot send again",
    label = "not a replayable body",
    note = "buffer request bodies first: put `tower_ai_balance::buffered::BufferBodyLayer::new(limit)` above `Failover` (axum's and hyper's bodies are streams)",
    note = "or wrap the body in `tower_ai_balance::failover::NoReplay` to fail a retry with `NotReplayable`"
)]
pub trait Replay: Sized {
    /// A fresh copy to send, or `None` if the body cannot be sent again.
    fn replay(&self) -> Option<Self>;

    /// The body's bytes, for a [`Continuation`](super::Continuation) to build on; `None` if
    /// they cannot be had without consuming it.
    fn bytes(&self) -> Option<Bytes> {
        None
    }

    /// A body of these bytes, for a continuation request; `None` if this type cannot be made
    /// from bytes.
    fn from_bytes(_bytes: Bytes) -> Option<Self> {
        None
    }
}

impl Replay for Full<Bytes> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn bytes(&self) -> Option<Bytes> {
        crate::peek::peek(self, usize::MAX)
    }

    fn from_bytes(bytes: Bytes) -> Option<Self> {
        Some(Full::new(bytes))
    }
}

impl<D> Replay for Empty<D> {
    fn replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

impl Replay for String {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn bytes(&self) -> Option<Bytes> {
        Some(Bytes::from(self.clone()))
    }

    fn from_bytes(bytes: Bytes) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Replay for Bytes {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn bytes(&self) -> Option<Bytes> {
        Some(self.clone())
    }

    fn from_bytes(bytes: Bytes) -> Option<Self> {
        Some(bytes)
    }
}

impl Replay for () {
    fn replay(&self) -> Option<Self> {
        Some(())
    }
}

pin_project_lite::pin_project! {
    /// A body that is sent once and never again: a streamed upload.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct NoReplay<B> {
        #[pin]
        body: B,
    }
}

impl<B> NoReplay<B> {
    /// Marks `body` as one that cannot be sent twice.
    pub fn new(body: B) -> Self {
        Self { body }
    }

    /// The body.
    pub fn into_inner(self) -> B {
        self.body
    }
}

impl<B> Replay for NoReplay<B> {
    fn replay(&self) -> Option<Self> {
        None
    }
}

impl<B: http_body::Body> http_body::Body for NoReplay<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The head of the request, to build each attempt from.
#[derive(Clone)]
pub(crate) struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Head {
    /// The endpoints the caller itself excluded (its own [`Exclude`] hint): every attempt
    /// keeps them out, beside those already tried.
    pub(crate) fn exclude(&self) -> Exclude {
        self.extensions
            .get::<Exclude>()
            .cloned()
            .unwrap_or_default()
    }

    /// The request for one attempt: the original head, a copy of its body, and the hints (a
    /// `Picked` cell only when something will read it: inserting one allocates).
    pub(crate) fn request<B>(
        &self,
        body: B,
        exclude: &Exclude,
        picked: Option<&Picked>,
    ) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        if !exclude.is_empty() {
            request.extensions_mut().insert(exclude.clone());
        }
        if let Some(picked) = picked {
            request.extensions_mut().insert(picked.clone());
        }
        request
    }
}

impl From<Parts> for Head {
    fn from(parts: Parts) -> Self {
        Self {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
        }
    }
}
