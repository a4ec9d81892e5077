//! [`ResponseBody`]: `Balance`'s response body, which holds the endpoint's load until the
//! stream ends, judges that end (trailers, an error, a stall past the idle timeout) with the
//! stack's classifier, and completes the load guard with the verdict.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{
    classify::Outcome,
    clock::later,
    endpoint::{read_quota_headers, Endpoint},
    error::{BoxError, Stalled},
    hints::{Judged, Served},
    load::{Completion, LoadGuard, TrackLoad},
};

impl<B> TrackLoad for http::Response<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = http::Response<ResponseBody<B>>;

    /// Judges the head, records the verdict with the serving endpoint in [`Served`], and
    /// hands the guard to the body.
    fn track(self, mut guard: LoadGuard, completion: &Arc<Completion>) -> Self::Output {
        let head = completion
            .classify
            .classify_response(self.status(), self.headers());
        guard.judge(head);
        let (mut parts, body) = self.into_parts();
        if let Some(reservation) = guard.reservation() {
            // The provider's own figures, when it sends them, override the local estimate
            // where they leave less room.
            let figures = read_quota_headers(&parts.headers, std::time::SystemTime::now());
            if !figures.is_empty() {
                reservation.told(&figures, Instant::now());
            }
            // For a reader of the response's usage to settle.
            parts.extensions.insert(reservation.clone());
        }
        let served = Served::new(Arc::clone(guard.endpoint()), head, guard.started());
        parts.extensions.insert(served);
        let body = ResponseBody::new(body, guard, head, completion);
        http::Response::from_parts(parts, body)
    }
}

pin_project! {
    /// A response body that holds its endpoint's load until the stream ends, fails or is
    /// dropped, and judges its end; with an idle timeout, a stream that stops sending fails
    /// with [`Stalled`] and counts as its endpoint's failure. See [`Judged`].
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<LoadGuard>,
        // While the body runs: how to judge its end.
        completion: Option<Arc<Completion>>,
        head: Outcome,
        verdict: Option<Outcome>,
        // The stream ended with its first chunk, which a layer above judges: the verdict
        // waits for it (`report_failure`) or for the next poll.
        end_deferred: bool,
        // Boxed so that the body stays `Unpin` like the bodies it wraps; allocated only when an
        // idle timeout is set.
        idle: Option<Pin<Box<Sleep>>>,
    }
}

impl<B: Body> ResponseBody<B> {
    /// Wraps `inner`; an already finished body completes the guard at once.
    pub(crate) fn new(
        inner: B,
        guard: LoadGuard,
        head: Outcome,
        completion: &Arc<Completion>,
    ) -> Self {
        let mut body = Self {
            inner,
            guard: Some(guard),
            completion: None,
            head,
            verdict: None,
            end_deferred: false,
            idle: None,
        };
        if body.inner.is_end_stream() {
            body.finish(head);
        } else {
            body.idle = completion
                .idle_timeout
                .map(|after| Box::pin(tokio::time::sleep_until(later(Instant::now(), after))));
            body.completion = Some(Arc::clone(completion));
        }
        body
    }

    /// The endpoint serving this body, while it still holds its load.
    pub fn endpoint(&self) -> Option<&Arc<Endpoint>> {
        self.guard.as_ref().map(LoadGuard::endpoint)
    }

    /// Completes the guard with the final verdict.
    fn finish(&mut self, verdict: Outcome) {
        finish(
            &mut self.guard,
            &mut self.verdict,
            &mut self.idle,
            &mut self.completion,
            verdict,
        );
    }
}

/// Ends the body's hold: the guard completes with `verdict`, which the body keeps.
#[inline]
fn finish(
    guard: &mut Option<LoadGuard>,
    kept: &mut Option<Outcome>,
    idle: &mut Option<Pin<Box<Sleep>>>,
    completion: &mut Option<Arc<Completion>>,
    verdict: Outcome,
) {
    if let Some(mut g) = guard.take() {
        g.judge(verdict);
        g.complete();
        *kept = Some(verdict);
    }
    *idle = None;
    *completion = None;
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
        let mut this = self.project();
        if *this.end_deferred {
            // The layer above found nothing wrong with the first chunk.
            *this.end_deferred = false;
            finish(
                this.guard,
                this.verdict,
                this.idle,
                this.completion,
                *this.head,
            );
            return Poll::Ready(None);
        }
        let result = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else {
                    return Poll::Pending;
                };
                ready!(idle.as_mut().poll(cx));
                // The stream stopped sending: end it as the endpoint's failure.
                let after = this
                    .completion
                    .as_ref()
                    .and_then(|c| c.idle_timeout)
                    .unwrap_or_default();
                let held = this.guard.is_some();
                finish(
                    this.guard,
                    this.verdict,
                    this.idle,
                    this.completion,
                    Outcome::Failure,
                );
                return Poll::Ready(held.then(|| Err(Stalled::new(after).into())));
            }
        };
        let result = result.map(|r| r.map_err(|e| -> BoxError { e.into() }));
        let verdict = match &result {
            None => Some(*this.head),
            Some(Err(e)) => Some(
                this.completion
                    .as_ref()
                    .map_or(Outcome::Failure, |c| c.classify.classify_error(&**e)),
            ),
            Some(Ok(frame)) => {
                let mut defer = false;
                // An empty data frame is no first byte, nor the first chunk that a layer
                // above judges (it reads past empty frames): that is the next one.
                if frame.data_ref().is_some_and(Buf::has_remaining) {
                    if let Some(g) = this.guard.as_mut() {
                        g.first_byte();
                        defer = std::mem::take(&mut g.defer_first_end);
                    }
                }
                match (frame.trailers_ref(), this.completion.as_ref()) {
                    (Some(trailers), Some(c)) => {
                        Some(c.classify.classify_trailers(*this.head, trailers))
                    }
                    // The first chunk is judged above before the caller sees it: wait.
                    _ if defer && this.inner.is_end_stream() => {
                        *this.end_deferred = true;
                        if let Some(g) = this.guard.as_mut() {
                            g.complete_on_drop = true;
                        }
                        None
                    }
                    // A consumer may never poll again after the last frame: judge now.
                    _ if this.inner.is_end_stream() => Some(*this.head),
                    _ => None,
                }
            }
        };
        match verdict {
            Some(verdict) => finish(
                this.guard,
                this.verdict,
                this.idle,
                this.completion,
                verdict,
            ),
            None => {
                if let (Some(idle), Some(c)) = (this.idle.as_mut(), this.completion.as_ref()) {
                    if let Some(after) = c.idle_timeout {
                        idle.as_mut().reset(later(Instant::now(), after));
                    }
                }
            }
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        // A deferred end is polled once more, so that its verdict is taken.
        !self.end_deferred && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Judged for ResponseBody<B> {
    fn verdict(&self) -> Option<Outcome> {
        self.verdict
    }

    fn report_failure(&mut self) {
        self.end_deferred = false;
        finish(
            &mut self.guard,
            &mut self.verdict,
            &mut self.idle,
            &mut self.completion,
            Outcome::Failure,
        );
    }
}
