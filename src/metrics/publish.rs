//! [`PoolMetrics::publish`]: the same figures through the `metrics` crate's recorder.
//!
//! The histograms go out as their bucket counters (`_bucket` with `le`, cumulative, `_count`)
//! and a `_sum` gauge, not as `metrics` histograms: a `metrics` histogram takes each sample,
//! so it would have to be fed on the completion path (a recorder lookup and label
//! allocations per request) or fed made-up samples here. The bucket counters carry the same
//! figures, and `histogram_quantile` reads them as it reads any Prometheus histogram.

use super::{
    layer_families, EndpointMetrics, HistogramSnapshot, PoolMetrics, HEALTH_STATES, OUTCOMES,
};
use crate::endpoint::EjectionCause;

type Labels = Vec<(&'static str, String)>;

fn with(labels: &Labels, name: &'static str, value: impl Into<String>) -> Labels {
    let mut labels = labels.clone();
    labels.push((name, value.into()));
    labels
}

fn histogram(name: &str, labels: &Labels, h: &HistogramSnapshot) {
    for (le, count) in h.cumulative() {
        let le = if le.is_infinite() {
            "+Inf".to_owned()
        } else {
            le.to_string()
        };
        metrics::counter!(format!("{name}_bucket"), &with(labels, "le", le)).absolute(count);
    }
    metrics::gauge!(format!("{name}_sum"), labels).set(h.sum_seconds());
    metrics::counter!(format!("{name}_count"), labels).absolute(h.count());
}

impl PoolMetrics {
    /// Publishes every endpoint's state and the layers' counts through the `metrics` crate's
    /// installed recorder, under the names and labels of [`prometheus`](Self::prometheus)
    /// (the histograms as their bucket counters, `_count` counter and `_sum` gauge). Call it
    /// at the scrape interval.
    pub fn publish(&self) {
        for m in &self.endpoints {
            publish_endpoint(m);
        }
        for (name, _, value) in layer_families(&self.layers) {
            metrics::counter!(format!("ai_balance_{name}")).absolute(value);
        }
    }
}

fn publish_endpoint(m: &EndpointMetrics) {
    let labels: Labels = vec![("endpoint", m.key.clone()), ("tier", m.tier.to_string())];
    metrics::gauge!("ai_balance_in_flight", &labels).set(m.in_flight as f64);
    metrics::gauge!("ai_balance_outstanding_work", &labels).set(m.outstanding as f64);
    metrics::gauge!("ai_balance_weight", &labels).set(m.weight);
    if let Some(d) = m.ttfb {
        metrics::gauge!("ai_balance_ttfb_ewma_seconds", &labels).set(d.as_secs_f64());
    }
    if let Some(d) = m.latency {
        metrics::gauge!("ai_balance_latency_ewma_seconds", &labels).set(d.as_secs_f64());
    }
    let current = m.state();
    for state in HEALTH_STATES {
        let on = f64::from(u8::from(state == current));
        metrics::gauge!("ai_balance_health", &with(&labels, "state", state)).set(on);
    }
    for (outcome, n) in OUTCOMES.iter().zip(m.outcomes()) {
        let labels = with(&labels, "outcome", *outcome);
        metrics::counter!("ai_balance_requests_total", &labels).absolute(n);
    }
    histogram("ai_balance_ttfb_seconds", &labels, &m.ttfb_histogram);
    histogram(
        "ai_balance_request_duration_seconds",
        &labels,
        &m.duration_histogram,
    );
    for (cause, n) in EjectionCause::ALL.iter().zip(m.ejections) {
        let labels = with(&labels, "cause", cause.as_str());
        metrics::counter!("ai_balance_ejections_total", &labels).absolute(n);
    }
    metrics::counter!("ai_balance_holds_total", &labels).absolute(m.holds);
    metrics::counter!("ai_balance_cooldowns_total", &labels).absolute(m.cooldowns);
    for q in &m.quota {
        let labels = with(&labels, "kind", q.kind.as_str());
        metrics::gauge!("ai_balance_quota_limit", &labels).set(q.limit as f64);
        metrics::gauge!("ai_balance_quota_used", &labels).set(q.used as f64);
        metrics::gauge!("ai_balance_quota_remaining", &labels).set(q.remaining as f64);
        metrics::gauge!("ai_balance_quota_in_flight", &labels).set(q.in_flight as f64);
    }
    if !m.quota.is_empty() {
        metrics::counter!("ai_balance_quota_refusals_total", &labels).absolute(m.quota_refusals);
    }
    #[cfg(feature = "openai")]
    for (name, _, value) in super::TOKEN_FAMILIES {
        for t in &m.tokens {
            let labels = with(&labels, "model", &*t.model);
            metrics::counter!(format!("ai_balance_{name}"), &labels).absolute(value(t));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use crate::Pool;

    /// Records the last value set for each metric, by name and labels.
    #[derive(Default, Clone)]
    struct Capture(Arc<Mutex<Vec<(String, String, f64)>>>);

    struct Cell(Capture, Key);

    impl metrics::GaugeFn for Cell {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            // The endpoint, then the state, outcome, cause or bound when the series has one.
            let label = |name: &str| {
                self.1
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            let mut series = label("endpoint").unwrap_or_default();
            for extra in ["state", "le", "outcome", "cause", "model"] {
                if let Some(v) = label(extra) {
                    series = format!("{series}/{v}");
                }
            }
            let name = self.1.name().to_owned();
            self.0 .0.lock().unwrap().push((name, series, value));
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
        let done = crate::load::LoadGuard::acquire(&e, 1).unwrap();
        done.complete();
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || pool.metrics().publish());
        let seen = capture.0.lock().unwrap().clone();
        let value = |name: &str, series: &str| {
            seen.iter()
                .find(|(n, s, _)| n == name && s == series)
                .map(|(_, _, v)| *v)
        };
        assert_eq!(value("ai_balance_in_flight", "gpu-0"), Some(1.0));
        assert_eq!(value("ai_balance_outstanding_work", "gpu-0"), Some(7.0));
        assert_eq!(value("ai_balance_health", "gpu-0/healthy"), Some(1.0));
        assert_eq!(value("ai_balance_health", "gpu-0/ejected"), Some(0.0));
        let requests = "ai_balance_requests_total";
        assert_eq!(value(requests, "gpu-0/success"), Some(1.0));
        assert_eq!(value(requests, "gpu-0/cancelled"), Some(0.0));
        let duration = "ai_balance_request_duration_seconds";
        assert_eq!(
            value(&format!("{duration}_bucket"), "gpu-0/+Inf"),
            Some(1.0)
        );
        assert_eq!(value(&format!("{duration}_count"), "gpu-0"), Some(1.0));
        assert!(value(&format!("{duration}_sum"), "gpu-0").is_some());
        assert_eq!(
            value("ai_balance_ejections_total", "gpu-0/probe"),
            Some(0.0)
        );
        assert_eq!(value("ai_balance_retries_total", ""), Some(0.0));
        assert_eq!(
            value("ai_balance_input_tokens_total", "gpu-0/_OTHER"),
            Some(0.0)
        );
        drop(guard);
    }

    #[test]
    fn publish_sets_the_tokens_per_model() {
        let pool = Pool::new();
        let e = pool
            .insert(crate::EndpointConfig::new("gpu-0").model("llama"), ())
            .unwrap();
        e.count_tokens(Some("llama"), 40, 9, 32);
        let capture = Capture::default();
        metrics::with_local_recorder(&capture, || pool.metrics().publish());
        let seen = capture.0.lock().unwrap().clone();
        let value = |name: &str, series: &str| {
            seen.iter()
                .find(|(n, s, _)| n == name && s == series)
                .map(|(_, _, v)| *v)
        };
        assert_eq!(
            value("ai_balance_input_tokens_total", "gpu-0/llama"),
            Some(40.0)
        );
        assert_eq!(
            value("ai_balance_output_tokens_total", "gpu-0/llama"),
            Some(9.0)
        );
        assert_eq!(
            value("ai_balance_cached_input_tokens_total", "gpu-0/llama"),
            Some(32.0)
        );
        assert_eq!(
            value("ai_balance_output_tokens_total", "gpu-0/_OTHER"),
            Some(0.0)
        );
    }
}
