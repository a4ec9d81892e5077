//! [`PoolMetrics::prometheus`]: the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write as _;

use super::{
    layer_families, EndpointMetrics, HistogramSnapshot, PoolMetrics, HEALTH_STATES, OUTCOMES,
};
use crate::endpoint::EjectionCause;

/// Escapes a label value for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP ai_balance_{name} {help}");
    let _ = writeln!(out, "# TYPE ai_balance_{name} {kind}");
}

/// An endpoint's labels: `endpoint="...",tier="..."`.
fn labels(m: &EndpointMetrics) -> String {
    format!("endpoint=\"{}\",tier=\"{}\"", escape(&m.key), m.tier)
}

/// One histogram's series: cumulative buckets up to `+Inf`, the sum in seconds and the count.
fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (le, count) in h.cumulative() {
        let _ = if le.is_infinite() {
            writeln!(
                out,
                "ai_balance_{name}_bucket{{{labels},le=\"+Inf\"}} {count}"
            )
        } else {
            writeln!(
                out,
                "ai_balance_{name}_bucket{{{labels},le=\"{le}\"}} {count}"
            )
        };
    }
    let _ = writeln!(out, "ai_balance_{name}_sum{{{labels}}} {}", h.sum_seconds());
    let _ = writeln!(out, "ai_balance_{name}_count{{{labels}}} {}", h.count());
}

impl PoolMetrics {
    /// The Prometheus text exposition format (version 0.0.4), metric names prefixed
    /// `ai_balance_`. Every family is written, with a series for every endpoint, outcome,
    /// cause and state, from the first scrape on.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let labelled: Vec<(String, &EndpointMetrics)> =
            self.endpoints.iter().map(|m| (labels(m), m)).collect();
        type Value = fn(&EndpointMetrics) -> Option<f64>;
        let gauges: [(&str, &str, Value); 5] = [
            (
                "in_flight",
                "Requests in flight, until their response body ends.",
                |m| Some(m.in_flight as f64),
            ),
            (
                "outstanding_work",
                "The cost of the requests in flight.",
                |m| Some(m.outstanding as f64),
            ),
            ("weight", "The endpoint's weight.", |m| Some(m.weight)),
            (
                "ttfb_ewma_seconds",
                "Peak-EWMA time to first byte, what the pick compares.",
                |m| m.ttfb.map(|d| d.as_secs_f64()),
            ),
            (
                "latency_ewma_seconds",
                "Peak-EWMA time to completion.",
                |m| m.latency.map(|d| d.as_secs_f64()),
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            for (labels, m) in &labelled {
                if let Some(v) = value(m) {
                    let _ = writeln!(out, "ai_balance_{name}{{{labels}}} {v}");
                }
            }
        }
        header(
            &mut out,
            "health",
            "gauge",
            "1 for the endpoint's current health state, 0 for the others.",
        );
        for (labels, m) in &labelled {
            let current = m.state();
            for state in HEALTH_STATES {
                let on = u8::from(state == current);
                let _ = writeln!(out, "ai_balance_health{{{labels},state=\"{state}\"}} {on}");
            }
        }
        header(
            &mut out,
            "requests_total",
            "counter",
            "Requests at the endpoint (attempts, each counted where it was sent), by outcome: \
             success, failure (including rate limits), cancelled by the caller.",
        );
        for (labels, m) in &labelled {
            for (outcome, n) in OUTCOMES.iter().zip(m.outcomes()) {
                let _ = writeln!(
                    out,
                    "ai_balance_requests_total{{{labels},outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        header(
            &mut out,
            "ttfb_seconds",
            "histogram",
            "Time from pick to the first byte of successful responses.",
        );
        for (labels, m) in &labelled {
            histogram(&mut out, "ttfb_seconds", labels, &m.ttfb_histogram);
        }
        header(
            &mut out,
            "request_duration_seconds",
            "histogram",
            "Time from pick to the end of the response, of finished requests.",
        );
        for (labels, m) in &labelled {
            histogram(
                &mut out,
                "request_duration_seconds",
                labels,
                &m.duration_histogram,
            );
        }
        header(
            &mut out,
            "ejections_total",
            "counter",
            "Ejections by the health layer, by cause.",
        );
        for (labels, m) in &labelled {
            for (cause, n) in EjectionCause::ALL.iter().zip(m.ejections) {
                let cause = cause.as_str();
                let _ = writeln!(
                    out,
                    "ai_balance_ejections_total{{{labels},cause=\"{cause}\"}} {n}"
                );
            }
        }
        type Count = fn(&EndpointMetrics) -> u64;
        let counters: [(&str, &str, Count); 2] = [
            (
                "holds_total",
                "Weights held at their floor instead of an ejection the pool's maximum \
                 ejected share refused.",
                |m| m.holds,
            ),
            ("cooldowns_total", "Cooldowns after a rate limit.", |m| {
                m.cooldowns
            }),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            for (labels, m) in &labelled {
                let _ = writeln!(out, "ai_balance_{name}{{{labels}}} {}", value(m));
            }
        }
        type Level = fn(&crate::endpoint::QuotaLevel) -> u64;
        let quota: [(&str, &str, Level); 4] = [
            (
                "quota_limit",
                "The endpoint's provider quota per minute, by what it counts.",
                |q| q.limit,
            ),
            (
                "quota_used",
                "Quota spent and not yet refilled (reserved by requests in flight included).",
                |q| q.used,
            ),
            (
                "quota_remaining",
                "Quota that could be spent at once now.",
                |q| q.remaining,
            ),
            (
                "quota_in_flight",
                "Quota reserved by requests in flight, not yet corrected to their usage.",
                |q| q.in_flight,
            ),
        ];
        for (name, help, value) in quota {
            header(&mut out, name, "gauge", help);
            for (labels, m) in &labelled {
                for q in &m.quota {
                    let kind = q.kind.as_str();
                    let _ = writeln!(
                        out,
                        "ai_balance_{name}{{{labels},kind=\"{kind}\"}} {}",
                        value(q)
                    );
                }
            }
        }
        #[cfg(feature = "openai")]
        for (name, help, value) in super::TOKEN_FAMILIES {
            header(&mut out, name, "counter", help);
            for (labels, m) in &labelled {
                for t in &m.tokens {
                    let model = escape(&t.model);
                    let _ = writeln!(
                        out,
                        "ai_balance_{name}{{{labels},model=\"{model}\"}} {}",
                        value(t)
                    );
                }
            }
        }
        header(
            &mut out,
            "quota_refusals_total",
            "counter",
            "Times a pick found the endpoint's quota spent for a request.",
        );
        for (labels, m) in &labelled {
            if !m.quota.is_empty() {
                let n = m.quota_refusals;
                let _ = writeln!(out, "ai_balance_quota_refusals_total{{{labels}}} {n}");
            }
        }
        for (name, help, value) in layer_families(&self.layers) {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "ai_balance_{name} {value}");
        }
        out
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::{EndpointConfig, Health, Pool};

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
            .find_map(|l| {
                l.strip_prefix("ai_balance_ttfb_ewma_seconds{endpoint=\"b\",tier=\"0\"} ")
            })
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

    #[test]
    fn histograms_are_cumulative_with_their_sum_and_count() {
        let pool = Pool::new();
        let e = pool.insert("a", ()).unwrap();
        let now = Instant::now();
        for ms in [3, 40, 40, 2_000] {
            e.observe_completion(Duration::from_millis(ms), false, now);
        }
        let text = pool.metrics().prometheus();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("{series} in {text}"))
                .parse()
                .unwrap()
        };
        let name = "ai_balance_request_duration_seconds";
        let labels = "endpoint=\"a\",tier=\"0\"";
        assert_eq!(
            value(&format!("{name}_bucket{{{labels},le=\"0.005\"}}")),
            1.0
        );
        assert_eq!(
            value(&format!("{name}_bucket{{{labels},le=\"0.05\"}}")),
            3.0
        );
        assert_eq!(value(&format!("{name}_bucket{{{labels},le=\"1\"}}")), 3.0);
        assert_eq!(value(&format!("{name}_bucket{{{labels},le=\"2.5\"}}")), 4.0);
        assert_eq!(
            value(&format!("{name}_bucket{{{labels},le=\"+Inf\"}}")),
            4.0
        );
        assert_eq!(value(&format!("{name}_count{{{labels}}}")), 4.0);
        assert!((value(&format!("{name}_sum{{{labels}}}")) - 2.083).abs() < 1e-9);
        assert_eq!(
            value(&format!(
                "ai_balance_requests_total{{{labels},outcome=\"success\"}}"
            )),
            4.0
        );
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
        let until = now + Duration::from_secs(30);
        for (health, state) in [
            (Health::Ejected { until }, "ejected"),
            (Health::CoolingDown { until }, "cooling_down"),
            (Health::SlowStart { until }, "slow_start"),
        ] {
            e.set_health(health);
            // A second on: a slow start set just now may be rounded into its hold's last
            // millisecond.
            let endpoints = pool.endpoints();
            let at = now + Duration::from_secs(1);
            let layers = Default::default();
            let text = PoolMetrics::of(endpoints.iter().map(|e| &**e), layers, at).prometheus();
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

    #[cfg(feature = "openai")]
    #[test]
    fn tokens_are_counted_per_endpoint_and_model_from_the_first_scrape() {
        let pool = Pool::new();
        let e = pool
            .insert(
                EndpointConfig::new("gpu-0").model("llama").model("qwen"),
                (),
            )
            .unwrap();
        let any = pool.insert("gpu-1", ()).unwrap();
        let before = pool.metrics().prometheus();
        e.count_tokens(Some("qwen"), 100, 20, 64);
        e.count_tokens(Some("qwen"), 10, 2, 0);
        e.count_tokens(Some("gpt-x"), 1, 1, 0);
        let after = pool.metrics().prometheus();
        assert_eq!(
            series(&before),
            series(&after),
            "no series appears: {after}"
        );
        for line in [
            "ai_balance_input_tokens_total{endpoint=\"gpu-0\",tier=\"0\",model=\"qwen\"} 110",
            "ai_balance_output_tokens_total{endpoint=\"gpu-0\",tier=\"0\",model=\"qwen\"} 22",
            "ai_balance_cached_input_tokens_total{endpoint=\"gpu-0\",tier=\"0\",model=\"qwen\"} 64",
            "ai_balance_input_tokens_total{endpoint=\"gpu-0\",tier=\"0\",model=\"llama\"} 0",
            "ai_balance_input_tokens_total{endpoint=\"gpu-0\",tier=\"0\",model=\"_OTHER\"} 1",
            "ai_balance_input_tokens_total{endpoint=\"gpu-1\",tier=\"0\",model=\"_OTHER\"} 0",
        ] {
            assert!(after.lines().any(|l| l == line), "{line} in {after}");
        }
        // An endpoint of any model learns the model's name when it first counts it.
        any.count_tokens(Some("mistral"), 5, 5, 0);
        let learned = pool.metrics().prometheus();
        let line =
            "ai_balance_output_tokens_total{endpoint=\"gpu-1\",tier=\"0\",model=\"mistral\"} 5";
        assert!(learned.lines().any(|l| l == line), "{learned}");
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

    #[test]
    fn keys_are_shown_without_their_credentials() {
        let pool = Pool::new();
        pool.insert("https://user:secret@gpu-0:8000/v1?key=abc", ())
            .unwrap();
        let text = pool.metrics().prometheus();
        assert!(!text.contains("secret") && !text.contains("abc"), "{text}");
        assert!(text.contains("gpu-0:8000"), "{text}");
    }
}
