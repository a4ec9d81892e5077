//! ORCA load reports in response headers (Open Request Cost Aggregation, as Envoy and gRPC
//! read them).
//!
//! A backend may attach its load to each response, in one of these forms:
//!
//! - `endpoint-load-metrics: TEXT cpu_utilization=0.3, rps_fractional=10, named_metrics.kv_cache_usage_perc=0.5`:
//!   comma-separated `name=value` (or `name:value`) pairs, each name at most once;
//! - `endpoint-load-metrics: JSON {"cpu_utilization": 0.3, "named_metrics": {"kv_cache_usage_perc": 0.5}}`:
//!   the `OrcaLoadReport` message in protobuf's JSON mapping (snake_case or lowerCamelCase
//!   names, numbers or numeric strings);
//! - `endpoint-load-metrics: BIN <base64>` or `endpoint-load-metrics-bin: <base64>`: the
//!   serialized `OrcaLoadReport` protobuf (the `-bin` header, gRPC's, wins when both are
//!   present).
//!
//! The fields read are `cpu_utilization`, `mem_utilization`, `application_utilization`,
//! `rps_fractional`, `eps` and the maps `named_metrics`, `utilization` and `request_cost`
//! (in the text form, `named_metrics.NAME` and `utilization.NAME`); other names are skipped.
//! NaN and infinite values are refused, as Envoy refuses them.
//!
//! An engine's load is in the named metrics. [`OrcaReport::load_report`] reads these names
//! (vLLM sends the first of each):
//!
//! | figure | named metrics |
//! |---|---|
//! | `waiting` | `num_requests_waiting`, `num_queue_reqs`, `queue_depth`, `queue_size` |
//! | `running` | `num_requests_running`, `num_running_reqs` |
//! | `kv_usage` | `kv_cache_usage_perc`, `kv_cache_utilization`, `kv_cache_usage`, `gpu_cache_usage_perc`, `token_usage` |
//!
//! A malformed header gives no report and a `debug` event; no input panics (a property test
//! feeds it arbitrary bytes). A header value longer than 16 KiB is refused unread.

use http::HeaderMap;
use tokio::time::Instant;

pub use super::orca_report::{OrcaError, OrcaReport};
use super::{orca_json::Json, orca_report::bad};
use crate::report::{count, LoadReport};

/// The header that carries a report in text, JSON or binary form.
pub const ENDPOINT_LOAD_METRICS: &str = "endpoint-load-metrics";
/// The header that carries a binary report (gRPC's).
pub const ENDPOINT_LOAD_METRICS_BIN: &str = "endpoint-load-metrics-bin";

const MAX_LEN: usize = 16 << 10;

const WAITING: &[&str] = &[
    "num_requests_waiting",
    "num_queue_reqs",
    "queue_depth",
    "queue_size",
];
const RUNNING: &[&str] = &["num_requests_running", "num_running_reqs"];
const KV: &[&str] = &[
    "kv_cache_usage_perc",
    "kv_cache_utilization",
    "kv_cache_usage",
    "gpu_cache_usage_perc",
    "token_usage",
];

impl OrcaReport {
    /// Reads the report from a response's headers: `None` if there is none, or (with a
    /// `debug` event) if it is malformed.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let (value, bin) = match headers.get(ENDPOINT_LOAD_METRICS_BIN) {
            Some(v) => (v, true),
            None => (headers.get(ENDPOINT_LOAD_METRICS)?, false),
        };
        let parsed = if bin {
            parse_bin(value.as_bytes())
        } else {
            Self::parse(value.as_bytes())
        };
        match parsed {
            Ok(report) => Some(report),
            Err(error) => {
                tracing::debug!(%error, "ignoring a load report header");
                None
            }
        }
    }

    /// Parses an `endpoint-load-metrics` value (`TEXT ...`, `JSON ...` or `BIN ...`).
    pub fn parse(value: &[u8]) -> Result<Self, OrcaError> {
        if value.len() > MAX_LEN {
            return bad("longer than 16 KiB");
        }
        if let Some(text) = value.strip_prefix(b"TEXT ") {
            parse_text(text)
        } else if let Some(json) = value.strip_prefix(b"JSON ") {
            parse_json(json)
        } else if let Some(bin) = value.strip_prefix(b"BIN ") {
            parse_bin(bin)
        } else {
            bad("no TEXT, JSON or BIN prefix")
        }
    }

    /// The first named metric among `names`; of a name given twice, its last value (as
    /// protobuf reads a map key given twice).
    fn named(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| {
            self.named_metrics
                .iter()
                .rev()
                .find(|(k, _)| k == n)
                .map(|&(_, v)| v)
        })
    }

    /// The engine's load, from the named metrics (see the module docs), as measured at `at`
    /// (when the response arrived).
    pub fn load_report(&self, at: Instant) -> LoadReport {
        let mut report = LoadReport::new(at);
        report.waiting = self.named(WAITING).and_then(count);
        report.running = self.named(RUNNING).and_then(count);
        match self.named(KV) {
            Some(kv) => report.kv_usage(kv),
            None => report,
        }
    }

    fn set(&mut self, name: &str, value: f64) -> Result<bool, OrcaError> {
        if !value.is_finite() {
            return bad("a value is NaN or infinite");
        }
        let field = match name {
            "cpu_utilization" | "cpuUtilization" => &mut self.cpu_utilization,
            "mem_utilization" | "memUtilization" => &mut self.mem_utilization,
            "application_utilization" | "applicationUtilization" => {
                &mut self.application_utilization
            }
            "rps_fractional" | "rpsFractional" => &mut self.rps_fractional,
            "eps" => &mut self.eps,
            _ => return Ok(false),
        };
        *field = Some(value);
        Ok(true)
    }

    fn map(&mut self, name: &str) -> Option<&mut Vec<(String, f64)>> {
        match name {
            "named_metrics" | "namedMetrics" => Some(&mut self.named_metrics),
            "utilization" => Some(&mut self.utilization),
            "request_cost" | "requestCost" => Some(&mut self.request_cost),
            _ => None,
        }
    }
}

/// Reads a response's load report as a [`LoadReport`] measured now; `None` without one.
pub fn load_report(headers: &HeaderMap) -> Option<LoadReport> {
    OrcaReport::from_headers(headers).map(|r| r.load_report(Instant::now()))
}

fn parse_text(text: &[u8]) -> Result<OrcaReport, OrcaError> {
    let Ok(text) = std::str::from_utf8(text) else {
        return bad("not UTF-8");
    };
    let mut report = OrcaReport::default();
    let mut seen: Vec<&str> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once(['=', ':']) else {
            return bad("a pair without '=' or ':'");
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || value.is_empty() {
            return bad("an empty name or value");
        }
        if seen.contains(&name) {
            return bad("a metric named twice");
        }
        seen.push(name);
        let Ok(value) = value.parse::<f64>() else {
            return bad("a value that is not a number");
        };
        if let Some((map, key)) = name.split_once('.') {
            if key.is_empty() {
                return bad("an empty metric name");
            }
            if !value.is_finite() {
                return bad("a value is NaN or infinite");
            }
            if let Some(map) = report.map(map) {
                map.push((key.to_owned(), value));
            }
        } else {
            report.set(name, value)?;
        }
    }
    Ok(report)
}

fn parse_json(json: &[u8]) -> Result<OrcaReport, OrcaError> {
    let Json::Object(fields) = super::orca_json::read(json)? else {
        return bad("not a JSON object");
    };
    let mut report = OrcaReport::default();
    for (name, value) in fields {
        if let Some(map) = report.map(&name) {
            let Json::Object(entries) = value else {
                return bad("a map that is not an object");
            };
            for (key, v) in entries {
                let v = v.number()?;
                if !v.is_finite() {
                    return bad("a value is NaN or infinite");
                }
                map.push((key, v));
            }
        } else if matches!(value, Json::Number(_) | Json::Text(_)) {
            // `rps` (deprecated, an integer) and unknown fields are skipped, whatever they hold.
            match value.number() {
                Ok(v) => {
                    report.set(&name, v)?;
                }
                Err(e) if report.set(&name, 0.0)? => return Err(e),
                Err(_) => {}
            }
        }
    }
    Ok(report)
}

fn parse_bin(base64: &[u8]) -> Result<OrcaReport, OrcaError> {
    if base64.len() > MAX_LEN {
        return bad("longer than 16 KiB");
    }
    let bytes = decode_base64(base64.trim_ascii())?;
    super::orca_proto::decode(&bytes)
}

/// Standard or URL-safe base64, padded or not.
fn decode_base64(text: &[u8]) -> Result<Vec<u8>, OrcaError> {
    let text = text
        .strip_suffix(b"==")
        .or(text.strip_suffix(b"="))
        .unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return bad("not base64"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return bad("base64 of a wrong length");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form() {
        let r = OrcaReport::parse(
            b"TEXT cpu_utilization=0.3, rps_fractional=10, named_metrics.kv_cache_usage_perc=0.5,named_metrics.num_requests_waiting:4, utilization.total=0.5, future_field=1",
        )
        .unwrap();
        assert_eq!(r.cpu_utilization, Some(0.3));
        assert_eq!(r.rps_fractional, Some(10.0));
        assert_eq!(r.utilization, [("total".to_owned(), 0.5)]);
        let l = r.load_report(Instant::now());
        assert_eq!(
            (l.waiting, l.running, l.kv_usage),
            (Some(4), None, Some(0.5))
        );
    }

    #[test]
    fn json_form() {
        let r = OrcaReport::parse(
            br#"JSON {"cpuUtilization": 0.25, "eps": "2", "rps": "17", "named_metrics": {"num_requests_running": 7, "kv_cache_utilization": 0.9, "na\u00efve \ud83d\ude00": 1}, "other": [1, {"a": null}, true]}"#,
        )
        .unwrap();
        assert_eq!((r.cpu_utilization, r.eps), (Some(0.25), Some(2.0)));
        assert_eq!(r.named_metrics.len(), 3);
        assert_eq!(r.named_metrics[2].0, "naïve 😀");
        let l = r.load_report(Instant::now());
        assert_eq!((l.running, l.kv_usage), (Some(7), Some(0.9)));
    }

    #[test]
    fn malformed_forms_are_refused() {
        for bad in [
            &b"cpu_utilization=0.3"[..],
            b"TEXT cpu_utilization",
            b"TEXT cpu_utilization=abc",
            b"TEXT cpu_utilization=NaN",
            b"TEXT named_metrics.x=inf",
            b"TEXT eps=1,eps=2",
            b"TEXT =1",
            b"TEXT named_metrics.=1",
            b"JSON ",
            b"JSON []",
            b"JSON {\"eps\": \"NaN\"}",
            b"JSON {\"eps\": \"many\"}",
            b"JSON {\"eps\": 1",
            b"JSON {\"named_metrics\": 3}",
            b"JSON {\"a\": 01x}",
            b"JSON {\"a\": \"\\ud800\"}",
            b"JSON {} trailing",
            b"BIN ***",
            b"XML <load/>",
        ] {
            assert!(
                OrcaReport::parse(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("JSON {}{}", "[".repeat(100), "]".repeat(100));
        assert!(OrcaReport::parse(deep.as_bytes()).is_err());
        assert!(OrcaReport::parse(&[b' '; MAX_LEN + 1]).is_err());
    }

    #[test]
    fn headers_pick_the_binary_form_first() {
        let mut headers = HeaderMap::new();
        assert_eq!(OrcaReport::from_headers(&headers), None);
        headers.insert(ENDPOINT_LOAD_METRICS, "TEXT eps=3".parse().unwrap());
        assert_eq!(OrcaReport::from_headers(&headers).unwrap().eps, Some(3.0));
        // eps (field 7, a double) = 1.5
        headers.insert(ENDPOINT_LOAD_METRICS_BIN, "OQAAAAAAAPg/".parse().unwrap());
        assert_eq!(OrcaReport::from_headers(&headers).unwrap().eps, Some(1.5));
        headers.insert(ENDPOINT_LOAD_METRICS_BIN, "garbage!".parse().unwrap());
        assert_eq!(OrcaReport::from_headers(&headers), None);
    }

    #[test]
    fn base64() {
        assert_eq!(decode_base64(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64(b"aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64(b"").unwrap(), b"");
        assert!(decode_base64(b"a").is_err());
    }
}
