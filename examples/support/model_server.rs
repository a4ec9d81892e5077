//! A simulated model server on loopback, speaking OpenAI chat completions, shared by the
//! examples and the tests (they include this file with `#[path]`; it is not part of the
//! library).
//!
//! `POST /v1/chat/completions` with `{"stream": true|false, "max_tokens": N}` answers after a
//! time to first token, then one token per `per_token`; streamed as SSE chunks ending with
//! `data: [DONE]`. On command it fails (500), rate-limits (429 + Retry-After), hangs, resets
//! the connection mid-stream or sends garbage; it can crash (its port then refuses
//! connections) and restart on the same port. It counts its own requests in flight, so tests can check the
//! balancer against the server's truth. `POST /v1/messages` speaks Anthropic's Messages API
//! (see the section at the end), with Anthropic's own 429 and 529.
//!
//! `GET /v1/models` lists the one model it serves, `sim`, as vLLM lists its own.
//!
//! `GET /metrics` answers like an inference engine's Prometheus endpoint (vLLM's names, or
//! SGLang's with [`Spec::metrics`]), with the server's real load: running requests (up to its
//! batch), waiting ones (beyond it) and KV-cache usage (the prompt and generated tokens of the
//! requests in flight over [`Spec::kv_tokens`]).
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Frame, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpListener, task::JoinHandle};

/// What the server does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve normally.
    Normal,
    /// Answer 500 at once.
    Fail,
    /// Answer 429 with `Retry-After` (seconds).
    RateLimit(u8),
    /// Never answer.
    Hang,
    /// Send the headers and one token, then fail the stream.
    ResetMidStream,
    /// Answer 503 without `Retry-After`.
    Unavailable,
    /// Send 200 and the headers, then fail the stream before any token.
    ResetBeforeFirstChunk,
    /// Send 200, then an error event as the stream's first event.
    ErrorEvent,
    /// Send one token, then nothing more, ever.
    StallAfterFirst,
    /// Close the connection without an answer; a new connection gets bytes that are not
    /// HTTP.
    Garbage,
    /// Overloaded: Anthropic's 529 (OpenAI's 503), with `Retry-After` (seconds) unless 0.
    Overloaded(u8),
}

impl Mode {
    fn encode(self) -> u8 {
        match self {
            Mode::Normal => 0,
            Mode::Fail => 1,
            Mode::Hang => 2,
            Mode::ResetMidStream => 3,
            Mode::Unavailable => 4,
            Mode::ResetBeforeFirstChunk => 5,
            Mode::ErrorEvent => 6,
            Mode::StallAfterFirst => 7,
            Mode::Garbage => 8,
            Mode::RateLimit(s) => 128 | s.min(127),
            Mode::Overloaded(s) => 64 | s.min(63),
        }
    }

    fn decode(b: u8) -> Self {
        match b {
            0 => Mode::Normal,
            1 => Mode::Fail,
            2 => Mode::Hang,
            3 => Mode::ResetMidStream,
            4 => Mode::Unavailable,
            5 => Mode::ResetBeforeFirstChunk,
            6 => Mode::ErrorEvent,
            7 => Mode::StallAfterFirst,
            8 => Mode::Garbage,
            b if b & 128 != 0 => Mode::RateLimit(b & 127),
            b if b & 64 != 0 => Mode::Overloaded(b & 63),
            _ => Mode::Normal,
        }
    }
}

/// How fast the simulated model is.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    /// Time to first token.
    pub ttft: Duration,
    /// Time per further token while at most `batch` sequences run.
    pub per_token: Duration,
    /// How many sequences run at full speed; beyond that every token slows in proportion, as
    /// on a GPU whose batch is full.
    pub batch: usize,
    /// Which engine's metric names `/metrics` uses.
    pub metrics: Engine,
    /// The KV cache's size in tokens, for the usage `/metrics` reports.
    pub kv_tokens: u64,
    /// Quota mode: requests and tokens per sliding minute, per API key (see the section at
    /// the end).
    pub quota: Option<ServerQuota>,
}

impl Spec {
    pub fn new(name: impl Into<String>, ttft: Duration, per_token: Duration) -> Self {
        Self {
            name: name.into(),
            ttft,
            per_token,
            batch: usize::MAX,
            metrics: Engine::Vllm,
            kv_tokens: 65_536,
            quota: None,
        }
    }

    /// Enforces `rpm` requests and `tpm` tokens per sliding minute per API key, and sends the
    /// provider's rate-limit headers (OpenAI's or Anthropic's, by the path).
    pub fn quota(mut self, rpm: u64, tpm: u64) -> Self {
        self.quota = Some(ServerQuota { rpm, tpm });
        self
    }

    /// Answers `/metrics` with this engine's metric names.
    pub fn metrics(mut self, engine: Engine) -> Self {
        self.metrics = engine;
        self
    }

    /// The KV cache's size in tokens.
    pub fn kv_tokens(mut self, tokens: u64) -> Self {
        self.kv_tokens = tokens.max(1);
        self
    }

    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }

    /// The time for the next token with `running` sequences in flight.
    fn token_time(&self, running: usize) -> Duration {
        if running <= self.batch {
            self.per_token
        } else {
            self.per_token.mul_f64(running as f64 / self.batch as f64)
        }
    }
}

/// What the server saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// Every request, whatever the server did with it.
    pub received: AtomicU64,
    /// Requests it served (not failed at once).
    pub requests: AtomicU64,
    pub in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
    pub completed: AtomicU64,
    pub disconnected: AtomicU64,
    /// Requests with an `x-session-id` whose session this server had cached.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// The tokens the requests in flight hold in the KV cache (prompt and generated).
    pub kv_used: AtomicU64,
    /// `/metrics` requests answered.
    pub scrapes: AtomicU64,
    /// The body of the last chat request.
    pub last_body: parking_lot::Mutex<Bytes>,
    /// The headers of the last request (credentials included: what the server received).
    pub last_headers: parking_lot::Mutex<http::HeaderMap>,
    /// The sessions whose context this server holds (its KV / prefix cache).
    sessions: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// WebSocket: handshakes answered 101.
    pub ws_accepted: AtomicU64,
    /// WebSocket: pings received.
    pub ws_pings: AtomicU64,
    /// WebSocket: the close codes received from clients (`None`: a close frame without one).
    pub ws_closes: parking_lot::Mutex<Vec<Option<u16>>>,
    /// WebSocket: the last handshake's `Sec-WebSocket-Protocol`, as received.
    pub ws_protocols: parking_lot::Mutex<Option<String>>,
    /// Quota mode: what each API key was served, when, in tokens.
    quota_log: parking_lot::Mutex<std::collections::HashMap<String, QuotaLog>>,
    /// Quota mode: requests refused with 429 for want of quota.
    pub quota_refused: AtomicU64,
    /// Quota mode: the most tokens any key was served in a sliding minute.
    pub quota_peak_tokens: AtomicU64,
}

/// How many sessions a server's cache holds before it starts again.
const CACHED_SESSIONS: usize = 512;

impl Stats {
    /// Whether this server holds the session's context; it holds it from now on.
    fn cached(&self, session: &str) -> bool {
        let mut sessions = self.sessions.lock();
        if sessions.contains(session) {
            self.cache_hits.fetch_add(1, SeqCst);
            return true;
        }
        if sessions.len() >= CACHED_SESSIONS {
            sessions.clear();
        }
        sessions.insert(session.to_owned());
        self.cache_misses.fetch_add(1, SeqCst);
        false
    }
}

struct InFlight(Arc<Stats>, bool, u64);

impl InFlight {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.requests.fetch_add(1, SeqCst);
        let now = stats.in_flight.fetch_add(1, SeqCst) + 1;
        stats.peak_in_flight.fetch_max(now, SeqCst);
        Self(Arc::clone(stats), false, 0)
    }
    fn done(mut self) {
        self.1 = true;
    }
    /// Holds `tokens` more in the KV cache until the request ends.
    fn hold(&mut self, tokens: u64) {
        self.2 += tokens;
        self.0.kv_used.fetch_add(tokens, SeqCst);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.kv_used.fetch_sub(self.2, SeqCst);
        self.0.in_flight.fetch_sub(1, SeqCst);
        if self.1 {
            self.0.completed.fetch_add(1, SeqCst);
        } else {
            self.0.disconnected.fetch_add(1, SeqCst);
        }
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A running simulated model server; shuts down (listener and connections) when dropped.
pub struct ModelServer {
    pub addr: SocketAddr,
    pub spec: Spec,
    pub stats: Arc<Stats>,
    mode: Arc<AtomicU8>,
    task: parking_lot::Mutex<JoinHandle<()>>,
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.task.lock().abort();
    }
}

impl ModelServer {
    /// Starts a server on an ephemeral loopback port.
    pub async fn spawn(spec: Spec) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let mode = Arc::new(AtomicU8::new(0));
        let task = serve(listener, &stats, &mode, &spec);
        Self {
            addr,
            spec,
            stats,
            mode,
            task: parking_lot::Mutex::new(task),
        }
    }

    /// Stops as a crashed process does: the port refuses connections and open ones are cut.
    pub fn crash(&self) {
        self.task.lock().abort();
    }

    /// Starts again on the same port after [`crash`](Self::crash).
    pub async fn restart(&self) -> std::io::Result<()> {
        self.task.lock().abort();
        let listener = TcpListener::bind(self.addr).await?;
        *self.task.lock() = serve(listener, &self.stats, &self.mode, &self.spec);
        Ok(())
    }

    /// Changes what the server does with the next requests.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode.encode(), SeqCst);
    }

    /// Its base URI, `http://127.0.0.1:port`.
    pub fn uri(&self) -> Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }
}

/// Accepts connections on `listener` until the task is aborted.
fn serve(
    listener: TcpListener,
    stats: &Arc<Stats>,
    mode: &Arc<AtomicU8>,
    spec: &Spec,
) -> JoinHandle<()> {
    let (s, m, sp) = (Arc::clone(stats), Arc::clone(mode), spec.clone());
    tokio::spawn(async move {
        // Connections live in a set owned by this task: aborting it aborts them too, as a
        // process that exits would.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let _ = tcp.set_nodelay(true);
            if Mode::decode(m.load(SeqCst)) == Mode::Garbage {
                s.received.fetch_add(1, SeqCst);
                connections.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let _ = tcp.write_all(b"\x00\x13garbage, not HTTP\r\n\r\n").await;
                });
                continue;
            }
            let (s, m, sp) = (Arc::clone(&s), Arc::clone(&m), sp.clone());
            connections.spawn(async move {
                // A WebSocket session runs in this task once its handshake is answered, so a
                // crash cuts it as it cuts a request.
                let upgrade = UpgradeSlot::default();
                let svc = service_fn({
                    let (s, sp, upgrade) = (Arc::clone(&s), sp.clone(), Arc::clone(&upgrade));
                    move |req: Request<Incoming>| {
                        let key = api_key(&req);
                        let anthropic = req.uri().path() == "/v1/messages";
                        let (s, sp) = (Arc::clone(&s), sp.clone());
                        let answer = handle(
                            req,
                            Arc::clone(&s),
                            Mode::decode(m.load(SeqCst)),
                            sp.clone(),
                            Arc::clone(&upgrade),
                        );
                        async move {
                            let mut r = answer.await?;
                            if let (Some(q), true) = (sp.quota, r.status().is_success()) {
                                let _ = quota_headers(&s, q, &key, anthropic, r.headers_mut());
                            }
                            Ok::<_, std::io::Error>(r)
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
                let session = upgrade.lock().take();
                if let Some(session) = session {
                    realtime_session(session, s, sp).await;
                }
            });
        }
    })
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

/// The tokens of a prompt as this server counts them: the words of its messages' contents
/// (a string, or the text parts of a list) and of a `system` prompt.
fn prompt_tokens(json: &serde_json::Value) -> u64 {
    let words = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.split_whitespace().count() as u64,
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .map(|s| s.split_whitespace().count() as u64)
            .sum(),
        _ => 0,
    };
    let messages = json["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    words(&json["system"]) + messages.iter().map(|m| words(&m["content"])).sum::<u64>()
}

/// The last chunk of a stream that asked for `stream_options.include_usage`: no choices, and
/// the request's usage.
fn usage_chunk(name: &str, prompt: u64, completion: u64) -> String {
    let total = prompt + completion;
    format!(
        "data: {{\"id\":\"chatcmpl-{name}\",\"object\":\"chat.completion.chunk\",\"model\":\"sim\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{total}}}}}\n\n"
    )
}

fn chunk(name: &str, i: u64, last: bool) -> String {
    let finish = if last { "\"stop\"" } else { "null" };
    format!(
        "data: {{\"id\":\"chatcmpl-{name}\",\"object\":\"chat.completion.chunk\",\"model\":\"sim\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"t{i} \"}},\"finish_reason\":{finish}}}]}}\n\n"
    )
}

async fn handle(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    mode: Mode,
    spec: Spec,
    upgrade: UpgradeSlot,
) -> Result<Response<Body>, std::io::Error> {
    if !matches!(req.uri().path(), "/health" | "/metrics" | "/v1/models") {
        stats.received.fetch_add(1, SeqCst);
        *stats.last_headers.lock() = req.headers().clone();
    }
    if req.uri().path() == "/v1/models" && req.headers().contains_key("anthropic-version") {
        return Ok(anthropic_models(&req));
    }
    if req.uri().path() == "/v1/models" && req.method() == http::Method::GET {
        // As vLLM lists its served model: the one name it answers as.
        let list = r#"{"object":"list","data":[{"id":"sim","object":"model","owned_by":"vllm"}]}"#;
        let mut r = full(StatusCode::OK, list);
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    if req.uri().path().ends_with("/realtime") {
        return Ok(realtime_handshake(req, &stats, mode, &upgrade).await);
    }
    if req.uri().path() == "/v1/messages" {
        return handle_messages(req, stats, mode, spec).await;
    }
    if req.uri().path() == "/health" {
        // The probe path: healthy unless told to fail or hang.
        return Ok(match mode {
            Mode::Fail => full(StatusCode::INTERNAL_SERVER_ERROR, "unhealthy"),
            Mode::Hang => std::future::pending().await,
            _ => full(StatusCode::OK, "ok"),
        });
    }
    if req.uri().path() == "/metrics" {
        return Ok(match mode {
            Mode::Fail => full(StatusCode::INTERNAL_SERVER_ERROR, "unhealthy"),
            Mode::Hang => std::future::pending().await,
            _ => {
                stats.scrapes.fetch_add(1, SeqCst);
                let mut r = full(StatusCode::OK, metrics_text(&stats, &spec));
                r.headers_mut().insert(
                    "content-type",
                    "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
                );
                r
            }
        });
    }
    let key = api_key(&req);
    let session = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    *stats.last_body.lock() = body.clone();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let streaming = json["stream"].as_bool().unwrap_or(false);
    let tokens = json["max_tokens"].as_u64().unwrap_or(16).max(1);
    if let Some(refused) = quota_take(
        &stats,
        &spec,
        &key,
        body.len() as u64 / 4 + 1 + tokens,
        false,
    ) {
        return Ok(refused);
    }
    let prompt = prompt_tokens(&json);
    let include_usage = json["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    match mode {
        Mode::Fail => return Ok(full(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure")),
        Mode::Unavailable => return Ok(full(StatusCode::SERVICE_UNAVAILABLE, "unavailable")),
        Mode::Overloaded(s) => {
            let mut r = full(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
            if s > 0 {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            return Ok(r);
        }
        Mode::RateLimit(s) => return Ok(rate_limited(s)),
        Mode::Hang => std::future::pending::<()>().await,
        // An error from the service makes hyper close the connection unanswered.
        Mode::Garbage => return Err(std::io::Error::other("closing unanswered")),
        _ => {}
    }
    let mut guard = InFlight::new(&stats);
    // The prompt's tokens (about four bytes each) take KV cache space until the end.
    guard.hold(body.len() as u64 / 4 + 1);
    // A cached session skips most of the prefill: its first token comes four times sooner.
    let mut spec = spec;
    if session.is_some_and(|s| stats.cached(&s)) {
        spec.ttft /= 4;
    }
    if !streaming {
        tokio::time::sleep(spec.ttft).await;
        guard.hold(1);
        for _ in 1..tokens {
            tokio::time::sleep(spec.token_time(stats.in_flight.load(SeqCst))).await;
            guard.hold(1);
        }
        let text: String = (0..tokens).map(|i| format!("t{i} ")).collect();
        let body = serde_json::json!({
            "id": format!("chatcmpl-{}", spec.name), "object": "chat.completion", "model": "sim",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens},
        });
        guard.done();
        let mut r = full(StatusCode::OK, body.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    // The stream's misbehaviour, as (frame index, what happens there).
    let fault = match mode {
        Mode::ResetMidStream => Some((1, "reset")),
        Mode::ResetBeforeFirstChunk => Some((0, "reset")),
        Mode::ErrorEvent => Some((0, "error event")),
        Mode::StallAfterFirst => Some((1, "stall")),
        _ => None,
    };
    let frames = stream::unfold((0u64, Some(guard)), move |(i, guard)| {
        let spec = spec.clone();
        let stats = Arc::clone(&stats);
        async move {
            let mut guard = guard?;
            let wait = if i == 0 {
                spec.ttft
            } else {
                spec.token_time(stats.in_flight.load(SeqCst))
            };
            tokio::time::sleep(wait).await;
            match fault {
                Some((at, "reset")) if at == i => {
                    drop(guard);
                    return Some((Err(std::io::Error::other("simulated reset")), (i + 1, None)));
                }
                Some((at, "error event")) if at == i => {
                    guard.done();
                    let event = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
                    return Some((Ok(Frame::data(Bytes::from(event))), (tokens + 1, None)));
                }
                Some((at, "stall")) if at == i => std::future::pending::<()>().await,
                _ => {}
            }
            if i == tokens && include_usage {
                let usage = Bytes::from(usage_chunk(&spec.name, prompt, tokens));
                return Some((Ok(Frame::data(usage)), (i + 1, Some(guard))));
            }
            if i == tokens + u64::from(include_usage) {
                guard.done();
                return Some((
                    Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))),
                    (i + 1, None),
                ));
            }
            guard.hold(1);
            let data = Bytes::from(chunk(&spec.name, i, i + 1 == tokens));
            Some((Ok(Frame::data(data)), (i + 1, Some(guard))))
        }
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    Ok(r)
}

/// OpenAI's 429: its error body, `Retry-After` (seconds) and rate-limit headers.
fn rate_limited(retry_after: u8) -> Response<Body> {
    let body = "{\"error\":{\"message\":\"Rate limit reached for requests\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}";
    let mut r = full(StatusCode::TOO_MANY_REQUESTS, body);
    let headers = r.headers_mut();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("retry-after", retry_after.to_string().parse().unwrap());
    headers.insert("x-ratelimit-limit-requests", "60".parse().unwrap());
    headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
    headers.insert(
        "x-ratelimit-reset-requests",
        format!("{retry_after}s").parse().unwrap(),
    );
    r
}

/// An endpoint's service: a shared hyper client that sends each request to one upstream.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Full<Bytes>>,
    base: Uri,
    api_key: Option<http::HeaderValue>,
}

impl Upstream {
    pub fn new(client: Client<HttpConnector, Full<Bytes>>, base: Uri) -> Self {
        Self {
            client,
            base,
            api_key: None,
        }
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(mut self, key: &str) -> Self {
        self.api_key = format!("Bearer {key}").parse().ok();
        self
    }

    /// A client suited to many concurrent streams on loopback.
    pub fn client() -> Client<HttpConnector, Full<Bytes>> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector)
    }
}

impl tower::Service<Request<Full<Bytes>>> for Upstream {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(path.parse().unwrap());
        *req.uri_mut() = Uri::from_parts(parts).unwrap();
        if let Some(key) = &self.api_key {
            req.headers_mut()
                .insert(http::header::AUTHORIZATION, key.clone());
        }
        self.client.request(req)
    }
}

/// A probe that GETs `/health` on the upstream whose base URI is the endpoint's `base` label.
pub fn http_probe(
    client: Client<HttpConnector, Full<Bytes>>,
) -> impl Fn(
    Arc<tower_ai_balance::Endpoint>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
       + Send
       + Sync
       + 'static {
    move |endpoint| {
        let client = client.clone();
        let uri = endpoint.label("base").map(|b| format!("{b}/health"));
        Box::pin(async move {
            let Some(Ok(uri)) = uri.map(|u| u.parse::<Uri>()) else {
                return false;
            };
            let request = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
            matches!(client.request(request).await, Ok(r) if r.status().is_success())
        })
    }
}

/// A chat-completions request asking for `tokens` tokens.
pub fn chat_request(tokens: u64, stream: bool) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "sim", "stream": stream, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "hello"}],
    });
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

// ---- Anthropic Messages: `POST /v1/messages` ----
//
// The wire format of Anthropic's API reference: `x-api-key` and `anthropic-version` required;
// `model`, `max_tokens` and `messages` required; the answer is a `message`, or with
// `"stream": true` the events `message_start`, `content_block_start`, `ping`,
// `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop` (an `error`
// event on `Mode::ErrorEvent`). Errors are `{"type":"error","error":{"type","message"}}`:
// 401 without a key, 400 for a bad request, 429 `rate_limit_error` with `retry-after` on
// `Mode::RateLimit`, 529 `overloaded_error` on `Mode::Overloaded` (and without `retry-after`
// on `Mode::Unavailable`), 500 `api_error` on `Mode::Fail`.
//
// The simulated model answers `t0 t1 ...` up to ANSWER_TOKENS tokens (`end_turn`), fewer
// when `max_tokens` stops it (`max_tokens`) or a token equals a stop sequence
// (`stop_sequence`, the sequence not included).

/// How many tokens the simulated model's whole answer has.
pub const ANSWER_TOKENS: u64 = 8;

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "error", "error": {"type": kind, "message": message}, "request_id": "req_sim",
    });
    let mut r = full(StatusCode::from_u16(status).unwrap(), body.to_string());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

/// The models the simulated Anthropic API lists, newest first.
pub const ANTHROPIC_MODELS: [&str; 3] =
    ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"];

/// `GET /v1/models` as Anthropic answers it: `x-api-key` required; pages of at most `limit`
/// models (20 by default), and here never more than two, as a server may send fewer than
/// asked; the next page after `after_id`.
fn anthropic_models(req: &Request<Incoming>) -> Response<Body> {
    if !req.headers().contains_key("x-api-key") {
        return anthropic_error(401, "authentication_error", "x-api-key header is required");
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        (query.split('&'))
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return anthropic_error(400, "invalid_request_error", "limit: out of range");
    }
    let start = match param("after_id") {
        Some(id) => match ANTHROPIC_MODELS.iter().position(|m| *m == id) {
            Some(i) => i + 1,
            None => return anthropic_error(400, "invalid_request_error", "after_id: unknown"),
        },
        None => 0,
    };
    let page: Vec<&str> = ANTHROPIC_MODELS[start..]
        .iter()
        .take(limit.min(2))
        .copied()
        .collect();
    let data: Vec<serde_json::Value> = (page.iter())
        .map(|id| {
            serde_json::json!({"type": "model", "id": id, "display_name": id, "created_at": "2025-09-29T00:00:00Z"})
        })
        .collect();
    let body = serde_json::json!({
        "data": data, "has_more": start + page.len() < ANTHROPIC_MODELS.len(),
        "first_id": page.first(), "last_id": page.last(),
    });
    let mut r = full(StatusCode::OK, body.to_string());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn sse_event(name: &str, data: serde_json::Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn handle_messages(
    req: Request<Incoming>,
    stats: Arc<Stats>,
    mode: Mode,
    spec: Spec,
) -> Result<Response<Body>, std::io::Error> {
    if req.method() != http::Method::POST {
        return Ok(anthropic_error(404, "not_found_error", "Not found"));
    }
    if !req.headers().contains_key("x-api-key") {
        return Ok(anthropic_error(
            401,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if !req.headers().contains_key("anthropic-version") {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    let key = api_key(&req);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    *stats.last_body.lock() = body.clone();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "invalid JSON",
        ));
    };
    let model = json["model"].as_str().map(str::to_owned);
    let max_tokens = json["max_tokens"].as_u64().filter(|&n| n > 0);
    let messages = json["messages"].as_array().filter(|m| !m.is_empty());
    let (Some(model), Some(max_tokens), Some(messages)) = (model, max_tokens, messages) else {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "model, max_tokens and messages are required",
        ));
    };
    if let Some(refused) = quota_take(
        &stats,
        &spec,
        &key,
        body.len() as u64 / 4 + 1 + max_tokens,
        true,
    ) {
        return Ok(refused);
    }
    if messages
        .iter()
        .any(|m| !matches!(m["role"].as_str(), Some("user" | "assistant")))
    {
        return Ok(anthropic_error(
            400,
            "invalid_request_error",
            "messages: roles must be user or assistant",
        ));
    }
    match mode {
        Mode::Fail => return Ok(anthropic_error(500, "api_error", "Internal server error")),
        Mode::RateLimit(s) => {
            let mut r = anthropic_error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
            );
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
            r.headers_mut().insert(
                "anthropic-ratelimit-requests-remaining",
                "0".parse().unwrap(),
            );
            return Ok(r);
        }
        Mode::Overloaded(s) => {
            let mut r = anthropic_error(529, "overloaded_error", "Overloaded");
            if s > 0 {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            return Ok(r);
        }
        Mode::Unavailable => return Ok(anthropic_error(529, "overloaded_error", "Overloaded")),
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Garbage => return Err(std::io::Error::other("closing unanswered")),
        _ => {}
    }
    let streaming = json["stream"].as_bool().unwrap_or(false);
    let stops: Vec<String> = json["stop_sequences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // The answer: its tokens, and why it ends.
    let mut tokens = Vec::new();
    let mut stop = ("end_turn", serde_json::Value::Null);
    for i in 0..ANSWER_TOKENS {
        let token = format!("t{i}");
        if stops.contains(&token) {
            stop = ("stop_sequence", serde_json::Value::String(token));
            break;
        }
        if tokens.len() as u64 == max_tokens {
            stop = ("max_tokens", serde_json::Value::Null);
            break;
        }
        tokens.push(format!("{token} "));
    }
    let input_tokens = prompt_tokens(&json);
    let id = format!("msg_sim_{}", spec.name);
    let guard = InFlight::new(&stats);
    if !streaming {
        tokio::time::sleep(spec.ttft).await;
        for _ in 1..tokens.len() {
            tokio::time::sleep(spec.token_time(stats.in_flight.load(SeqCst))).await;
        }
        let body = serde_json::json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": tokens.concat()}],
            "stop_reason": stop.0, "stop_sequence": stop.1,
            "usage": {"input_tokens": input_tokens, "output_tokens": tokens.len()},
        });
        guard.done();
        let mut r = full(StatusCode::OK, body.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    // Frames as a server sends them: several events in the first, one event split across
    // two frames for every odd token, the end in one.
    let start = [
        sse_event(
            "message_start",
            serde_json::json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ),
        sse_event(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
        sse_event("ping", serde_json::json!({"type": "ping"})),
    ]
    .concat();
    let mut frames: Vec<String> = vec![start];
    if mode == Mode::ErrorEvent {
        frames.push(sse_event(
            "error",
            serde_json::json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ));
    } else {
        for (i, token) in tokens.iter().enumerate() {
            let event = sse_event(
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": token}}),
            );
            if i % 2 == 1 {
                let (a, b) = event.split_at(event.len() / 2);
                frames.push(a.to_owned());
                frames.push(b.to_owned());
            } else {
                frames.push(event);
            }
        }
        frames.push(
            [
                sse_event(
                    "content_block_stop",
                    serde_json::json!({"type": "content_block_stop", "index": 0}),
                ),
                sse_event(
                    "message_delta",
                    serde_json::json!({"type": "message_delta",
                        "delta": {"stop_reason": stop.0, "stop_sequence": stop.1},
                        "usage": {"output_tokens": tokens.len()}}),
                ),
                sse_event("message_stop", serde_json::json!({"type": "message_stop"})),
            ]
            .concat(),
        );
    }
    // The stream's misbehaviour: the frame at which it resets, or stalls.
    let (reset_at, stall_at) = match mode {
        Mode::ResetMidStream => (Some(2), None),
        Mode::ResetBeforeFirstChunk => (Some(0), None),
        Mode::StallAfterFirst => (None, Some(1)),
        _ => (None, None),
    };
    let count = frames.len();
    let frames = stream::unfold(
        (0usize, frames.into_iter(), Some(guard)),
        move |(i, mut frames, guard)| {
            let spec = spec.clone();
            let stats = Arc::clone(&stats);
            async move {
                let guard = guard?;
                let wait = if i == 0 {
                    spec.ttft
                } else {
                    spec.token_time(stats.in_flight.load(SeqCst))
                };
                tokio::time::sleep(wait).await;
                if reset_at == Some(i) {
                    drop(guard);
                    let reset = std::io::Error::other("simulated reset");
                    return Some((Err(reset), (i + 1, frames, None)));
                }
                if stall_at == Some(i) {
                    std::future::pending::<()>().await;
                }
                let frame = frames.next()?;
                let guard = if i + 1 == count {
                    guard.done();
                    None
                } else {
                    Some(guard)
                };
                Some((Ok(Frame::data(Bytes::from(frame))), (i + 1, frames, guard)))
            }
        },
    );
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    Ok(r)
}

// --- Engine metrics: what `/metrics` answers -------------------------------------------

/// Whose metric names `/metrics` answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// vLLM's (V1): `vllm:num_requests_running`, `vllm:num_requests_waiting`,
    /// `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`.
    Vllm,
    /// SGLang's: `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`,
    /// `sglang:max_total_num_tokens`.
    Sglang,
}

/// The KV cache block size the vLLM format reports, in tokens.
const BLOCK_SIZE: u64 = 16;

/// The server's load now: (running, waiting, KV usage in `0..=1`). Requests beyond the batch
/// are the waiting ones: they are the ones that slow every token down.
pub fn engine_load(stats: &Stats, spec: &Spec) -> (usize, usize, f64) {
    let in_flight = stats.in_flight.load(SeqCst);
    let running = in_flight.min(spec.batch);
    let kv = stats.kv_used.load(SeqCst) as f64 / spec.kv_tokens.max(1) as f64;
    (running, in_flight - running, kv.min(1.0))
}

/// `/metrics` in the engine's Prometheus text format, with the server's real load.
fn metrics_text(stats: &Stats, spec: &Spec) -> String {
    let (running, waiting, kv) = engine_load(stats, spec);
    let model = "sim";
    match spec.metrics {
        Engine::Vllm => format!(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{{engine=\"0\",model_name=\"{model}\"}} {running}.0\n\
             # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{engine=\"0\",model_name=\"{model}\"}} {waiting}.0\n\
             # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
             # TYPE vllm:kv_cache_usage_perc gauge\n\
             vllm:kv_cache_usage_perc{{engine=\"0\",model_name=\"{model}\"}} {kv}\n\
             # HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n\
             # TYPE vllm:cache_config_info gauge\n\
             vllm:cache_config_info{{block_size=\"{BLOCK_SIZE}\",cache_dtype=\"auto\",engine=\"0\",num_cpu_blocks=\"None\",num_gpu_blocks=\"{blocks}\"}} 1.0\n\
             # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
             # TYPE vllm:prompt_tokens_total counter\n\
             vllm:prompt_tokens_total{{engine=\"0\",model_name=\"{model}\"}} {completed}.0\n",
            blocks = spec.kv_tokens / BLOCK_SIZE,
            completed = stats.completed.load(SeqCst),
        ),
        Engine::Sglang => format!(
            "# HELP sglang:max_total_num_tokens Maximum total number of tokens\n\
             # TYPE sglang:max_total_num_tokens gauge\n\
             sglang:max_total_num_tokens{{model_name=\"{model}\"}} {tokens}.0\n\
             # HELP sglang:token_usage The token usage\n\
             # TYPE sglang:token_usage gauge\n\
             sglang:token_usage{{model_name=\"{model}\"}} {kv}\n\
             # HELP sglang:num_running_reqs The number of running requests\n\
             # TYPE sglang:num_running_reqs gauge\n\
             sglang:num_running_reqs{{model_name=\"{model}\"}} {running}.0\n\
             # HELP sglang:num_queue_reqs The number of requests in the waiting queue\n\
             # TYPE sglang:num_queue_reqs gauge\n\
             sglang:num_queue_reqs{{model_name=\"{model}\"}} {waiting}.0\n",
            tokens = spec.kv_tokens,
        ),
    }
}

// --- WebSocket: a realtime endpoint -------------------------------------------------------
//
// `GET .../realtime` upgraded to a WebSocket streams events for a session, in the shape of
// OpenAI's Realtime API: `{"type":"session.created","server":NAME,"protocol":P}` first; then,
// for each `{"type":"response.create","tokens":N}`, N `response.delta` events one `per_token`
// apart and a `response.done`; `{"type":"close","code":C}` makes the server close with C; any
// other message comes back as an `echo` (binary ones as they are). Each open session counts
// in the server's in-flight requests. It picks the subprotocol `realtime` when offered.
//
// Fail modes (the server's mode when the handshake arrives): `Fail` answers 500,
// `Unavailable` 503, `RateLimit(s)` 429 with `Retry-After`, `Hang` never answers;
// `ResetMidStream` sends `session.created` and one delta, then drops the connection without
// a close frame; `StallAfterFirst` sends `session.created`, then neither reads nor writes.
// `crash()` cuts every open session as a dying process would.

type UpgradeSlot = Arc<parking_lot::Mutex<Option<RealtimeUpgrade>>>;

/// A handshake answered 101, whose session the connection's task runs.
pub struct RealtimeUpgrade {
    on: hyper::upgrade::OnUpgrade,
    protocol: Option<&'static str>,
    mode: Mode,
}

async fn realtime_handshake(
    mut req: Request<Incoming>,
    stats: &Stats,
    mode: Mode,
    slot: &UpgradeSlot,
) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    let offered = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *stats.ws_protocols.lock() = offered.clone();
    match mode {
        Mode::Fail => return full(StatusCode::INTERNAL_SERVER_ERROR, "simulated failure"),
        Mode::Unavailable => return full(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Mode::RateLimit(s) => {
            let mut r = full(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().unwrap());
            return r;
        }
        Mode::Hang => std::future::pending().await,
        _ => {}
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(StatusCode::BAD_REQUEST, "not a websocket upgrade");
    };
    let protocol = offered
        .as_deref()
        .is_some_and(|p| p.split(',').any(|t| t.trim() == "realtime"))
        .then_some("realtime");
    *slot.lock() = Some(RealtimeUpgrade {
        on: hyper::upgrade::on(&mut req),
        protocol,
        mode,
    });
    stats.ws_accepted.fetch_add(1, SeqCst);
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = r.headers_mut();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    if let Some(p) = protocol {
        h.insert("sec-websocket-protocol", p.parse().unwrap());
    }
    r
}

fn event(value: serde_json::Value) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::text(value.to_string())
}

async fn realtime_session(upgrade: RealtimeUpgrade, stats: Arc<Stats>, spec: Spec) {
    use futures_util::SinkExt;
    use tokio_tungstenite::{
        tungstenite::{protocol::Role, Message},
        WebSocketStream,
    };

    let Ok(upgraded) = upgrade.on.await else {
        return;
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let held = InFlight::new(&stats);
    let created = serde_json::json!({
        "type": "session.created", "server": spec.name, "protocol": upgrade.protocol,
    });
    if ws.send(event(created)).await.is_err() {
        return;
    }
    match upgrade.mode {
        Mode::StallAfterFirst => {
            let _held = held;
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        Mode::ResetMidStream => {
            let _ = ws
                .send(event(serde_json::json!({"type": "response.delta", "i": 0})))
                .await;
            return; // dropped without a close frame
        }
        _ => {}
    }
    while let Some(message) = ws.next().await {
        let Ok(message) = message else {
            return;
        };
        match message {
            Message::Text(text) => {
                let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match json["type"].as_str() {
                    Some("response.create") => {
                        for i in 0..json["tokens"].as_u64().unwrap_or(1) {
                            tokio::time::sleep(spec.per_token).await;
                            let delta = serde_json::json!({"type": "response.delta", "i": i});
                            if ws.send(event(delta)).await.is_err() {
                                return;
                            }
                        }
                        if ws
                            .send(event(serde_json::json!({"type": "response.done"})))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some("close") => {
                        let code = json["code"].as_u64().unwrap_or(1000) as u16;
                        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                            code: code.into(),
                            reason: "server closed".into(),
                        };
                        let _ = ws.close(Some(frame)).await;
                    }
                    _ => {
                        let echo = serde_json::json!({"type": "echo", "data": text.as_str()});
                        if ws.send(event(echo)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Message::Binary(bytes) => {
                let Ok(()) = ws.send(Message::Binary(bytes)).await else {
                    return;
                };
            }
            Message::Ping(_) => {
                // The library answers it.
                stats.ws_pings.fetch_add(1, SeqCst);
            }
            Message::Close(frame) => {
                stats
                    .ws_closes
                    .lock()
                    .push(frame.map(|f| u16::from(f.code)));
                held.done();
                // Flush the reply; the peer then ends the connection.
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
            _ => {}
        }
    }
}

// --- Quota mode: a hosted provider's requests and tokens per minute ---------------------
//
// With `Spec::quota(rpm, tpm)`, each API key (`authorization` or `x-api-key`; none is a key
// too) may be served at most `rpm` requests and `tpm` tokens in any sliding 60 seconds, as a
// log of what it was served. A request counts its prompt (a quarter of its body's bytes, plus
// one) and its `max_tokens` when it arrives, as OpenAI counts it. Beyond the quota it is
// answered 429 in its format (OpenAI's `rate_limit_exceeded`, Anthropic's `rate_limit_error`)
// with `retry-after`; every answer carries the provider's headers: OpenAI's
// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (resets as `1s`, `20ms`) or
// Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (RFC 3339).

/// Requests and tokens per sliding minute, per API key.
#[derive(Debug, Clone, Copy)]
pub struct ServerQuota {
    pub rpm: u64,
    pub tpm: u64,
}

/// What one key was served: (when, tokens), oldest first.
type QuotaLog = std::collections::VecDeque<(tokio::time::Instant, u64)>;

const QUOTA_WINDOW: Duration = Duration::from_secs(60);

fn api_key<B>(req: &Request<B>) -> String {
    ["authorization", "x-api-key"]
        .iter()
        .find_map(|h| req.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The key's log with what left the window dropped: (requests, tokens) in it.
fn quota_window(log: &mut QuotaLog, now: tokio::time::Instant) -> (u64, u64) {
    while log.front().is_some_and(|(t, _)| *t + QUOTA_WINDOW <= now) {
        log.pop_front();
    }
    (log.len() as u64, log.iter().map(|(_, n)| n).sum())
}

/// Counts a request of `tokens` for `key`, or refuses it with the format's 429.
fn quota_take(
    stats: &Stats,
    spec: &Spec,
    key: &str,
    tokens: u64,
    anthropic: bool,
) -> Option<Response<Body>> {
    let q = spec.quota?;
    let now = tokio::time::Instant::now();
    let mut logs = stats.quota_log.lock();
    let log = logs.entry(key.to_owned()).or_default();
    let (requests, used) = quota_window(log, now);
    if requests < q.rpm && used + tokens <= q.tpm {
        log.push_back((now, tokens));
        stats.quota_peak_tokens.fetch_max(used + tokens, SeqCst);
        return None;
    }
    drop(logs);
    stats.quota_refused.fetch_add(1, SeqCst);
    let mut r = if anthropic {
        anthropic_error(
            429,
            "rate_limit_error",
            "Number of tokens has exceeded your per-minute rate limit",
        )
    } else {
        let body = "{\"error\":{\"message\":\"Rate limit reached for tokens per min\",\"type\":\"tokens\",\"code\":\"rate_limit_exceeded\"}}";
        let mut r = full(StatusCode::TOO_MANY_REQUESTS, body);
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    let first = quota_headers(stats, q, key, anthropic, r.headers_mut());
    r.headers_mut()
        .insert("retry-after", first.as_secs().max(1).into());
    Some(r)
}

/// The provider's rate-limit headers for `key` now.
/// The provider's rate-limit headers for `key` now; returns when the window's oldest entry
/// leaves it (when a refused request may retry).
fn quota_headers(
    stats: &Stats,
    q: ServerQuota,
    key: &str,
    anthropic: bool,
    h: &mut http::HeaderMap,
) -> Duration {
    let now = tokio::time::Instant::now();
    let mut logs = stats.quota_log.lock();
    let log = logs.entry(key.to_owned()).or_default();
    let (requests, tokens) = quota_window(log, now);
    // The window is whole again when its newest entry leaves it.
    let reset = log
        .back()
        .map_or(Duration::ZERO, |(t, _)| *t + QUOTA_WINDOW - now);
    // The first entry to leave: when a refused request may retry.
    let first = log
        .front()
        .map_or(Duration::ZERO, |(t, _)| *t + QUOTA_WINDOW - now);
    drop(logs);
    let figures = [
        ("requests", q.rpm, q.rpm.saturating_sub(requests)),
        ("tokens", q.tpm, q.tpm.saturating_sub(tokens)),
    ];
    for (what, limit, remaining) in figures {
        let (l, r, t, reset) = if anthropic {
            let at = std::time::SystemTime::now() + reset;
            (
                format!("anthropic-ratelimit-{what}-limit"),
                format!("anthropic-ratelimit-{what}-remaining"),
                format!("anthropic-ratelimit-{what}-reset"),
                httpdate_rfc3339(at),
            )
        } else {
            (
                format!("x-ratelimit-limit-{what}"),
                format!("x-ratelimit-remaining-{what}"),
                format!("x-ratelimit-reset-{what}"),
                format!("{}ms", reset.as_millis()),
            )
        };
        h.insert(http::HeaderName::try_from(l).unwrap(), limit.into());
        h.insert(http::HeaderName::try_from(r).unwrap(), remaining.into());
        h.insert(
            http::HeaderName::try_from(t).unwrap(),
            reset.parse().unwrap(),
        );
    }
    first
}

/// A wall-clock time as RFC 3339 in UTC, to the second (`2024-06-01T12:00:30Z`).
fn httpdate_rfc3339(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
