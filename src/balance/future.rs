use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};
use tower_service::Service;

use super::{service::Miss, Balance, Queue};
use crate::{
    endpoint::Capacity,
    error::{BoxError, EndpointError, Overloaded, Timeout},
    hints::Hinted,
    load::{LoadGuard, TrackLoad},
    sync::Ordering::SeqCst,
};

pin_project! {
    /// The response future of [`Balance`].
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
        Ready {
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

pin_project! {
    /// A request waiting in the capacity queue: boxed, so that the common path's future stays
    /// small.
    struct Waiting<S, Req> {
        balance: Balance<S>,
        request: Option<Req>,
        #[pin]
        notified: OwnedNotified,
        armed: bool,
        #[pin]
        sleep: Sleep,
        since: Instant,
        slot: WaitSlot,
    }
}

/// A place in the capacity queue, given back on drop.
struct WaitSlot(Arc<Capacity>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, SeqCst);
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
                error: Some(fail(&mut Some(guard), e.into())),
            },
            Poll::Pending => State::Ready {
                service,
                request: Some(Box::new(request)),
                guard: Some(guard),
            },
        };
        Self {
            state,
            deadline: None,
            timeout,
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            deadline: None,
            timeout: None,
        }
    }

    pub(crate) fn queued(balance: Balance<S>, request: Req, queue: Queue) -> Self {
        let timeout = balance.timeout();
        let capacity = Arc::clone(balance.pool().capacity());
        if capacity.waiting.fetch_add(1, SeqCst) >= queue.max_waiting {
            capacity.waiting.fetch_sub(1, SeqCst);
            return Self::failed(Overloaded::new(None).into());
        }
        Self {
            state: State::Queued {
                waiting: Box::pin(Waiting {
                    notified: Arc::clone(&capacity.notify).notified_owned(),
                    slot: WaitSlot(capacity),
                    balance,
                    request: Some(request),
                    armed: false,
                    sleep: tokio::time::sleep(queue.timeout),
                    since: Instant::now(),
                }),
            },
            deadline: None,
            timeout,
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
        loop {
            match state.as_mut().project() {
                StateProj::Queued { waiting } => {
                    let mut w = waiting.as_mut().project();
                    // Arm the wake-up before looking, so a slot freed in between is not missed.
                    if !*w.armed {
                        w.notified.as_mut().enable();
                        *w.armed = true;
                    }
                    let req = w.request.as_ref().expect("polled after completion");
                    match w.balance.try_pick(req) {
                        Ok((service, guard)) => {
                            let request = w.request.take().map(Box::new);
                            state.set(State::Ready {
                                service,
                                request,
                                guard: Some(guard),
                            });
                            continue;
                        }
                        Err(Miss::Unavailable(e)) => return Poll::Ready(Err(e)),
                        Err(Miss::Full) => {}
                    }
                    if w.sleep.poll(cx).is_ready() {
                        let waited = w.since.elapsed();
                        return Poll::Ready(Err(Overloaded::new(Some(waited)).into()));
                    }
                    ready!(w.notified.as_mut().poll(cx));
                    let capacity = w.balance.pool().capacity();
                    w.notified
                        .set(Arc::clone(&capacity.notify).notified_owned());
                    *w.armed = false;
                }
                StateProj::Ready {
                    service,
                    request,
                    guard,
                } => {
                    let readiness = match service.poll_ready(cx) {
                        Poll::Ready(r) => r,
                        Poll::Pending => return timed_out(deadline, timeout, guard, cx),
                    };
                    if let Err(e) = readiness {
                        return Poll::Ready(Err(fail(guard, e.into())));
                    }
                    let future = service.call(*request.take().expect("polled after completion"));
                    let guard = guard.take();
                    state.set(State::Calling { future, guard });
                }
                StateProj::Calling { future, guard } => {
                    let Poll::Ready(result) = future.poll(cx) else {
                        return timed_out(deadline, timeout, guard, cx);
                    };
                    return Poll::Ready(match result {
                        Ok(response) => {
                            Ok(response.track(guard.take().expect("polled after completion")))
                        }
                        Err(e) => Err(fail(guard, e.into())),
                    });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

/// While the endpoint has not answered: fails the attempt if its deadline has passed.
fn timed_out<T>(
    deadline: &mut Option<Pin<Box<Sleep>>>,
    timeout: Option<Duration>,
    guard: &mut Option<LoadGuard>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>> {
    let (Some(after), Some(held)) = (timeout, guard.as_ref()) else {
        return Poll::Pending;
    };
    let sleep =
        deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(held.started() + after)));
    if sleep.as_mut().poll(cx).is_ready() {
        return Poll::Ready(Err(fail(guard, Timeout::new(after).into())));
    }
    Poll::Pending
}

/// Records the failure on the endpoint, releases its slot, and names it in the error.
fn fail(guard: &mut Option<LoadGuard>, error: BoxError) -> BoxError {
    let mut guard = guard.take().expect("polled after completion");
    guard.fail();
    let endpoint = Arc::clone(guard.endpoint());
    guard.complete();
    EndpointError::new(endpoint, error).into()
}
