//! What one call came to ([`Step`]): done, a failure another endpoint might not have, or an
//! error to pass on; judged by the verdict `Balance` took, never by a classifier of its own.

use std::sync::Arc;

use http::Response;
use http_body::Body;

use super::ResponseBody;
use crate::{
    classify::Outcome,
    endpoint::Endpoint,
    error::{Attempt, AttemptFailure, BoxError, EndpointError, Timeout},
    hints::{Judged, Picked, Served},
};

/// What one attempt came to.
pub(crate) enum Step<RB: Body> {
    Done(Response<ResponseBody<RB>>),
    /// Retriable failures: one, or two when both sides of a hedge failed.
    Retry(Vec<Failed<RB>>),
    Fail(BoxError),
}

/// One failed call another endpoint might not have failed.
pub(crate) struct Failed<RB: Body> {
    /// What it came to, for the error's list of attempts.
    pub(crate) attempt: Attempt,
    /// The endpoint to exclude next time.
    pub(crate) endpoint: Option<Arc<Endpoint>>,
    /// The upstream's own answer to a rate limit (429, 529, 503 with `Retry-After`): kept, in
    /// case no other attempt can be made, to reach the caller as it is, with the provider's
    /// body and rate-limit headers.
    pub(crate) answer: Option<Response<ResponseBody<RB>>>,
}

impl<RB: Body> Failed<RB> {
    /// A failure with nothing to keep.
    pub(crate) fn new(attempt: Attempt, endpoint: Option<Arc<Endpoint>>) -> Self {
        Self {
            attempt,
            endpoint,
            answer: None,
        }
    }
}

impl<RB: Body> Step<RB> {
    /// A single retriable failure.
    pub(crate) fn retry(failed: Failed<RB>) -> Self {
        Step::Retry(vec![failed])
    }
}

/// Whether a response is what the caller gets, by the verdict on its head (in [`Served`]):
/// neither a failure nor a rate limit, which [`judge`] would send elsewhere.
#[inline]
pub(crate) fn is_done<RB>(response: &Response<RB>) -> bool {
    let served = response.extensions().get::<Served>();
    !matches!(
        served.map_or(Outcome::Success, Served::verdict),
        Outcome::Failure | Outcome::RateLimited { .. }
    )
}

/// Judges a call's result by the verdict on its head (in [`Served`]) or on its error (in
/// [`EndpointError`]). `picked` names the endpoint of a response that does not say. A
/// per-attempt timeout after the request was sent is retried only with `retry_timeouts`.
pub(crate) fn judge<E, RB>(
    result: Result<Response<RB>, E>,
    picked: Option<&Picked>,
    retry_timeouts: bool,
) -> Step<RB>
where
    E: Into<BoxError>,
    RB: Body + Judged,
{
    let mut response = match result {
        Ok(response) => response,
        Err(error) => {
            let error = error.into();
            let retriable = error
                .downcast_ref::<EndpointError>()
                .filter(|e| e.verdict().is_retriable())
                .filter(|e| retry_timeouts || !timed_out_after_sending(e))
                .map(|e| Arc::clone(e.endpoint()));
            return match retriable {
                Some(endpoint) => Step::retry(Failed::new(
                    Attempt {
                        endpoint: Some(endpoint.key().clone()),
                        failure: AttemptFailure::Error(error),
                    },
                    Some(endpoint),
                )),
                None => Step::Fail(error),
            };
        }
    };
    if is_done(&response) {
        return Step::Done(response.map(|body| ResponseBody::new(None, body)));
    }
    let served = response.extensions().get::<Served>();
    let (retry_after, rate_limited) = match served.map_or(Outcome::Success, Served::verdict) {
        Outcome::RateLimited { retry_after } => (retry_after, true),
        _ => (None, false), // a failure
    };
    let endpoint = served
        .map(|s| Arc::clone(s.endpoint()))
        .or_else(|| picked.and_then(|p| p.get().cloned()));
    // The failure is known below, but a dropped body would pass for a cancellation: it ends
    // as the failure it is, counted once, and that releases the endpoint's slot.
    response.body_mut().report_failure();
    let attempt = Attempt {
        endpoint: endpoint.as_ref().map(|e| e.key().clone()),
        failure: AttemptFailure::Status {
            status: response.status(),
            retry_after,
        },
    };
    let answer = rate_limited.then(|| response.map(|body| ResponseBody::new(None, body)));
    Step::retry(Failed {
        attempt,
        endpoint,
        answer,
    })
}

/// Whether `error` is the per-attempt timeout, fired after the request was sent: the upstream
/// may be running it.
pub(crate) fn timed_out_after_sending(error: &EndpointError) -> bool {
    error
        .inner()
        .downcast_ref::<Timeout>()
        .is_some_and(Timeout::request_sent)
}
