//! The first-chunk boundary: a successful response is held until its first data frame, and a
//! stream that fails, stalls or opens with an error event before it is a retriable failure.

use std::{future::poll_fn, pin::Pin, sync::Arc, time::Duration};

use bytes::Buf;
use http::Response;
use http_body::{Body, Frame};

use super::{
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
    let read = read_first(response.body_mut().inner_mut(), settings.error_event);
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

/// The first frame that is not empty data, unless the stream ends, fails or opens with an
/// error event first.
async fn read_first<B>(
    body: &mut B,
    is_error_event: fn(&[u8]) -> bool,
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
                    if is_error_event(data.chunk()) {
                        return Err("the stream opened with an error event".into());
                    }
                }
                return Ok(Some(frame));
            }
        }
    }
}
