//! The crate's errors as the HTTP answers an OpenAI client expects.
//!
//! [`openai_response`] turns any error from a stack of this crate's layers into a status, a
//! `Retry-After` (whole seconds, rounded up) where a retry is worth it, and a JSON body
//! `{"error": {"message", "type", "param", "code"}}`. The message is composed from the error's
//! typed data, never from its `Display` text, so it names no endpoint key, internal address
//! or credential.
//!
//! | Error | Status |
//! |---|---|
//! | [`BodyTooLarge`] | 413 |
//! | [`RequestBodyError`] | 400 |
//! | [`BuffersFull`]: the request bodies in flight hold the memory budget | 503, `Retry-After: 1` |
//! | [`BadRequest`](crate::route::BadRequest): a body routing cannot read | 400 (`invalid_request_body`) |
//! | [`Unsatisfiable`]: no endpoint serves the model | 404 (`model_not_found`) |
//! | [`Unsatisfiable`]: the context window, or other requirements | 400 |
//! | [`RateLimited`]: every upstream that could serve is cooling down | 429 + `Retry-After` |
//! | [`QuotaExhausted`]: every upstream that could serve has spent its quota | 429 + `Retry-After` |
//! | [`NoEndpoints`] | 503, with `Retry-After` when the first endpoint returns |
//! | [`Overloaded`] | 503, `Retry-After: 1` |
//! | [`AttemptsFailed`], [`NotReplayable`]: every attempt rate-limited (429) | 429 + `Retry-After` |
//! | ... some attempt rate-limited or overloaded (429, 503, 529) | 503 + `Retry-After` |
//! | ... every attempt timed out, or the deadline passed | 504 |
//! | ... otherwise (connections refused, resets, 5xx) | 502 |
//! | [`EndpointError`] / [`Timeout`]: a timeout | 504 |
//! | [`EndpointError`], anything else | 502 |
//! | [`ConfigError`] | 500 |
//!
//! Where the error carries the upstream's own answer ([`UpstreamAnswer`]: a 429 with the
//! provider's body and rate-limit headers) and exactly one attempt was made, that answer is
//! passed through instead. ([`Failover`](crate::failover::Failover) itself hands the caller
//! the only attempt's own 429 (or 529, or 503 with `Retry-After`) as a response, unchanged,
//! when no other endpoint can be tried; it never reaches this function.)
//!
//! [`OpenAiErrorsLayer`] puts it on a stack: errors become answers, and the service's error
//! type is `Infallible`, as axum's `Router::route_service` requires.
//!
//! ```
//! use tower_ai_balance::{http_error::openai_response, BoxError};
//!
//! # fn example(error: BoxError) {
//! let response = openai_response(&error); // http::Response<Full<Bytes>>
//! # }
//! ```

mod answer;
mod layer;

use std::{error::Error, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

pub use self::{
    answer::UpstreamAnswer,
    layer::{OpenAiErrors, OpenAiErrorsLayer, ResponseFuture},
};

use crate::{
    buffered::{BodyTooLarge, BuffersFull, RequestBodyError},
    capability::{Unmet, Unsatisfiable},
    error::{
        Attempt, AttemptFailure, AttemptsFailed, BoxError, ConfigError, EndpointError, GaveUp,
        NoEndpoints, NotReplayable, Overloaded, QuotaExhausted, RateLimited, Stalled, Timeout,
    },
    json::write::openai_error_body,
};

/// The OpenAI-format answer for `error`: see the [module docs](self).
pub fn openai_response(error: &BoxError) -> Response<Full<Bytes>> {
    if let Some(answer) = passed_through(&**error) {
        return answer.to_response();
    }
    ErrorReply::from_error(&**error).into_response()
}

/// What [`openai_response`] answers, before it becomes a response: for a gateway that wants
/// another body, or to log the status it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    status: StatusCode,
    retry_after: Option<Duration>,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
}

impl ErrorReply {
    /// A reply with this status and message; its `type` follows the status
    /// (`invalid_request_error` for 4xx, `rate_limit_error` for 429, else `server_error`).
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        Self {
            status,
            retry_after: None,
            kind,
            code: None,
            message: message.into(),
        }
    }

    /// Sets the `Retry-After`.
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// Sets the `code`.
    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The reply for one of this crate's errors (or any other: `502`).
    pub fn from_error(error: &(dyn Error + 'static)) -> Self {
        if let Some(e) = error.downcast_ref::<BodyTooLarge>() {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body exceeds the limit of {} bytes", e.limit()),
            )
            .code("request_too_large");
        }
        if error.is::<BuffersFull>() {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway holds as many request bodies as it can; try again shortly",
            )
            .retry_after(Some(Duration::from_secs(1)))
            .code("overloaded");
        }
        if error.is::<RequestBodyError>() {
            return Self::new(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            );
        }
        if let Some(e) = error.downcast_ref::<crate::route::BadRequest>() {
            // Says what in the body could not be read, never what the body holds.
            return Self::new(StatusCode::BAD_REQUEST, clip(e.reason(), 512))
                .code("invalid_request_body");
        }
        if let Some(e) = error.downcast_ref::<Unsatisfiable>() {
            return match e.unmet() {
                Unmet::Model(model) => Self::new(
                    StatusCode::NOT_FOUND,
                    format!("the model `{}` is not served here", clip(model, 256)),
                )
                .code("model_not_found"),
                Unmet::Context(tokens) => Self::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the request needs a context window of {tokens} tokens, \
                         more than any model here has"
                    ),
                )
                .code("context_length_exceeded"),
                _ => Self::new(
                    StatusCode::BAD_REQUEST,
                    "no endpoint here meets this request's requirements",
                )
                .code("unsatisfiable"),
            };
        }
        if let Some(e) = error.downcast_ref::<QuotaExhausted>() {
            return Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "every upstream that could serve this request has spent its quota",
            )
            .retry_after(Some(e.retry_after()))
            .code("rate_limit_exceeded");
        }
        if let Some(e) = error.downcast_ref::<RateLimited>() {
            return Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "every upstream that could serve this request is rate-limited",
            )
            .retry_after(Some(e.retry_after()))
            .code("rate_limit_exceeded");
        }
        if let Some(e) = error.downcast_ref::<NoEndpoints>() {
            return Self::new(StatusCode::SERVICE_UNAVAILABLE, "no upstream is available")
                .retry_after(e.retry_after())
                .code("no_endpoints");
        }
        if error.is::<Overloaded>() {
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "every upstream is at its concurrency limit",
            )
            .retry_after(Some(Duration::from_secs(1)))
            .code("overloaded");
        }
        if let Some(e) = error.downcast_ref::<AttemptsFailed>() {
            return by_attempts(e.attempts(), e.gave_up(), e.retry_after());
        }
        if let Some(e) = error.downcast_ref::<NotReplayable>() {
            let mut reply = by_attempts(e.attempts(), GaveUp::Attempts, None);
            reply.message = format!(
                "{} (the request body was streamed, so it could not be sent again)",
                reply.message
            );
            return reply;
        }
        if error.is::<ConfigError>() {
            return Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the gateway is misconfigured",
            );
        }
        #[cfg(feature = "anthropic")]
        if let Some(e) = error.downcast_ref::<crate::anthropic::RequestError>() {
            // Names a request field, never a secret.
            return Self::new(StatusCode::BAD_REQUEST, e.to_string()).code("unsupported");
        }
        let inner = error
            .downcast_ref::<EndpointError>()
            .map_or(error, endpoint_inner);
        if timed_out(inner) {
            return Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time",
            )
            .code("timeout");
        }
        Self::new(StatusCode::BAD_GATEWAY, "the upstream request failed").code("upstream_error")
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `Retry-After`, if any.
    pub fn retry_after_duration(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The response: status, `content-type: application/json`, `Retry-After`, JSON body.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = openai_error_body(&self.message, self.kind, self.code);
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        response
    }
}

/// What each failed attempt came to, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    RateLimited,
    Unavailable,
    TimedOut,
    Other,
}

fn failed(attempt: &Attempt) -> Failed {
    let by_status = |status: StatusCode| match status.as_u16() {
        429 => Failed::RateLimited,
        503 | 529 => Failed::Unavailable,
        504 => Failed::TimedOut,
        _ => Failed::Other,
    };
    match &attempt.failure {
        AttemptFailure::Status { status, .. } => by_status(*status),
        AttemptFailure::Error(e) | AttemptFailure::FirstChunk(e) => {
            if let Some(answer) = chain(&**e).find_map(|e| e.downcast_ref::<UpstreamAnswer>()) {
                by_status(answer.status)
            } else if timed_out(&**e) {
                Failed::TimedOut
            } else {
                Failed::Other
            }
        }
    }
}

fn by_attempts(attempts: &[Attempt], gave_up: GaveUp, retry_after: Option<Duration>) -> ErrorReply {
    let kinds: Vec<Failed> = attempts.iter().map(failed).collect();
    let count = |k: Failed| kinds.iter().filter(|&&x| x == k).count();
    let (limited, unavailable, timed_out) = (
        count(Failed::RateLimited),
        count(Failed::Unavailable),
        count(Failed::TimedOut),
    );
    let others = kinds.len() - limited - unavailable - timed_out;
    let mut parts = Vec::new();
    for (n, what) in [
        (limited, "rate-limited"),
        (unavailable, "overloaded or unavailable"),
        (timed_out, "timed out"),
        (others, "failed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    let mut message = match kinds.len() {
        0 => "no upstream could be tried".to_owned(),
        1 => format!("the upstream attempt {}", parts.join("")),
        n => format!("{n} upstream attempts failed: {}", parts.join(", ")),
    };
    if let Some(why) = match gave_up {
        GaveUp::Budget => Some("the retry budget is spent"),
        GaveUp::Deadline => Some("the request's deadline passed"),
        _ => None,
    } {
        message = format!("{message}; {why}");
    }
    let reply = if !kinds.is_empty() && limited == kinds.len() {
        ErrorReply::new(StatusCode::TOO_MANY_REQUESTS, message).code("rate_limit_exceeded")
    } else if limited + unavailable > 0 || (kinds.is_empty() && gave_up == GaveUp::NoEndpoints) {
        ErrorReply::new(StatusCode::SERVICE_UNAVAILABLE, message).code("overloaded")
    } else if gave_up == GaveUp::Deadline || (!kinds.is_empty() && timed_out == kinds.len()) {
        ErrorReply::new(StatusCode::GATEWAY_TIMEOUT, message).code("timeout")
    } else {
        ErrorReply::new(StatusCode::BAD_GATEWAY, message).code("upstream_error")
    };
    reply.retry_after(retry_after)
}

/// Whether a timeout is anywhere in the error's chain: this crate's [`Timeout`] or
/// [`Stalled`], or an I/O time-out (a connect timeout).
fn timed_out(error: &(dyn Error + 'static)) -> bool {
    chain(error).any(|e| {
        e.is::<Timeout>()
            || e.is::<Stalled>()
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.downcast_ref::<EndpointError>()
                .is_some_and(|ep| timed_out(endpoint_inner(ep)))
    })
}

fn endpoint_inner(error: &EndpointError) -> &(dyn Error + 'static) {
    error.inner()
}

fn chain<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |&e: &&'a (dyn Error + 'static)| e.source())
}

/// `Retry-After` in whole seconds, rounded up.
pub(crate) fn retry_after_secs(after: Duration) -> u64 {
    after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0))
}

/// The upstream's own 429, where it may stand for the whole error.
fn passed_through<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a UpstreamAnswer> {
    let answer = if let Some(failed) = error.downcast_ref::<AttemptsFailed>() {
        match failed.attempts() {
            [only] => match &only.failure {
                AttemptFailure::Error(e) | AttemptFailure::FirstChunk(e) => {
                    chain(&**e).find_map(|e| e.downcast_ref::<UpstreamAnswer>())
                }
                _ => None,
            },
            _ => None,
        }
    } else {
        chain(error).find_map(|e| e.downcast_ref::<UpstreamAnswer>())
    };
    answer.filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
}

/// At most `max` characters of `s`.
fn clip(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::{sync::Arc, time::Duration};

    use http_body_util::BodyExt;
    use serde_json::Value;

    use http::{HeaderMap, HeaderName};

    use super::*;
    use crate::{endpoint::Endpoint, EndpointConfig};

    const SECRET_KEY: &str = "http://10.1.2.3:8000";

    async fn reply(error: BoxError) -> (StatusCode, Option<String>, Value) {
        let response = openai_response(&error);
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(!text.contains("10.1.2.3"), "{text}");
        (status, retry, serde_json::from_str(&text).unwrap())
    }

    fn status(code: u16, retry: Option<u64>) -> Attempt {
        Attempt {
            endpoint: Some(SECRET_KEY.into()),
            failure: AttemptFailure::Status {
                status: StatusCode::from_u16(code).unwrap(),
                retry_after: retry.map(Duration::from_secs),
            },
        }
    }

    fn error(e: BoxError) -> Attempt {
        Attempt {
            endpoint: Some(SECRET_KEY.into()),
            failure: AttemptFailure::Error(e),
        }
    }

    fn endpoint_error(source: BoxError) -> BoxError {
        let endpoint: Arc<Endpoint> = Endpoint::new(EndpointConfig::new(SECRET_KEY)).unwrap();
        Box::new(EndpointError::new(
            endpoint,
            source,
            crate::classify::Outcome::Failure,
        ))
    }

    fn refused() -> BoxError {
        endpoint_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("connect to {SECRET_KEY} refused"),
        )))
    }

    #[tokio::test]
    async fn each_error_gets_its_status_and_retry_after() {
        let (s, retry, body) = reply(Box::new(BodyTooLarge::new(10))).await;
        assert_eq!((s.as_u16(), retry), (413, None));
        assert_eq!(body["error"]["code"], "request_too_large");
        assert_eq!(body["error"]["type"], "invalid_request_error");

        let (s, _, body) = reply(Box::new(Unsatisfiable::new(Unmet::Model("gpt-9".into())))).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "model_not_found");
        assert!(body["error"]["message"].as_str().unwrap().contains("gpt-9"));
        let (s, _, _) = reply(Box::new(Unsatisfiable::new(Unmet::Context(9000)))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        let cooling = NoEndpoints::unavailable(Some(Duration::from_millis(1200)));
        let (s, retry, _) = reply(Box::new(cooling)).await;
        assert_eq!((s.as_u16(), retry.as_deref()), (503, Some("2")));
        let (s, retry, body) =
            reply(Box::new(RateLimited::new(Duration::from_millis(59_100)))).await;
        assert_eq!((s.as_u16(), retry.as_deref()), (429, Some("60")));
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let (s, retry, _) = reply(Box::new(Overloaded::new(None))).await;
        assert_eq!((s.as_u16(), retry.as_deref()), (503, Some("1")));

        let (s, _, _) = reply(endpoint_error(Box::new(Timeout::new(Duration::from_secs(
            1,
        )))))
        .await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        let (s, _, body) = reply(refused()).await;
        assert_eq!(s, StatusCode::BAD_GATEWAY);
        assert_eq!(body["error"]["type"], "server_error");
        let (s, _, _) = reply(Box::new(ConfigError::InvalidSetting {
            name: "x",
            reason: "y",
        }))
        .await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn failed_attempts_answer_by_what_failed() {
        let all = |attempts, gave_up, retry| -> BoxError {
            Box::new(AttemptsFailed::new(attempts, gave_up, retry))
        };
        // Every attempt rate-limited: 429, with the shortest Retry-After.
        let (s, retry, body) = reply(all(
            vec![status(429, Some(7)), status(429, Some(3))],
            GaveUp::Attempts,
            None,
        ))
        .await;
        assert_eq!((s.as_u16(), retry.as_deref()), (429, Some("3")));
        assert_eq!(body["error"]["type"], "rate_limit_error");
        // Tier 0 refused, tier 1 overloaded: 503 with its Retry-After.
        let (s, retry, body) = reply(all(
            vec![error(refused()), status(503, Some(2))],
            GaveUp::NoEndpoints,
            None,
        ))
        .await;
        assert_eq!((s.as_u16(), retry.as_deref()), (503, Some("2")));
        assert_eq!(
            body["error"]["message"],
            "2 upstream attempts failed: 1 overloaded or unavailable, 1 failed"
        );
        // Every attempt timed out: 504.
        let timeout = || {
            error(endpoint_error(Box::new(Timeout::new(Duration::from_secs(
                1,
            )))))
        };
        let (s, _, _) = reply(all(vec![timeout(), timeout()], GaveUp::Attempts, None)).await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        let (s, _, _) = reply(all(vec![error(refused())], GaveUp::Deadline, None)).await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        // Refused and 500: 502.
        let (s, retry, _) = reply(all(
            vec![error(refused()), status(500, None)],
            GaveUp::Attempts,
            None,
        ))
        .await;
        assert_eq!((s.as_u16(), retry), (502, None));
        let (s, _, body) = reply(Box::new(NotReplayable::new(vec![status(429, None)]))).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("streamed"));
    }

    #[tokio::test]
    async fn the_only_attempts_own_429_is_passed_through() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("retry-after", "4"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("content-type", "application/json"),
            ("set-cookie", "upstream=1"),
            ("server", "internal-lb-7"),
        ] {
            headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let body = Bytes::from_static(b"{\"error\":{\"message\":\"Rate limit reached\"}}");
        let answer = || UpstreamAnswer::new(StatusCode::TOO_MANY_REQUESTS, &headers, body.clone());
        let one = AttemptsFailed::new(vec![error(Box::new(answer()))], GaveUp::Attempts, None);
        let response = openai_response(&(Box::new(one) as BoxError));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["x-ratelimit-remaining-tokens"], "0");
        assert_eq!(response.headers()["retry-after"], "4");
        assert!(response.headers().get("set-cookie").is_none());
        assert!(response.headers().get("server").is_none());
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            body
        );
        // Two attempts: the gateway's own answer.
        let two = AttemptsFailed::new(
            vec![error(Box::new(answer())), error(Box::new(answer()))],
            GaveUp::Attempts,
            None,
        );
        let response = openai_response(&(Box::new(two) as BoxError));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_ne!(
            response.into_body().collect().await.unwrap().to_bytes(),
            body
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn messages_are_valid_json_whatever_they_hold() {
        let body = openai_error_body("a \"quoted\"\n\\ \u{1} ü", "t", None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "a \"quoted\"\n\\ \u{1} ü");
        assert_eq!(v["error"]["code"], Value::Null);
    }
}
