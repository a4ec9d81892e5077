//! The continuation request on the wire: built from the original head with length headers
//! true to its new body and no hop-by-hop headers, sent, and its answer taken only if it is a
//! 2xx event stream.

use std::future::poll_fn;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{body::Reconnect, replay::Head, Replay};
use crate::{
    classify::Outcome,
    error::BoxError,
    hints::{Judged, Served},
};

/// Headers that describe one connection, not the request: never copied onto a rebuilt one.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Sends a continuation: `head` with the continuation's body, through `service`.
pub(crate) fn reconnect<S, B, RB>(service: S, head: Head) -> Reconnect<RB>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Judged + Send + 'static,
{
    Box::new(move |body: Bytes, exclude| {
        let mut service = service.clone();
        let length = body.len();
        let request = B::from_bytes(body).map(|b| {
            let mut request = head.request(b, &exclude, None);
            fit_headers(request.headers_mut(), length);
            request
        });
        Box::pin(async move {
            let request = request.ok_or("the request body type cannot carry a continuation")?;
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(Into::into)?;
            let mut response = service.call(request).await.map_err(Into::into)?;
            if is_event_stream(&response) {
                return Ok(response);
            }
            // Not the rest of the stream: not spliced in. The answer ends as the endpoint's
            // failure (once: a failure head was counted already) and its slot is released;
            // a 4xx, the upstream refusing this request, is dropped uncounted.
            let refused = response
                .extensions()
                .get::<Served>()
                .is_some_and(|s| s.verdict() == Outcome::ClientError);
            if !refused {
                response.body_mut().report_failure();
            }
            let status = response.status();
            Err(format!("the continuation was answered {status}, not a 2xx event stream").into())
        })
    })
}

/// The headers of a request whose body is now `length` bytes: a `content-length` of that, and
/// none of the hop-by-hop headers (`connection`, the headers it names, and the fixed ones).
pub(crate) fn fit_headers(headers: &mut HeaderMap, length: usize) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// Whether `response` can carry the stream on: a 2xx `text/event-stream`.
fn is_event_stream<B>(response: &Response<B>) -> bool {
    response.status().is_success() && has_event_stream_type(response.headers())
}

/// Whether `headers` say `text/event-stream` (in any case, with or without parameters).
pub(super) fn has_event_stream_type(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilt_request_has_a_true_length_and_no_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-length", "12"),
            ("content-type", "application/json"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-request-id", "r1"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        fit_headers(&mut headers, 345);
        let mut left: Vec<_> = headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "content-length: 345",
                "content-type: application/json",
                "x-request-id: r1"
            ]
        );
    }

    #[test]
    fn only_a_2xx_event_stream_carries_a_stream_on() {
        let answer = |status: u16, content_type: Option<&'static str>| {
            let mut r = Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if let Some(t) = content_type {
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            }
            r
        };
        assert!(is_event_stream(&answer(200, Some("text/event-stream"))));
        assert!(is_event_stream(&answer(
            200,
            Some("Text/Event-Stream; charset=utf-8")
        )));
        assert!(!is_event_stream(&answer(200, Some("application/json"))));
        assert!(!is_event_stream(&answer(200, None)));
        assert!(!is_event_stream(&answer(500, Some("text/event-stream"))));
        assert!(!is_event_stream(&answer(400, Some("application/json"))));
    }
}
