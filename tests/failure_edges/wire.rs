//! Scripted upstreams on loopback: each request's head and body are recorded, and a closure
//! answers it, so a test can see exactly what reached the wire.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What an upstream sends back: its body may break mid-way.
pub type WireBody = BoxBody<Bytes, std::io::Error>;

/// A request as it arrived: its headers and its body, read whole.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Answer = Arc<dyn Fn(&Received) -> Response<WireBody> + Send + Sync>;

/// An upstream on a loopback port.
pub struct Wire {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Wire {
    /// Serves HTTP/1.1 on a fresh loopback port, answering each request with `answer`.
    pub async fn serve(
        answer: impl Fn(&Received) -> Response<WireBody> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, log) = (Arc::clone(&answer), Arc::clone(&log));
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (answer, log) = (Arc::clone(&answer), Arc::clone(&log));
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = match body.collect().await {
                                    Ok(b) => b.to_bytes(),
                                    Err(_) => Bytes::new(),
                                };
                                let got = Received {
                                    headers: parts.headers,
                                    body,
                                };
                                let response = answer(&got);
                                log.lock().unwrap().push(got);
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    pub fn uri(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    pub fn calls(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

/// One SSE event carrying `text` as a chat-completion content delta.
pub fn delta(id: &str, text: &str) -> Bytes {
    let event = serde_json::json!({
        "id": id, "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    });
    Bytes::from(format!("data: {event}\n\n"))
}

/// A 200 event stream of `events`, then, if `breaks`, a broken connection; otherwise
/// `data: [DONE]` and a clean end.
pub fn sse(events: Vec<Bytes>, breaks: bool) -> Response<WireBody> {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
        events.into_iter().map(|e| Ok(Frame::data(e))).collect();
    let end = async move {
        if breaks {
            // A crash after the events went out: the server flushes what it wrote while the
            // body waits, then the connection breaks.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Err(std::io::Error::other("the model server crashed"))
        } else {
            Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n")))
        }
    };
    let stream = futures_util::stream::iter(frames).chain(futures_util::stream::once(end));
    let body = StreamBody::new(stream);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(body))
        .unwrap()
}

/// A whole answer of this status, type and body.
pub fn whole(status: u16, content_type: &str, body: &'static str) -> Response<WireBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(
            Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap()
}
