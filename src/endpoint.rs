//! One endpoint: its key and metadata, its service, and its live state.
//!
//! The live state is a handful of atomics that the pick reads and the load guard writes:
//! requests in flight, outstanding work, peak-EWMA estimates of time to first byte and of
//! duration, health, and whether the endpoint was removed. An [`Arc<Endpoint>`] is the cheap
//! handle that layers pass around (in [`Served`](crate::hints::Served) and in errors).

use std::{borrow::Borrow, fmt, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::Notify, time::Instant};

use crate::{
    capability::Capabilities,
    error::ConfigError,
    load::{Acquired, Slots, NO_LIMIT},
    outlier::Outliers,
    sync::{AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst},
};

/// An endpoint's name in its pool: cheap to clone, compared by value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<SocketAddr> for Key {
    fn from(a: SocketAddr) -> Self {
        Self(a.to_string().into())
    }
}

impl From<http::Uri> for Key {
    fn from(u: http::Uri) -> Self {
        Self(u.to_string().into())
    }
}

/// How to add an endpoint: its key and metadata. Validated when the pool takes it.
///
/// ```
/// use tower_ai_balance::EndpointConfig;
/// let gpu = EndpointConfig::new("h100-0").weight(2.0).max_concurrency(64).tier(0).label("model", "llama-3-70b");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    key: Key,
    weight: f64,
    max_concurrency: Option<usize>,
    tier: u32,
    labels: Vec<(Arc<str>, Arc<str>)>,
    capabilities: Capabilities,
}

impl EndpointConfig {
    /// An endpoint with weight 1, no concurrency limit, tier 0 and no labels.
    pub fn new(key: impl Into<Key>) -> Self {
        Self {
            key: key.into(),
            weight: 1.0,
            max_concurrency: None,
            tier: 0,
            labels: Vec::new(),
            capabilities: Capabilities::default(),
        }
    }

    /// Its relative capacity: load is compared as in-flight requests divided by weight, and the
    /// weighted strategies send traffic in proportion. Weight 0 takes no new requests.
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// The most requests it may serve at once; never exceeded.
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = Some(max);
        self
    }

    /// Its tier: lower tiers are preferred while they have an endpoint with free capacity
    /// (for example 0 for self-hosted instances, 1 for a paid provider).
    pub fn tier(mut self, tier: u32) -> Self {
        self.tier = tier;
        self
    }

    /// A free-form label, such as `model` or `region`.
    pub fn label(mut self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }

    /// A model it serves (call once per model; none means any model).
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.capabilities.models.push(model.into());
        self
    }

    /// Its context window, in tokens.
    pub fn max_context(mut self, tokens: u32) -> Self {
        self.capabilities.max_context = Some(tokens);
        self
    }

    /// Its hardware class.
    pub fn hardware(mut self, hardware: impl Into<Arc<str>>) -> Self {
        self.capabilities.hardware = Some(hardware.into());
        self
    }

    /// Who runs it.
    pub fn provider(mut self, provider: impl Into<Arc<str>>) -> Self {
        self.capabilities.provider = Some(provider.into());
        self
    }

    /// Where it runs.
    pub fn region(mut self, region: impl Into<Arc<str>>) -> Self {
        self.capabilities.region = Some(region.into());
        self
    }

    /// Its price per 1,000 input and output tokens.
    pub fn price(mut self, per_1k_in: f64, per_1k_out: f64) -> Self {
        self.capabilities.price_in = per_1k_in;
        self.capabilities.price_out = per_1k_out;
        self
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    pub(crate) fn weight_value(&self) -> f64 {
        self.weight
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_weight(&self.key, self.weight)?;
        let c = &self.capabilities;
        if !(c.price_in.is_finite()
            && c.price_in >= 0.0
            && c.price_out.is_finite()
            && c.price_out >= 0.0)
        {
            return Err(ConfigError::InvalidSetting {
                name: "price",
                reason: "must be finite and at least 0",
            });
        }
        if self.max_concurrency == Some(0) {
            return Err(ConfigError::ZeroMaxConcurrency {
                key: self.key.clone(),
            });
        }
        Ok(())
    }
}

impl From<&str> for EndpointConfig {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for EndpointConfig {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<Key> for EndpointConfig {
    fn from(k: Key) -> Self {
        Self::new(k)
    }
}

impl From<SocketAddr> for EndpointConfig {
    fn from(a: SocketAddr) -> Self {
        Self::new(a)
    }
}

pub(crate) fn check_weight(key: &Key, weight: f64) -> Result<(), ConfigError> {
    if !weight.is_finite() {
        Err(ConfigError::NonFiniteWeight {
            key: key.clone(),
            weight,
        })
    } else if weight < 0.0 {
        Err(ConfigError::NegativeWeight {
            key: key.clone(),
            weight,
        })
    } else {
        Ok(())
    }
}

/// An endpoint's health, as the health layer sets it and the pick reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes traffic.
    Healthy,
    /// Failing: takes no traffic until `until`; then, if the health layer set trial requests,
    /// only that many until it decides (half-open).
    Ejected {
        /// When it may be tried again.
        until: Instant,
    },
    /// Rate-limited: takes no traffic until `until`, then returns without trial.
    CoolingDown {
        /// When the cooldown ends.
        until: Instant,
    },
    /// Back after an ejection: takes traffic, with its weight ramping up to full at `until`.
    SlowStart {
        /// When the ramp ends.
        until: Instant,
    },
}

const HEALTHY: u64 = 0;
const EJECTED: u64 = 1;
const COOLING: u64 = 2;
const RAMPING: u64 = 3;
/// Trial permits meaning "no limit": set by a plain `set_health`, so an ejection set by hand
/// simply expires. Otherwise the low 16 bits are the permits left, the high 16 the most there
/// may be.
const UNLIMITED: u32 = u32::MAX;
/// The least share of its weight a slow-starting endpoint gets.
const RAMP_FLOOR: f64 = 0.05;

/// The pool-wide queue of requests waiting for capacity; endpoints wake it on release. Every
/// release reads it, so it has a cache line of its own: a neighbour's writes would make every
/// release miss.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Capacity {
    pub(crate) notify: Arc<Notify>,
    pub(crate) waiting: AtomicUsize,
}

impl Capacity {
    #[inline]
    pub(crate) fn wake(&self) {
        if self.waiting.load(SeqCst) > 0 {
            self.wake_waiters();
        }
    }

    #[cold]
    #[inline(never)]
    fn wake_waiters(&self) {
        self.notify.notify_waiters();
    }
}

/// Lock-free peak-EWMA estimate: a sample above the estimate replaces it at once, one below
/// is blended in with a weight that decays with the time since the last sample.
#[derive(Debug)]
struct PeakEwma {
    nanos: AtomicU64,
    stamp: AtomicU64,
}

impl PeakEwma {
    fn new() -> Self {
        Self {
            nanos: AtomicU64::new(0),
            stamp: AtomicU64::new(0),
        }
    }

    fn observe(&self, sample: f64, at: u64, decay_nanos: f64) {
        let last = self.stamp.swap(at.max(1), SeqCst);
        let weight = if last == 0 {
            0.0
        } else {
            decay_weight(at.saturating_sub(last) as f64, decay_nanos)
        };
        let mut old = self.nanos.load(SeqCst);
        loop {
            let prev = f64::from_bits(old);
            let next = if last == 0 || sample > prev {
                sample
            } else {
                prev * weight + sample * (1.0 - weight)
            };
            match self
                .nanos
                .compare_exchange_weak(old, next.to_bits(), SeqCst, SeqCst)
            {
                Ok(_) => return,
                Err(actual) => old = actual,
            }
        }
    }

    /// The estimate decayed to `now`, or `None` before the first sample.
    fn get(&self, now: u64, decay_nanos: f64) -> Option<f64> {
        let stamp = self.stamp.load(SeqCst);
        if stamp == 0 {
            return None;
        }
        let est = f64::from_bits(self.nanos.load(SeqCst));
        Some(est * decay_weight(now.saturating_sub(stamp) as f64, decay_nanos))
    }
}

/// `e^(-elapsed / decay)`, the weight an estimate keeps after `elapsed`. A busy endpoint's
/// samples come much closer together than the decay time, so below 1% of it a cubic Taylor
/// polynomial stands in for libm's `exp` (within 5e-10 of it, for a fraction of the work).
#[inline]
fn decay_weight(elapsed: f64, decay: f64) -> f64 {
    let x = elapsed / decay;
    if x < 0.01 {
        1.0 - x * (1.0 - x * (0.5 - x * (1.0 / 6.0)))
    } else {
        (-x).exp()
    }
}

/// How fast the latency estimates forget: tower's default.
pub(crate) const DECAY: Duration = Duration::from_secs(10);
/// The least a failed request counts as, so an endpoint that fails fast never looks fast.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// One endpoint of a [`Pool`](crate::pool::Pool): metadata and live state.
pub struct Endpoint {
    hot: Hot,
    key_hash: u64,
    tier: u32,
    trials: AtomicU32,
    ramp_ms: AtomicU64,

    key: Key,
    labels: Box<[(Arc<str>, Arc<str>)]>,
    capabilities: Capabilities,
    born: Instant,
    done: Done,
    pub(crate) outliers: parking_lot::Mutex<Outliers>,
    drained: Notify,
}

/// What every completion writes, together in one cache line and apart from what is only read:
/// a completion takes one line from the core that last wrote it, with no read of it first.
#[derive(Debug)]
#[repr(C, align(64))]
struct Done {
    ttfb: PeakEwma,
    latency: PeakEwma,
    requests: AtomicU64,
    failures: AtomicU64,
    /// The health layer's count of successes that took no lock.
    quiet: crate::outlier::Quiet,
}

// One line each, as their docs say (loom's atomics are larger).
#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<Done>() == 64 && std::mem::size_of::<Hot>() == 64);

/// What every pick reads and every slot's release needs, alone in one cache line: a pick
/// touches one line per candidate, a release no other line of the endpoint, and the other
/// fields' writes (latency estimates, counters) never invalidate it.
#[derive(Debug)]
#[repr(C, align(64))]
struct Hot {
    slots: Slots,
    weight: AtomicU64,
    health: AtomicU64,
    max_concurrency: usize,
    id: u64,
    /// The pool's queue of requests waiting for a slot, woken on release.
    capacity: Arc<Capacity>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("weight", &self.weight())
            .field("tier", &self.tier)
            .field("in_flight", &self.in_flight())
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Endpoint {
    /// A standalone endpoint, outside any pool: for simulations that drive the
    /// [`pick`](crate::pick) functions directly.
    pub fn new(config: EndpointConfig) -> Result<Arc<Self>, ConfigError> {
        Self::with_capacity(config, Arc::default())
    }

    pub(crate) fn with_capacity(
        config: EndpointConfig,
        capacity: Arc<Capacity>,
    ) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let weight = normalize(config.weight);
        Ok(Arc::new(Self {
            hot: Hot {
                slots: Slots::new(weight == 0.0),
                weight: AtomicU64::new(weight.to_bits()),
                health: AtomicU64::new(HEALTHY),
                max_concurrency: config
                    .max_concurrency
                    .map_or(NO_LIMIT, |max| max.min(NO_LIMIT)),
                id: next_id(),
                capacity,
            },
            key_hash: crate::hash::stable_hash(config.key.as_str().as_bytes()),
            tier: config.tier,
            trials: AtomicU32::new(UNLIMITED),
            ramp_ms: AtomicU64::new(0),
            key: config.key,
            labels: config.labels.into_boxed_slice(),
            capabilities: config.capabilities,
            born: Instant::now(),
            done: Done {
                ttfb: PeakEwma::new(),
                latency: PeakEwma::new(),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                quiet: crate::outlier::Quiet::new(),
            },
            outliers: parking_lot::Mutex::new(Outliers::default()),
            drained: Notify::new(),
        }))
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
            tier: self.tier,
            labels: self.labels.to_vec(),
            capabilities: self.capabilities.clone(),
        }
    }

    /// A process-unique number, used by [`Exclude`](crate::hints::Exclude).
    #[inline]
    pub fn id(&self) -> u64 {
        self.hot.id
    }

    /// The stable hash of the key, the same in every replica: what affinity ranks by.
    pub fn key_hash(&self) -> u64 {
        self.key_hash
    }

    /// The tier.
    pub fn tier(&self) -> u32 {
        self.tier
    }

    /// The current weight.
    #[inline]
    pub fn weight(&self) -> f64 {
        f64::from_bits(self.hot.weight.load(SeqCst))
    }

    pub(crate) fn set_weight(&self, weight: f64) {
        self.hot.weight.store(normalize(weight).to_bits(), SeqCst);
        self.refresh_gate();
        self.hot.capacity.wake();
    }

    /// The concurrency limit, if any.
    pub fn max_concurrency(&self) -> Option<usize> {
        (self.hot.max_concurrency != NO_LIMIT).then_some(self.hot.max_concurrency)
    }

    /// Whether health and weight let every pick through: `Healthy`, weight above 0.
    fn plainly_open(&self) -> bool {
        self.is_healthy() && self.hot.weight.load(SeqCst) != 0
    }

    /// Makes the gate say what health and weight say; called after every write to either.
    /// Writers race, so each rereads after writing the gate and tries again if the state moved
    /// meanwhile: the last gate write of all then follows the last health and weight writes,
    /// and the gate is never left open on a closed endpoint, nor closed on an open one.
    fn refresh_gate(&self) {
        loop {
            let open = self.plainly_open();
            self.hot.slots.set_gated(!open);
            if self.plainly_open() == open {
                return;
            }
        }
    }

    /// What it can serve.
    #[inline]
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
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
        self.hot.slots.in_flight()
    }

    /// The [`Cost`](crate::hints::Cost) of the requests in flight.
    #[inline]
    pub fn outstanding(&self) -> u64 {
        self.hot.slots.outstanding()
    }

    /// Requests that completed or failed here.
    pub fn requests(&self) -> u64 {
        self.done.requests.load(SeqCst)
    }

    /// Requests that failed here.
    pub fn failures(&self) -> u64 {
        self.done.failures.load(SeqCst)
    }

    /// Peak-EWMA of the time to the first byte of the response body (the first token of a
    /// stream), as of `now`; `None` before the first response.
    pub fn ttfb_estimate(&self, now: Instant) -> Option<Duration> {
        self.done
            .ttfb
            .get(self.nanos_at(now), decay_nanos())
            .map(|n| Duration::from_nanos(n as u64))
    }

    /// Peak-EWMA of the time from pick to the end of the response, as of `now`.
    pub fn latency_estimate(&self, now: Instant) -> Option<Duration> {
        self.done
            .latency
            .get(self.nanos_at(now), decay_nanos())
            .map(|n| Duration::from_nanos(n as u64))
    }

    pub(crate) fn ttfb_nanos(&self, now: Instant) -> Option<f64> {
        self.done.ttfb.get(self.nanos_at(now), decay_nanos())
    }

    /// The health layer's lock-free success count.
    pub(crate) fn quiet(&self) -> &crate::outlier::Quiet {
        &self.done.quiet
    }

    /// Whether the health is `Healthy`: one load, no time decoded.
    #[inline]
    pub(crate) fn is_healthy(&self) -> bool {
        self.hot.health.load(SeqCst) & 3 == HEALTHY
    }

    /// The current health.
    pub fn health(&self) -> Health {
        let raw = self.hot.health.load(SeqCst);
        let until = self.until(raw);
        match raw & 3 {
            EJECTED => Health::Ejected { until },
            COOLING => Health::CoolingDown { until },
            RAMPING => Health::SlowStart { until },
            _ => Health::Healthy,
        }
    }

    /// Sets the health. A `SlowStart` ramps over the time from now to its `until`; an
    /// `Ejected` set here lets traffic back freely once it expires (the health layer uses
    /// its own ejection, which lets only trial requests through).
    pub fn set_health(&self, health: Health) {
        self.store_health(health, UNLIMITED);
    }

    /// Ejects until `until`, then lets `trials` requests through at a time until the health
    /// layer decides.
    pub(crate) fn eject(&self, until: Instant, trials: u16) {
        let trials = u32::from(trials);
        self.store_health(Health::Ejected { until }, (trials << 16) | trials);
    }

    /// Holds the weight at its floor for `hold`, then ramps it back to full over `window`:
    /// a soft ejection, for when a hard one would take too much of the pool away.
    pub(crate) fn soften(&self, hold: Duration, window: Duration, now: Instant) {
        let window = window.max(Duration::from_millis(1));
        self.ramp_ms.store(window.as_millis() as u64, SeqCst);
        let until = now + hold + window;
        self.trials.store(UNLIMITED, SeqCst);
        self.hot
            .health
            .store(RAMPING | (self.millis_at(until) << 2), SeqCst);
        self.refresh_gate();
    }

    fn store_health(&self, health: Health, trials: u32) {
        let raw = match health {
            Health::Healthy => HEALTHY,
            Health::Ejected { until } => EJECTED | (self.millis_at(until) << 2),
            Health::CoolingDown { until } => COOLING | (self.millis_at(until) << 2),
            Health::SlowStart { until } => {
                let window = until.saturating_duration_since(Instant::now());
                self.ramp_ms.store(window.as_millis().max(1) as u64, SeqCst);
                RAMPING | (self.millis_at(until) << 2)
            }
        };
        self.trials.store(trials, SeqCst);
        self.hot.health.store(raw, SeqCst);
        self.refresh_gate();
        if raw & 3 == HEALTHY || raw & 3 == RAMPING {
            self.hot.capacity.wake();
        }
    }

    fn until(&self, raw: u64) -> Instant {
        self.born + Duration::from_millis(raw >> 2)
    }

    /// Whether the health cell lets a request through at this moment; an endpoint held back by
    /// a soft ejection (its weight at the floor, before the ramp back begins) only with
    /// `include_held`. One read of the health word; the clock is read only when the endpoint is
    /// not healthy.
    #[inline]
    pub(crate) fn health_allows(&self, now: &crate::pick::LazyNow, include_held: bool) -> bool {
        let raw = self.hot.health.load(SeqCst);
        match raw & 3 {
            HEALTHY => true,
            RAMPING => {
                include_held || {
                    let window = Duration::from_millis(self.ramp_ms.load(SeqCst));
                    self.until(raw).saturating_duration_since(now.get()) <= window
                }
            }
            COOLING => self.until(raw) <= now.get(),
            _ => self.until(raw) <= now.get() && self.trials.load(SeqCst) & 0xffff > 0,
        }
    }

    /// The weight as the pick sees it: reduced while slow-starting.
    #[inline]
    pub(crate) fn effective_weight(&self, now: &crate::pick::LazyNow) -> f64 {
        let weight = self.weight();
        let raw = self.hot.health.load(SeqCst);
        if raw & 3 != RAMPING {
            return weight;
        }
        let left = self
            .until(raw)
            .saturating_duration_since(now.get())
            .as_millis() as f64;
        let window = self.ramp_ms.load(SeqCst).max(1) as f64;
        weight * (1.0 - left / window).clamp(RAMP_FLOOR, 1.0)
    }

    /// When a currently unavailable endpoint becomes available again, if it is only waiting.
    pub(crate) fn available_at(&self) -> Option<Instant> {
        match self.health() {
            Health::Ejected { until } | Health::CoolingDown { until } => Some(until),
            _ => None,
        }
    }

    /// Takes a half-open trial permit if the endpoint is ejected and due; `Some(true)` if one
    /// was taken, `Some(false)` if none is needed, `None` if none is left.
    #[inline]
    fn take_trial(&self) -> Option<bool> {
        if self.hot.health.load(SeqCst) & 3 != EJECTED {
            return Some(false);
        }
        match self.trials.fetch_update(SeqCst, SeqCst, |t| match t {
            UNLIMITED => Some(t),
            t if t & 0xffff == 0 => None,
            t => Some(t - 1),
        }) {
            Ok(UNLIMITED) => Some(false),
            Ok(_) => Some(true),
            Err(_) => None,
        }
    }

    /// Gives back a trial permit when its request ends (the verdict, if any, was already
    /// recorded): never more than the ejection allowed.
    pub(crate) fn return_trial(&self) {
        let _ = self.trials.fetch_update(SeqCst, SeqCst, |t| {
            (t != UNLIMITED && t & 0xffff < t >> 16).then(|| t + 1)
        });
    }

    /// Whether the endpoint was removed from its pool.
    pub fn is_removed(&self) -> bool {
        self.hot.slots.is_removed()
    }

    /// Whether the pick may choose it at all (not removed, weight above 0, healthy or due).
    #[inline]
    pub(crate) fn takes_traffic(
        &self,
        now: &crate::pick::LazyNow,
        ignore_health: bool,
        include_held: bool,
    ) -> bool {
        self.hot.weight.load(SeqCst) != 0
            && !self.hot.slots.is_removed()
            && (ignore_health || self.health_allows(now, include_held))
    }

    /// The pick's first question, from one load and one comparison: the in-flight count if
    /// the endpoint is open (not removed, healthy, weight above 0) with a free slot under its
    /// concurrency limit. If not, [`gated_view`](Self::gated_view) decides.
    #[inline(always)]
    pub(crate) fn open_slot(&self) -> Option<usize> {
        self.hot.slots.open(self.hot.max_concurrency)
    }

    /// For the pick, when [`open_slot`](Self::open_slot) said no: `Some((in_flight, weight as
    /// picks see it))` if the endpoint has a free slot and takes traffic now. The verdict of
    /// [`takes_traffic`] and the limit, with [`effective_weight`].
    ///
    /// [`takes_traffic`]: Self::takes_traffic
    /// [`effective_weight`]: Self::effective_weight
    #[cold]
    #[inline(never)]
    pub(crate) fn gated_view(
        &self,
        now: &crate::pick::LazyNow,
        ignore_health: bool,
        include_held: bool,
    ) -> Option<(usize, f64)> {
        let in_flight = self.hot.slots.gated_room(self.hot.max_concurrency)?;
        let weight = self.weight();
        if weight == 0.0 {
            // Drained by weight 0.
            return None;
        }
        if self.is_healthy() {
            // The gate is about to open.
            return Some((in_flight, weight));
        }
        (ignore_health || self.health_allows(now, include_held))
            .then(|| (in_flight, self.effective_weight(now)))
    }

    /// Takes a slot, and a half-open trial permit if the endpoint is on trial. `None` if the
    /// endpoint is full, out of trial permits, or was removed meanwhile; else whether a trial
    /// permit was taken (to be given back with [`return_trial`](Self::return_trial)).
    #[inline]
    pub(crate) fn try_acquire(&self, cost: u64) -> Option<bool> {
        let trial = self.take_trial()?;
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
        match self.hot.slots.try_acquire(self.hot.max_concurrency, cost) {
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

    /// Gives a slot back; wakes the drain and the capacity queue as needed.
    #[inline]
    pub(crate) fn release(&self, cost: u64) {
        if self.hot.slots.release(cost) {
            self.announce_drained();
        }
        self.hot.capacity.wake();
    }

    pub(crate) fn mark_removed(&self) {
        if self.hot.slots.remove() {
            self.announce_drained();
        }
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

    /// Records a successful response's time to first byte.
    pub fn observe_ttfb(&self, ttfb: Duration, at: Instant) {
        self.observe_ttfb_at(nanos(ttfb), self.nanos_at(at));
    }

    /// As [`observe_ttfb`](Self::observe_ttfb), with the time as a [`nanos_at`](Self::nanos_at).
    pub(crate) fn observe_ttfb_at(&self, ttfb_nanos: f64, stamp: u64) {
        self.done.ttfb.observe(ttfb_nanos, stamp, decay_nanos());
    }

    /// Records a finished request. A failure is recorded as at least twice the current
    /// estimate and at least [`FAILURE_PENALTY`], never as its (often short) round trip, so a
    /// failing endpoint never looks fast.
    pub fn observe_completion(&self, elapsed: Duration, failed: bool, at: Instant) {
        self.observe_completion_at(nanos(elapsed), failed, self.nanos_at(at));
    }

    /// As [`observe_completion`](Self::observe_completion), with the time as a
    /// [`nanos_at`](Self::nanos_at): a completion that also records its first byte converts the
    /// time once.
    pub(crate) fn observe_completion_at(&self, elapsed_nanos: f64, failed: bool, now: u64) {
        self.done.requests.fetch_add(1, SeqCst);
        if failed {
            self.done.failures.fetch_add(1, SeqCst);
            let current = self.done.ttfb.get(now, decay_nanos()).unwrap_or(0.0);
            let penalty = elapsed_nanos.max(current * 2.0).max(nanos(FAILURE_PENALTY));
            self.done.ttfb.observe(penalty, now, decay_nanos());
            self.done.latency.observe(penalty, now, decay_nanos());
        } else {
            self.done.latency.observe(elapsed_nanos, now, decay_nanos());
        }
    }

    /// A time as the latency estimates keep it: nanoseconds since the endpoint was made.
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        // 1 is added so that 0 can mean "no sample yet".
        let since = at.saturating_duration_since(self.born);
        since.as_secs() * 1_000_000_000 + u64::from(since.subsec_nanos()) + 1
    }

    fn millis_at(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.born).as_millis();
        // Round up so that an endpoint is never back before its time.
        let ms = ms + u128::from(at > self.born + Duration::from_millis(ms as u64));
        ms.min(u128::from(u64::MAX >> 2)) as u64
    }
}

fn normalize(weight: f64) -> f64 {
    // -0.0 passes validation; store it as +0.0 so "weight bits are 0" means draining.
    if weight == 0.0 {
        0.0
    } else {
        weight
    }
}

fn decay_nanos() -> f64 {
    nanos(DECAY)
}

/// A duration in nanoseconds as a float, without `as_nanos`'s 128-bit conversion.
#[inline]
pub(crate) fn nanos(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`

    use std::sync::Arc;

    use loom::{
        sync::atomic::{AtomicUsize, Ordering::SeqCst},
        thread,
    };
    use tokio::time::Instant;

    use super::{Endpoint, EndpointConfig};

    /// One request through a half-open endpoint: a slot and maybe a trial permit, both
    /// given back. Counts the trials running at once in `live`.
    fn attempt(e: &Endpoint, live: &AtomicUsize) {
        let Some(trial) = e.try_acquire(1) else {
            return;
        };
        if trial {
            let running = live.fetch_add(1, SeqCst) + 1;
            assert!(
                running <= 1,
                "{running} trials through a half-open endpoint of one"
            );
            live.fetch_sub(1, SeqCst);
            e.return_trial();
        }
        e.release(1);
    }

    #[test]
    fn half_open_admits_no_more_trials_than_it_allows() {
        loom::model(|| {
            let e = Endpoint::new(EndpointConfig::new("e")).unwrap();
            e.eject(Instant::now(), 1);
            let live = Arc::new(AtomicUsize::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (e, live) = (Arc::clone(&e), Arc::clone(&live));
                    thread::spawn(move || attempt(&e, &live))
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(e.in_flight(), 0);
            assert_eq!(
                e.trials.load(SeqCst),
                (1 << 16) | 1,
                "every permit came back"
            );
        });
    }

    #[test]
    fn permits_never_exceed_the_allowance_across_a_re_ejection() {
        loom::model(|| {
            let e = Endpoint::new(EndpointConfig::new("e")).unwrap();
            e.eject(Instant::now(), 1);
            let live = Arc::new(AtomicUsize::new(0));
            let worker = {
                let (e, live) = (Arc::clone(&e), Arc::clone(&live));
                thread::spawn(move || attempt(&e, &live))
            };
            // The health layer re-ejects (a trial failed) while the request runs.
            e.eject(Instant::now(), 1);
            worker.join().unwrap();
            assert_eq!(e.in_flight(), 0);
            let trials = e.trials.load(SeqCst);
            assert!(
                trials & 0xffff <= trials >> 16,
                "more permits ({}) than the ejection allows ({})",
                trials & 0xffff,
                trials >> 16
            );
            assert_eq!(trials & 0xffff, 1, "a permit was lost");
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    /// The gate in the in-flight word must say "look closer" exactly when health or weight
    /// would refuse a plain pick, whatever the order of writes, and never disturb the count.
    #[test]
    fn the_gate_follows_health_and_weight_and_keeps_the_count() {
        let e = Endpoint::new(EndpointConfig::new("a")).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        assert!(!e.hot.slots.is_gated());
        assert_eq!(e.open_slot(), Some(0));

        assert_eq!(e.try_acquire(1), Some(false));
        e.set_health(Health::Ejected { until: later });
        assert!(e.hot.slots.is_gated());
        assert_eq!(e.open_slot(), None, "an ejected endpoint is not open");
        assert_eq!(e.in_flight(), 1, "the gate is not counted");

        e.set_health(Health::SlowStart { until: later });
        assert!(
            e.hot.slots.is_gated(),
            "a ramping weight needs the closer look"
        );
        e.set_health(Health::CoolingDown { until: later });
        assert!(e.hot.slots.is_gated());
        e.set_health(Health::Healthy);
        assert!(!e.hot.slots.is_gated());
        assert_eq!(e.open_slot(), Some(1));

        e.set_weight(0.0);
        assert!(e.hot.slots.is_gated(), "weight 0 drains");
        e.set_health(Health::Ejected { until: later });
        e.set_health(Health::Healthy);
        assert!(e.hot.slots.is_gated(), "healthy again, but still weight 0");
        e.set_weight(2.0);
        assert!(!e.hot.slots.is_gated());

        // Releasing under the gate, and removal, keep their meaning.
        e.set_weight(0.0);
        e.release(1);
        assert_eq!(e.in_flight(), 0);
        e.mark_removed();
        assert!(e.is_removed());
        assert_eq!(e.open_slot(), None);
        assert_eq!(e.in_flight(), 0);

        let zero = Endpoint::new(EndpointConfig::new("b").weight(0.0)).unwrap();
        assert!(zero.hot.slots.is_gated(), "born at weight 0, born gated");
    }

    #[test]
    fn the_decay_weight_matches_exp_on_both_sides_of_its_shortcut() {
        let decay = decay_nanos();
        let mut worst = 0.0f64;
        for i in 0..=20_000u32 {
            // 0 to 2% of the decay time finely, across the switch at 1%, then to 10 decays.
            let elapsed = if i <= 10_000 {
                f64::from(i) * decay * 2e-6
            } else {
                f64::from(i - 10_000) * decay * 1e-3
            };
            let exact = (-elapsed / decay).exp();
            worst = worst.max((decay_weight(elapsed, decay) - exact).abs());
        }
        assert!(worst < 5e-10, "worst error {worst:e}");
        assert_eq!(decay_weight(0.0, decay), 1.0);
    }

    /// Two writers racing health against weight leave the gate true to the final state.
    #[test]
    fn racing_writers_leave_the_gate_true_to_the_last_state() {
        let e = Endpoint::new(EndpointConfig::new("a")).unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        for round in 0..200 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    for i in 0..50 {
                        let h = if i % 2 == 0 {
                            Health::Ejected { until: later }
                        } else {
                            Health::Healthy
                        };
                        e.set_health(h);
                    }
                });
                s.spawn(|| {
                    for i in 0..50 {
                        e.set_weight(if (i + round) % 3 == 0 { 0.0 } else { 1.0 });
                    }
                });
            });
            let open = e.health() == Health::Healthy && e.weight() > 0.0;
            assert_eq!(e.hot.slots.is_gated(), !open, "round {round}");
        }
    }
}
