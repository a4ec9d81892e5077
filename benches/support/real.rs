//! A realistic request for the benches: a chat-completions POST with the headers a gateway
//! sees and a 300-byte JSON body, sent to an endpoint service that holds an `Arc` and is cloned
//! per request (as hyper's client is), answering a small SSE stream that the caller reads to
//! its end.

use std::{
    convert::Infallible,
    future::{ready, Ready},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::Service;
use tower_ai_balance::Pool;

/// A chat request of 300 bytes, as clients send them.
pub(crate) const BODY: &[u8] = br#"{"model":"llama-3.1-8b-instruct","messages":[{"role":"system","content":"You are a helpful assistant. Answer briefly."},{"role":"user","content":"What is the capital of France, and what river runs through it? Give one sentence."}],"stream":true,"max_tokens":256,"temperature":0.7,"user":"u-1842"}"#;

/// The streamed answer: a role chunk, three content chunks, a finish chunk and `[DONE]`.
const FRAMES: [&[u8]; 6] = [
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n",
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Paris; \"}}]}\n\n",
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"the Seine \"}}]}\n\n",
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"runs through it.\"}}]}\n\n",
    b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    b"data: [DONE]\n\n",
];

/// The request a caller builds for each call.
pub(crate) fn request(session: u64) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer sk-gateway-0123456789abcdef")
        .header(header::USER_AGENT, "OpenAI/Python 1.54.4")
        .header(header::ACCEPT, "text/event-stream")
        .header("x-session-id", session_id(session))
        .header("x-request-id", "req-7f3a9c21")
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap()
}

fn session_id(n: u64) -> http::HeaderValue {
    const IDS: [&str; 8] = [
        "sess-0", "sess-1", "sess-2", "sess-3", "sess-4", "sess-5", "sess-6", "sess-7",
    ];
    http::HeaderValue::from_static(IDS[(n % 8) as usize])
}

/// Reads a response's body to its end, as a caller streaming the answer does.
pub(crate) async fn read_to_end<B>(response: Response<B>) -> usize
where
    B: Body + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut body = response.into_body();
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            bytes += bytes::Buf::remaining(&data);
        }
    }
    bytes
}

struct Shared {
    frames: [Bytes; FRAMES.len()],
}

/// An endpoint that holds its connection state behind an `Arc`, as hyper's client does, and
/// answers at once with the SSE stream.
#[derive(Clone)]
pub(crate) struct Upstream(Arc<Shared>);

impl Upstream {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Shared {
            frames: FRAMES.map(Bytes::from_static),
        }))
    }
}

impl Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Sse>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        drop(request);
        let body = Sse {
            shared: self.0.clone(),
            next: 0,
        };
        ready(Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(body)
            .unwrap()))
    }
}

/// The SSE answer, one event per frame.
pub(crate) struct Sse {
    shared: Arc<Shared>,
    next: usize,
}

impl Body for Sse {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let i = self.next;
        match self.shared.frames.get(i) {
            Some(frame) => {
                let frame = frame.clone();
                self.next += 1;
                Poll::Ready(Some(Ok(Frame::data(frame))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.shared.frames.len()
    }
}

/// A pool of `n` such endpoints.
pub(crate) fn pool(n: usize) -> Pool<Upstream> {
    super::endpoint::pool_of(n, Upstream::new)
}
