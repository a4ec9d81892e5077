//! [`ResponseBody`]: the body of a response that passed `Failover`, with the first frame it
//! read and, when set, the continuation of a broken stream on another endpoint.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use http::Response;
use http_body::{Body, Frame, SizeHint};

use super::{Continuation, RetryBudget};
use crate::{
    classify::Outcome,
    endpoint::Endpoint,
    error::BoxError,
    hints::{Exclude, Judged, Served},
};

/// Sends a continuation request: its body, and the endpoints to avoid.
pub(crate) type Reconnect<B> = Box<dyn FnMut(Bytes, Exclude) -> Pending<B> + Send>;
type Pending<B> = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

/// How much of a stream is kept for a continuation to build on. A stream longer than this
/// is not continued: a continuation built from part of what the caller received would make
/// the model say the rest of it again.
pub(crate) const KEEP: usize = 4 << 20;

/// What a body needs to carry a broken stream on elsewhere.
pub(crate) struct Resume<B> {
    pub(crate) policy: Arc<dyn Continuation>,
    pub(crate) original: Bytes,
    pub(crate) streamed: Vec<u8>,
    /// More was streamed than [`KEEP`]: `streamed` is not the whole of it.
    pub(crate) truncated: bool,
    pub(crate) exclude: Exclude,
    pub(crate) endpoint: Option<Arc<Endpoint>>,
    pub(crate) reconnect: Reconnect<B>,
    pub(crate) budget: Arc<RetryBudget>,
    /// Continuations left.
    pub(crate) left: usize,
    /// The continuation request, while it is sent.
    pub(crate) pending: Option<Pending<B>>,
    /// The error that broke the stream, while its continuation is sent: what the caller gets
    /// if the continuation fails, as it would have without one.
    pub(crate) broken: Option<BoxError>,
}

impl<B> Resume<B> {
    fn record(&mut self, data: &[u8]) {
        if self.truncated {
            return;
        }
        let room = KEEP.saturating_sub(self.streamed.len());
        if data.len() > room {
            // Past the cap nothing can be continued: free what was kept.
            self.truncated = true;
            self.streamed = Vec::new();
            return;
        }
        self.streamed.extend_from_slice(data);
    }

    /// Starts a continuation if the policy, the attempts left and the budget allow, and the
    /// whole stream so far was kept.
    fn start(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        if self.truncated {
            tracing::info!(
                endpoint = ?self.endpoint.as_ref().map(|e| e.key()),
                kept = KEEP,
                "the stream broke past the continuation's cap; not continued"
            );
            return false;
        }
        let Some(body) = self.policy.continue_body(&self.original, &self.streamed) else {
            return false;
        };
        let events = self.endpoint.as_ref().map(|e| e.layer_events());
        if !self.budget.withdraw() {
            events.inspect(|events| events.budget_exhausted());
            return false;
        }
        events.inspect(|events| events.continued());
        self.left -= 1;
        if let Some(endpoint) = &self.endpoint {
            self.exclude.insert(endpoint);
        }
        tracing::info!(
            endpoint = ?self.endpoint.as_ref().map(|e| e.key()),
            streamed = self.streamed.len(),
            "the stream broke mid-way; continuing it on another endpoint"
        );
        self.pending = Some((self.reconnect)(body, self.exclude.clone()));
        true
    }
}

/// The body of a response that passed [`Failover`](super::Failover): the endpoint's body,
/// after the first frame that was read to decide the attempt had succeeded. A failure after
/// that reaches the caller as an error in the body; nothing is replayed, unless a
/// [`Continuation`] is set, which carries the stream on from another endpoint.
pub struct ResponseBody<B: Body> {
    // Boxed: held only under a first-chunk wait, and a frame is as large as a header map,
    // which every response and every poll would otherwise carry and copy.
    first: Option<Box<Frame<B::Data>>>,
    inner: B,
    resume: Option<Box<Resume<B>>>,
}

impl<B: Body> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("continuation", &self.resume.is_some())
            .finish_non_exhaustive()
    }
}

// No field is ever pinned: the inner body is `Unpin` and polled through `Pin::new`.
impl<B: Body + Unpin> Unpin for ResponseBody<B> {}

impl<B: Body> ResponseBody<B> {
    #[inline]
    pub(crate) fn new(first: Option<Frame<B::Data>>, inner: B) -> Self {
        Self {
            first: first.map(Box::new),
            inner,
            resume: None,
        }
    }

    /// The endpoint's body, for the first-chunk wait.
    pub(crate) fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Holds the first frame, read to decide that the attempt succeeded, for the caller.
    pub(crate) fn hold_first(&mut self, first: Option<Frame<B::Data>>) {
        self.first = first.map(Box::new);
    }

    /// Whether a continuation request is being sent.
    fn resuming(&self) -> bool {
        self.resume.as_ref().is_some_and(|r| r.pending.is_some())
    }

    pub(crate) fn resume(&mut self, mut resume: Resume<B>) {
        if let Some(data) = self.first.as_ref().and_then(|f| f.data_ref()) {
            resume.record(data.chunk());
        }
        self.resume = Some(Box::new(resume));
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.first.take() {
            return Poll::Ready(Some(Ok(*frame)));
        }
        if this.resume.is_none() {
            // Nothing to continue: the frame passes as it is.
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        }
        loop {
            if let Some(resume) = this.resume.as_mut() {
                if let Some(pending) = resume.pending.as_mut() {
                    let result = ready!(pending.as_mut().poll(cx));
                    resume.pending = None;
                    let broken = resume.broken.take();
                    match result {
                        // The reconnect passes on only a 2xx event stream.
                        Ok(response) => {
                            resume.endpoint = response
                                .extensions()
                                .get::<Served>()
                                .map(|s| Arc::clone(s.endpoint()));
                            this.inner = response.into_body();
                        }
                        Err(e) => {
                            this.resume = None;
                            tracing::info!(error = %e, "the continuation failed; the stream ends as it broke");
                            return Poll::Ready(Some(Err(broken.unwrap_or(e))));
                        }
                    }
                }
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let (Some(resume), Some(data)) = (this.resume.as_mut(), frame.data_ref()) {
                        resume.record(data.chunk());
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => {
                    if let Some(resume) = this.resume.as_deref_mut() {
                        if resume.start() {
                            resume.broken = Some(e.into());
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream() && !self.resuming()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let Some(extra) = self
            .first
            .as_ref()
            .and_then(|f| f.data_ref())
            .map(|d| d.remaining() as u64)
        else {
            return inner;
        };
        // Raise the upper bound before the lower: `SizeHint` asserts lower <= upper at each step.
        // Saturating: an inner hint may be anything up to `u64::MAX` (an upper bound that
        // overflows is no bound).
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper().and_then(|upper| upper.checked_add(extra)) {
            hint.set_upper(upper);
        }
        hint.set_lower(inner.lower().saturating_add(extra));
        hint
    }
}

impl<B: Body + Judged> Judged for ResponseBody<B> {
    fn verdict(&self) -> Option<Outcome> {
        self.inner.verdict()
    }

    fn report_failure(&mut self) {
        self.inner.report_failure();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[test]
    fn the_size_hint_counts_the_held_first_frame() {
        // An exact-size body (a Content-Length response) whose first frame was read.
        let body = ResponseBody::new(
            Some(Frame::data(Bytes::from_static(b"abc"))),
            Full::new(Bytes::from_static(b"defg")),
        );
        let hint = body.size_hint();
        assert_eq!((hint.lower(), hint.upper()), (7, Some(7)));
        let all = futures_util::FutureExt::now_or_never(body.collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(all, "abcdefg");
    }
}
