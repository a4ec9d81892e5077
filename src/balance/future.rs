//! [`ResponseFuture`]: a request from its pick (or its wait in the queue) through the
//! endpoint's readiness and call to its response, within the per-attempt timeout.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{
    choose::Chooser,
    waiting::{wants, Waiting},
    Queue,
};
use crate::{
    clock::later,
    error::{BoxError, EndpointError, Overloaded, Timeout},
    hints::{AttemptTimeout, Cost, Hinted, Tokens},
    load::{Completion, LoadGuard, TrackLoad},
};

pin_project! {
    /// The response future of [`Balance`](super::Balance).
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        // With a per-attempt timeout, made when the endpoint first leaves the request waiting,
        // for the pick's time plus the timeout: a request answered at once reads no clock and
        // registers no timer, and the future stays small.
        deadline: Option<Pin<Box<Sleep>>>,
        timeout: Option<Duration>,
        completion: Option<Arc<Completion>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Queued {
            waiting: Pin<Box<Waiting<S, Req>>>,
        },
        // Picked, but the endpoint's service was not ready when called: the request waits
        // (boxed, as the rare case) until it is.
        AwaitingService {
            service: S,
            request: Option<Box<Req>>,
            guard: Option<LoadGuard>,
        },
        Calling {
            #[pin]
            future: S::Future,
            guard: Option<LoadGuard>,
        },
        Failed {
            error: Option<BoxError>,
        },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, Req> ResponseFuture<S, Req>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    pub(crate) fn ready(
        mut service: S,
        guard: LoadGuard,
        request: Req,
        timeout: Option<Duration>,
        completion: Arc<Completion>,
    ) -> Self {
        // Most endpoint services are always ready (a hyper client is): call at once rather
        // than hold the request. A `Pending` here is polled again with the task's own waker.
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let state = match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => State::Calling {
                future: service.call(request),
                guard: Some(guard),
            },
            Poll::Ready(Err(e)) => State::Failed {
                error: Some(fail(&mut Some(guard), e.into(), &completion)),
            },
            Poll::Pending => State::AwaitingService {
                service,
                request: Some(Box::new(request)),
                guard: Some(guard),
            },
        };
        Self {
            state,
            deadline: None,
            timeout,
            completion: Some(completion),
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            deadline: None,
            timeout: None,
            completion: None,
        }
    }

    /// Takes a place at the back of the pool's queue, where the request waits (boxed, so that
    /// the common path's future stays small).
    pub(crate) fn queued(
        chooser: Chooser<S>,
        request: Req,
        queue: Queue,
        completion: Arc<Completion>,
    ) -> Self
    where
        Req: Hinted,
    {
        let timeout = attempt_timeout(&request, chooser.config.timeout);
        let cost = request.extensions().get::<Cost>().map_or(1, |c| c.0);
        let tokens = request.extensions().get::<Tokens>().copied();
        let Some(place) =
            chooser
                .pool
                .waiters()
                .join(queue.max_waiting, cost, tokens, wants(&request))
        else {
            return Self::failed(Overloaded::new(None).into());
        };
        let sleep = tokio::time::sleep_until(later(Instant::now(), queue.timeout));
        Self {
            state: State::Queued {
                waiting: Box::pin(Waiting::new(chooser, request, place, sleep)),
            },
            deadline: None,
            timeout,
            completion: Some(completion),
        }
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    Req: Hinted,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: TrackLoad,
{
    type Output = Result<<S::Response as TrackLoad>::Output, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        let deadline = this.deadline;
        let timeout = *this.timeout;
        let completion = this.completion;
        loop {
            match state.as_mut().project() {
                StateProj::Queued { waiting } => {
                    let (choice, request) = ready!(waiting.as_mut().poll_slot(cx))?;
                    state.set(State::AwaitingService {
                        service: choice.service,
                        request: Some(Box::new(request)),
                        guard: Some(choice.guard),
                    });
                }
                StateProj::AwaitingService {
                    service,
                    request,
                    guard,
                } => {
                    let c = completion.as_ref().expect("polled after completion");
                    let readiness = match service.poll_ready(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => {
                            let Some(after) = expired(deadline, timeout, guard, cx) else {
                                return Poll::Pending;
                            };
                            let mut guard = guard.take();
                            state.set(State::Failed { error: None });
                            let timeout = Timeout::before_sending(after);
                            return Poll::Ready(Err(fail(&mut guard, timeout.into(), c)));
                        }
                    };
                    if let Err(e) = readiness {
                        return Poll::Ready(Err(fail(guard, e.into(), c)));
                    }
                    let future = service.call(*request.take().expect("polled after completion"));
                    let guard = guard.take();
                    state.set(State::Calling { future, guard });
                }
                StateProj::Calling { future, guard } => {
                    let c = completion.as_ref().expect("polled after completion");
                    let Poll::Ready(result) = future.poll(cx) else {
                        let Some(after) = expired(deadline, timeout, guard, cx) else {
                            return Poll::Pending;
                        };
                        // The call is dropped before its slot is released: a request given
                        // the slot must not start while this one may still run upstream.
                        let mut guard = guard.take();
                        state.set(State::Failed { error: None });
                        let timeout = Timeout::new(after);
                        return Poll::Ready(Err(fail(&mut guard, timeout.into(), c)));
                    };
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let guard = guard.take().expect("polled after completion");
                            Ok(response.track(guard, c))
                        }
                        Err(e) => Err(fail(guard, e.into(), c)),
                    });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

/// While the endpoint has not answered: the per-attempt timeout, if it has passed.
fn expired(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    timeout: Option<Duration>,
    guard: &Option<LoadGuard>,
    cx: &mut Context<'_>,
) -> Option<Duration> {
    let (Some(after), Some(held)) = (timeout, guard.as_ref()) else {
        return None;
    };
    let sleep = deadline
        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(later(held.started(), after))));
    sleep.as_mut().poll(cx).is_ready().then_some(after)
}

/// Judges the error with the stack's classifier, records it on the endpoint, releases its
/// slot, and names the endpoint and the verdict in the error.
fn fail(guard: &mut Option<LoadGuard>, error: BoxError, completion: &Completion) -> BoxError {
    let mut guard = guard.take().expect("polled after completion");
    // No response: the upstream did not count it.
    guard.release_quota();
    let verdict = completion.classify.classify_error(&*error);
    guard.judge(verdict);
    let endpoint = Arc::clone(guard.endpoint());
    let sent = guard.started();
    guard.complete();
    EndpointError::new(endpoint, error, verdict)
        .sent_at(sent)
        .into()
}

/// The request's own [`AttemptTimeout`], or the layer's.
pub(super) fn attempt_timeout<R: Hinted>(request: &R, layer: Option<Duration>) -> Option<Duration> {
    match request.extensions().get::<AttemptTimeout>() {
        Some(own) => Some(own.0),
        None => layer,
    }
}
