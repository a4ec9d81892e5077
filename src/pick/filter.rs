//! Which endpoints may take a request: [`Filter`], and the [`View`] of an endpoint it reads
//! once per candidate.

use tokio::time::Instant;

use crate::{
    clock::LazyNow,
    endpoint::{Endpoint, Tokens},
    hints::{Exclude, Require},
};

/// What a pick knows of a candidate that may take the request, read once: its load (this
/// router's requests in flight, plus the other routers' by a fresh load report) and its weight
/// as picks see it (reduced while it slow-starts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct View {
    pub(crate) load: usize,
    pub(crate) weight: f64,
}

impl View {
    /// How far `e` is into its slow-start ramp: its weight as picks see it over its own, in
    /// `(0, 1]`; 1 for an endpoint that is not ramping. The strategies that do not compare
    /// weights (round-robin, random, cost-aware, a remembered endpoint) scale an endpoint's
    /// chance by it, as the others do through its weight.
    #[inline]
    pub(crate) fn ramp(self, e: &Endpoint) -> f64 {
        let full = e.weight();
        if self.weight < full {
            self.weight / full
        } else {
            1.0
        }
    }
}

/// Whether a candidate ramping at `ramp` (see [`View::ramp`]) is taken, given a variate of
/// 64 random bits: with probability `ramp`, and always at full weight.
#[inline]
pub(crate) fn ramp_admits(ramp: f64, variate: u64) -> bool {
    ramp >= 1.0 || ((variate >> 11) as f64) < ramp * (1u64 << 53) as f64
}

/// Which endpoints may take this request.
#[derive(Debug, Clone)]
pub struct Filter<'a> {
    exclude: Option<&'a Exclude>,
    /// One bit per endpoint id modulo 64: the endpoints that need a look at the request's own
    /// conditions (the exclusion's bits, or all of them when there are requirements).
    /// Endpoints with a clear bit are wanted, from one load and one bit test.
    check_mask: u64,
    require: Option<&'a Require>,
    pub(crate) cost: u64,
    /// The request's tokens, for endpoints with a quota (their expectation without).
    pub(crate) tokens: Option<Tokens>,
    pub(crate) max_weight: Option<f64>,
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
            tokens: None,
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

    /// The request's tokens, which endpoints with a [`Quota`](crate::endpoint::Quota) must
    /// have room for (without, each quota's expectation).
    pub fn tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = Some(tokens);
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

    /// Passes over outlier health (ejections, soft ejections): panic mode, when health would
    /// leave no endpoint at all. An endpoint cooling down after a rate limit stays out until
    /// its time: a provider's explicit back-off is not a guess about health.
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

    /// Whether the endpoint may take the request now, concurrency limit and saturation
    /// included.
    #[inline]
    pub fn eligible(&self, e: &Endpoint) -> bool {
        self.view(e).is_some()
    }

    /// Whether the endpoint may take the request, ignoring its concurrency limit and whether
    /// its load report shows it saturated.
    #[inline]
    pub fn serves(&self, e: &Endpoint) -> bool {
        e.takes_traffic(&self.now, self.ignore_health, self.include_held) && self.wants(e)
    }

    /// What the pick needs of the endpoint, if it may take the request now: what
    /// [`eligible`](Self::eligible) and [`weight`](Self::weight) say, each word read once. An
    /// endpoint with a load report is gated, so only it pays for reading the report.
    #[inline(always)]
    pub(crate) fn view(&self, e: &Endpoint) -> Option<View> {
        let (load, weight) = match e.open_slot() {
            Some(in_flight) => (in_flight, e.weight()),
            None => e.gated_view(
                &self.now,
                self.ignore_health,
                self.include_held,
                self.tokens,
            )?,
        };
        self.wants(e).then_some(View { load, weight })
    }

    /// The request's own conditions: not excluded, requirements met.
    #[inline(always)]
    pub(crate) fn wants(&self, e: &Endpoint) -> bool {
        self.unmasked(e) || self.admits(e)
    }

    /// Whether the endpoint's bit in the check mask is clear: then it is wanted without a
    /// look at the exclusion or the requirements, which [`admits`](Self::admits) takes.
    #[inline(always)]
    pub(crate) fn unmasked(&self, e: &Endpoint) -> bool {
        (self.check_mask >> (e.id() % 64)) & 1 == 0
    }

    /// Whether the endpoint is not excluded and meets the requirements.
    #[inline(never)]
    fn admits(&self, e: &Endpoint) -> bool {
        !self.exclude.is_some_and(|x| x.contains(e)) && self.require.map_or(true, |r| r.admits(e))
    }

    /// The endpoint's weight as picks see it now (reduced while it slow-starts).
    #[inline]
    pub fn weight(&self, e: &Endpoint) -> f64 {
        e.effective_weight(&self.now)
    }
}
