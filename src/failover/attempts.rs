//! The attempts of one request: each sent with the endpoints already tried excluded, until
//! one succeeds or the request gives up, for one of the reasons in [`Stop`], by one path
//! ([`give_up`]).

use std::{future::poll_fn, sync::Arc};

use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower_service::Service;
use tracing::Instrument;

use super::{
    body::{Reconnect, Resume},
    first_chunk, hedge,
    replay::Head,
    settings::Settings,
    step::{judge, Step},
    Replay, ResponseBody,
};
use crate::{
    clock::later,
    endpoint::Endpoint,
    error::{Attempt, AttemptsFailed, BoxError, GaveUp, NoEndpoints, NotReplayable},
    hints::{Exclude, FirstChunkJudged, Judged, Picked, Served},
};

/// Why a request makes no more attempts.
pub(crate) enum Stop {
    /// Every allowed attempt was made.
    Attempts,
    /// The retry budget had nothing left.
    Budget,
    /// The overall deadline passed.
    Deadline,
    /// A retry is needed, but the body cannot be sent again.
    NotReplayable,
    /// An error another endpoint would not change (or none is left to try).
    Error(BoxError),
}

impl Stop {
    /// The body for the attempt after `made`, from `replay`, or why there is none (the budget
    /// aside): no attempt left, or a body that cannot be sent again.
    pub(crate) fn before_retry<B>(
        attempts: usize,
        made: usize,
        replay: impl FnOnce() -> Option<B>,
    ) -> Result<B, Stop> {
        if made >= attempts {
            return Err(Stop::Attempts);
        }
        replay().ok_or(Stop::NotReplayable)
    }
}

/// The error a request that gives up returns: what it stopped for, with every failed attempt.
pub(crate) fn give_up(failed: Vec<Attempt>, stop: Stop) -> BoxError {
    let gave_up = match stop {
        Stop::Attempts => GaveUp::Attempts,
        Stop::Budget => GaveUp::Budget,
        Stop::Deadline => GaveUp::Deadline,
        Stop::NotReplayable => return NotReplayable::new(failed).into(),
        Stop::Error(error) if failed.is_empty() => return error,
        Stop::Error(error) => {
            // Every endpoint left was tried, or none can serve: say when one comes back.
            let Some(no_endpoints) = error.downcast_ref::<NoEndpoints>() else {
                return error;
            };
            let back = no_endpoints.retry_after();
            return AttemptsFailed::new(failed, GaveUp::NoEndpoints, back).into();
        }
    };
    AttemptsFailed::new(failed, gave_up, None).into()
}

/// A request's attempts after (or from) the first: what each needs, and what failed so far.
pub(crate) struct Attempts<S, B> {
    settings: Arc<Settings>,
    /// The inner service, cloned for each attempt.
    service: S,
    head: Head,
    /// The body each attempt sends a copy of.
    template: Option<B>,
    exclude: Exclude,
    failed: Vec<Attempt>,
    deadline: Option<Instant>,
    /// The tier of the first failed attempt's endpoint, to count a fail-over to another.
    first_tier: Option<u32>,
    /// The last failed attempt's endpoint: the retries are counted in its pool.
    last: Option<Arc<Endpoint>>,
}

impl<S, B> Attempts<S, B>
where
    B: Replay,
{
    /// Before the first attempt, which the caller sends: the deadline starts now.
    pub(crate) fn new(
        settings: Arc<Settings>,
        service: S,
        head: Head,
        template: Option<B>,
    ) -> Self {
        let deadline = settings.deadline.map(|d| later(Instant::now(), d));
        Self {
            settings,
            service,
            head,
            template,
            exclude: Exclude::new(),
            failed: Vec::new(),
            deadline,
            first_tier: None,
            last: None,
        }
    }

    /// Records a failed attempt: its endpoint is excluded from the next.
    pub(crate) fn failed(&mut self, failure: Attempt, endpoint: Option<Arc<Endpoint>>) {
        if let Some(endpoint) = endpoint {
            self.exclude.insert(&endpoint);
            if self.failed.is_empty() {
                self.first_tier = Some(endpoint.tier());
            }
            self.last = Some(endpoint);
        }
        tracing::debug!(attempt = self.failed.len() + 1, endpoint = ?failure.endpoint, "attempt failed; failing over");
        self.failed.push(failure);
    }
}

impl<S, B> Attempts<S, B>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    B: Replay + Send + 'static,
{
    /// The service and body for the next attempt, or why there is none.
    fn next(&self) -> Result<(S, B), Stop> {
        let template = self.template.as_ref();
        let body = Stop::before_retry(self.settings.attempts, self.failed.len(), || {
            template.and_then(Replay::replay)
        })?;
        let events = self.last.as_ref().map(|e| e.layer_events());
        if !self.settings.budget.withdraw() {
            events.inspect(|events| events.budget_exhausted());
            return Err(Stop::Budget);
        }
        events.inspect(|events| events.retried());
        Ok((self.service.clone(), body))
    }

    /// Runs the attempts, from `first` (the first attempt's service and body) or from the next
    /// retry, until one succeeds or the request gives up.
    pub(crate) async fn run<RB>(
        mut self,
        mut first: Option<(S, B)>,
    ) -> Result<Response<ResponseBody<RB>>, BoxError>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        S::Future: Send,
        RB: Body + Judged + Unpin + Send + 'static,
        RB::Data: Send,
        RB::Error: Into<BoxError>,
    {
        loop {
            let next = first.take().map_or_else(|| self.next(), Ok);
            let (service, body) = match next {
                Ok(next) => next,
                Err(stop) => return Err(give_up(self.failed, stop)),
            };
            // A hedge needs a second service and a second copy of the body, made before waiting.
            let hedge_copy = self
                .settings
                .hedge
                .and_then(|_| self.template.as_ref().and_then(Replay::replay))
                .map(|copy| (self.service.clone(), copy));
            let span = tracing::debug_span!(
                "attempt",
                n = self.failed.len() + 1,
                excluded = self.exclude.len()
            );
            let attempt = attempt(
                &self.settings,
                (service, body),
                hedge_copy,
                &self.head,
                &self.exclude,
            )
            .instrument(span);
            let step = match self.deadline {
                None => attempt.await,
                Some(at) => match tokio::time::timeout_at(at, attempt).await {
                    Ok(step) => step,
                    Err(_) => return Err(give_up(self.failed, Stop::Deadline)),
                },
            };
            match step {
                Step::Done(mut response) => {
                    self.count_failover(&response);
                    if let Some(resume) = self.resumable(&response) {
                        response.body_mut().resume(resume);
                    }
                    return Ok(response);
                }
                Step::Retry(failure, endpoint) => self.failed(failure, endpoint),
                Step::Fail(error) => return Err(give_up(self.failed, Stop::Error(error))),
            }
        }
    }

    /// Counts a fail-over if `response` came from another tier than the first failed attempt.
    fn count_failover<RB>(&self, response: &Response<RB>) {
        let Some(served) = response.extensions().get::<Served>() else {
            return;
        };
        if self
            .first_tier
            .is_some_and(|tier| tier != served.endpoint().tier())
        {
            served.endpoint().layer_events().failed_over();
        }
    }

    /// What the body needs to continue a broken stream elsewhere, if a policy is set and the
    /// request's body gives its bytes.
    fn resumable<RB>(&self, response: &Response<ResponseBody<RB>>) -> Option<Resume<RB>>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        S::Future: Send,
        RB: Body + Send + 'static,
    {
        let policy = self.settings.continuation.clone()?;
        let original = self.template.as_ref()?.bytes()?;
        let (service, head) = (self.service.clone(), self.head.clone());
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
            .map(|s| Arc::clone(s.endpoint()));
        Some(Resume {
            policy,
            original,
            streamed: Vec::new(),
            exclude: self.exclude.clone(),
            endpoint,
            reconnect,
            budget: Arc::clone(&self.settings.budget),
            left: self.settings.attempts.saturating_sub(1),
            pending: None,
        })
    }
}

/// One attempt, hedged if so configured: `hedge_copy` is the second service and body.
async fn attempt<S, B, RB>(
    settings: &Settings,
    (service, body): (S, B),
    hedge_copy: Option<(S, B)>,
    head: &Head,
    exclude: &Exclude,
) -> Step<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body + Judged + Unpin,
    RB::Error: Into<BoxError>,
{
    let Some(hedge) = settings.hedge else {
        return call(settings, service, head.request(body, exclude, None), None).await;
    };
    let picked = Picked::new();
    let first = call(
        settings,
        service,
        head.request(body, exclude, Some(&picked)),
        Some(&picked),
    );
    hedge::race(&settings.latencies, hedge, first, || {
        // Slow: send a copy elsewhere, if the body and the budget allow.
        let (service, copy) = hedge_copy?;
        let events = picked.get().map(|e| e.layer_events());
        if !settings.budget.withdraw() {
            events.inspect(|events| events.budget_exhausted());
            return None;
        }
        events.inspect(|events| events.hedged());
        let mut elsewhere = exclude.clone();
        if let Some(endpoint) = picked.get() {
            elsewhere.insert(endpoint);
        }
        tracing::debug!(endpoint = ?picked.get().map(|e| e.key()), "hedging a slow attempt");
        Some(call(
            settings,
            service,
            head.request(copy, &elsewhere, None),
            None,
        ))
    })
    .await
}

/// One call, judged; a success is held until its first chunk when the layer waits for one.
async fn call<S, B, RB>(
    settings: &Settings,
    service: S,
    mut request: Request<B>,
    picked: Option<&Picked>,
) -> Step<RB>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body + Judged + Unpin,
    RB::Error: Into<BoxError>,
{
    let Some(timeout) = settings.first_chunk else {
        return judge(oneshot(service, request).await, picked);
    };
    // The first chunk is judged here before the caller sees it: the body waits for that.
    request.extensions_mut().insert(FirstChunkJudged);
    match judge(oneshot(service, request).await, picked) {
        Step::Done(response) => first_chunk::wait(settings, response, timeout).await,
        step => step,
    }
}

/// Drives a service to readiness and calls it.
pub(crate) async fn oneshot<S: Service<R>, R>(
    mut service: S,
    request: R,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(request).await
}
