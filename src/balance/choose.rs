//! The pick: read the hints and the pool, choose in the lowest tier that has room, and take a
//! slot. [`Chooser`] is what `Balance` and a queued request pick with.

use std::sync::Arc;

use tokio::time::Instant;

use super::config::Config;
use crate::{
    capability::Unsatisfiable,
    endpoint::{Endpoint, Place, Reservation, Tokens},
    error::{BoxError, NoEndpoints, Overloaded, QuotaExhausted, RateLimited},
    hints::{Affinity, Cost, Exclude, FirstChunkJudged, Hinted, Picked, Require, ServeAs},
    load::LoadGuard,
    pick::{affine, Filter},
    pool::{Pool, Snapshot},
    prefix::{PrefixPolicy, PromptBlocks},
    rng::ThreadRng,
};

/// How often a pick is retried when its endpoint filled up between the choice and the slot.
const ACQUIRE_TRIES: usize = 3;

/// Why no slot was taken.
pub(crate) enum NoSlot {
    /// Some endpoint could serve, but all such are at their concurrency limit.
    AllFull,
    /// Some endpoint could serve, but every such one has spent its quota until the instant
    /// given (for a request of this size), if none is merely full.
    Quota(Instant),
    /// No endpoint can serve this request ([`NoEndpoints`], [`RateLimited`] or
    /// [`Unsatisfiable`]).
    Unavailable(BoxError),
}

impl NoSlot {
    /// The error for a request that cannot wait.
    pub(crate) fn into_error(self) -> BoxError {
        match self {
            NoSlot::AllFull => Overloaded::new(None).into(),
            NoSlot::Quota(at) => {
                QuotaExhausted::new(at.saturating_duration_since(Instant::now())).into()
            }
            NoSlot::Unavailable(e) => e,
        }
    }
}

/// A pool and how to pick from it.
#[derive(Debug)]
pub(crate) struct Chooser<S> {
    pub(crate) pool: Pool<S>,
    pub(crate) config: Arc<Config>,
}

impl<S> Clone for Chooser<S> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

/// Takes a slot: with health's trial permits, or whatever the health (panic mode).
pub(super) type Acquire = fn(&Arc<Endpoint>, u64, Instant) -> Option<LoadGuard>;

/// What a pick took: the endpoint's service, the slot, and, for a request sent as another
/// model than it names (an alias), that model.
pub(crate) struct Choice<S> {
    pub(crate) service: S,
    pub(crate) guard: LoadGuard,
    pub(crate) serve_as: Option<Arc<str>>,
}

impl<S> Choice<S> {
    /// Tells the endpoint's service the model to send the request as, if it is renamed.
    #[inline]
    pub(crate) fn tell<R: Hinted>(&mut self, request: &mut R) {
        if let Some(model) = self.serve_as.take() {
            request.extensions_mut().insert(ServeAs(model));
        }
    }
}

/// How a request is picked, from its hints: by its affinity key, by its prompt's cached
/// prefix, or by the configured strategy.
#[derive(Clone, Copy)]
pub(super) enum How<'a> {
    Affinity(&'a Affinity),
    Prefix(&'a PrefixPolicy, &'a PromptBlocks),
    Strategy,
}

impl<S: Clone> Chooser<S> {
    /// The hot path: pick in the lowest tier that has room, and take a slot, unless a request
    /// waiting ahead of this one (of `place`, for a request in the queue) could use it: first
    /// come, first served. Then the slot goes to that request, and this one must wait.
    #[inline]
    pub(crate) fn try_pick<R: Hinted>(
        &self,
        request: &R,
        place: Option<&Place>,
    ) -> Result<Choice<S>, NoSlot> {
        let choice = self.choose(request)?;
        let queue = self.pool.waiters();
        if queue.is_waiting() && queue.wanted_ahead(choice.guard.endpoint(), place) {
            // Dropping the slot offers it to the queue, whose oldest waiter that can use it
            // takes it.
            return Err(NoSlot::AllFull);
        }
        Ok(choice)
    }

    /// Picks in the lowest tier that has room, and takes a slot.
    fn choose<R: Hinted>(&self, request: &R) -> Result<Choice<S>, NoSlot> {
        let all = self.pool.load();
        if all.is_empty() {
            return Err(NoSlot::Unavailable(NoEndpoints::empty().into()));
        }
        let hints = request.extensions();
        let affinity = hints.get::<Affinity>();
        // Each look-up in a map that is not empty hashes and probes: a request whose one hint
        // is its affinity (what `StreamAffinity` hands on) skips the look-ups for the others.
        let others = (hints.len() > usize::from(affinity.is_some())).then_some(hints);
        let cost = others.and_then(|h| h.get::<Cost>()).map_or(1, |c| c.0);
        let how = match (affinity, &self.config.prefix) {
            (Some(affinity), _) => How::Affinity(affinity),
            (None, Some(policy)) => others
                .and_then(|h| h.get::<PromptBlocks>())
                .map_or(How::Strategy, |blocks| How::Prefix(policy, blocks)),
            (None, None) => How::Strategy,
        };
        let require = others.and_then(|h| h.get::<Require>());
        // One clock read serves the whole pick: the health of an endpoint whose ejection may
        // have ended, and the start of the request's timing.
        let mut filter = Filter::new().cost(cost).at(Instant::now());
        if let Some(tokens) = others.and_then(|h| h.get::<Tokens>()) {
            filter = filter.tokens(*tokens);
        }
        if let Some(exclude) = others.and_then(|h| h.get::<Exclude>()) {
            filter = filter.exclude(exclude);
        }
        // A model's endpoints are precomputed: the pick never draws one without it.
        let snapshot = match require {
            Some(r) => {
                filter = filter.require(r);
                if r.renames() {
                    // An alias: its variants in turn, on a path of their own.
                    return self.try_variants(&all, hints, r, filter, how);
                }
                r.model.as_deref().map_or(&**all, |m| all.for_model(m))
            }
            None => &**all,
        };
        if let Some(picked) = self.pick_in(snapshot, &filter, how, LoadGuard::acquire_at) {
            self.pool.note_panic(false);
            return Ok(self.picked_with(hints, others, picked));
        }
        // Endpoints held back by a soft ejection serve only when nothing else can.
        let filter = filter.include_held();
        if let Some(picked) = self.pick_in(snapshot, &filter, how, LoadGuard::acquire_at) {
            return Ok(self.picked_with(hints, others, picked));
        }
        if let Some(unmet) = require.and_then(|r| unsatisfiable(&all, r)) {
            return Err(NoSlot::Unavailable(unmet.into()));
        }
        match why_no_slot(snapshot, &filter) {
            // Health leaves nothing: route to every endpoint rather than fail everything, but
            // for those cooling down, whose back-off is the provider's word.
            NoSlot::Unavailable(e) if self.config.panic_mode && !e.is::<RateLimited>() => {
                let filter = filter.ignore_health();
                let picked = self.pick_in(snapshot, &filter, how, LoadGuard::acquire_any_at);
                self.pool.note_panic(picked.is_some());
                picked
                    .map(|p| self.picked_with(hints, others, p))
                    .ok_or_else(|| why_no_slot(snapshot, &filter))
            }
            why => Err(why),
        }
    }

    /// Tells a `Picked` cell where the request goes, and the guard whether a layer above
    /// judges the first chunk.
    #[inline]
    pub(super) fn picked(&self, hints: &http::Extensions, picked: (S, LoadGuard)) -> Choice<S> {
        self.picked_with(hints, Some(hints), picked)
    }

    /// As [`picked`](Self::picked), with `others`: the hints, unless an affinity is the only
    /// one.
    #[inline]
    fn picked_with(
        &self,
        hints: &http::Extensions,
        others: Option<&http::Extensions>,
        picked: (S, LoadGuard),
    ) -> Choice<S> {
        let (service, mut guard) = picked;
        if others.is_some_and(|h| h.get::<FirstChunkJudged>().is_some()) {
            guard.defer_first_end = true;
        }
        let endpoint = guard.endpoint();
        tracing::debug!(
            endpoint = %endpoint.key(),
            tier = endpoint.tier(),
            in_flight = endpoint.in_flight(),
            why = self.why(hints),
            "picked"
        );
        if let Some(cell) = others.and_then(|h| h.get::<Picked>()) {
            cell.set(endpoint);
        }
        Choice {
            service,
            guard,
            serve_as: None,
        }
    }

    /// Why the pick went where it did, for the trace.
    fn why(&self, hints: &http::Extensions) -> &'static str {
        if hints.get::<Affinity>().is_some() {
            "affinity"
        } else if self.config.prefix.is_some() && hints.get::<PromptBlocks>().is_some() {
            "prefix"
        } else {
            self.config.picker.strategy().describe()
        }
    }

    /// Picks in the lowest tier with an eligible endpoint that has room, and takes a slot.
    #[inline]
    pub(super) fn pick_in(
        &self,
        snapshot: &Snapshot<S>,
        filter: &Filter<'_>,
        how: How<'_>,
        acquire: Acquire,
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
                let (picked, choice) = match how {
                    How::Affinity(affinity) => (affine(entries, filter, affinity), None),
                    How::Prefix(policy, prompt) => {
                        let choice = policy.pick(
                            entries,
                            filter,
                            prompt.blocks(),
                            prompt.tokens(),
                            &mut ThreadRng,
                        );
                        (choice.map(|c| c.index), choice)
                    }
                    How::Strategy => (
                        self.config.picker.pick(entries, filter, &mut ThreadRng),
                        None,
                    ),
                };
                let Some(i) = picked else {
                    break; // nothing eligible in this tier: try the next
                };
                let entry = &entries[i];
                let reservation = if entry.endpoint().has_quota() {
                    match Reservation::take(entry.endpoint(), filter.tokens, filter.now()) {
                        Ok(r) => r,
                        Err(_) => continue, // its quota was spent meanwhile
                    }
                } else {
                    None
                };
                let Some(mut guard) = acquire(entry.endpoint(), filter.cost, filter.now()) else {
                    if let Some(r) = reservation {
                        r.release();
                    }
                    continue;
                };
                guard.hold_quota(reservation);
                if let (How::Prefix(policy, prompt), Some(choice)) = (how, choice) {
                    // The prefill counts there until the response's first byte.
                    policy
                        .placed(entry.endpoint(), prompt.blocks(), &choice)
                        .attach(&mut guard);
                }
                return Some((entry.service().clone(), guard));
            }
        }
        None
    }
}

/// The cold path after a failed pick: is it capacity, quota, or availability? When every
/// endpoint that could serve has spent its quota, [`NoSlot::Quota`] with when the first has
/// room again (and the wait queue's timer is set for then); when every endpoint that could
/// serve this request is cooling down after a rate limit, a [`RateLimited`] that says when
/// the first comes back; otherwise [`NoEndpoints`], with when the first cooling or ejected
/// endpoint does.
pub(super) fn why_no_slot<S>(snapshot: &Snapshot<S>, filter: &Filter<'_>) -> NoSlot {
    let now = filter.now();
    // The first return of quota among the endpoints that could serve, and whether one of
    // them is full for want of a slot instead.
    let mut quota: Option<(Instant, &Endpoint)> = None;
    let mut full = false;
    for entry in snapshot.entries() {
        let e = entry.endpoint();
        if filter.serves(e) {
            match e.quota_wait(filter.tokens, now) {
                Some(at) if quota.map_or(true, |(q, _)| at < q) => quota = Some((at, e)),
                Some(_) => {}
                None => full = true,
            }
        }
    }
    if let Some((at, e)) = quota {
        // A request that waits is served when the quota returns: time must offer it.
        e.quota_timer(at);
        return if full {
            NoSlot::AllFull
        } else {
            NoSlot::Quota(at)
        };
    }
    if full {
        return NoSlot::AllFull;
    }
    let mut back: Option<Instant> = None;
    // The first end of a cooldown among the endpoints this request wants, and whether every
    // such endpoint is cooling down.
    let mut cooled: Option<Instant> = None;
    let mut all_cooling = true;
    for entry in snapshot.entries() {
        let e = entry.endpoint();
        if e.weight() > 0.0 && !e.is_removed() {
            if let Some(at) = e.available_at() {
                back = Some(back.map_or(at, |b| b.min(at)));
            }
            if filter.wants(e) {
                match e.cooling_until(now) {
                    Some(at) => cooled = Some(cooled.map_or(at, |c| c.min(at))),
                    None => all_cooling = false,
                }
            }
        }
    }
    if let Some(at) = cooled.filter(|_| all_cooling) {
        return NoSlot::Unavailable(RateLimited::new(at.saturating_duration_since(now)).into());
    }
    NoSlot::Unavailable(
        NoEndpoints::unavailable(back.map(|at| at.saturating_duration_since(now))).into(),
    )
}

/// When no endpoint in the pool meets the requirements, whatever its health or load: which.
pub(super) fn unsatisfiable<S>(all: &Snapshot<S>, require: &Require) -> Option<Unsatisfiable> {
    let endpoints = all.entries().iter().map(|e| &**e.endpoint());
    if endpoints.clone().any(|e| require.admits(e)) {
        return None;
    }
    Some(Unsatisfiable::new(require.unmet(endpoints)))
}
