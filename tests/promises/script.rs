//! In-process endpoints that follow a script: when the head comes, with what status and
//! headers, which frames follow and when, and whether the body then ends, fails or hangs.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::util::BoxCloneSyncService;
use tower_ai_balance::BoxError;

pub type Body =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, BoxError>>>;
pub type Svc = BoxCloneSyncService<Request<Full<Bytes>>, Response<Body>, BoxError>;

#[derive(Clone, Debug)]
pub enum Then {
    End,
    Fail,
    Hang,
}

#[derive(Clone, Debug)]
pub struct Script {
    pub head_after: Duration,
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub frames: Vec<(Duration, &'static str)>,
    pub then: Then,
    /// Fail the call itself (no head) after `head_after`.
    pub error: bool,
}

impl Script {
    pub fn ok(frames: &[(u64, &'static str)], then: Then) -> Self {
        Self {
            head_after: Duration::ZERO,
            status: 200,
            headers: vec![("content-type", "text/event-stream")],
            frames: frames
                .iter()
                .map(|(ms, s)| (Duration::from_millis(*ms), *s))
                .collect(),
            then,
            error: false,
        }
    }

    pub fn status(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: &'static str,
    ) -> Self {
        Self {
            head_after: Duration::ZERO,
            status,
            headers: headers.to_vec(),
            frames: vec![(Duration::ZERO, body)],
            then: Then::End,
            error: false,
        }
    }

    pub fn head_after(mut self, ms: u64) -> Self {
        self.head_after = Duration::from_millis(ms);
        self
    }
}

/// What an endpoint received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Default)]
pub struct Log {
    pub seen: Arc<parking_lot::Mutex<Vec<(&'static str, Seen)>>>,
    pub calls: Arc<AtomicUsize>,
}

impl Log {
    pub fn calls_to(&self, name: &str) -> usize {
        self.seen.lock().iter().filter(|(n, _)| *n == name).count()
    }
}

/// An endpoint that answers every request with `script`.
pub fn endpoint(
    name: &'static str,
    log: &Log,
    script: impl Fn(usize) -> Script + Send + Sync + 'static,
) -> Svc {
    let log = log.clone();
    let script = Arc::new(script);
    let n = Arc::new(AtomicUsize::new(0));
    BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
        let log = log.clone();
        let script = Arc::clone(&script);
        let i = n.fetch_add(1, SeqCst);
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| -> BoxError { Box::new(e) })?
                .to_bytes();
            log.calls.fetch_add(1, SeqCst);
            log.seen.lock().push((
                name,
                Seen {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    body,
                },
            ));
            let s = script(i);
            tokio::time::sleep(s.head_after).await;
            if s.error {
                return Err::<Response<Body>, BoxError>("connection reset".into());
            }
            let frames =
                futures_util::stream::iter(s.frames.clone()).then(|(after, text)| async move {
                    tokio::time::sleep(after).await;
                    Ok::<_, BoxError>(Frame::data(Bytes::from_static(text.as_bytes())))
                });
            let tail = match s.then {
                Then::End => futures_util::stream::empty().boxed(),
                Then::Fail => futures_util::stream::once(async {
                    Err::<Frame<Bytes>, BoxError>("stream broke".into())
                })
                .boxed(),
                Then::Hang => futures_util::stream::pending().boxed(),
            };
            let mut response = Response::new(StreamBody::new(frames.chain(tail).boxed()));
            *response.status_mut() = StatusCode::from_u16(s.status).unwrap();
            for (k, v) in &s.headers {
                response.headers_mut().append(*k, v.parse().unwrap());
            }
            Ok(response)
        }
    }))
}
