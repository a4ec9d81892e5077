//! One endpoint: its key and metadata, and its live state.
//!
//! The live state is a handful of atomics that the pick reads and the load guard writes:
//! requests in flight and outstanding work (`slots.rs`), the health cell with its trial
//! permits and slow-start ramp (`health.rs`), peak-EWMA estimates of time to first byte and of
//! duration (`ewma.rs`), counters of what finished (`counters.rs`), histograms of time to
//! first byte and of duration (`timings.rs`), and the engine's latest load report
//! (`report.rs`). An [`Arc<Endpoint>`] is the cheap handle that layers pass around (in
//! `Served` and in errors).
//!
//! This module imports nothing of the crate but the ground (`sync`, `clock`, `hash`,
//! `report`, a plain value the endpoint stores): the
//! endpoint knows nothing of picking, of layers, or of errors that name endpoints. What the
//! endpoints of one pool share (the queue of waiting requests, the member and ejected counts)
//! is defined here too (`pool_state.rs`).

mod capabilities;
mod config;
mod counted;
mod counters;
mod events;
mod ewma;
mod health;
mod key;
mod layer_events;
mod metadata;
mod pool_state;
mod quota;
mod quota_headers;
mod report;
mod reporting;
mod reservation;
mod slots;
#[cfg(test)]
mod tests;
mod timings;
#[cfg(feature = "openai")]
mod tokens;
mod wait_queue;

use std::{
    any::Any,
    fmt,
    sync::{Arc, Weak},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{sync::Notify, time::Instant};

#[cfg(feature = "openai")]
pub use self::tokens::{ModelTokens, LEARNED_MODELS, OTHER_MODEL};
pub use self::{
    capabilities::Capabilities,
    config::{ConfigError, EndpointConfig},
    events::EjectionCause,
    health::Health,
    key::{Key, Redacted},
    layer_events::LayerCounts,
    quota::{Quota, QuotaKind, QuotaLevel, Tokens},
    reservation::Reservation,
    timings::{HistogramSnapshot, BUCKETS},
};
pub(crate) use self::{
    config::check_weight,
    layer_events::LayerEvents,
    pool_state::PoolState,
    quota_headers::read as read_quota_headers,
    wait_queue::{Grant, Place, Turn, WaitQueue, Wants},
};
use self::{
    counters::Counters,
    events::Events,
    ewma::LatencyEstimates,
    health::{HealthCell, HealthWord, Recovery},
    quota::QuotaState,
    report::{ReportWord, Reported},
    slots::{Acquired, Slots, NO_LIMIT},
    timings::Timings,
};
use crate::{
    clock::{nanos, LazyNow},
    sync::{
        AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Mutex,
        Ordering::{Relaxed, SeqCst},
    },
};

/// One endpoint of a [`Pool`](crate::pool::Pool): metadata and live state.
pub struct Endpoint {
    admission: Admission,
    key_hash: u64,
    /// The tier: changed in place when the endpoint is announced again with another.
    tier: AtomicU32,
    recovery: Recovery,
    /// The provider's quota, if any: an endpoint with one is always gated, so the pick reads
    /// it only through `gated_view`.
    quota: Option<Box<QuotaState>>,

    key: Key,
    labels: Box<[(Arc<str>, Arc<str>)]>,
    /// What it serves: replaced in place when the endpoint is announced again with other
    /// models or capabilities (read by picks only for requests with requirements).
    capabilities: ArcSwap<Capabilities>,
    born: Instant,
    completions: Completions,
    /// The histograms a completion writes besides its line.
    timings: Timings,
    /// The health judge's record of this endpoint's outcomes, of a type this module does not
    /// know; locked once per outcome that changes it, never by a pick.
    record: parking_lot::Mutex<Option<Box<dyn Any + Send>>>,
    /// What the health layer did to it, counted.
    events: Events,
    /// The tokens its answers used, per model.
    #[cfg(feature = "openai")]
    tokens: tokens::Tokens,
    /// Whether this endpoint is counted among its pool's ejected; written only under
    /// `health_writer`.
    counted_ejected: AtomicBool,
    /// Taken by every write of the health (never by a pick), so that the health word and
    /// the pool's ejected count change together: a place reserved among the ejected belongs
    /// to the ejection that reserved it.
    health_writer: Mutex<()>,
    pool: Arc<PoolState>,
    drained: Notify,
    /// The engine's latest load report, whole; the pick reads its word in `admission`.
    reported: Reported,
    /// This endpoint, for the wait queue to hand a slot on it to a waiting request.
    me: Weak<Endpoint>,
}

/// What decides whether a request is admitted, and what a slot's release needs: alone in one
/// cache line, so a pick touches one line per candidate, a release no other line of the
/// endpoint, and the other fields' writes (estimates, counters) never invalidate it.
#[derive(Debug)]
#[repr(C, align(64))]
struct Admission {
    slots: Slots,
    weight: AtomicU64,
    health: HealthWord,
    /// The concurrency limit ([`NO_LIMIT`] for none): changed in place when the endpoint is
    /// announced again with another, and then applies to the requests already in flight.
    max_concurrency: AtomicUsize,
    id: u64,
    /// The pool's queue of requests waiting for a slot, woken on release.
    waiters: Arc<WaitQueue>,
    /// What the pick reads of the engine's latest load report.
    report: ReportWord,
}

/// What every completion writes, together in one cache line and apart from what is only read:
/// a completion takes one line from the core that last wrote it, with no read of it first.
#[derive(Debug)]
#[repr(C, align(64))]
struct Completions {
    estimates: LatencyEstimates,
    counters: Counters,
}

// One line each, as their docs say (loom's atomics are larger).
#[cfg(not(loom))]
const _: () =
    assert!(std::mem::size_of::<Completions>() == 64 && std::mem::size_of::<Admission>() == 64);

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("weight", &self.weight())
            .field("tier", &self.tier())
            .field("in_flight", &self.in_flight())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A configured concurrency limit as the slots compare it: [`NO_LIMIT`] for none, and any
/// limit at or above it (`usize::MAX`) is none.
fn limit(max: Option<usize>) -> usize {
    max.map_or(NO_LIMIT, |max| max.min(NO_LIMIT))
}

fn normalize(weight: f64) -> f64 {
    // -0.0 passes validation; store it as +0.0 so "weight bits are 0" means draining.
    if weight == 0.0 {
        0.0
    } else {
        weight
    }
}

impl Endpoint {
    /// A standalone endpoint, outside any pool: for simulations that drive the
    /// [`pick`](crate::pick) functions directly.
    pub fn new(config: EndpointConfig) -> Result<Arc<Self>, ConfigError> {
        Self::in_pool(config, &Arc::default())
    }

    /// An endpoint of the pool whose shared state is `pool`.
    pub(crate) fn in_pool(
        config: EndpointConfig,
        pool: &Arc<PoolState>,
    ) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let weight = normalize(config.weight);
        let quota = config.quota.clone().and_then(QuotaState::new);
        #[cfg(feature = "openai")]
        let tokens = tokens::Tokens::new(&config.capabilities.models);
        pool.joined();
        Ok(Arc::new_cyclic(|me| Self {
            admission: Admission {
                slots: Slots::new(weight == 0.0 || quota.is_some()),
                weight: AtomicU64::new(weight.to_bits()),
                health: HealthWord::new(),
                max_concurrency: AtomicUsize::new(limit(config.max_concurrency)),
                id: next_id(),
                waiters: Arc::clone(&pool.waiters),
                report: ReportWord::default(),
            },
            key_hash: crate::hash::stable_hash(config.key.as_str().as_bytes()),
            tier: AtomicU32::new(config.tier),
            recovery: Recovery::new(),
            quota,
            key: config.key,
            labels: config.labels.into_boxed_slice(),
            capabilities: ArcSwap::from_pointee(config.capabilities),
            born: Instant::now(),
            completions: Completions {
                estimates: LatencyEstimates::new(),
                counters: Counters::new(),
            },
            timings: Timings::new(),
            record: parking_lot::Mutex::new(None),
            events: Events::new(),
            #[cfg(feature = "openai")]
            tokens,
            counted_ejected: AtomicBool::new(false),
            health_writer: Mutex::new(()),
            pool: Arc::clone(pool),
            drained: Notify::new(),
            reported: Reported::default(),
            me: me.clone(),
        }))
    }

    /// A counted handle to this endpoint, unless it is being dropped.
    pub(crate) fn handle(&self) -> Option<Arc<Endpoint>> {
        self.me.upgrade()
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The metadata it was created with, at its current weight.
    pub fn config(&self) -> EndpointConfig {
        EndpointConfig {
            key: self.key.clone(),
            weight: self.weight(),
            max_concurrency: self.max_concurrency(),
            tier: self.tier(),
            labels: self.labels.to_vec(),
            capabilities: Capabilities::clone(&self.capabilities.load()),
            quota: self.quota.as_deref().map(|q| q.config().clone()),
        }
    }

    /// A process-unique number, used by [`Exclude`](crate::hints::Exclude).
    #[inline]
    pub fn id(&self) -> u64 {
        self.admission.id
    }

    /// The stable hash of the key, the same in every replica: what affinity ranks by.
    pub fn key_hash(&self) -> u64 {
        self.key_hash
    }

    /// The tier.
    pub fn tier(&self) -> u32 {
        self.tier.load(Relaxed)
    }

    /// The current weight.
    #[inline]
    pub fn weight(&self) -> f64 {
        f64::from_bits(self.admission.weight.load(SeqCst))
    }

    pub(crate) fn set_weight(&self, weight: f64) {
        self.admission
            .weight
            .store(normalize(weight).to_bits(), SeqCst);
        self.refresh_gate();
        if weight > 0.0 {
            self.admission.waiters.offer(self);
        }
    }

    /// A label's value.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Requests picked for this endpoint and not yet finished (for a streamed response, until
    /// its body ends or is dropped).
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.admission.slots.in_flight()
    }

    /// The [`Cost`](crate::hints::Cost) of the requests in flight.
    #[inline]
    pub fn outstanding(&self) -> u64 {
        self.admission.slots.outstanding()
    }

    /// The health events' counters, for the health layer.
    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    /// The counters of what the layers did for its pool's requests.
    pub(crate) fn layer_events(&self) -> &LayerEvents {
        &self.pool.layer_events
    }

    /// The counters, for the health judge's successes counted without its lock.
    pub(crate) fn counters(&self) -> &Counters {
        &self.completions.counters
    }

    /// The health judge's record of this endpoint, locked.
    pub(crate) fn record(&self) -> parking_lot::MutexGuard<'_, Option<Box<dyn Any + Send>>> {
        self.record.lock()
    }

    /// Peak-EWMA of the time to the first byte of the response body (the first token of a
    /// stream), as of `now`; `None` before the first response.
    pub fn ttfb_estimate(&self, now: Instant) -> Option<Duration> {
        self.ttfb_nanos(now).map(|n| Duration::from_nanos(n as u64))
    }

    /// Peak-EWMA of the time from pick to the end of the response, as of `now`.
    pub fn latency_estimate(&self, now: Instant) -> Option<Duration> {
        self.completions
            .estimates
            .completion(self.nanos_at(now))
            .map(|n| Duration::from_nanos(n as u64))
    }

    pub(crate) fn ttfb_nanos(&self, now: Instant) -> Option<f64> {
        self.completions.estimates.ttfb(self.nanos_at(now))
    }

    /// Records a successful response's time to first byte.
    pub fn observe_ttfb(&self, ttfb: Duration, at: Instant) {
        self.observe_ttfb_at(nanos(ttfb), self.nanos_at(at));
    }

    /// As [`observe_ttfb`](Self::observe_ttfb), with the time as a [`nanos_at`](Self::nanos_at).
    pub(crate) fn observe_ttfb_at(&self, ttfb_nanos: f64, stamp: u64) {
        self.completions.estimates.observe_ttfb(ttfb_nanos, stamp);
        self.timings.ttfb(ttfb_nanos as u64);
    }

    /// Records a finished request. A failure is recorded as at least twice the current
    /// estimate and at least one second, never as its (often short) round trip, so a failing
    /// endpoint never looks fast.
    pub fn observe_completion(&self, elapsed: Duration, failed: bool, at: Instant) {
        self.observe_completion_at(nanos(elapsed), failed, self.nanos_at(at));
    }

    /// As [`observe_completion`](Self::observe_completion), with the time as a
    /// [`nanos_at`](Self::nanos_at): a completion that also records its first byte converts the
    /// time once.
    pub(crate) fn observe_completion_at(&self, elapsed_nanos: f64, failed: bool, stamp: u64) {
        self.completions.counters.finished(failed);
        self.completions
            .estimates
            .observe_completion(elapsed_nanos, failed, stamp);
        self.timings.duration(elapsed_nanos as u64);
    }

    /// A time as the latency estimates keep it: nanoseconds since the endpoint was made.
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        // 1 is added so that 0 can mean "no sample yet".
        let since = at.saturating_duration_since(self.born);
        since
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(since.subsec_nanos()) + 1)
    }

    // --- health ---

    #[inline(always)]
    fn health_cell(&self) -> HealthCell<'_> {
        HealthCell {
            word: &self.admission.health,
            recovery: &self.recovery,
            born: &self.born,
        }
    }

    /// Whether the health is `Healthy`: one load, no time decoded.
    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.health_cell().is_healthy()
    }

    /// The current health.
    pub fn health(&self) -> Health {
        self.health_cell().get()
    }

    /// Sets the health. A `SlowStart` ramps over the time from now to its `until`; an
    /// `Ejected` set here lets traffic back freely once it expires (the health layer uses
    /// its own ejection, which lets only trial requests through) and counts among the pool's
    /// ejected whatever their share.
    pub fn set_health(&self, health: Health) {
        {
            let _write = self.health_writer.lock();
            self.health_cell().set(health);
            self.count_ejection();
        }
        self.health_changed();
        if let Health::Ejected { until } | Health::CoolingDown { until } = health {
            // Waiting requests are served when it ends.
            self.admission.waiters.note_time(until);
        }
    }

    /// Ends a cooldown that is over: the endpoint is back in the hold or the slow-start ramp
    /// the cooldown interrupted, if that is not over too, else healthy. Returns whether it is
    /// healthy now.
    pub(crate) fn end_cooldown(&self, now: Instant) -> bool {
        let healthy = {
            let _write = self.health_writer.lock();
            let healthy = self.health_cell().end_cooldown(now);
            self.count_ejection();
            healthy
        };
        self.health_changed();
        healthy
    }

    /// Ejects until `until`, then lets `trials` requests through at a time until the health
    /// layer decides, if the pool's ejected share allows it: at most `max_fraction` of its
    /// endpoints, but always one. An ejected endpoint may always be ejected again. Returns
    /// whether it was ejected.
    pub(crate) fn eject(&self, until: Instant, trials: u16, max_fraction: f64) -> bool {
        {
            let _write = self.health_writer.lock();
            if !self.counted_ejected.load(SeqCst) && !self.is_removed() {
                // The place is reserved and the ejection written under one lock: no other
                // health write of this endpoint can release the place in between, so an
                // ejection is never counted without its reservation.
                if !self.pool.reserve_ejection(max_fraction) {
                    return false;
                }
                self.counted_ejected.store(true, SeqCst);
            }
            self.health_cell().eject(until, trials);
        }
        self.health_changed();
        self.admission.waiters.note_time(until);
        true
    }

    /// Holds the weight at its floor for `hold`, then ramps it back to full over `window`:
    /// a soft ejection, for when a hard one would take too much of the pool away.
    pub(crate) fn hold_back(&self, hold: Duration, window: Duration, now: Instant) {
        {
            let _write = self.health_writer.lock();
            self.health_cell().hold_back(hold, window, now);
            self.count_ejection();
        }
        self.refresh_gate();
    }

    /// After a health write: the gate and the waiters follow it.
    fn health_changed(&self) {
        self.refresh_gate();
        if self.health_cell().admits_waiters() {
            self.admission.waiters.offer(self);
        }
    }

    /// Keeps this endpoint counted among the pool's ejected exactly while it is ejected and
    /// in the pool; called under `health_writer` after each health write and on removal.
    fn count_ejection(&self) {
        let want = self.health_cell().is_ejected() && !self.is_removed();
        if self.counted_ejected.swap(want, SeqCst) != want {
            if want {
                // A health set by hand: counted whatever the pool's share.
                self.pool.count_ejection();
            } else {
                self.pool.release_ejection();
            }
        }
    }

    /// Makes the gate say what health, weight and reports say; called after every write to
    /// any of them.
    /// Writers race, so each rereads after writing the gate and tries again if the state moved
    /// meanwhile: the last gate write of all then follows the last health and weight writes,
    /// and the gate is never left open on a closed endpoint, nor closed on an open one.
    fn refresh_gate(&self) {
        loop {
            let open = self.plainly_open();
            self.admission.slots.set_gated(!open);
            if self.plainly_open() == open {
                return;
            }
        }
    }

    /// When a currently unavailable endpoint becomes available again, if it is only waiting.
    pub(crate) fn available_at(&self) -> Option<Instant> {
        match self.health() {
            Health::Ejected { until } | Health::CoolingDown { until } => Some(until),
            _ => None,
        }
    }

    /// Whether a soft ejection holds the weight at its floor now (a `SlowStart` whose ramp
    /// has not begun).
    pub(crate) fn is_held(&self, now: Instant) -> bool {
        matches!(self.health(), Health::SlowStart { .. })
            && !self.health_cell().allows(&LazyNow::at(now), false)
    }

    /// When the cooldown in force at `now` ends, if one is.
    pub(crate) fn cooling_until(&self, now: Instant) -> Option<Instant> {
        self.health_cell().cooling_until(now)
    }

    /// The weight as the pick sees it: reduced while slow-starting.
    #[inline]
    pub(crate) fn effective_weight(&self, now: &LazyNow) -> f64 {
        self.health_cell().effective_weight(self.weight(), now)
    }

    /// Gives back a trial permit when its request ends (the verdict, if any, was already
    /// recorded): never more than the ejection allowed.
    pub(crate) fn return_trial(&self) {
        self.health_cell().return_trial();
    }

    // --- slots ---

    /// Whether the endpoint was removed from its pool.
    pub fn is_removed(&self) -> bool {
        self.admission.slots.is_removed()
    }

    /// Whether the pick may choose it at all (not removed, weight above 0, healthy or due).
    #[inline]
    pub(crate) fn takes_traffic(
        &self,
        now: &LazyNow,
        ignore_health: bool,
        include_held: bool,
    ) -> bool {
        self.admission.weight.load(SeqCst) != 0
            && !self.admission.slots.is_removed()
            && self
                .health_cell()
                .lets_through(now, ignore_health, include_held)
    }

    /// The pick's first question, from one load and one comparison: the in-flight count if
    /// the endpoint is open (not removed, healthy, weight above 0) with a free slot under its
    /// concurrency limit. If not, [`gated_view`](Self::gated_view) decides.
    #[inline(always)]
    pub(crate) fn open_slot(&self) -> Option<usize> {
        self.admission.slots.open(self.limit())
    }

    /// For the pick, when [`open_slot`](Self::open_slot) said no: `Some((load, weight as
    /// picks see it))` if the endpoint has a free slot, is not saturated, and takes traffic
    /// now. The load is the requests in flight plus, with a fresh report, the other routers'.
    #[cold]
    #[inline(never)]
    pub(crate) fn gated_view(
        &self,
        now: &LazyNow,
        ignore_health: bool,
        include_held: bool,
        tokens: Option<Tokens>,
    ) -> Option<(usize, f64)> {
        let in_flight = self.admission.slots.gated_room(self.limit())?;
        // A quota without room for this request is as full as a limit.
        self.quota_room(tokens, now)?;
        let weight = self.weight();
        if weight == 0.0 {
            // Drained by weight 0.
            return None;
        }
        let load = in_flight + self.others(now)?;
        if self.is_healthy() {
            // Open but for its report, or the gate is about to open.
            return Some((load, weight));
        }
        self.health_cell()
            .lets_through(now, ignore_health, include_held)
            .then(|| (load, self.effective_weight(now)))
    }

    /// Takes a slot, and a half-open trial permit if the endpoint is on trial. `None` if the
    /// endpoint is full, out of trial permits, or was removed meanwhile; else whether a trial
    /// permit was taken (to be given back with [`return_trial`](Self::return_trial)).
    #[inline]
    pub(crate) fn try_acquire(&self, cost: u64) -> Option<bool> {
        let trial = self.health_cell().take_trial()?;
        if self.try_acquire_any(cost) {
            Some(trial)
        } else {
            if trial {
                self.return_trial();
            }
            None
        }
    }

    /// Takes a slot whatever the endpoint's health (panic mode).
    #[inline]
    pub(crate) fn try_acquire_any(&self, cost: u64) -> bool {
        match self.admission.slots.try_acquire(self.limit(), cost) {
            Acquired::Yes => true,
            Acquired::Full => false,
            Acquired::Removed { drained } => {
                if drained {
                    self.announce_drained();
                }
                false
            }
        }
    }

    /// Tells those waiting for the drain that the last request of a removed endpoint ended.
    #[cold]
    #[inline(never)]
    fn announce_drained(&self) {
        self.drained.notify_waiters();
    }

    /// Gives a slot back; announces the drain, and offers the slot to the waiting requests,
    /// as needed.
    #[inline]
    pub(crate) fn release(&self, cost: u64) {
        if self.admission.slots.release(cost) {
            self.announce_drained();
        }
        self.admission.waiters.offer(self);
    }

    /// Takes the endpoint out of its pool: no new picks, and it no longer counts as a member.
    pub(crate) fn mark_removed(&self) {
        if self.admission.slots.remove() {
            self.announce_drained();
        }
        self.pool.left();
        let _write = self.health_writer.lock();
        self.count_ejection();
    }

    /// Resolves once the endpoint is removed and its last in-flight request has finished.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_removed() && self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Made for a pool but never published in it (a refused batch), or the pool is gone.
        if !self.is_removed() {
            self.pool.left();
            if self.counted_ejected.load(SeqCst) {
                self.pool.release_ejection();
            }
        }
    }
}
