//! Picking strategies: plain functions over a slice of endpoints.
//!
//! Each function reads the endpoints' live state, applies a [`Filter`] (health, weight 0,
//! concurrency limit, [`Exclude`]) and returns the index of its choice. None takes a lock,
//! allocates or needs a runtime, so a simulation can drive them with virtual time
//! ([`Filter::at`]) and a seeded [`FastRng`](crate::FastRng).
//!
//! Load is compared as `(in_flight + 1) / weight`: the load the endpoint would have with this
//! request, relative to its capacity. Ties are broken at random, never "first wins".
//!
//! ```
//! use tower_ai_balance::{pick, Endpoint, EndpointConfig, FastRng};
//! let endpoints: Vec<_> = ["a", "b", "c"]
//!     .into_iter()
//!     .map(|k| Endpoint::new(EndpointConfig::new(k)).unwrap())
//!     .collect();
//! let mut rng = FastRng::seeded(1);
//! let i = pick::p2c(&endpoints, &pick::Filter::new(), &mut rng).unwrap();
//! assert!(i < 3);
//! ```

use std::cell::Cell;

use rand::RngCore;
use tokio::time::Instant;

use crate::{
    endpoint::Endpoint,
    hints::{Affinity, Exclude, Require},
    sync::{AtomicUsize, Ordering::Relaxed},
};

/// How many draws power of two choices makes for two eligible endpoints before it falls back
/// to a full scan.
const MAX_DRAWS: usize = 32;
/// How many draws [`random`] makes before it falls back to counting.
const REDRAWS: usize = 4;

/// The clock, read at most once per pick and only if something needs it.
#[derive(Debug, Default, Clone)]
pub struct LazyNow(Cell<Option<Instant>>);

impl LazyNow {
    /// Reads the clock on first use.
    pub fn new() -> Self {
        Self(Cell::new(None))
    }

    /// A fixed time, for simulations.
    pub fn at(now: Instant) -> Self {
        Self(Cell::new(Some(now)))
    }

    /// The time.
    #[inline]
    pub fn get(&self) -> Instant {
        match self.0.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.0.set(Some(t));
                t
            }
        }
    }
}

/// Which endpoints may take this request.
#[derive(Debug, Clone)]
pub struct Filter<'a> {
    exclude: Option<&'a Exclude>,
    /// One bit per endpoint id modulo 64: the endpoints that need a closer look (the
    /// exclusion's bits, or all of them when there are requirements). Endpoints with a clear
    /// bit are wanted, from one load and one bit test.
    check_mask: u64,
    require: Option<&'a Require>,
    pub(crate) cost: u64,
    max_weight: Option<f64>,
    ignore_health: bool,
    include_held: bool,
    now: LazyNow,
}

impl Default for Filter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> Filter<'a> {
    /// Endpoints that take traffic (not removed, weight above 0, healthy or due back) and have
    /// room under their concurrency limit.
    pub fn new() -> Self {
        Self {
            exclude: None,
            check_mask: 0,
            require: None,
            cost: 1,
            max_weight: None,
            ignore_health: false,
            include_held: false,
            now: LazyNow::new(),
        }
    }

    /// Also leaves out endpoints that do not meet `require`.
    pub fn require(mut self, require: &'a Require) -> Self {
        self.require = Some(require);
        self.check_mask = !0;
        self
    }

    /// The request's work (its [`Cost`](crate::hints::Cost)), for the work-aware strategies;
    /// 1 by default.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// Makes the two-choice strategies sample candidates in proportion to their weight, `max`
    /// being the largest weight among the endpoints (the pool's snapshot knows it; `Balance`
    /// sets it when weights differ). Without it candidates are sampled uniformly and weight
    /// only enters the comparison, which cannot give one endpoint a larger share of picks than
    /// its chance of being sampled: one endpoint of weight 5 among four of weights 1, 2, 5, 1
    /// is sampled in at most half the pairs but is owed 56% of the load.
    pub fn sample_by_weight(mut self, max: f64) -> Self {
        self.max_weight = (max > 0.0 && max.is_finite()).then_some(max);
        self
    }

    /// Also leaves out these endpoints.
    pub fn exclude(mut self, exclude: &'a Exclude) -> Self {
        // An empty set has an empty mask: no endpoint is looked at twice.
        self.exclude = Some(exclude);
        self.check_mask |= exclude.mask();
        self
    }

    /// Also takes endpoints held back by a soft ejection, which the filter otherwise leaves
    /// out: for when nothing else can serve.
    pub fn include_held(mut self) -> Self {
        self.include_held = true;
        self
    }

    /// Passes over health: panic mode, when health would leave no endpoint at all.
    pub fn ignore_health(mut self) -> Self {
        self.ignore_health = true;
        self.include_held = true;
        self
    }

    /// Judges health at this time instead of the clock's.
    pub fn at(mut self, now: Instant) -> Self {
        self.now = LazyNow::at(now);
        self
    }

    /// The time the filter judges at.
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    /// Whether the endpoint may take the request now, concurrency limit included.
    #[inline]
    pub fn eligible(&self, e: &Endpoint) -> bool {
        self.view(e).is_some()
    }

    /// Whether the endpoint may take the request, ignoring its concurrency limit.
    #[inline]
    pub fn serves(&self, e: &Endpoint) -> bool {
        e.takes_traffic(&self.now, self.ignore_health, self.include_held) && self.wants(e)
    }

    /// `Some((in_flight, weight))` if the endpoint may take the request now: what
    /// [`eligible`](Self::eligible) and [`weight`](Self::weight) say, each word read once.
    #[inline(always)]
    fn view(&self, e: &Endpoint) -> Option<(usize, f64)> {
        let view = match e.open_slot() {
            Some(in_flight) => (in_flight, e.weight()),
            None => e.gated_view(&self.now, self.ignore_health, self.include_held)?,
        };
        self.wants(e).then_some(view)
    }

    /// The request's own conditions: not excluded, requirements met.
    #[inline(always)]
    fn wants(&self, e: &Endpoint) -> bool {
        self.plainly_wants(e) || self.wants_on_closer_look(e)
    }

    /// Whether the endpoint is wanted at a glance: its bit in the check mask is clear. If not,
    /// [`wants_on_closer_look`](Self::wants_on_closer_look) decides.
    #[inline(always)]
    fn plainly_wants(&self, e: &Endpoint) -> bool {
        (self.check_mask >> (e.id() % 64)) & 1 == 0
    }

    #[inline(never)]
    fn wants_on_closer_look(&self, e: &Endpoint) -> bool {
        let excluded = match self.exclude {
            Some(x) => x.contains(e),
            None => false,
        };
        !excluded
            && match self.require {
                Some(r) => r.admits(e),
                None => true,
            }
    }

    /// The endpoint's weight as picks see it now (reduced while it slow-starts).
    #[inline]
    pub fn weight(&self, e: &Endpoint) -> f64 {
        e.effective_weight(&self.now)
    }
}

/// A picking strategy, for [`Balance`](crate::balance::Balance).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub enum Strategy {
    /// Power of two choices over in-flight load: the default. See [`p2c`].
    #[default]
    PowerOfTwoChoices,
    /// The least-loaded endpoint by full scan. See [`least_loaded`].
    LeastLoaded,
    /// Power of two choices over peak-EWMA time to first byte × load. See [`peak_ewma`].
    PeakEwma,
    /// Each endpoint in turn. See [`round_robin`].
    RoundRobin,
    /// Uniformly at random. See [`random`].
    Random,
    /// At random in proportion to weight. See [`weighted`].
    Weighted,
    /// Power of two choices over outstanding work relative to weight. See [`least_work`].
    LeastWork,
    /// The least outstanding work relative to weight, by full scan. See [`least_work_scan`].
    LeastWorkScan,
    /// The cheapest endpoint while its load is under `max_load`, then the next cheapest, and
    /// the least loaded when all are above it. See [`cheapest`].
    CostAware {
        /// In-flight requests per unit of concurrency limit (or of weight, without a limit).
        max_load: f64,
    },
}

impl Strategy {
    /// Why this strategy picks what it picks, in a few words (for tracing).
    pub fn describe(self) -> &'static str {
        match self {
            Self::PowerOfTwoChoices => "less loaded of two at random",
            Self::LeastLoaded => "least loaded",
            Self::PeakEwma => "lower latency x load of two at random",
            Self::RoundRobin => "next in turn",
            Self::Random => "at random",
            Self::Weighted => "at random by weight",
            Self::LeastWork => "less outstanding work of two at random",
            Self::LeastWorkScan => "least outstanding work",
            Self::CostAware { .. } => "cheapest under the load threshold",
        }
    }

    /// Picks with this strategy. `cursor` is round-robin's position, shared by its callers.
    #[inline]
    pub fn pick<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
        self,
        endpoints: &[E],
        filter: &Filter<'_>,
        cursor: &AtomicUsize,
        rng: &mut R,
    ) -> Option<usize> {
        match self {
            Self::PowerOfTwoChoices => p2c(endpoints, filter, rng),
            Self::LeastLoaded => least_loaded(endpoints, filter, rng),
            Self::PeakEwma => peak_ewma(endpoints, filter, rng),
            Self::RoundRobin => round_robin(endpoints, filter, cursor),
            Self::Random => random(endpoints, filter, rng),
            Self::Weighted => weighted(endpoints, filter, rng),
            Self::LeastWork => least_work(endpoints, filter, rng),
            Self::LeastWorkScan => least_work_scan(endpoints, filter, rng),
            Self::CostAware { max_load } => cheapest(endpoints, filter, max_load, rng),
        }
    }
}

/// `a` is less loaded than `b` (`Less`), as loaded, or more: `(in_flight + 1) / weight`,
/// compared without division.
#[inline]
fn compare_load(a: &Endpoint, b: &Endpoint, filter: &Filter<'_>) -> std::cmp::Ordering {
    let la = (a.in_flight() + 1) as f64 * filter.weight(b);
    let lb = (b.in_flight() + 1) as f64 * filter.weight(a);
    la.total_cmp(&lb)
}

/// Samples two distinct eligible endpoints uniformly (in proportion to weight with
/// [`Filter::sample_by_weight`]), and a coin for ties: each draw takes 32
/// random bits, two per RNG word, so an unfiltered pool costs one word. A selective filter
/// (one endpoint in 6 eligible, say) costs a dozen draws rather than a scan; after
/// [`MAX_DRAWS`] the caller falls back to a full scan.
#[inline]
fn sample_two<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<(usize, usize, bool)> {
    // The common case, unweighted: one word gives two distinct eligible endpoints.
    if filter.max_weight.is_none() {
        let word = rng.next_u64();
        let (a, b) = pair(word, endpoints.len());
        if filter.eligible(endpoints[a].as_ref()) && filter.eligible(endpoints[b].as_ref()) {
            return Some((a, b, coin(word)));
        }
    }
    // Otherwise draw afresh until two are found: still uniform over eligible pairs, since
    // the first draw is kept only when it is such a pair.
    sample_two_slowly(endpoints, filter, rng)
}

/// Two distinct indices below `n` (at least 2) from one word's halves, uniform over ordered
/// pairs: the first among all `n`, the second among the other `n - 1` (Lemire's
/// multiply-shift for both), so no draw is wasted on a collision (one in 8 at 8 endpoints).
#[inline]
fn pair(word: u64, n: usize) -> (usize, usize) {
    let a = crate::rng::below(word as u32, n);
    let b = a + 1 + crate::rng::below((word >> 32) as u32, n - 1);
    (a, if b >= n { b - n } else { b })
}

/// `a` if it is less by `order`, `b` if greater, the coin deciding a tie.
#[inline]
fn choose(order: std::cmp::Ordering, a: usize, b: usize, coin: bool) -> usize {
    match order {
        std::cmp::Ordering::Less => a,
        std::cmp::Ordering::Greater => b,
        std::cmp::Ordering::Equal if coin => a,
        std::cmp::Ordering::Equal => b,
    }
}

/// A coin from a word's bits that the indices do not use alone.
#[inline]
fn coin(word: u64) -> bool {
    word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 1
}

#[inline(never)]
fn sample_two_slowly<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<(usize, usize, bool)> {
    let n = endpoints.len();
    let mut first: Option<usize> = None;
    let mut word = 0u64;
    for draw in 0..MAX_DRAWS {
        if draw % 2 == 0 {
            word = rng.next_u64();
        }
        let bits = (word >> (32 * (draw % 2))) as u32;
        let i = crate::rng::below(bits, n);
        if !filter.eligible(endpoints[i].as_ref()) {
            continue;
        }
        if let Some(max) = filter.max_weight {
            // Rejection sampling in proportion to weight: accept with probability w / max,
            // using the draw's unused low bits as the uniform variate.
            let spare = (u64::from(bits) * n as u64) as u32;
            if f64::from(spare) * max >= filter.weight(endpoints[i].as_ref()) * 4_294_967_296.0 {
                continue;
            }
        }
        match first {
            None => first = Some(i),
            Some(a) if a != i => return Some((a, i, coin(word))),
            Some(_) => {}
        }
    }
    None
}

/// Power of two choices: samples two eligible endpoints and takes the less loaded, a coin
/// deciding ties. Constant time; when the filter leaves few endpoints, falls back to
/// [`least_loaded`].
#[inline]
pub fn p2c<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    // The hot path: one word draws two distinct endpoints, each read once; compare
    // (in_flight + 1) / weight without dividing.
    let n = endpoints.len();
    if n < 2 {
        return least_loaded(endpoints, filter, rng);
    }
    if filter.max_weight.is_none() {
        let word = rng.next_u64();
        let (a, b) = pair(word, n);
        let (ea, eb) = (endpoints[a].as_ref(), endpoints[b].as_ref());
        // Both open with room and plainly wanted: nothing is called, so nothing spills.
        if let (Some(fa), Some(fb)) = (ea.open_slot(), eb.open_slot()) {
            if filter.plainly_wants(ea) && filter.plainly_wants(eb) {
                let order = compare_views(fa, ea.weight(), fb, eb.weight());
                return Some(choose(order, a, b, coin(word)));
            }
        }
        return p2c_pair(endpoints, filter, rng, (a, b, coin(word)));
    }
    p2c_slowly(endpoints, filter, rng)
}

/// `(in_flight + 1) / weight` of one endpoint against another's, without dividing.
#[inline(always)]
fn compare_views(fa: usize, wa: f64, fb: usize, wb: f64) -> std::cmp::Ordering {
    if wa == wb {
        fa.cmp(&fb)
    } else {
        ((fa + 1) as f64 * wb).total_cmp(&((fb + 1) as f64 * wa))
    }
}

/// The hot path's pair when one of the two needs a closer look (gated, or maybe excluded):
/// kept if both are eligible, else drawn afresh.
#[cold]
#[inline(never)]
fn p2c_pair<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    (a, b, coin): (usize, usize, bool),
) -> Option<usize> {
    if let (Some((fa, wa)), Some((fb, wb))) = (
        filter.view(endpoints[a].as_ref()),
        filter.view(endpoints[b].as_ref()),
    ) {
        return Some(choose(compare_views(fa, wa, fb, wb), a, b, coin));
    }
    p2c_slowly(endpoints, filter, rng)
}

/// After the first draw missed (or when weights differ): no second try at the one-word draw.
#[inline(never)]
fn p2c_slowly<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let sampled = sample_two_slowly(endpoints, filter, rng);
    better_of(endpoints, filter, rng, sampled, |a, b| {
        compare_load(a, b, filter)
    })
}

/// The better of two eligible endpoints sampled at random by `order`, a coin deciding ties; a
/// full scan by the same order when sampling keeps missing (a selective filter).
#[inline]
fn best_of_two<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    order: impl Fn(&Endpoint, &Endpoint) -> std::cmp::Ordering,
) -> Option<usize> {
    let sampled = if endpoints.len() < 2 {
        None
    } else {
        sample_two(endpoints, filter, rng)
    };
    better_of(endpoints, filter, rng, sampled, order)
}

/// The better of a sampled pair by `order`; without a pair, the best by full scan.
#[inline]
fn better_of<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    sampled: Option<(usize, usize, bool)>,
    order: impl Fn(&Endpoint, &Endpoint) -> std::cmp::Ordering,
) -> Option<usize> {
    let Some((a, b, coin)) = sampled else {
        return best_by(endpoints, filter, rng, order);
    };
    Some(choose(
        order(endpoints[a].as_ref(), endpoints[b].as_ref()),
        a,
        b,
        coin,
    ))
}

/// The least-loaded eligible endpoint by full scan; ties broken uniformly at random.
pub fn least_loaded<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    best_by(endpoints, filter, rng, |a, b| compare_load(a, b, filter))
}

/// The eligible endpoint that is least by `order`, ties broken uniformly at random.
fn best_by<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
    order: impl Fn(&Endpoint, &Endpoint) -> std::cmp::Ordering,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut ties = 0u32;
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        if !filter.eligible(e) {
            continue;
        }
        let Some(b) = best else {
            best = Some(i);
            ties = 1;
            continue;
        };
        match order(e, endpoints[b].as_ref()) {
            std::cmp::Ordering::Less => {
                best = Some(i);
                ties = 1;
            }
            std::cmp::Ordering::Equal => {
                // Reservoir sampling: the k-th tie replaces the choice with probability 1/k.
                ties += 1;
                if crate::rng::below(rng.next_u32(), ties as usize) == 0 {
                    best = Some(i);
                }
            }
            std::cmp::Ordering::Greater => {}
        }
    }
    best
}

/// `a` has less outstanding work than `b`, counting this request's: `(outstanding + cost) /
/// weight`.
#[inline]
fn compare_work(a: &Endpoint, b: &Endpoint, filter: &Filter<'_>) -> std::cmp::Ordering {
    let wa = (a.outstanding() + filter.cost) as f64 * filter.weight(b);
    let wb = (b.outstanding() + filter.cost) as f64 * filter.weight(a);
    wa.total_cmp(&wb)
}

/// Power of two choices over outstanding work (the [`Cost`](crate::hints::Cost) of the
/// requests in flight) relative to weight: a request's weight is its tokens, not 1. Falls
/// back to a full scan by the same order when the filter leaves few endpoints.
pub fn least_work<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    best_of_two(endpoints, filter, rng, |a, b| compare_work(a, b, filter))
}

/// The least outstanding work relative to weight, by full scan; ties broken at random.
pub fn least_work_scan<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    best_by(endpoints, filter, rng, |a, b| compare_work(a, b, filter))
}

/// An endpoint's load for [`cheapest`]: in flight per unit of its concurrency limit, or of its
/// weight when it has none.
fn utilisation(e: &Endpoint, filter: &Filter<'_>) -> f64 {
    let capacity = e
        .max_concurrency()
        .map_or_else(|| filter.weight(e), |max| max as f64);
    e.in_flight() as f64 / capacity.max(f64::MIN_POSITIVE)
}

/// Cost-aware: the cheapest eligible endpoint (by its price per 1,000 input plus output
/// tokens) whose load is under `max_load`; the least loaded of them all when every one is
/// above it. Linear in the number of endpoints.
pub fn cheapest<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    max_load: f64,
    rng: &mut R,
) -> Option<usize> {
    let price = |e: &Endpoint| e.capabilities().price_in + e.capabilities().price_out;
    let load = |e: &Endpoint| utilisation(e, filter);
    let pick = best_by(endpoints, filter, rng, |a, b| {
        let (room_a, room_b) = (load(a) < max_load, load(b) < max_load);
        room_b
            .cmp(&room_a)
            .then(price(a).total_cmp(&price(b)))
            .then(load(a).total_cmp(&load(b)))
    })?;
    if load(endpoints[pick].as_ref()) < max_load {
        return Some(pick);
    }
    best_by(endpoints, filter, rng, |a, b| load(a).total_cmp(&load(b)))
}

/// Power of two choices over peak-EWMA time to first byte × `(in_flight + 1) / weight`
/// (Finagle's and tower's least-latency rule, without the lock). An endpoint with no
/// estimate yet borrows the other's, so a new endpoint is tried without being flooded.
pub fn peak_ewma<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let now = filter.now();
    best_of_two(endpoints, filter, rng, |a, b| {
        let (ta, tb) = (a.ttfb_nanos(now), b.ttfb_nanos(now));
        let ta_ = ta.or(tb).unwrap_or(1.0).max(1.0);
        let tb_ = tb.or(ta).unwrap_or(1.0).max(1.0);
        let ca = ta_ * (a.in_flight() + 1) as f64 * filter.weight(b);
        let cb = tb_ * (b.in_flight() + 1) as f64 * filter.weight(a);
        ca.total_cmp(&cb)
    })
}

/// Affinity: the preferred endpoint if it can serve, else [`rendezvous`].
#[inline]
pub fn affine<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    affinity: &Affinity,
) -> Option<usize> {
    if let Some(id) = affinity.prefer {
        let preferred = endpoints
            .iter()
            .position(|e| e.as_ref().id() == id && filter.eligible(e.as_ref()));
        if preferred.is_some() {
            return preferred;
        }
    }
    rendezvous(endpoints, filter, affinity.key, affinity.bound)
}

/// Weighted rendezvous (highest random weight) hashing with bounded loads.
///
/// Each eligible endpoint scores `weight / -ln(u)`, `u` uniform from the key's and the
/// endpoint key's [`stable_hash`](crate::hash::stable_hash)es, and the best score wins among
/// those with fewer requests in flight than `⌈bound × (total + 1) × weight / Σweight⌉`. The
/// same key finds the same endpoint wherever it is computed; removing an endpoint moves only
/// its keys; a hot key spills over rather than pile up. Two passes over the endpoints.
pub fn rendezvous<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    key: u64,
    bound: f64,
) -> Option<usize> {
    let mut total = 0usize;
    let mut weights = 0.0;
    for e in endpoints.iter().map(AsRef::as_ref) {
        if filter.eligible(e) {
            total += e.in_flight();
            weights += filter.weight(e);
        }
    }
    if weights <= 0.0 {
        return None;
    }
    let share = bound.max(1.0) * (total + 1) as f64 / weights;
    let mut best: Option<(usize, f64)> = None;
    let mut best_any: Option<(usize, f64)> = None;
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        if !filter.eligible(e) {
            continue;
        }
        let weight = filter.weight(e);
        let u =
            ((crate::hash::combine(key, e.key_hash()) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = weight / -u.ln();
        if best_any.is_none_or_lower(score) {
            best_any = Some((i, score));
        }
        let capacity = (share * weight).ceil();
        if (e.in_flight() as f64) < capacity && best.is_none_or_lower(score) {
            best = Some((i, score));
        }
    }
    best.or(best_any).map(|(i, _)| i)
}

trait Best {
    fn is_none_or_lower(&self, score: f64) -> bool;
}

impl Best for Option<(usize, f64)> {
    #[inline]
    fn is_none_or_lower(&self, score: f64) -> bool {
        self.map_or(true, |(_, s)| s < score)
    }
}

/// Each eligible endpoint in turn, from a shared cursor; blind to load.
pub fn round_robin<E: AsRef<Endpoint>>(
    endpoints: &[E],
    filter: &Filter<'_>,
    cursor: &AtomicUsize,
) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Relaxed) % n;
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| filter.eligible(endpoints[i].as_ref()))
}

/// Uniformly at random among the eligible endpoints; blind to load.
pub fn random<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    for _ in 0..=REDRAWS {
        let i = crate::rng::below(rng.next_u32(), n);
        if filter.eligible(endpoints[i].as_ref()) {
            return Some(i);
        }
    }
    // Most are filtered out: choose uniformly among those left, in two passes.
    let count = endpoints
        .iter()
        .filter(|e| filter.eligible(e.as_ref()))
        .count();
    if count == 0 {
        return None;
    }
    let k = crate::rng::below(rng.next_u32(), count);
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| filter.eligible(e.as_ref()))
        .nth(k)
        .map(|(i, _)| i)
}

/// At random in proportion to weight among the eligible endpoints; blind to load. Linear in
/// the number of endpoints.
pub fn weighted<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
    endpoints: &[E],
    filter: &Filter<'_>,
    rng: &mut R,
) -> Option<usize> {
    let total: f64 = endpoints
        .iter()
        .map(AsRef::as_ref)
        .filter(|e| filter.eligible(e))
        .map(|e| filter.weight(e))
        .sum();
    if total <= 0.0 {
        return None;
    }
    let mut x = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut last = None;
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.as_ref();
        if !filter.eligible(e) {
            continue;
        }
        last = Some(i);
        x -= filter.weight(e);
        if x < 0.0 {
            return Some(i);
        }
    }
    last
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{EndpointConfig, FastRng, Health};

    fn endpoints(weights: &[f64]) -> Vec<Arc<Endpoint>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint::new(EndpointConfig::new(format!("e{i}")).weight(*w)).unwrap())
            .collect()
    }

    fn hold(e: &Endpoint, n: usize) {
        for _ in 0..n {
            assert!(e.try_acquire(1).is_some());
        }
    }

    #[test]
    fn a_pair_is_two_distinct_indices_uniform_over_ordered_pairs() {
        let mut rng = FastRng::seeded(11);
        for n in [2usize, 3, 8, 1000] {
            for _ in 0..10_000 {
                let (a, b) = pair(rng.next_u64(), n);
                assert!(a < n && b < n && a != b, "{a}, {b} of {n}");
            }
        }
        let mut counts = [[0u32; 3]; 3];
        for _ in 0..60_000 {
            let (a, b) = pair(rng.next_u64(), 3);
            counts[a][b] += 1;
        }
        for (a, row) in counts.iter().enumerate() {
            for (b, &c) in row.iter().enumerate() {
                if a != b {
                    assert!((9_500..10_500).contains(&c), "{counts:?}");
                }
            }
        }
    }

    #[test]
    fn ties_are_broken_at_random_not_first_wins() {
        let eps = endpoints(&[1.0; 5]);
        let mut rng = FastRng::seeded(3);
        let cursor = AtomicUsize::new(0);
        for strategy in [
            Strategy::PowerOfTwoChoices,
            Strategy::LeastLoaded,
            Strategy::PeakEwma,
        ] {
            let mut counts = [0usize; 5];
            for _ in 0..50_000 {
                counts[strategy
                    .pick(&eps, &Filter::new(), &cursor, &mut rng)
                    .unwrap()] += 1;
            }
            for c in counts {
                assert!(
                    (9_000..11_000).contains(&c),
                    "{strategy:?} is biased: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn least_loaded_and_p2c_prefer_the_lighter_endpoint_relative_to_weight() {
        let eps = endpoints(&[1.0, 4.0]);
        hold(&eps[0], 2); // load (2+1)/1 = 3
        hold(&eps[1], 4); // load (4+1)/4 = 1.25
        let mut rng = FastRng::seeded(1);
        for _ in 0..100 {
            assert_eq!(least_loaded(&eps, &Filter::new(), &mut rng), Some(1));
            assert_eq!(p2c(&eps, &Filter::new(), &mut rng), Some(1));
        }
    }

    #[test]
    fn removed_endpoints_without_a_limit_are_never_picked() {
        // The removed flag is the in-flight word's top bit; without a concurrency limit the
        // word must not pass as merely "less than the limit".
        let eps: Vec<_> = (0..2)
            .map(|i| Endpoint::new(EndpointConfig::new(format!("e{i}"))).unwrap())
            .collect();
        eps.iter().for_each(|e| e.mark_removed());
        let filter = Filter::new();
        assert!(!filter.eligible(&eps[0]));
        let mut rng = FastRng::seeded(3);
        for _ in 0..100 {
            assert_eq!(p2c(&eps, &filter, &mut rng), None);
        }
    }

    #[test]
    fn filters_leave_out_excluded_drained_ejected_and_full_endpoints() {
        let eps: Vec<_> = (0..6)
            .map(|i| {
                let mut c = EndpointConfig::new(format!("e{i}"));
                if i == 3 {
                    c = c.max_concurrency(1);
                }
                Endpoint::new(c).unwrap()
            })
            .collect();
        let mut exclude = Exclude::new();
        exclude.insert(&eps[0]);
        eps[1].set_weight(0.0);
        eps[2].set_health(Health::Ejected {
            until: Instant::now() + std::time::Duration::from_secs(60),
        });
        hold(&eps[3], 1);
        eps[4].mark_removed();
        let filter = Filter::new().exclude(&exclude);
        let mut rng = FastRng::seeded(9);
        let cursor = AtomicUsize::new(0);
        for strategy in [
            Strategy::PowerOfTwoChoices,
            Strategy::LeastLoaded,
            Strategy::PeakEwma,
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::Weighted,
        ] {
            for _ in 0..200 {
                assert_eq!(
                    strategy.pick(&eps, &filter, &cursor, &mut rng),
                    Some(5),
                    "{strategy:?}"
                );
            }
        }
        eps[5].set_weight(0.0);
        assert_eq!(p2c(&eps, &filter, &mut rng), None);
        assert_eq!(round_robin(&eps, &filter, &cursor), None);
    }

    #[test]
    fn an_expired_ejection_lets_the_endpoint_back_at_the_filter_time() {
        let eps = endpoints(&[1.0]);
        let t0 = Instant::now();
        eps[0].set_health(Health::CoolingDown {
            until: t0 + std::time::Duration::from_millis(1500),
        });
        let mut rng = FastRng::seeded(1);
        let before = Filter::new().at(t0 + std::time::Duration::from_millis(1400));
        let after = Filter::new().at(t0 + std::time::Duration::from_millis(1501));
        assert_eq!(p2c(&eps, &before, &mut rng), None);
        assert_eq!(p2c(&eps, &after, &mut rng), Some(0));
    }

    #[test]
    fn weighted_sends_traffic_in_proportion() {
        let eps = endpoints(&[1.0, 2.0, 3.0, 0.0]);
        let mut rng = FastRng::seeded(5);
        let mut counts = [0usize; 4];
        let n = 60_000;
        for _ in 0..n {
            counts[weighted(&eps, &Filter::new(), &mut rng).unwrap()] += 1;
        }
        for (i, expected) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0, 0.0].iter().enumerate() {
            let share = counts[i] as f64 / n as f64;
            assert!(
                (share - expected).abs() < 0.01,
                "share {i}: {share} vs {expected}"
            );
        }
    }

    #[test]
    fn p2c_holds_in_flight_in_proportion_to_weight() {
        // 600 long requests arrive one after another and all stay: the in-flight split should
        // follow the weights.
        let eps = endpoints(&[1.0, 2.0, 3.0]);
        let mut rng = FastRng::seeded(11);
        for _ in 0..600 {
            let i = p2c(&eps, &Filter::new(), &mut rng).unwrap();
            assert!(eps[i].try_acquire(1).is_some());
        }
        for (i, w) in [1.0, 2.0, 3.0].iter().enumerate() {
            let expected = 600.0 * w / 6.0;
            let got = eps[i].in_flight() as f64;
            assert!(
                (got - expected).abs() <= expected * 0.05,
                "endpoint {i}: {got} vs {expected}"
            );
        }
    }

    #[test]
    fn a_failing_endpoint_never_looks_fast_to_peak_ewma() {
        let eps = endpoints(&[1.0, 1.0]);
        let now = Instant::now();
        // e0 answers in 200 ms; e1 fails in 1 ms.
        eps[0].observe_ttfb(std::time::Duration::from_millis(200), now);
        eps[0].observe_completion(std::time::Duration::from_millis(200), false, now);
        for _ in 0..5 {
            eps[1].observe_completion(std::time::Duration::from_millis(1), true, now);
        }
        assert!(eps[1].ttfb_estimate(now).unwrap() >= crate::endpoint::FAILURE_PENALTY);
        let mut rng = FastRng::seeded(2);
        let filter = Filter::new().at(now);
        for _ in 0..100 {
            assert_eq!(peak_ewma(&eps, &filter, &mut rng), Some(0));
        }
    }
}
