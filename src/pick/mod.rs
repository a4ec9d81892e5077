//! Picking strategies: plain functions over a slice of endpoints.
//!
//! Each function reads the endpoints' live state, applies a [`Filter`] (health, weight 0,
//! concurrency limit, [`Exclude`](crate::hints::Exclude)) and returns the index of its choice.
//! None takes a lock, allocates or needs a runtime, so a simulation can drive them with
//! virtual time ([`Filter::at`]) and a seeded random number generator of its own (any
//! [`rand::RngCore`]). They are public for that use; [`Balance`](crate::balance::Balance)
//! picks through a [`Picker`].
//!
//! Load is compared as `(load + 1) / weight`: the load the endpoint would have with this
//! request, relative to its capacity. The load is this router's requests in flight, plus, when
//! the endpoint has a fresh load report ([`Endpoint::report`]), the other routers' requests
//! there by that report (see [`engines`](crate::engines) for why); an endpoint whose fresh
//! report shows it saturated is treated as full. Ties are broken at random, never "first
//! wins". The two-choice strategies share one pair sampler, which reads each candidate once.
//! The work-aware strategies ([`least_work`]) count outstanding tokens, which reports do not
//! give, and so read this router's own work alone.
//!
//! ```
//! use rand::{rngs::SmallRng, SeedableRng};
//! use tower_ai_balance::{pick, Endpoint, EndpointConfig};
//! let endpoints: Vec<_> = ["a", "b", "c"]
//!     .into_iter()
//!     .map(|k| Endpoint::new(EndpointConfig::new(k)).unwrap())
//!     .collect();
//! let mut rng = SmallRng::seed_from_u64(1);
//! let i = pick::p2c(&endpoints, &pick::Filter::new(), &mut rng).unwrap();
//! assert!(i < 3);
//! ```

mod cheapest;
mod compare;
mod filter;
mod least_work;
mod p2c;
mod peak_ewma;
#[cfg(all(test, not(loom)))]
mod ramp_tests;
mod random;
mod rendezvous;
mod round_robin;
mod sample;
mod weighted;

use rand::RngCore;

pub use self::{
    cheapest::cheapest,
    filter::Filter,
    least_work::{least_work, least_work_scan},
    p2c::{least_loaded, p2c},
    peak_ewma::peak_ewma,
    random::random,
    rendezvous::{affine, rendezvous},
    round_robin::RoundRobin,
    weighted::weighted,
};
use crate::endpoint::Endpoint;

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
    /// Each endpoint in turn. See [`RoundRobin`].
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
}

/// A [`Strategy`] with the state it keeps (round-robin's cursor): what
/// [`Balance`](crate::balance::Balance) picks with, shared by its clones.
#[derive(Debug, Default)]
pub struct Picker {
    strategy: Strategy,
    round_robin: RoundRobin,
}

impl Picker {
    /// A picker for `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            round_robin: RoundRobin::new(),
        }
    }

    /// Its strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Picks among `endpoints` with the strategy: the index of the choice, or `None` if the
    /// filter leaves none.
    #[inline]
    pub fn pick<E: AsRef<Endpoint>, R: RngCore + ?Sized>(
        &self,
        endpoints: &[E],
        filter: &Filter<'_>,
        rng: &mut R,
    ) -> Option<usize> {
        match self.strategy {
            Strategy::PowerOfTwoChoices => p2c(endpoints, filter, rng),
            Strategy::LeastLoaded => least_loaded(endpoints, filter, rng),
            Strategy::PeakEwma => peak_ewma(endpoints, filter, rng),
            Strategy::RoundRobin => self.round_robin.pick(endpoints, filter),
            Strategy::Random => random(endpoints, filter, rng),
            Strategy::Weighted => weighted(endpoints, filter, rng),
            Strategy::LeastWork => least_work(endpoints, filter, rng),
            Strategy::LeastWorkScan => least_work_scan(endpoints, filter, rng),
            Strategy::CostAware { max_load } => cheapest(endpoints, filter, max_load, rng),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::{hints::Exclude, rng::FastRng, EndpointConfig, Health};

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
    fn ties_are_broken_at_random_not_first_wins() {
        let eps = endpoints(&[1.0; 5]);
        let mut rng = FastRng::seeded(3);
        for strategy in [
            Strategy::PowerOfTwoChoices,
            Strategy::LeastLoaded,
            Strategy::PeakEwma,
        ] {
            let picker = Picker::new(strategy);
            let mut counts = [0usize; 5];
            for _ in 0..50_000 {
                counts[picker.pick(&eps, &Filter::new(), &mut rng).unwrap()] += 1;
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
        let round_robin = RoundRobin::new();
        for strategy in [
            Strategy::PowerOfTwoChoices,
            Strategy::LeastLoaded,
            Strategy::PeakEwma,
            Strategy::RoundRobin,
            Strategy::Random,
            Strategy::Weighted,
        ] {
            let picker = Picker::new(strategy);
            for _ in 0..200 {
                assert_eq!(
                    picker.pick(&eps, &filter, &mut rng),
                    Some(5),
                    "{strategy:?}"
                );
            }
        }
        eps[5].set_weight(0.0);
        assert_eq!(p2c(&eps, &filter, &mut rng), None);
        assert_eq!(round_robin.pick(&eps, &filter), None);
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
        // At least the failure penalty of one second.
        assert!(eps[1].ttfb_estimate(now).unwrap() >= std::time::Duration::from_secs(1));
        let mut rng = FastRng::seeded(2);
        let filter = Filter::new().at(now);
        for _ in 0..100 {
            assert_eq!(peak_ewma(&eps, &filter, &mut rng), Some(0));
        }
    }
}
