//! What the pool's endpoints are doing, for dashboards.
//!
//! [`Pool::metrics`](crate::Pool::metrics) takes a [`PoolMetrics`] of every endpoint's live
//! state; [`PoolMetrics::prometheus`] renders it in the Prometheus text exposition format, for a
//! `/metrics` endpoint. Nothing here needs a metrics library.

use std::{fmt::Write as _, time::Duration};

use tokio::time::Instant;

use crate::endpoint::{Endpoint, Health};

/// One endpoint's state at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointMetrics {
    /// Its key.
    pub key: String,
    /// Its tier.
    pub tier: u32,
    /// Its current weight.
    pub weight: f64,
    /// Requests in flight.
    pub in_flight: usize,
    /// Outstanding work (the `Cost` of the requests in flight).
    pub outstanding: u64,
    /// Peak-EWMA time to first byte, if any response was seen.
    pub ttfb: Option<Duration>,
    /// Peak-EWMA time to completion.
    pub latency: Option<Duration>,
    /// Its health.
    pub health: Health,
    /// Whether a soft ejection holds its weight at the floor (a `SlowStart` whose ramp back
    /// has not begun): shown as the state `held`.
    pub held: bool,
    /// Requests finished here, and how many of them failed.
    pub requests: u64,
    /// Requests failed here.
    pub failures: u64,
}

impl EndpointMetrics {
    /// The state of `endpoint` now.
    pub fn of(endpoint: &Endpoint, now: Instant) -> Self {
        Self {
            key: endpoint.key().to_string(),
            tier: endpoint.tier(),
            weight: endpoint.weight(),
            in_flight: endpoint.in_flight(),
            outstanding: endpoint.outstanding(),
            ttfb: endpoint.ttfb_estimate(now),
            latency: endpoint.latency_estimate(now),
            health: endpoint.health(),
            held: endpoint.is_held(now),
            requests: endpoint.requests(),
            failures: endpoint.failures(),
        }
    }
}

/// Every endpoint's state at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolMetrics {
    /// The endpoints, lowest tier first.
    pub endpoints: Vec<EndpointMetrics>,
}

impl PoolMetrics {
    /// The state of each of `endpoints` at `now`.
    pub(crate) fn of<'a>(endpoints: impl Iterator<Item = &'a Endpoint>, now: Instant) -> Self {
        Self {
            endpoints: endpoints.map(|e| EndpointMetrics::of(e, now)).collect(),
        }
    }
}

/// The states of the `ai_balance_health` gauge, one series each.
pub const HEALTH_STATES: [&str; 5] = ["healthy", "ejected", "cooling_down", "slow_start", "held"];

impl EndpointMetrics {
    /// Its state as the `ai_balance_health` gauge names it: one of [`HEALTH_STATES`].
    pub fn state(&self) -> &'static str {
        match self.health {
            Health::Healthy => "healthy",
            Health::Ejected { .. } => "ejected",
            Health::CoolingDown { .. } => "cooling_down",
            Health::SlowStart { .. } if self.held => "held",
            Health::SlowStart { .. } => "slow_start",
        }
    }
}

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl PoolMetrics {
    /// The Prometheus text exposition format (version 0.0.4), metric names prefixed
    /// `ai_balance_`.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        type Value = fn(&EndpointMetrics) -> Option<f64>;
        let families: [(&str, &str, &str, Value); 7] = [
            (
                "in_flight",
                "gauge",
                "Requests in flight, until their response body ends.",
                |m| Some(m.in_flight as f64),
            ),
            (
                "outstanding_work",
                "gauge",
                "The cost of the requests in flight.",
                |m| Some(m.outstanding as f64),
            ),
            ("weight", "gauge", "The endpoint's weight.", |m| {
                Some(m.weight)
            }),
            (
                "ttfb_seconds",
                "gauge",
                "Peak-EWMA time to first byte.",
                |m| m.ttfb.map(|d| d.as_secs_f64()),
            ),
            (
                "latency_seconds",
                "gauge",
                "Peak-EWMA time to completion.",
                |m| m.latency.map(|d| d.as_secs_f64()),
            ),
            (
                "requests_total",
                "counter",
                "Requests finished at the endpoint.",
                |m| Some(m.requests as f64),
            ),
            (
                "failures_total",
                "counter",
                "Requests failed at the endpoint.",
                |m| Some(m.failures as f64),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP ai_balance_{name} {help}");
            let _ = writeln!(out, "# TYPE ai_balance_{name} {kind}");
            for m in &self.endpoints {
                if let Some(v) = value(m) {
                    let _ = writeln!(
                        out,
                        "ai_balance_{name}{{endpoint=\"{}\",tier=\"{}\"}} {v}",
                        escape(&m.key),
                        m.tier,
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP ai_balance_health 1 for the endpoint's current health state, 0 for the others."
        );
        let _ = writeln!(out, "# TYPE ai_balance_health gauge");
        for m in &self.endpoints {
            let current = m.state();
            for state in HEALTH_STATES {
                let _ = writeln!(
                    out,
                    "ai_balance_health{{endpoint=\"{}\",tier=\"{}\",state=\"{state}\"}} {}",
                    escape(&m.key),
                    m.tier,
                    u8::from(state == current)
                );
            }
        }
        out
    }
}

#[cfg(feature = "metrics")]
impl PoolMetrics {
    /// Publishes every endpoint's state through the `metrics` crate's installed recorder:
    /// gauges `ai_balance_in_flight`, `ai_balance_outstanding_work`, `ai_balance_weight`,
    /// `ai_balance_ttfb_seconds`, `ai_balance_latency_seconds`, `ai_balance_health` (one
    /// series per state of [`HEALTH_STATES`], 1 for the current one), and
    /// counters `ai_balance_requests_total`, `ai_balance_failures_total`, each labelled with
    /// the endpoint and its tier. Call it at the scrape interval.
    pub fn publish(&self) {
        for m in &self.endpoints {
            let labels = [("endpoint", m.key.clone()), ("tier", m.tier.to_string())];
            metrics::gauge!("ai_balance_in_flight", &labels).set(m.in_flight as f64);
            metrics::gauge!("ai_balance_outstanding_work", &labels).set(m.outstanding as f64);
            metrics::gauge!("ai_balance_weight", &labels).set(m.weight);
            if let Some(d) = m.ttfb {
                metrics::gauge!("ai_balance_ttfb_seconds", &labels).set(d.as_secs_f64());
            }
            if let Some(d) = m.latency {
                metrics::gauge!("ai_balance_latency_seconds", &labels).set(d.as_secs_f64());
            }
            let current = m.state();
            for state in HEALTH_STATES {
                let labels = [
                    ("endpoint", m.key.clone()),
                    ("tier", m.tier.to_string()),
                    ("state", state.to_owned()),
                ];
                let value = f64::from(u8::from(state == current));
                metrics::gauge!("ai_balance_health", &labels).set(value);
            }
            metrics::counter!("ai_balance_requests_total", &labels).absolute(m.requests);
            metrics::counter!("ai_balance_failures_total", &labels).absolute(m.failures);
        }
    }
}

#[cfg(all(test, feature = "metrics", not(loom)))]
mod publish_tests {
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use crate::Pool;

    /// Records the last value set for each metric and endpoint.
    #[derive(Default, Clone)]
    struct Capture(Arc<Mutex<Vec<(String, String, f64)>>>);

    struct Cell(Capture, Key);

    impl metrics::GaugeFn for Cell {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            // The endpoint, and the state or bound when the series has one.
            let label = |name: &str| {
                self.1
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            let mut endpoint = label("endpoint").unwrap();
            for extra in ["state", "le", "outcome", "cause"] {
                if let Some(v) = label(extra) {
                    endpoint = format!("{endpoint}/{v}");
                }
            }
            self.0
                 .0
                .lock()
                .unwrap()
                .push((self.1.name().to_owned(), endpoint, value));
        }
    }

    impl metrics::CounterFn for Cell {
        fn increment(&self, _: u64) {}
        fn absolute(&self, value: u64) {
            metrics::GaugeFn::set(self, value as f64);
        }
    }

    impl Recorder for Capture {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Cell(self.clone(), key.clone())))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(Cell(self.clone(), key.clone())))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn publish_sets_each_endpoints_metrics() {
        let pool = Pool::new();
        let e = pool.insert("gpu-0", ()).unwrap();
        let guard = crate::load::LoadGuard::acquire(&e, 7).unwrap();
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || pool.metrics().publish());
        let seen = capture.0.lock().unwrap().clone();
        let value = |name: &str| {
            seen.iter()
                .find(|(n, e, _)| n == name && e == "gpu-0")
                .map(|(_, _, v)| *v)
        };
        assert_eq!(value("ai_balance_in_flight"), Some(1.0));
        assert_eq!(value("ai_balance_outstanding_work"), Some(7.0));
        let health = |state: &str| {
            seen.iter()
                .find(|(n, e, _)| n == "ai_balance_health" && e == &format!("gpu-0/{state}"))
                .map(|(_, _, v)| *v)
        };
        assert_eq!(health("healthy"), Some(1.0));
        assert_eq!(health("ejected"), Some(0.0));
        assert_eq!(value("ai_balance_requests_total"), Some(0.0));
        drop(guard);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{EndpointConfig, Pool};

    #[test]
    fn the_text_format_is_well_formed() {
        let pool = Pool::new();
        pool.insert(EndpointConfig::new("gpu \"a\"\n").tier(1), ())
            .unwrap();
        let e = pool.insert("b", ()).unwrap();
        e.observe_ttfb(Duration::from_millis(40), Instant::now());
        let text = pool.metrics().prometheus();
        let ttfb = text
            .lines()
            .find_map(|l| l.strip_prefix("ai_balance_ttfb_seconds{endpoint=\"b\",tier=\"0\"} "))
            .expect("b's time to first byte");
        assert!(
            (ttfb.parse::<f64>().unwrap() - 0.04).abs() < 0.001,
            "{text}"
        );
        assert!(text.contains("endpoint=\"gpu \\\"a\\\"\\n\""), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }

    /// Each series' name and labels, without its value.
    fn series(text: &str) -> Vec<String> {
        let mut series: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
            .collect();
        series.sort();
        series
    }

    #[test]
    fn an_ejection_changes_no_series_and_the_health_gauge_names_one_state() {
        let pool = Pool::new();
        let e = pool.insert("gpu-0", ()).unwrap();
        e.observe_ttfb(Duration::from_millis(40), Instant::now());
        e.observe_completion(Duration::from_millis(90), false, Instant::now());
        let healthy = pool.metrics().prometheus();
        let now = Instant::now();
        for (health, state) in [
            (
                Health::Ejected {
                    until: now + Duration::from_secs(30),
                },
                "ejected",
            ),
            (
                Health::CoolingDown {
                    until: now + Duration::from_secs(30),
                },
                "cooling_down",
            ),
            (
                Health::SlowStart {
                    until: now + Duration::from_secs(30),
                },
                "slow_start",
            ),
        ] {
            e.set_health(health);
            // A second on: a slow start set just now may be rounded into its hold's last
            // millisecond.
            let endpoints = pool.endpoints();
            let at = now + Duration::from_secs(1);
            let text = PoolMetrics::of(endpoints.iter().map(|e| &**e), at).prometheus();
            assert_eq!(series(&healthy), series(&text), "{text}");
            for s in HEALTH_STATES {
                let line = format!(
                    "ai_balance_health{{endpoint=\"gpu-0\",tier=\"0\",state=\"{s}\"}} {}",
                    u8::from(s == state)
                );
                assert!(text.lines().any(|l| l == line), "{line} in {text}");
            }
            assert!(!text.contains("health=\""), "{text}");
        }
    }

    #[test]
    fn a_soft_ejection_shows_as_held_until_its_ramp_begins() {
        let pool = Pool::new();
        let e = pool.insert("gpu-0", ()).unwrap();
        let now = Instant::now();
        e.hold_back(Duration::from_secs(60), Duration::from_secs(10), now);
        assert_eq!(EndpointMetrics::of(&e, now).state(), "held");
        let ramping = now + Duration::from_secs(61);
        assert_eq!(EndpointMetrics::of(&e, ramping).state(), "slow_start");
    }
}
