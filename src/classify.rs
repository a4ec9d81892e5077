//! How an outcome is judged.
//!
//! An [`Outcome`] says whose fault a request's end was: the endpoint's ([`Outcome::Failure`]),
//! nobody's but a busy provider's ([`Outcome::RateLimited`], with its `Retry-After`), the
//! client's ([`Outcome::ClientError`], not counted against the endpoint), or none
//! ([`Outcome::Success`]). [`Classify`] makes that call for a response's head, its trailers
//! (where gRPC puts its status) and errors; [`DefaultClassifier`] is the rule for HTTP and gRPC,
//! and users supply their own by implementing the trait.

use std::{
    error::Error,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderValue, StatusCode};

/// Whose fault a request's end was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Served.
    Success,
    /// The endpoint failed: a connect error, a timeout, a 5xx, a reset mid-body, a gRPC
    /// `UNAVAILABLE` or `INTERNAL`.
    Failure,
    /// The endpoint is rate-limiting: 429, 503 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`.
    /// Not broken; cool it down.
    RateLimited {
        /// How long it asked to be left alone, if it said and the header parsed.
        retry_after: Option<Duration>,
    },
    /// The request itself was at fault (another 4xx): not counted against the endpoint.
    ClientError,
}

impl Outcome {
    /// Whether the request was served.
    pub fn is_success(self) -> bool {
        self == Self::Success
    }

    /// Whether another endpoint might serve the request where this one did not: a failure or
    /// a rate limit. What counts against the endpoint's latency estimates and failure count.
    pub fn is_retriable(self) -> bool {
        matches!(self, Self::Failure | Self::RateLimited { .. })
    }
}

/// Judges outcomes. Implement it to change what counts as an endpoint's failure.
pub trait Classify: Send + Sync + 'static {
    /// Judges a response by its head.
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome;

    /// Judges the trailers at the end of a response body that began as `head` (gRPC puts its
    /// status here). The default keeps `head`, unless the trailers carry a `grpc-status`.
    fn classify_trailers(&self, head: Outcome, trailers: &HeaderMap) -> Outcome {
        grpc_status(trailers).map_or(head, grpc_outcome)
    }

    /// Judges an error from the endpoint's service (connect errors, timeouts, resets).
    fn classify_error(&self, _error: &(dyn Error + Send + Sync + 'static)) -> Outcome {
        Outcome::Failure
    }

    /// Judges how an upstream ended a WebSocket session: the close code it sent (`None` for a
    /// close frame without one). The default: a normal close or going away (1000, 1001) is a
    /// success; an internal error, a restart or a bad gateway (1011, 1012, 1014) a failure;
    /// "try again later" (1013) a rate limit; any other code (a policy, protocol, data or size
    /// complaint, or an application's own 3000–4999) is the session's own business, not
    /// counted against the endpoint.
    fn classify_close(&self, code: Option<u16>) -> Outcome {
        match code {
            None | Some(1000 | 1001) => Outcome::Success,
            Some(1011 | 1012 | 1014) => Outcome::Failure,
            Some(1013) => Outcome::RateLimited { retry_after: None },
            Some(_) => Outcome::ClientError,
        }
    }
}

/// HTTP and gRPC: 429 and 503-with-`Retry-After` are rate limits, other 5xx failures, other 4xx
/// the client's fault; a `grpc-status` (in a trailers-only head, or in the trailers) is judged
/// by its code.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl Classify for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Outcome {
        let retry_after = || {
            headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        };
        let rate_limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE
                && headers.contains_key(http::header::RETRY_AFTER));
        if rate_limited {
            Outcome::RateLimited {
                retry_after: retry_after(),
            }
        } else if status.is_server_error() {
            Outcome::Failure
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            grpc_status(headers).map_or(Outcome::Success, grpc_outcome)
        }
    }
}

/// Named once: looking a header up by `&str` parses the name on every call.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Judges a gRPC status code.
pub fn grpc_outcome(code: u16) -> Outcome {
    match code {
        0 => Outcome::Success,
        // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS
        2 | 4 | 13 | 14 | 15 => Outcome::Failure,
        // RESOURCE_EXHAUSTED
        8 => Outcome::RateLimited { retry_after: None },
        // CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
        // FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED, and
        // codes this crate does not know.
        _ => Outcome::ClientError,
    }
}

/// Parses a `Retry-After` value: a number of seconds, or an HTTP date (a date in the past
/// means zero). `None` for anything malformed; never panics.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurd values; callers clamp to their maximum.
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> Outcome {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        DefaultClassifier.classify_response(StatusCode::from_u16(status).unwrap(), &map)
    }

    #[test]
    fn statuses_are_judged() {
        assert_eq!(head(200, &[]), Outcome::Success);
        assert_eq!(head(304, &[]), Outcome::Success);
        assert_eq!(head(500, &[]), Outcome::Failure);
        assert_eq!(head(502, &[]), Outcome::Failure);
        assert_eq!(head(503, &[]), Outcome::Failure);
        assert_eq!(
            head(503, &[("retry-after", "7")]),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            head(429, &[("retry-after", "2")]),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            head(429, &[("retry-after", "soon")]),
            Outcome::RateLimited { retry_after: None }
        );
        assert_eq!(head(400, &[]), Outcome::ClientError);
        assert_eq!(head(404, &[]), Outcome::ClientError);
        assert!(Outcome::Failure.is_retriable());
        assert!(!Outcome::ClientError.is_retriable());
    }

    #[test]
    fn grpc_status_is_judged_in_heads_and_trailers() {
        assert_eq!(head(200, &[("grpc-status", "0")]), Outcome::Success);
        assert_eq!(head(200, &[("grpc-status", "14")]), Outcome::Failure);
        assert_eq!(head(200, &[("grpc-status", "3")]), Outcome::ClientError);
        assert_eq!(
            head(200, &[("grpc-status", "8")]),
            Outcome::RateLimited { retry_after: None }
        );
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("13"));
        assert_eq!(
            DefaultClassifier.classify_trailers(Outcome::Success, &trailers),
            Outcome::Failure
        );
        assert_eq!(
            DefaultClassifier.classify_trailers(Outcome::Success, &HeaderMap::new()),
            Outcome::Success
        );
    }

    #[test]
    fn websocket_close_codes_are_judged() {
        let c = |code| DefaultClassifier.classify_close(code);
        assert_eq!(c(None), Outcome::Success);
        assert_eq!(c(Some(1000)), Outcome::Success);
        assert_eq!(c(Some(1001)), Outcome::Success);
        for failure in [1011, 1012, 1014] {
            assert_eq!(c(Some(failure)), Outcome::Failure);
        }
        assert_eq!(c(Some(1013)), Outcome::RateLimited { retry_after: None });
        for theirs in [1002, 1003, 1007, 1008, 1009, 3000, 4001] {
            assert_eq!(c(Some(theirs)), Outcome::ClientError);
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_dates_and_never_panics() {
        let now = httpdate::parse_http_date("Wed, 25 Nov 2026 08:00:00 GMT").unwrap();
        let parse = |s: &'static str| parse_retry_after(&HeaderValue::from_static(s), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(
            parse("Wed, 25 Nov 2026 08:00:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse("Wed, 25 Nov 2026 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "Wed, 99 Nov 2026 08:00:30 GMT",
            "0x10",
            "٣",
        ] {
            assert_eq!(
                parse_retry_after(&HeaderValue::from_str(bad).unwrap(), now),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_retry_after(&HeaderValue::from_bytes(b"\xff\xfe").unwrap(), now),
            None
        );
    }
}
