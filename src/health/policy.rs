//! [`HealthPolicy`]: when an endpoint is ejected, for how long, and how it comes back; and
//! what each verdict and probe result does to the endpoint's health.

use std::time::Duration;

use tokio::time::Instant;

use super::outlier::{Outliers, RecordGuard};
use crate::{
    classify::Outcome,
    clock::later,
    endpoint::{ConfigError, EjectionCause, Endpoint, Health},
    error::{EndpointError, Timeout},
};

/// When an endpoint is ejected, for how long, and how it comes back. The defaults follow
/// Envoy's outlier detection where it has one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HealthPolicy {
    /// Ejects after this many failures in a row (default 5).
    pub consecutive_failures: u32,
    /// Ejects when at least this share of the requests in `window` failed (default 0.5)...
    pub failure_rate: f64,
    /// ...over this sliding window (default 10 s)...
    pub window: Duration,
    /// ...once the window holds at least this many requests (default 20).
    pub min_requests: u32,
    /// The first ejection's length; each repeat doubles it (default 30 s)...
    pub base_ejection: Duration,
    /// ...up to this (default 300 s).
    pub max_ejection: Duration,
    /// When an ejection ends, this many trial requests may run at once, and this many must
    /// succeed in a row for the endpoint to return; one failure ejects it again (default 3).
    pub trials: u16,
    /// Outlier detection never ejects more than this share of the pool, but always at least
    /// one endpoint (default 0.5).
    pub max_ejected_fraction: f64,
    /// A rate limit without a usable `Retry-After` cools down for this long (default 5 s).
    pub default_cooldown: Duration,
    /// No cooldown lasts longer than this, whatever `Retry-After` says (default 300 s).
    pub max_cooldown: Duration,
    /// A returning endpoint's weight ramps up over this window (default 10 s; `None` for
    /// full weight at once).
    pub slow_start: Option<Duration>,
    /// Whether an attempt that ran out of `Balance`'s per-attempt timeout (its layer's
    /// `timeout`, or a request's own [`AttemptTimeout`](crate::hints::AttemptTimeout)) counts
    /// as the endpoint's failure (default `false`).
    ///
    /// That timeout is the caller's choice of how long to wait, not a sign of the server's
    /// health: a non-streamed generation sends its headers only when it is done, and one that
    /// runs longer than the timeout on a healthy server would otherwise eject that server
    /// (five long generations in a row eject every server they were sent to). Set it when
    /// the timeout is sized well above the slowest healthy answer, so that a server that
    /// accepts requests and never answers is ejected by passive checks too; without it such a
    /// server is found by active probes. Connect errors, a stream's idle timeout and
    /// `Failover`'s first-chunk wait always count.
    pub timeouts_are_failures: bool,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            trials: 3,
            max_ejected_fraction: 0.5,
            default_cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
            slow_start: Some(Duration::from_secs(10)),
            timeouts_are_failures: false,
        }
    }
}

fn invalid(name: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting { name, reason }
}

impl HealthPolicy {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == 0 {
            return Err(invalid("consecutive_failures", "must be at least 1"));
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(invalid("failure_rate", "must be in (0, 1]"));
        }
        if self.window.is_zero() {
            return Err(invalid("window", "must be longer than zero"));
        }
        if self.base_ejection.is_zero() || self.max_ejection < self.base_ejection {
            return Err(invalid(
                "base_ejection",
                "must be above zero and at most max_ejection",
            ));
        }
        if self.trials == 0 {
            return Err(invalid("trials", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.max_ejected_fraction) {
            return Err(invalid("max_ejected_fraction", "must be in [0, 1]"));
        }
        Ok(())
    }

    /// How long the `n`-th ejection lasts (`n` from 1).
    pub fn ejection_time(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.base_ejection
            .saturating_mul(factor)
            .min(self.max_ejection)
    }

    /// What an endpoint's error does to it: what its verdict does, unless it is the
    /// per-attempt timeout and timeouts are not failures here.
    pub(crate) fn judge_error(&self, error: &EndpointError) {
        if !self.timeouts_are_failures && error.inner().is::<Timeout>() {
            tracing::debug!(endpoint = %error.endpoint().key(), "a per-attempt timeout: not counted against the endpoint");
            return;
        }
        self.judge_sent(error.endpoint(), error.verdict(), error.sent());
    }

    /// What a verdict does to the endpoint that produced it. The common case, a success on a
    /// healthy endpoint with nothing to forget, takes no lock and reads no clock.
    pub(crate) fn judge(&self, e: &Endpoint, outcome: Outcome) {
        self.judge_sent(e, outcome, None);
    }

    /// [`judge`](Self::judge) for a request that took its slot at `sent`, if known: a
    /// failure of a request sent before the endpoint's last ejection is late news, however
    /// late it comes, and never a failed trial.
    pub(crate) fn judge_sent(&self, e: &Endpoint, outcome: Outcome, sent: Option<Instant>) {
        if outcome == Outcome::Success
            && e.is_healthy()
            && e.counters().try_count_unlocked_success()
        {
            return;
        }
        self.record_sent(e, outcome, Instant::now(), sent);
    }

    /// What an outcome does to the endpoint that produced it, at `now`.
    #[cfg(test)]
    pub(crate) fn record(&self, e: &Endpoint, outcome: Outcome, now: Instant) {
        self.record_sent(e, outcome, now, None);
    }

    /// [`record`](Self::record) for a request that took its slot at `sent`, if known.
    fn record_sent(&self, e: &Endpoint, outcome: Outcome, now: Instant, sent: Option<Instant>) {
        let mut o = RecordGuard::lock(e);
        let health = e.health();
        match outcome {
            Outcome::ClientError => {}
            Outcome::RateLimited { retry_after } => {
                let cooldown = retry_after
                    .unwrap_or(self.default_cooldown)
                    .min(self.max_cooldown);
                let until = later(now, cooldown);
                o.cooled_until = o.cooled_until.max(Some(until));
                match health {
                    // A failing endpoint stays ejected, and for at least the provider's
                    // back-off (a trial answered 429 once its ejection ended, say); a
                    // cooldown in force is never shortened.
                    Health::Ejected { until: ejected } => {
                        if until > ejected && e.eject(until, self.trials, self.max_ejected_fraction)
                        {
                            tracing::info!(endpoint = %e.key(), ?cooldown, "rate-limited while ejected: held out for its Retry-After");
                        }
                    }
                    Health::CoolingDown { until: current } if current >= until => {}
                    _ => {
                        e.set_health(Health::CoolingDown { until });
                        e.events().cooled_down();
                        tracing::info!(endpoint = %e.key(), ?cooldown, "cooling down: rate-limited");
                    }
                }
            }
            Outcome::Success => {
                o.consecutive_failures = 0;
                o.window.record(now, self.window, false);
                match health {
                    Health::Ejected { until } if until <= now => {
                        o.trial_successes += 1;
                        if o.trial_successes >= u32::from(self.trials) {
                            self.recover(e, &mut o, now, "trial requests succeeded");
                        }
                    }
                    Health::CoolingDown { until } if until <= now => {
                        // Back to where a hold or a ramp the cooldown interrupted would be.
                        let healthy = e.end_cooldown(now);
                        tracing::info!(endpoint = %e.key(), healthy, "cooldown over");
                    }
                    Health::SlowStart { until } if until <= now => e.set_health(Health::Healthy),
                    _ => {}
                }
                // A long healthy spell forgets past ejections.
                if o.last_ejected.is_some_and(|t| {
                    now.saturating_duration_since(t) > self.max_ejection.saturating_mul(2)
                }) {
                    o.ejections = 0;
                    o.last_ejected = None;
                }
            }
            Outcome::Failure => {
                match health {
                    // Late news from a request sent before the ejection: while it is in
                    // force, or after it ended (a long stream that breaks later) when the
                    // request is known to predate it.
                    Health::Ejected { until } if until > now => return,
                    Health::Ejected { .. }
                        if sent.is_some_and(|s| o.last_ejected.is_some_and(|t| s <= t)) =>
                    {
                        return
                    }
                    Health::Ejected { .. } => {
                        self.eject(e, &mut o, now, EjectionCause::TrialFailed);
                        return;
                    }
                    _ => {}
                }
                o.consecutive_failures += 1;
                o.window.record(now, self.window, true);
                let (requests, failures) = o.window.counts(now, self.window);
                let by_streak = o.consecutive_failures >= self.consecutive_failures;
                let by_rate = requests >= f64::from(self.min_requests)
                    && failures / requests >= self.failure_rate;
                if by_streak || by_rate {
                    let why = if by_streak {
                        EjectionCause::ConsecutiveFailures
                    } else {
                        EjectionCause::FailureRate
                    };
                    if !self.eject(e, &mut o, now, why) {
                        self.hold_back(e, &mut o, now, why);
                    }
                }
            }
        }
    }

    /// What a probe result does: `healthy` successes in a row bring an ejected endpoint back
    /// (even before its ejection ends, as Envoy's active checks do); `unhealthy` failures in a
    /// row eject a serving one.
    pub(crate) fn probed(&self, e: &Endpoint, ok: bool, thresholds: (u32, u32), now: Instant) {
        let (healthy, unhealthy) = thresholds;
        let mut o = RecordGuard::lock(e);
        let ejected = matches!(e.health(), Health::Ejected { .. });
        if ok {
            o.probe_streak = o.probe_streak.max(0).saturating_add(1);
            if ejected && o.probe_streak.unsigned_abs() >= healthy {
                self.recover(e, &mut o, now, "probes succeeded");
            }
        } else {
            o.probe_streak = o.probe_streak.min(0).saturating_sub(1);
            if !ejected && o.probe_streak.unsigned_abs() >= unhealthy {
                self.eject(e, &mut o, now, EjectionCause::Probe);
            }
        }
    }

    /// Ejects `e` if the pool's ejected share allows (at least one may always be); returns
    /// whether it did.
    fn eject(&self, e: &Endpoint, o: &mut Outliers, now: Instant, why: EjectionCause) -> bool {
        let ejections = o.ejections.saturating_add(1);
        let time = self.ejection_time(ejections);
        // A provider's back-off in force is never cut short: an ejection that would end
        // sooner lasts until the back-off does.
        let until = later(now, time).max(o.backing_off(now).unwrap_or(now));
        if !e.eject(until, self.trials, self.max_ejected_fraction) {
            tracing::debug!(
                endpoint = %e.key(),
                why = why.as_str(),
                "not ejected: the pool is at its maximum ejected share"
            );
            return false;
        }
        o.ejections = ejections;
        o.consecutive_failures = 0;
        o.window.clear();
        o.trial_successes = 0;
        o.probe_streak = 0;
        o.last_ejected = Some(now);
        e.events().ejected(why);
        tracing::warn!(endpoint = %e.key(), why = why.as_str(), ejections = o.ejections, ?time, "ejected");
        true
    }

    /// Where the ejected share is at its maximum: keeps the endpoint in the pool but at the
    /// floor of its weight for an ejection's time, then ramps it back, so a failing endpoint
    /// that cannot be ejected (and, failing fast, looks idle) does not draw traffic.
    fn hold_back(&self, e: &Endpoint, o: &mut Outliers, now: Instant, why: EjectionCause) {
        o.ejections = o.ejections.saturating_add(1);
        let hold = self.ejection_time(o.ejections);
        e.hold_back(hold, self.slow_start.unwrap_or(Duration::ZERO), now);
        if let Some(until) = o.backing_off(now) {
            // The hold waits behind the provider's back-off in force, as a hold that a 429
            // interrupts does: cooling down until then, held after.
            e.set_health(Health::CoolingDown { until });
        }
        o.consecutive_failures = 0;
        o.window.clear();
        o.last_ejected = Some(now);
        e.events().held();
        tracing::warn!(endpoint = %e.key(), why = why.as_str(), ?hold, "weight held at its floor instead of ejected");
    }

    fn recover(&self, e: &Endpoint, o: &mut Outliers, now: Instant, why: &'static str) {
        e.set_health(match (o.backing_off(now), self.slow_start) {
            // A provider's back-off in force outlasts the recovery (good probes while it
            // rate-limits): cooling down until it ends.
            (Some(until), _) => Health::CoolingDown { until },
            (None, Some(window)) if !window.is_zero() => Health::SlowStart {
                until: later(now, window),
            },
            _ => Health::Healthy,
        });
        o.consecutive_failures = 0;
        o.trial_successes = 0;
        o.probe_streak = 0;
        o.window.clear();
        tracing::info!(endpoint = %e.key(), why, "back in service");
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{load::LoadGuard, Pool};

    struct Fixture {
        pool: Pool<()>,
        policy: HealthPolicy,
        t0: Instant,
    }

    fn fixture(n: usize) -> Fixture {
        let pool = Pool::new();
        for i in 0..n {
            pool.insert(format!("e{i}"), ()).unwrap();
        }
        let policy = HealthPolicy {
            slow_start: None,
            ..HealthPolicy::default()
        };
        Fixture {
            pool,
            policy,
            t0: Instant::now(),
        }
    }

    impl Fixture {
        fn e(&self, i: usize) -> Arc<Endpoint> {
            self.pool.get(&format!("e{i}")).unwrap()
        }
        fn record(&self, i: usize, outcome: Outcome, at: Duration) {
            self.policy.record(&self.e(i), outcome, self.t0 + at);
        }
    }

    const S: Duration = Duration::from_secs(1);
    const RAMP_FLOOR_FOR_TESTS: f64 = 0.05;

    /// The health cell keeps times to the millisecond, rounded up.
    #[track_caller]
    fn assert_health(actual: Health, expected: Health) {
        let close = |a: Instant, b: Instant| a >= b && a - b < Duration::from_millis(1);
        let ok = match (actual, expected) {
            (Health::Ejected { until: a }, Health::Ejected { until: b })
            | (Health::CoolingDown { until: a }, Health::CoolingDown { until: b })
            | (Health::SlowStart { until: a }, Health::SlowStart { until: b }) => close(a, b),
            (a, b) => a == b,
        };
        assert!(ok, "health {actual:?}, expected {expected:?}");
    }

    #[test]
    fn ejection_time_doubles_and_is_capped() {
        let p = HealthPolicy::default();
        let secs: Vec<u64> = (1..=6).map(|n| p.ejection_time(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 300, 300]);
        assert_eq!(p.ejection_time(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_streak() {
        let f = fixture(4);
        for _ in 0..4 {
            f.record(0, Outcome::Failure, S);
        }
        f.record(0, Outcome::Success, S);
        for _ in 0..4 {
            f.record(0, Outcome::Failure, S);
        }
        assert_eq!(f.e(0).health(), Health::Healthy, "4 in a row is not 5");
        f.record(0, Outcome::ClientError, S);
        f.record(0, Outcome::Failure, S);
        assert_health(
            f.e(0).health(),
            Health::Ejected {
                until: f.t0 + S + Duration::from_secs(30),
            },
        );
    }

    #[test]
    fn a_failure_rate_over_the_window_ejects() {
        let f = fixture(4);
        // Alternate: never two failures in a row, but half of them fail.
        for i in 0..19 {
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            f.record(0, outcome, S);
        }
        assert_eq!(f.e(0).health(), Health::Healthy, "below the minimum volume");
        f.record(0, Outcome::Success, S);
        f.record(0, Outcome::Failure, S);
        assert!(matches!(f.e(0).health(), Health::Ejected { .. }));
    }

    #[test]
    fn successes_counted_without_the_lock_still_dilute_the_failure_rate() {
        let f = fixture(4);
        let e = f.e(0);
        // A settled endpoint counts 20 successes without the lock.
        for _ in 0..20 {
            assert!(e.counters().try_count_unlocked_success());
        }
        // Then half of its requests fail, never two in a row: after a failure a success must
        // take the lock (to end the streak), after that success it need not.
        for _ in 0..11 {
            f.record(0, Outcome::Failure, S);
            assert!(
                !e.counters().try_count_unlocked_success(),
                "a failure unsettles it"
            );
            f.record(0, Outcome::Success, S);
        }
        // 42 requests, 11 failures: 26%. Without the 20 folded in, the 11th failure would have
        // made 11 in 21 (52%) and ejected it.
        assert_eq!(e.health(), Health::Healthy);
        // Four failures in five (never five in a row): past 50% after seven such runs.
        for _ in 0..8 {
            for _ in 0..4 {
                f.record(0, Outcome::Failure, S);
            }
            f.record(0, Outcome::Success, S);
        }
        assert!(
            matches!(e.health(), Health::Ejected { .. }),
            "the rate still ejects"
        );
    }

    #[test]
    fn half_open_lets_the_set_number_of_trials_through_and_decides_on_them() {
        let f = fixture(4);
        let e = f.e(0);
        for _ in 0..5 {
            f.record(0, Outcome::Failure, S);
        }
        let Health::Ejected { until } = e.health() else {
            panic!("not ejected")
        };
        let after = until - f.t0 + Duration::from_millis(1);
        // Before it expires no request may go; after, exactly 3 at once.
        let before = crate::clock::LazyNow::at(until - Duration::from_millis(1));
        assert!(!e.health_allows(&before, false));
        let due = crate::clock::LazyNow::at(f.t0 + after);
        assert!(e.health_allows(&due, false));
        let mut trials: Vec<_> = (0..3)
            .map(|_| LoadGuard::acquire(&e, 1).expect("a trial permit"))
            .collect();
        assert!(LoadGuard::acquire(&e, 1).is_none(), "a 4th trial at once");
        assert!(
            !e.health_allows(&due, false),
            "no permit left: the pick passes it over"
        );
        // A trial that ends gives its permit back.
        drop(trials.pop());
        trials.push(LoadGuard::acquire(&e, 1).expect("the permit came back"));
        // Two successes are not enough; the third brings it back.
        f.record(0, Outcome::Success, after);
        f.record(0, Outcome::Success, after);
        assert!(matches!(e.health(), Health::Ejected { .. }));
        f.record(0, Outcome::Success, after);
        assert_eq!(e.health(), Health::Healthy);
        drop(trials);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn a_failed_trial_ejects_again_for_longer() {
        let f = fixture(4);
        for _ in 0..5 {
            f.record(0, Outcome::Failure, S);
        }
        let after = S + Duration::from_secs(31);
        f.record(0, Outcome::Success, after);
        f.record(0, Outcome::Failure, after);
        assert_health(
            f.e(0).health(),
            Health::Ejected {
                until: f.t0 + after + Duration::from_secs(60),
            },
        );
        // A failure from a request sent before the ejection changes nothing.
        f.record(0, Outcome::Failure, after + S);
        assert_health(
            f.e(0).health(),
            Health::Ejected {
                until: f.t0 + after + Duration::from_secs(60),
            },
        );
    }

    #[test]
    fn never_more_than_the_maximum_share_is_ejected_but_always_one() {
        let f = fixture(4);
        for i in 0..4 {
            for _ in 0..5 {
                f.record(i, Outcome::Failure, S);
            }
        }
        let ejected = (0..4)
            .filter(|&i| matches!(f.e(i).health(), Health::Ejected { .. }))
            .count();
        assert_eq!(ejected, 2, "half of 4");
        // The others are held at the floor of their weight instead.
        let now = crate::clock::LazyNow::at(f.t0 + S * 2);
        let soft: Vec<f64> = (0..4)
            .filter(|&i| !matches!(f.e(i).health(), Health::Ejected { .. }))
            .map(|i| f.e(i).effective_weight(&now))
            .collect();
        assert_eq!(soft, [RAMP_FLOOR_FOR_TESTS, RAMP_FLOOR_FOR_TESTS]);
        let single = fixture(1);
        for _ in 0..5 {
            single.record(0, Outcome::Failure, S);
        }
        assert!(matches!(single.e(0).health(), Health::Ejected { .. }));
    }

    #[test]
    fn rate_limits_cool_down_for_retry_after_clamped_and_never_shorter() {
        let f = fixture(2);
        let limited = |s: Option<u64>| Outcome::RateLimited {
            retry_after: s.map(Duration::from_secs),
        };
        f.record(0, limited(Some(2)), S);
        assert_health(
            f.e(0).health(),
            Health::CoolingDown {
                until: f.t0 + S * 3,
            },
        );
        f.record(0, limited(Some(1)), S);
        assert_health(
            f.e(0).health(),
            Health::CoolingDown {
                until: f.t0 + S * 3,
            },
        );
        f.record(0, limited(None), S);
        assert_health(
            f.e(0).health(),
            Health::CoolingDown {
                until: f.t0 + S * 6,
            },
        );
        f.record(1, limited(Some(1_000_000)), S);
        assert_health(
            f.e(1).health(),
            Health::CoolingDown {
                until: f.t0 + S + Duration::from_secs(300),
            },
        );
        // Rate limits are not failures.
        assert_eq!(RecordGuard::lock(&f.e(0)).consecutive_failures, 0);
    }

    #[test]
    fn probes_bring_back_and_eject_with_their_thresholds() {
        let f = fixture(4);
        for _ in 0..5 {
            f.record(0, Outcome::Failure, S);
        }
        let probe = |i: usize, ok: bool| f.policy.probed(&f.e(i), ok, (2, 3), f.t0 + S * 2);
        probe(0, true);
        assert!(matches!(f.e(0).health(), Health::Ejected { .. }));
        probe(0, true);
        assert_eq!(
            f.e(0).health(),
            Health::Healthy,
            "two good probes, long before the ejection ends"
        );
        probe(1, false);
        probe(1, false);
        probe(1, true);
        probe(1, false);
        probe(1, false);
        assert_eq!(f.e(1).health(), Health::Healthy, "the streak was broken");
        probe(1, false);
        assert!(matches!(f.e(1).health(), Health::Ejected { .. }));
    }

    #[test]
    fn a_bad_policy_is_refused() {
        for bad in [
            HealthPolicy {
                failure_rate: f64::NAN,
                ..HealthPolicy::default()
            },
            HealthPolicy {
                failure_rate: 0.0,
                ..HealthPolicy::default()
            },
            HealthPolicy {
                trials: 0,
                ..HealthPolicy::default()
            },
            HealthPolicy {
                max_ejected_fraction: 1.5,
                ..HealthPolicy::default()
            },
            HealthPolicy {
                base_ejection: Duration::ZERO,
                ..HealthPolicy::default()
            },
            HealthPolicy {
                consecutive_failures: 0,
                ..HealthPolicy::default()
            },
        ] {
            assert!(matches!(
                crate::health::HealthFilterLayer::builder()
                    .policy(bad)
                    .build(),
                Err(ConfigError::InvalidSetting { .. })
            ));
        }
    }
}
