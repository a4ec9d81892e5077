//! [`UsageBody`]: a response body passed through unchanged while a [`UsageReader`] reads its
//! bytes, and a [`UsageSink`] told the usage once when the body ends.

use std::{
    fmt,
    io::IoSlice,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Usage, UsageReader};

/// What is told a body's usage when the body ends: called once, with `None` when the body
/// held no usage.
///
/// Implemented for every `FnOnce(Option<Usage>)`.
pub trait UsageSink {
    /// Takes the usage of the body that ended.
    fn finish(self, usage: Option<Usage>);
}

impl<F: FnOnce(Option<Usage>)> UsageSink for F {
    fn finish(self, usage: Option<Usage>) {
        self(usage)
    }
}

/// The reader and the sink it reports to, which it tells when dropped if the body did not
/// end before.
struct Pending<S: UsageSink> {
    reader: UsageReader,
    sink: Option<S>,
}

impl<S: UsageSink> Pending<S> {
    fn finish(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.finish(self.reader.usage());
        }
    }
}

impl<S: UsageSink> Drop for Pending<S> {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project! {
    /// A response body read for its token usage as it passes: every frame goes on as it came
    /// (nothing buffered, copied or changed), and the sink is told the usage once, when the
    /// body ends, fails, or is dropped (then with what was read so far: for an Anthropic
    /// stream the input tokens of its `message_start` and the output counted so far; for an
    /// OpenAI stream, whose usage comes last, usually `None`).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use tower_ai_balance::usage::{Usage, UsageBody};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let answer = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
    /// let seen = Arc::new(Mutex::new(None));
    /// let slot = Arc::clone(&seen);
    /// let body = UsageBody::new(Full::new(Bytes::from(answer)), move |usage| {
    ///     *slot.lock().unwrap() = usage;
    /// });
    /// let bytes = body.collect().await.unwrap().to_bytes();
    /// assert_eq!(bytes, answer, "the body passes unchanged");
    /// assert_eq!(*seen.lock().unwrap(), Some(Usage::new(12, 3)));
    /// # }
    /// ```
    pub struct UsageBody<B, S>
    where
        S: UsageSink,
    {
        #[pin]
        inner: B,
        pending: Pending<S>,
    }
}

impl<B, S: UsageSink> UsageBody<B, S> {
    /// Reads `inner` for its usage, to tell `sink` when it ends.
    pub fn new(inner: B, sink: S) -> Self {
        Self {
            inner,
            pending: Pending {
                reader: UsageReader::new(),
                sink: Some(sink),
            },
        }
    }

    /// The body it reads.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The body it reads, mutably (what is taken from it directly is not read).
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// The usage read so far.
    pub fn usage(&self) -> Option<Usage> {
        self.pending.reader.usage()
    }
}

impl<B: fmt::Debug, S: UsageSink> fmt::Debug for UsageBody<B, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageBody")
            .field("inner", &self.inner)
            .field("reader", &self.pending.reader)
            .field("finished", &self.pending.sink.is_none())
            .finish()
    }
}

/// Reads `data` without taking from it: its one chunk, or up to 64 of them.
fn read(reader: &mut UsageReader, data: &impl Buf) {
    let chunk = data.chunk();
    if chunk.len() == data.remaining() {
        reader.push(chunk);
        return;
    }
    let mut slices = [IoSlice::new(&[]); 64];
    let n = data.chunks_vectored(&mut slices);
    let mut seen = 0;
    for slice in &slices[..n] {
        reader.push(slice);
        seen += slice.len();
    }
    if seen < data.remaining() {
        // What follows cannot be read in place: what was read stands, and nothing more is.
        reader.stop();
    }
}

impl<B: Body, S: UsageSink> Body for UsageBody<B, S> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let result = ready!(this.inner.poll_frame(cx));
        match &result {
            Some(Ok(frame)) => {
                if this.pending.sink.is_some() {
                    if let Some(data) = frame.data_ref() {
                        read(&mut this.pending.reader, data);
                    }
                }
            }
            None | Some(Err(_)) => this.pending.finish(),
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

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Seen = Arc<Mutex<Vec<Option<Usage>>>>;

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, &'static str>>>,
    >;

    fn wrap(
        pieces: Vec<Result<&'static str, &'static str>>,
    ) -> (UsageBody<Frames, impl UsageSink>, Seen) {
        let frames: Vec<_> = pieces
            .into_iter()
            .map(|p| p.map(|s| Frame::data(Bytes::from_static(s.as_bytes()))))
            .collect();
        let seen: Seen = Arc::default();
        let slot = Arc::clone(&seen);
        let body = UsageBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            move |u| slot.lock().unwrap().push(u),
        );
        (body, seen)
    }

    const ANTHROPIC: [&str; 3] = [
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
    ];

    #[tokio::test]
    async fn the_sink_hears_once_when_the_body_ends() {
        let (body, seen) = wrap(ANTHROPIC.map(Ok).to_vec());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, ANTHROPIC.concat());
        assert_eq!(*seen.lock().unwrap(), [Some(Usage::new(25, 15))]);
    }

    #[tokio::test]
    async fn a_failed_or_dropped_body_reports_what_was_read() {
        let (body, seen) = wrap(vec![Ok(ANTHROPIC[0]), Err("reset")]);
        assert!(body.collect().await.is_err());
        assert_eq!(*seen.lock().unwrap(), [Some(Usage::new(25, 1))]);

        let (mut body, seen) = wrap(ANTHROPIC.map(Ok).to_vec());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), ANTHROPIC[0]);
        assert!(seen.lock().unwrap().is_empty(), "not before the end");
        drop(body);
        assert_eq!(*seen.lock().unwrap(), [Some(Usage::new(25, 1))]);
    }

    #[tokio::test]
    async fn a_body_without_usage_reports_none() {
        let (body, seen) = wrap(vec![
            Ok("data: {\"choices\":[]}\n\n"),
            Ok("data: [DONE]\n\n"),
        ]);
        body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [None]);
    }

    #[test]
    fn buffers_of_many_chunks_are_read_whole() {
        let text = br#"{"usage":{"prompt_tokens":4,"completion_tokens":2}}"#;
        let chained = Bytes::from_static(&text[..13]).chain(Bytes::from_static(&text[13..]));
        let mut reader = UsageReader::new();
        read(&mut reader, &chained);
        assert_eq!(reader.usage(), Some(Usage::new(4, 2)));
    }
}
