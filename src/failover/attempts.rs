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
    body::Resume,
    first_chunk, hedge,
    reconnect::reconnect,
    replay::Head,
    settings::Settings,
    step::{judge, timed_out_after_sending, Failed, Step},
    Replay, ResponseBody,
};
use crate::{
    clock::later,
    endpoint::Endpoint,
    error::{
        Attempt, AttemptFailure, AttemptsFailed, BoxError, EndpointError, GaveUp, NoEndpoints,
        NotReplayable, Overloaded, QuotaExhausted, RateLimited,
    },
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

impl Stop {
    /// Whether the request stops without sending another attempt anywhere: no attempt, budget
    /// or replayable body left, or nowhere left to send one (every endpoint excluded, cooling
    /// down or full).
    fn sent_nothing_more(&self) -> bool {
        match self {
            Stop::Attempts | Stop::Budget | Stop::NotReplayable => true,
            Stop::Deadline => false,
            Stop::Error(e) => nowhere_to_send(e),
        }
    }
}

/// Whether `error` says that no endpoint the attempt may use can serve it now: none left,
/// every one cooling down, full or out of quota.
fn nowhere_to_send(e: &BoxError) -> bool {
    e.is::<NoEndpoints>()
        || e.is::<RateLimited>()
        || e.is::<Overloaded>()
        || e.is::<QuotaExhausted>()
}

/// What a request that gives up comes to: the error, with what it stopped for and every
/// failed attempt; or, where exactly one attempt was made, it was rate-limited and nothing
/// else could be tried, the upstream's own answer (`answer`), as the caller would have had it
/// without `Failover`: the provider's status, body and rate-limit headers.
pub(crate) fn give_up<RB: Body>(
    failed: Vec<Attempt>,
    answer: Option<Response<ResponseBody<RB>>>,
    stop: Stop,
) -> Result<Response<ResponseBody<RB>>, BoxError> {
    match answer {
        Some(answer) if failed.len() == 1 && stop.sent_nothing_more() => Ok(answer),
        _ => Err(gave_up(failed, stop)),
    }
}

/// The error a request that gives up returns: what it stopped for, with every failed attempt.
fn gave_up(failed: Vec<Attempt>, stop: Stop) -> BoxError {
    let gave_up = match stop {
        Stop::Attempts => GaveUp::Attempts,
        Stop::Budget => GaveUp::Budget,
        Stop::Deadline => GaveUp::Deadline,
        Stop::NotReplayable => return NotReplayable::new(failed).into(),
        Stop::Error(error) if failed.is_empty() => return error,
        Stop::Error(error) if sent_and_timed_out(&error) => {
            // Not retried, but the attempts before it are named with it.
            let mut failed = failed;
            failed.push(Attempt {
                endpoint: error
                    .downcast_ref::<EndpointError>()
                    .map(|e| e.endpoint().key().clone()),
                failure: AttemptFailure::Error(error),
            });
            return AttemptsFailed::new(failed, GaveUp::TimedOutAfterSending, None).into();
        }
        Stop::Error(error) => {
            // Every endpoint left was tried, or none can serve: say when one comes back.
            let back = if let Some(no_endpoints) = error.downcast_ref::<NoEndpoints>() {
                no_endpoints.retry_after()
            } else if let Some(limited) = error.downcast_ref::<RateLimited>() {
                Some(limited.retry_after())
            } else if let Some(quota) = error.downcast_ref::<QuotaExhausted>() {
                Some(quota.retry_after())
            } else {
                return error;
            };
            return AttemptsFailed::new(failed, GaveUp::NoEndpoints, back).into();
        }
    };
    AttemptsFailed::new(failed, gave_up, None).into()
}

/// Whether `error` is a per-attempt timeout after the request was sent.
fn sent_and_timed_out(error: &BoxError) -> bool {
    error
        .downcast_ref::<EndpointError>()
        .is_some_and(timed_out_after_sending)
}

/// A request's attempts after (or from) the first: what each needs, and what failed so far.
pub(crate) struct Attempts<S, B, RB: Body> {
    settings: Arc<Settings>,
    /// The inner service, cloned for each attempt.
    service: S,
    head: Head,
    /// The body each attempt sends a copy of.
    template: Option<B>,
    exclude: Exclude,
    failed: Vec<Attempt>,
    /// The highest tier of an endpoint that failed an attempt.
    tier_tried: Option<u32>,
    /// Attempts made and failed: a hedged attempt whose two calls both failed counts once.
    made: usize,
    /// The only failed attempt's own answer to a rate limit, while it is the only one.
    answer: Option<Response<ResponseBody<RB>>>,
    deadline: Option<Instant>,
    /// The tier of the first failed attempt's endpoint, to count a fail-over to another.
    first_tier: Option<u32>,
    /// The last failed attempt's endpoint: the retries are counted in its pool.
    last: Option<Arc<Endpoint>>,
}

impl<S, B, RB> Attempts<S, B, RB>
where
    B: Replay,
    RB: Body,
{
    /// Before the first attempt, which the caller sends: the deadline starts now.
    pub(crate) fn new(
        settings: Arc<Settings>,
        service: S,
        head: Head,
        template: Option<B>,
    ) -> Self {
        let deadline = settings.deadline.map(|d| later(Instant::now(), d));
        let exclude = head.exclude();
        Self {
            settings,
            service,
            head,
            template,
            exclude,
            failed: Vec::new(),
            made: 0,
            tier_tried: None,
            answer: None,
            deadline,
            first_tier: None,
            last: None,
        }
    }

    /// Records failed attempts: their endpoints are excluded from the next.
    pub(crate) fn failed(&mut self, failed: Vec<Failed<RB>>) {
        self.made += 1;
        for Failed {
            attempt,
            endpoint,
            answer,
        } in failed
        {
            if let Some(endpoint) = endpoint {
                self.exclude.insert(&endpoint);
                self.tier_tried = self.tier_tried.max(Some(endpoint.tier()));
                if self.failed.is_empty() {
                    self.first_tier = Some(endpoint.tier());
                }
                self.last = Some(endpoint);
            }
            tracing::debug!(attempt = self.failed.len() + 1, endpoint = ?attempt.endpoint, "attempt failed; failing over");
            self.failed.push(attempt);
            self.answer = answer.filter(|_| self.failed.len() == 1);
        }
    }

    /// Gives up for `stop`: see [`give_up`].
    fn give_up(self, stop: Stop) -> Result<Response<ResponseBody<RB>>, BoxError> {
        give_up(self.failed, self.answer, stop)
    }
}

impl<S, B, RB> Attempts<S, B, RB>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    B: Replay + Send + 'static,
    RB: Body,
{
    /// The service and body for the next attempt, or why there is none.
    fn next(&self) -> Result<(S, B), Stop> {
        let template = self.template.as_ref();
        let body = Stop::before_retry(self.settings.attempts, self.made, || {
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
    pub(crate) async fn run(
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
                Err(stop) => return self.give_up(stop),
            };
            // The last attempt allowed goes past the tiers tried, when a tier beyond serves.
            let past = self.past_tiers_tried();
            let exclude = past.as_ref().unwrap_or(&self.exclude);
            let hedge_copy = self.hedge_copy();
            let sent = send(self.sending(), (service, body), hedge_copy, exclude).await;
            let step = match sent {
                // No tier beyond serves (none there, or every one cooling down, full or out
                // of quota): the attempt stays in the tiers tried.
                Ok(Step::Fail(e)) if past.is_some() && nowhere_to_send(&e) => {
                    match self.template.as_ref().and_then(Replay::replay) {
                        None => Ok(Step::Fail(e)),
                        Some(body) => {
                            let first = (self.service.clone(), body);
                            let hedge_copy = self.hedge_copy();
                            send(self.sending(), first, hedge_copy, &self.exclude).await
                        }
                    }
                }
                sent => sent,
            };
            let step = match step {
                Ok(step) => step,
                Err(stop) => return self.give_up(stop),
            };
            match step {
                Step::Done(mut response) => {
                    self.count_failover(&response);
                    if let Some(resume) = self.resumable(&response) {
                        response.body_mut().resume(resume);
                    }
                    return Ok(response);
                }
                Step::Retry(failed) => self.failed(failed),
                Step::Fail(error) => return self.give_up(Stop::Error(error)),
            }
        }
    }

    /// The exclusion for the last attempt allowed, after one or more failed: the endpoints
    /// tried and every tier up to the highest they were in. Without it a dead tier takes every
    /// attempt (three endpoints refusing connections, three attempts) while the tier beyond
    /// could have served; with it, a retry before the last still stays in the tier, where one
    /// bad endpoint among good ones is retried on a good one.
    fn past_tiers_tried(&self) -> Option<Exclude> {
        let last = self.made >= 1 && self.made + 1 == self.settings.attempts;
        let tier = self.tier_tried.filter(|_| last)?;
        let mut past = self.exclude.clone();
        past.tiers_below(tier.checked_add(1)?);
        Some(past)
    }

    /// What every attempt is sent with.
    fn sending(&self) -> Sending<'_> {
        Sending {
            settings: &self.settings,
            head: &self.head,
            deadline: self.deadline,
            n: self.made + 1,
        }
    }

    /// The second service and copy of the body a hedge needs, made before waiting.
    fn hedge_copy(&self) -> Option<(S, B)> {
        self.settings
            .hedge
            .and_then(|_| self.template.as_ref().and_then(Replay::replay))
            .map(|copy| (self.service.clone(), copy))
    }

    /// Counts a fail-over if `response` came from another tier than the first failed attempt.
    fn count_failover<T>(&self, response: &Response<T>) {
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
    fn resumable(&self, response: &Response<ResponseBody<RB>>) -> Option<Resume<RB>>
    where
        S: Service<Request<B>, Response = Response<RB>>,
        S::Error: Into<BoxError>,
        S::Future: Send,
        RB: Body + Judged + Send + 'static,
    {
        let policy = self.settings.continuation.clone()?;
        let original = self.template.as_ref()?.bytes()?;
        let reconnect = reconnect(self.service.clone(), self.head.clone());
        let endpoint = response
            .extensions()
            .get::<Served>()
            .map(|s| Arc::clone(s.endpoint()));
        Some(Resume {
            policy,
            original,
            streamed: Vec::new(),
            truncated: false,
            exclude: self.exclude.clone(),
            endpoint,
            reconnect,
            budget: Arc::clone(&self.settings.budget),
            left: self.settings.attempts.saturating_sub(1),
            pending: None,
            broken: None,
        })
    }
}

/// What every attempt of a request is sent with (borrowed apart from the rest of
/// [`Attempts`], which need not be `Sync`).
struct Sending<'a> {
    settings: &'a Settings,
    head: &'a Head,
    deadline: Option<Instant>,
    /// The attempt's number, from 1.
    n: usize,
}

/// Sends one attempt (hedged if so configured) with `exclude`; `Err` when the overall
/// deadline passes first.
async fn send<S, B, RB>(
    sending: Sending<'_>,
    first: (S, B),
    hedge_copy: Option<(S, B)>,
    exclude: &Exclude,
) -> Result<Step<RB>, Stop>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    RB: Body + Judged + Unpin,
    RB::Error: Into<BoxError>,
{
    let span = if super::span_fields::spans_wanted() {
        tracing::debug_span!(
            "attempt",
            n = sending.n,
            excluded = exclude.len(),
            tier_floor = exclude.tier_floor(),
            "gen_ai.usage.input_tokens" = tracing::field::Empty,
            "gen_ai.usage.output_tokens" = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    let attempt =
        attempt(sending.settings, first, hedge_copy, sending.head, exclude).instrument(span);
    match sending.deadline {
        None => Ok(attempt.await),
        Some(at) => tokio::time::timeout_at(at, attempt)
            .await
            .map_err(|_| Stop::Deadline),
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
        let result = oneshot(service, request).await;
        return judge(result, picked, settings.retry_timeouts);
    };
    // The first chunk is judged here before the caller sees it: the body waits for that.
    request.extensions_mut().insert(FirstChunkJudged);
    let result = oneshot(service, request).await;
    match judge(result, picked, settings.retry_timeouts) {
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
