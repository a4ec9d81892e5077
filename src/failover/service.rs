use std::{
    future::{poll_fn, Future},
    pin::{pin, Pin},
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Buf;
use futures_util::future::{select, Either};
use http::{request::Parts, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;
use tracing::Instrument;

use super::{
    body::{Reconnect, Resume},
    Replay, ResponseBody, Shared,
};
use crate::{
    classify::Outcome as Verdict,
    endpoint::Endpoint,
    error::{
        Attempt, AttemptFailure, AttemptsFailed, BoxError, EndpointError, GaveUp, NoEndpoints,
        NotReplayable, Timeout,
    },
    hints::{Exclude, Picked, Served},
    per_clone::PerClone,
};

/// Re-issues failed attempts on other endpoints. See the [module docs](crate::failover).
#[derive(Clone, Debug)]
pub struct Failover<S> {
    inner: S,
    ctx: PerClone<Ctx<S>>,
}

/// What the requests through one service share: the layer's settings, and a clone of the
/// inner service, from which a retry clones its own. A request that needs no retry copies no
/// service, and holds one reference count instead of one per inner layer; a clone that serves
/// many requests holds its own context, so that count is not shared between cores.
#[derive(Debug)]
struct Ctx<S> {
    shared: Arc<Shared>,
    spare: S,
}

impl<S: Clone> Failover<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        let spare = inner.clone();
        Self {
            inner,
            ctx: PerClone::new(Ctx { shared, spare }),
        }
    }
}

pin_project! {
    /// The response future of [`Failover`]. The first attempt is polled in place, without an
    /// allocation, when nothing needs more than its response head (no hedge, deadline,
    /// first-chunk wait or continuation). A retry, and every request under those settings, runs
    /// the attempts as one boxed state machine: one allocation, in the layer that may send
    /// several requests.
    pub struct ResponseFuture<S, B, RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        RB: Body,
    {
        #[pin]
        state: State<S, B, RB>,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, RB>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        RB: Body,
    {
        /// The first attempt, in place.
        First {
            #[pin]
            call: S::Future,
            retry: Option<Retry<B>>,
            ctx: Arc<Ctx<S>>,
        },
        /// The attempts after it, or all of them.
        Boxed {
            future: Pin<Box<dyn Future<Output = Outcome<RB>> + Send>>,
        },
    }
}

/// What a retry needs from the first attempt: the head and a copy of the body.
struct Retry<B> {
    head: Head,
    template: Option<B>,
}

/// What a request through [`Failover`] comes to.
type Outcome<B> = Result<Response<ResponseBody<B>>, BoxError>;

impl<S, B, RB> std::fmt::Debug for ResponseFuture<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: Body,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, RB> Future for ResponseFuture<S, B, RB>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Unpin + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Output = Outcome<RB>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _span = this.span.enter();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { call, retry, ctx } => {
                    let shared = &ctx.shared;
                    let (failure, endpoint) = match judge_now(shared, ready!(call.poll(cx)), None) {
                        Judged::Step(Step::Retry(failure, endpoint)) => (failure, endpoint),
                        Judged::Step(Step::Done(response)) => return Poll::Ready(Ok(response)),
                        Judged::Step(Step::Fail(error)) => return Poll::Ready(Err(error)),
                        // Only with a first-chunk wait, which never takes this path.
                        Judged::FirstChunk(response, ..) => {
                            return Poll::Ready(Ok(response.map(|b| ResponseBody::new(None, b))))
                        }
                    };
                    let Some(Retry { head, template }) = retry.take() else {
                        // No retry could be sent: say why, as the attempts loop would.
                        let error = if shared.attempts > 1 {
                            NotReplayable::new(vec![failure]).into()
                        } else {
                            AttemptsFailed::new(vec![failure], GaveUp::Attempts, None).into()
                        };
                        return Poll::Ready(Err(error));
                    };
                    let mut exclude = Exclude::new();
                    if let Some(endpoint) = endpoint {
                        exclude.insert(&endpoint);
                    }
                    tracing::debug!(attempt = 1, endpoint = ?failure.endpoint, "attempt failed; failing over");
                    let future = run(
                        Arc::clone(shared),
                        None,
                        ctx.spare.clone(),
                        head,
                        template,
                        exclude,
                        vec![failure],
                        None,
                    );
                    this.state.set(State::Boxed {
                        future: Box::pin(future),
                    });
                }
                StateProj::Boxed { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

impl<S, B, RB> Service<Request<B>> for Failover<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Unpin + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let span =
            tracing::debug_span!("request", method = %request.method(), uri = %request.uri());
        let inner = &self.inner;
        let ctx = self.ctx.for_request(|ctx| Ctx {
            shared: Arc::clone(&ctx.shared),
            spare: inner.clone(),
        });
        let shared = &ctx.shared;
        shared.budget.deposit();
        let state = if shared.head_is_enough() {
            // The first attempt takes the request as it is; a retry needs a copy of the head
            // and of the body, made only if a retry could be sent.
            let template = request.body().replay().filter(|_| shared.attempts > 1);
            let head = template.as_ref().map(|_| Head::from_request(&request));
            // The inner service was polled ready for this call; the inner layers log their
            // picks inside the request's span.
            let call = span.in_scope(|| self.inner.call(request));
            let retry = head.map(|head| Retry { head, template });
            State::First {
                call,
                retry,
                ctx: Arc::clone(ctx),
            }
        } else {
            let (parts, body) = request.into_parts();
            let template = body.replay();
            let head = Head::from(parts);
            // The ready service takes the first attempt; a clone stays for the next call.
            let clone = self.inner.clone();
            let service = std::mem::replace(&mut self.inner, clone);
            let deadline = shared.deadline.map(|d| Instant::now() + d);
            let spare = service.clone();
            let future = run(
                Arc::clone(shared),
                Some((service, body)),
                spare,
                head,
                template,
                Exclude::new(),
                Vec::new(),
                deadline,
            );
            State::Boxed {
                future: Box::pin(future),
            }
        };
        ResponseFuture { state, span }
    }
}

/// What one attempt came to.
enum Step<RB: Body> {
    Done(Response<ResponseBody<RB>>),
    /// A retriable failure, and the endpoint to exclude next time.
    Retry(Attempt, Option<Arc<Endpoint>>),
    Fail(BoxError),
}

/// The attempts from the first (`first` is its service and body) or from a retry (`first` is
/// `None`, `failed` holds what failed before).
#[allow(clippy::too_many_arguments)]
async fn run<S, B, RB>(
    shared: Arc<Shared>,
    mut first: Option<(S, B)>,
    spare: S,
    head: Head,
    template: Option<B>,
    mut exclude: Exclude,
    mut failed: Vec<Attempt>,
    deadline: Option<Instant>,
) -> Result<Response<ResponseBody<RB>>, BoxError>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Unpin + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    loop {
        let (service, body) = match first.take() {
            Some(first) => first,
            None => {
                if failed.len() >= shared.attempts {
                    return Err(AttemptsFailed::new(failed, GaveUp::Attempts, None).into());
                }
                // Never send a retry without its body.
                let Some(body) = template.as_ref().and_then(Replay::replay) else {
                    return Err(NotReplayable::new(failed).into());
                };
                if !shared.budget.withdraw() {
                    return Err(AttemptsFailed::new(failed, GaveUp::Budget, None).into());
                }
                (spare.clone(), body)
            }
        };
        // A hedge needs a second service and a second copy of the body, made before waiting.
        let hedge = shared
            .hedge
            .and_then(|_| template.as_ref().and_then(Replay::replay))
            .map(|copy| (spare.clone(), copy));
        let span = tracing::debug_span!("attempt", n = failed.len() + 1, excluded = exclude.len());
        let attempt = attempt(&shared, service, &head, body, hedge, &exclude).instrument(span);
        let step = match deadline {
            None => attempt.await,
            Some(at) => match tokio::time::timeout_at(at, attempt).await {
                Ok(step) => step,
                Err(_) => return Err(AttemptsFailed::new(failed, GaveUp::Deadline, None).into()),
            },
        };
        match step {
            Step::Done(mut response) => {
                if let Some(resume) =
                    resumable(&shared, &spare, &head, &template, &exclude, &response)
                {
                    response.body_mut().resume(resume);
                }
                return Ok(response);
            }
            Step::Retry(failure, endpoint) => {
                if let Some(endpoint) = endpoint {
                    exclude.insert(&endpoint);
                }
                tracing::debug!(attempt = failed.len() + 1, endpoint = ?failure.endpoint, "attempt failed; failing over");
                failed.push(failure);
            }
            Step::Fail(error) if failed.is_empty() => return Err(error),
            Step::Fail(error) => {
                // Every endpoint left was tried, or none can serve: say when one comes back.
                let back = error
                    .downcast_ref::<NoEndpoints>()
                    .map(NoEndpoints::retry_after);
                return Err(match back {
                    Some(retry_after) => {
                        AttemptsFailed::new(failed, GaveUp::NoEndpoints, retry_after).into()
                    }
                    None => error,
                });
            }
        }
    }
}

/// One attempt, hedged if so configured.
async fn attempt<S, B, RB>(
    shared: &Shared,
    service: S,
    head: &Head,
    body: B,
    hedge_with: Option<(S, B)>,
    exclude: &Exclude,
) -> Step<RB>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone,
    S::Error: Into<BoxError>,
    B: Replay,
    RB: Body + Unpin,
    RB::Error: Into<BoxError>,
{
    let picked = Picked::new();
    let first = judge(
        shared,
        oneshot(
            service,
            head.request(body, exclude, shared.hedge.map(|_| &picked)),
        ),
        &picked,
    );
    let Some(hedge) = shared.hedge else {
        return first.await;
    };
    let started = Instant::now();
    let mut first = pin!(first);
    if let Ok(step) = tokio::time::timeout(hedge.delay(&shared.latencies), first.as_mut()).await {
        if matches!(step, Step::Done(_)) {
            shared.latencies.record(started.elapsed());
        }
        return step;
    }
    // Slow: send a copy elsewhere, if the body and the budget allow, and keep the first answer.
    let Some((spare, copy)) = hedge_with.filter(|_| shared.budget.withdraw()) else {
        return first.await;
    };
    let mut elsewhere = exclude.clone();
    if let Some(endpoint) = picked.get() {
        elsewhere.insert(endpoint);
    }
    let picked_too = Picked::new();
    let request = head.request(copy, &elsewhere, None);
    let second = pin!(judge(shared, oneshot(spare, request), &picked_too));
    tracing::debug!(endpoint = ?picked.get().map(|e| e.key()), "hedging a slow attempt");
    let step = match select(first, second).await {
        Either::Left((step, other)) => settle(step, other).await,
        Either::Right((step, other)) => settle(step, other).await,
    };
    if matches!(step, Step::Done(_)) {
        shared.latencies.record(started.elapsed());
    }
    step
}

/// The first of two racing attempts to finish: kept if it succeeded (the other is dropped,
/// which cancels it and releases its slot), else the other is awaited.
async fn settle<RB: Body>(step: Step<RB>, other: impl Future<Output = Step<RB>>) -> Step<RB> {
    match step {
        Step::Done(response) => Step::Done(response),
        _ => other.await,
    }
}

/// Judges one call: done, retriable on another endpoint, or a failure to pass on.
async fn judge<F, E, RB>(shared: &Shared, call: F, picked: &Picked) -> Step<RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    RB: Body + Unpin,
    RB::Error: Into<BoxError>,
{
    match judge_now(shared, call.await, Some(picked)) {
        Judged::Step(step) => step,
        Judged::FirstChunk(response, key, endpoint) => {
            first_chunk(shared, response, key, endpoint).await
        }
    }
}

/// A call's verdict, or a successful response that must first show its first chunk.
enum Judged<RB: Body> {
    Step(Step<RB>),
    FirstChunk(Response<RB>, Option<crate::Key>, Option<Arc<Endpoint>>),
}

/// Judges a call's result by its head alone.
fn judge_now<E, RB>(
    shared: &Shared,
    result: Result<Response<RB>, E>,
    picked: Option<&Picked>,
) -> Judged<RB>
where
    E: Into<BoxError>,
    RB: Body + Unpin,
{
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            let error = error.into();
            let retriable = error
                .downcast_ref::<EndpointError>()
                .filter(|e| shared.classify.classify_error(e.inner()).is_retriable())
                .map(|e| Arc::clone(e.endpoint()));
            return Judged::Step(match retriable {
                Some(endpoint) => Step::Retry(
                    Attempt {
                        endpoint: Some(endpoint.key().clone()),
                        failure: AttemptFailure::Error(error),
                    },
                    Some(endpoint),
                ),
                None => Step::Fail(error),
            });
        }
    };
    // Who served it, for the error or the next exclusion: not needed on success.
    let served = |response: &Response<RB>| {
        let endpoint = response
            .extensions()
            .get::<Served>()
            .map(|s| Arc::clone(&s.0))
            .or_else(|| picked.and_then(|p| p.get().cloned()));
        let key = endpoint.as_ref().map(|e| e.key().clone());
        (key, endpoint)
    };
    let retry_after = match shared
        .classify
        .classify_response(response.status(), response.headers())
    {
        Verdict::Failure => None,
        Verdict::RateLimited { retry_after } => retry_after,
        Verdict::Success if shared.first_chunk.is_some() => {
            let (key, endpoint) = served(&response);
            return Judged::FirstChunk(response, key, endpoint);
        }
        _ => {
            return Judged::Step(Step::Done(
                response.map(|body| ResponseBody::new(None, body)),
            ))
        }
    };
    let (key, endpoint) = served(&response);
    let failure = AttemptFailure::Status {
        status: response.status(),
        retry_after,
    };
    // Dropping the response releases its endpoint's slot.
    Judged::Step(Step::Retry(
        Attempt {
            endpoint: key,
            failure,
        },
        endpoint,
    ))
}

/// Holds a successful response until its first data frame; a stream that fails, stalls or
/// opens with an error event before it is a retriable failure.
async fn first_chunk<RB>(
    shared: &Shared,
    response: Response<RB>,
    key: Option<crate::Key>,
    endpoint: Option<Arc<Endpoint>>,
) -> Step<RB>
where
    RB: Body + Unpin,
    RB::Error: Into<BoxError>,
{
    let timeout = shared.first_chunk.unwrap_or_default();
    let (parts, mut body) = response.into_parts();
    let read = async {
        loop {
            match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        if !data.has_remaining() {
                            continue;
                        }
                        if (shared.error_event)(data.chunk()) {
                            return Err(BoxError::from("the stream opened with an error event"));
                        }
                    }
                    return Ok(Some(frame));
                }
            }
        }
    };
    let failure = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(first)) => {
            return Step::Done(Response::from_parts(parts, ResponseBody::new(first, body)))
        }
        Ok(Err(e)) => e,
        Err(_) => Box::new(Timeout::new(timeout)),
    };
    Step::Retry(
        Attempt {
            endpoint: key,
            failure: AttemptFailure::FirstChunk(failure),
        },
        endpoint,
    )
}

/// Drives a service to readiness and calls it.
async fn oneshot<S: Service<R>, R>(mut service: S, request: R) -> Result<S::Response, S::Error> {
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(request).await
}

/// The head of the request, to build each attempt from.
#[derive(Clone)]
struct Head {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    extensions: http::Extensions,
}

impl Head {
    /// A copy of a request's head.
    fn from_request<B>(request: &Request<B>) -> Self {
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
        }
    }
}

impl From<Parts> for Head {
    fn from(parts: Parts) -> Self {
        Self {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            extensions: parts.extensions,
        }
    }
}

impl Head {
    /// The request for one attempt: the original head, a copy of its body, and the hints (a
    /// `Picked` cell only when something will read it: inserting one allocates).
    fn request<B>(&self, body: B, exclude: &Exclude, picked: Option<&Picked>) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        *request.extensions_mut() = self.extensions.clone();
        if !exclude.is_empty() {
            request.extensions_mut().insert(exclude.clone());
        }
        if let Some(picked) = picked {
            request.extensions_mut().insert(picked.clone());
        }
        request
    }
}

/// What the body needs to continue a broken stream elsewhere, if a policy is set and the
/// request's body gives its bytes.
fn resumable<S, B, RB>(
    shared: &Shared,
    spare: &S,
    head: &Head,
    template: &Option<B>,
    exclude: &Exclude,
    response: &Response<ResponseBody<RB>>,
) -> Option<Resume<RB>>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Replay + Send + 'static,
    RB: Body + Send + 'static,
{
    let policy = shared.continuation.clone()?;
    let original = template.as_ref()?.bytes()?;
    let (service, head) = (spare.clone(), head.clone());
    let reconnect: Reconnect<RB> = Box::new(move |body, exclude| {
        let service = service.clone();
        let request = B::from_bytes(body).map(|b| head.request(b, &exclude, None));
        Box::pin(async move {
            let request = request.ok_or("the request body type cannot carry a continuation")?;
            oneshot(service, request).await.map_err(Into::into)
        })
    });
    let endpoint = response
        .extensions()
        .get::<Served>()
        .map(|s| Arc::clone(&s.0));
    Some(Resume::new(
        policy,
        original,
        exclude.clone(),
        endpoint,
        reconnect,
        Arc::clone(&shared.budget),
        shared.attempts.saturating_sub(1),
    ))
}
