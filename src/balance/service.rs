use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower_service::Service;

use super::{BalanceLayer, ResponseFuture};
use crate::{
    capability::Unsatisfiable,
    error::{BoxError, NoEndpoints, Overloaded},
    hints::{Affinity, Cost, Exclude, Hinted, Picked, Require},
    load::{LoadGuard, TrackLoad},
    pick::{self, Filter},
    pool::{Pool, Snapshot},
    rng::ThreadRng,
};

/// How often a pick is retried when its endpoint filled up between the choice and the slot.
const ACQUIRE_TRIES: usize = 3;

/// Balances requests over a [`Pool`]. See the [module docs](crate::balance).
pub struct Balance<S> {
    pool: Pool<S>,
    config: Arc<BalanceLayer>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("pool", &self.pool)
            .field("config", &self.config)
            .finish()
    }
}

/// Why no slot was taken.
pub(crate) enum Miss {
    /// Some endpoint could serve, but all such are at their concurrency limit.
    Full,
    /// No endpoint can serve this request ([`NoEndpoints`] or [`Unsatisfiable`]).
    Unavailable(BoxError),
}

impl<S: Clone> Balance<S> {
    /// Balances over `pool` with the default settings of [`BalanceLayer::new`].
    pub fn new(pool: Pool<S>) -> Self {
        Self::with_config(pool, BalanceLayer::new())
    }

    pub(crate) fn with_config(pool: Pool<S>, config: BalanceLayer) -> Self {
        Self {
            pool,
            config: Arc::new(config),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<S> {
        &self.pool
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.config.timeout
    }

    /// Picks an endpoint for `request` and takes a slot on it without calling it, for callers
    /// that route by themselves (a WebSocket upgrade, a custom transport). The slot is held
    /// until the guard is completed or dropped. Fails with
    /// [`NoEndpoints`] or [`Overloaded`]; never waits.
    pub fn pick<R: Hinted>(&self, request: &R) -> Result<(S, LoadGuard), BoxError> {
        self.try_pick(request).map_err(|miss| match miss {
            Miss::Full => Overloaded::new(None).into(),
            Miss::Unavailable(e) => e,
        })
    }

    /// The hot path: pick in the lowest tier that has room, and take a slot.
    pub(crate) fn try_pick<R: Hinted>(&self, request: &R) -> Result<(S, LoadGuard), Miss> {
        let all = self.pool.load();
        if all.is_empty() {
            return Err(Miss::Unavailable(NoEndpoints::empty().into()));
        }
        let hints = request.extensions();
        let cost = hints.get::<Cost>().map_or(1, |c| c.0);
        let affinity = hints.get::<Affinity>();
        let require = hints.get::<Require>();
        // One clock read serves the whole pick: the health of an endpoint whose ejection may
        // have ended, and the start of the request's timing.
        let mut filter = Filter::new().cost(cost).at(Instant::now());
        if let Some(exclude) = hints.get::<Exclude>() {
            filter = filter.exclude(exclude);
        }
        // A model's endpoints are precomputed: the pick never draws one without it.
        let snapshot = match require {
            Some(r) => {
                filter = filter.require(r);
                r.model.as_deref().map_or(&**all, |m| all.for_model(m))
            }
            None => &**all,
        };
        if let Some(picked) = self.pick_in(snapshot, &filter, affinity, LoadGuard::acquire_at) {
            self.pool.note_panic(false);
            return Ok(self.picked(hints, picked));
        }
        // Endpoints held back by a soft ejection serve only when nothing else can.
        let filter = filter.include_held();
        if let Some(picked) = self.pick_in(snapshot, &filter, affinity, LoadGuard::acquire_at) {
            return Ok(self.picked(hints, picked));
        }
        if let Some(unmet) = require.and_then(|r| unsatisfiable(&all, r)) {
            return Err(Miss::Unavailable(unmet.into()));
        }
        match miss(snapshot, &filter) {
            Miss::Unavailable(_) if self.pool.panic_routing() => {
                // Health leaves nothing: route to every endpoint rather than fail everything.
                let filter = filter.ignore_health();
                let picked = self.pick_in(snapshot, &filter, affinity, LoadGuard::acquire_any_at);
                self.pool.note_panic(picked.is_some());
                picked
                    .map(|p| self.picked(hints, p))
                    .ok_or_else(|| miss(snapshot, &filter))
            }
            miss => Err(miss),
        }
    }

    /// Arms the slot with the idle timeout and tells a `Picked` cell where the request goes.
    #[inline]
    fn picked(
        &self,
        hints: &http::Extensions,
        (service, mut guard): (S, LoadGuard),
    ) -> (S, LoadGuard) {
        guard.idle_timeout = self.config.idle_timeout;
        tracing::debug!(
            endpoint = %guard.endpoint().key(),
            tier = guard.endpoint().tier(),
            in_flight = guard.endpoint().in_flight(),
            why = if hints.get::<Affinity>().is_some() { "affinity" } else { self.config.strategy.describe() },
            "picked"
        );
        if let Some(cell) = hints.get::<Picked>() {
            cell.set(guard.endpoint());
        }
        (service, guard)
    }

    /// Picks in the lowest tier with an eligible endpoint that has room, and takes a slot.
    #[inline]
    fn pick_in(
        &self,
        snapshot: &Snapshot<S>,
        filter: &Filter<'_>,
        affinity: Option<&Affinity>,
        acquire: fn(&Arc<crate::Endpoint>, u64, Instant) -> Option<LoadGuard>,
    ) -> Option<(S, LoadGuard)> {
        for (entries, max_weight) in snapshot.weighted_tiers() {
            let weighted;
            let filter = match max_weight {
                Some(max) => {
                    weighted = filter.clone().sample_by_weight(max);
                    &weighted
                }
                None => filter,
            };
            for _ in 0..ACQUIRE_TRIES {
                let picked = match affinity {
                    Some(affinity) => pick::affine(entries, filter, affinity),
                    None => self.config.strategy.pick(
                        entries,
                        filter,
                        self.pool.cursor(),
                        &mut ThreadRng,
                    ),
                };
                let Some(i) = picked else {
                    break; // nothing eligible in this tier: try the next
                };
                let entry = &entries[i];
                if let Some(guard) = acquire(entry.endpoint(), filter.cost, filter.now()) {
                    return Some((entry.service().clone(), guard));
                }
            }
        }
        None
    }
}

/// The cold path after a failed pick: is it capacity, or availability?
fn miss<S>(snapshot: &Snapshot<S>, filter: &Filter<'_>) -> Miss {
    let mut back: Option<Instant> = None;
    for entry in snapshot.entries() {
        let e = entry.endpoint();
        if filter.serves(e) {
            return Miss::Full;
        }
        if e.weight() > 0.0 && !e.is_removed() {
            if let Some(at) = e.available_at() {
                back = Some(back.map_or(at, |b| b.min(at)));
            }
        }
    }
    let now = filter.now();
    Miss::Unavailable(
        NoEndpoints::unavailable(back.map(|at| at.saturating_duration_since(now))).into(),
    )
}

/// When no endpoint in the pool meets the requirements, whatever its health or load: which.
fn unsatisfiable<S>(all: &Snapshot<S>, require: &Require) -> Option<Unsatisfiable> {
    let endpoints = all.entries().iter().map(|e| &**e.endpoint());
    if endpoints.clone().any(|e| require.admits(e)) {
        return None;
    }
    Some(Unsatisfiable::new(require.unmet(endpoints)))
}

impl<S, Req> Service<Req> for Balance<S>
where
    Req: Hinted,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: TrackLoad,
{
    type Response = <S::Response as TrackLoad>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per endpoint: the response future drives the picked one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.try_pick(&request) {
            Ok((service, guard)) => {
                ResponseFuture::ready(service, guard, request, self.config.timeout)
            }
            Err(Miss::Full) => match self.config.queue {
                Some(queue) => ResponseFuture::queued(self.clone(), request, queue),
                None => ResponseFuture::failed(Overloaded::new(None).into()),
            },
            Err(Miss::Unavailable(e)) => ResponseFuture::failed(e),
        }
    }
}
