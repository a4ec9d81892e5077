//! The first-chunk boundary: a successful response is held until its first data frame, and a
//! stream that fails, stalls or opens with an error event before it is a retriable failure.

use std::{future::poll_fn, pin::Pin, sync::Arc, time::Duration};

use bytes::Buf;
use http::Response;
use http_body::{Body, Frame};

use super::{
    reconnect::has_event_stream_type,
    settings::Settings,
    step::{Failed, Step},
    ResponseBody,
};
use crate::{
    error::{Attempt, AttemptFailure, BoxError, Timeout},
    hints::{Judged, Served},
};

/// Holds `response` until its first data frame (at most `timeout`). A failure the layers
/// beneath could not see (an error event, no chunk in time) is reported to the body, so it
/// counts against the endpoint once.
pub(crate) async fn wait<RB>(
    settings: &Settings,
    mut response: Response<ResponseBody<RB>>,
    timeout: Duration,
) -> Step<RB>
where
    RB: Body + Judged + Unpin,
    RB::Error: Into<BoxError>,
{
    // An event stream's comment lines (`: keep-alive`, as queueing proxies send while they
    // wait) are no chunk of the answer: skipped while the gateway holds the response anyway,
    // unless a declared length counts their bytes.
    let headers = response.headers();
    let skip_comments =
        has_event_stream_type(headers) && !headers.contains_key(http::header::CONTENT_LENGTH);
    let read = read_first(
        response.body_mut().inner_mut(),
        settings.error_event,
        skip_comments,
    );
    let failure = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(first)) => {
            response.body_mut().hold_first(first);
            return Step::Done(response);
        }
        Ok(Err(e)) => e,
        Err(_) => Box::new(Timeout::new(timeout)),
    };
    response.body_mut().report_failure();
    let endpoint = response
        .extensions()
        .get::<Served>()
        .map(|s| Arc::clone(s.endpoint()));
    Step::retry(Failed::new(
        Attempt {
            endpoint: endpoint.as_ref().map(|e| e.key().clone()),
            failure: AttemptFailure::FirstChunk(failure),
        },
        endpoint,
    ))
}

/// The first frame that is not empty data (nor, with `skip_comments`, whole SSE comment
/// lines), unless the stream ends, fails or opens with an error event first.
async fn read_first<B>(
    body: &mut B,
    is_error_event: fn(&[u8]) -> bool,
    skip_comments: bool,
) -> Result<Option<Frame<B::Data>>, BoxError>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !data.has_remaining() {
                        continue;
                    }
                    let whole = data.chunk().len() == data.remaining();
                    if skip_comments && whole && only_comments(data.chunk()) {
                        continue;
                    }
                    if is_error_event(data.chunk()) {
                        return Err("the stream opened with an error event".into());
                    }
                }
                return Ok(Some(frame));
            }
        }
    }
}

/// Whether `chunk` is whole SSE lines, each empty or a comment (starting with `:`), ending
/// with a line end: nothing of an event, and the next frame starts a line.
fn only_comments(chunk: &[u8]) -> bool {
    if !chunk.ends_with(b"\n") && !chunk.ends_with(b"\r") {
        return false;
    }
    chunk
        .split(|&b| b == b'\n' || b == b'\r')
        .all(|line| line.is_empty() || line[0] == b':')
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::only_comments;

    #[test]
    fn only_whole_comment_lines_are_skipped() {
        for yes in [
            &b": keep-alive\n\n"[..],
            b":\n",
            b": a\r\n: b\r\n\r\n",
            b"\n",
            b":ping\r",
        ] {
            assert!(only_comments(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b": keep-"[..],
            b"data: {}\n\n",
            b": ok\ndata: x\n\n",
            b"event: ping\n\n",
            b"",
            b"x\n",
        ] {
            assert!(!only_comments(no), "{:?}", String::from_utf8_lossy(no));
        }
    }
}
