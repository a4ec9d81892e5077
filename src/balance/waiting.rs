//! A request waiting in the pool's queue ([`Waiting`]): its place, what it can use, and how
//! it claims a slot the queue takes for it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::choose::{Choice, Chooser, NoSlot};
use crate::{
    endpoint::{Endpoint, Grant, Place, Turn, Wants},
    error::{BoxError, Overloaded},
    hints::{Exclude, Hinted, Require},
    load::LoadGuard,
    pick::Filter,
};

pin_project! {
    /// A request waiting in the queue until a slot is taken for it, it finds one itself, or
    /// its wait times out.
    pub(super) struct Waiting<S, Req> {
        chooser: Chooser<S>,
        request: Option<Req>,
        place: Place,
        // Whether it has looked for a slot since it took its place: a slot released just
        // before is not offered to it, so it looks once.
        looked: bool,
        #[pin]
        sleep: Sleep,
        since: Instant,
    }
}

/// What a waiting request can use, room aside: an endpoint that takes traffic (a soft
/// ejection's too, as the pick does when nothing else can serve), meets its requirements and is
/// not excluded. The hints are copied: the request stays with its future.
pub(super) fn wants<R: Hinted>(request: &R) -> Wants {
    let hints = request.extensions();
    let require = hints.get::<Require>().cloned();
    let exclude = hints.get::<Exclude>().cloned();
    Box::new(move |e: &Endpoint| {
        let mut filter = Filter::new().include_held();
        if let Some(require) = &require {
            filter = filter.require(require);
        }
        if let Some(exclude) = &exclude {
            filter = filter.exclude(exclude);
        }
        filter.serves(e)
    })
}

impl<S: Clone, Req: Hinted> Waiting<S, Req> {
    pub(super) fn new(chooser: Chooser<S>, request: Req, place: Place, timeout: Sleep) -> Self {
        Self {
            chooser,
            request: Some(request),
            place,
            looked: false,
            sleep: timeout,
            since: Instant::now(),
        }
    }

    /// Waits for a slot: what was chosen, and the request to send (told the model to send it
    /// as, for an alias).
    pub(super) fn poll_slot(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Choice<S>, Req), BoxError>> {
        let this = self.project();
        loop {
            let request = this.request.as_ref().expect("polled after completion");
            match this.place.poll_turn(cx) {
                Turn::Granted(grant) => match this.chooser.claim(grant, request) {
                    Some(mut choice) => {
                        let mut request = this.request.take().expect("polled after completion");
                        choice.tell(&mut request);
                        return Poll::Ready(Ok((choice, request)));
                    }
                    None => continue, // its endpoint left the pool meanwhile
                },
                Turn::TimerFired => {
                    this.chooser.offer_due();
                    continue;
                }
                Turn::Waiting => {}
            }
            if !*this.looked {
                *this.looked = true;
                match this.chooser.try_pick(request, Some(this.place)) {
                    Ok(mut choice) => {
                        let mut request = this.request.take().expect("polled after completion");
                        choice.tell(&mut request);
                        return Poll::Ready(Ok((choice, request)));
                    }
                    Err(NoSlot::Unavailable(e)) => return Poll::Ready(Err(e)),
                    Err(NoSlot::AllFull | NoSlot::Quota(_)) => {}
                }
            }
            if this.sleep.poll(cx).is_ready() {
                let waited = this.since.elapsed();
                return Poll::Ready(Err(Overloaded::new(Some(waited)).into()));
            }
            return Poll::Pending;
        }
    }
}

impl<S: Clone> Chooser<S> {
    /// The service of the endpoint a slot was taken on, and the slot as a load guard; `None`
    /// if the endpoint has left the pool (the slot is released).
    fn claim<R: Hinted>(&self, grant: Grant, request: &R) -> Option<Choice<S>> {
        let snapshot = self.pool.load();
        let entry = snapshot
            .entries()
            .iter()
            .find(|e| std::sync::Arc::ptr_eq(e.endpoint(), grant.endpoint()))?;
        let service = entry.service().clone();
        let (endpoint, cost, trial, reservation) = grant.claim();
        let mut guard = LoadGuard::granted(endpoint, cost, Instant::now(), trial);
        guard.hold_quota(reservation);
        let hints = request.extensions();
        let mut choice = self.picked(hints, (service, guard));
        if let Some(require) = hints.get::<Require>() {
            // An alias is sent as the model the granted endpoint serves.
            choice.serve_as = require.serve_as(choice.guard.endpoint()).cloned();
        }
        Some(choice)
    }

    /// The queue's timer went off: offers the endpoints whose ejection or cooldown has ended,
    /// whose saturated load report has gone stale, or whose quota has room again, and sets the
    /// timer for the next one.
    fn offer_due(&self) {
        let now = Instant::now();
        let snapshot = self.pool.load();
        let queue = self.pool.waiters();
        let mut next: Option<Instant> = None;
        for entry in snapshot.entries() {
            let e = entry.endpoint();
            // Able to serve once its ejection or cooldown, its saturated report and its
            // spent quota are over.
            let held = match (e.available_at(), e.saturated_until(now)) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let quota = if e.has_quota() {
                e.quota_returns(now)
            } else {
                None
            };
            let at = match (held, quota) {
                (Some(a), Some(q)) => a.max(q),
                (a, q) => match a.or(q) {
                    Some(at) => at,
                    None => {
                        // Nothing holds it back now: a saturated report of its may have just
                        // gone stale, or its quota refilled.
                        queue.offer(e);
                        continue;
                    }
                },
            };
            if at <= now {
                queue.offer(e);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if let Some(at) = next {
            queue.note_time(at);
        }
    }
}
