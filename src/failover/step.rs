//! What one call came to ([`Step`]): done, a failure another endpoint might not have, or an
//! error to pass on; judged by the verdict `Balance` took, never by a classifier of its own.

use std::sync::Arc;

use http::Response;
use http_body::Body;

use super::ResponseBody;
use crate::{
    classify::Outcome,
    endpoint::Endpoint,
    error::{Attempt, AttemptFailure, BoxError, EndpointError},
    hints::{Judged, Picked, Served},
};

/// What one attempt came to.
pub(crate) enum Step<RB: Body> {
    Done(Response<ResponseBody<RB>>),
    /// A retriable failure, and the endpoint to exclude next time.
    Retry(Attempt, Option<Arc<Endpoint>>),
    Fail(BoxError),
}

/// Judges a call's result by the verdict on its head (in [`Served`]) or on its error (in
/// [`EndpointError`]). `picked` names the endpoint of a response that does not say.
pub(crate) fn judge<E, RB>(result: Result<Response<RB>, E>, picked: Option<&Picked>) -> Step<RB>
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
                .map(|e| Arc::clone(e.endpoint()));
            return match retriable {
                Some(endpoint) => Step::Retry(
                    Attempt {
                        endpoint: Some(endpoint.key().clone()),
                        failure: AttemptFailure::Error(error),
                    },
                    Some(endpoint),
                ),
                None => Step::Fail(error),
            };
        }
    };
    let served = response.extensions().get::<Served>();
    let retry_after = match served.map_or(Outcome::Success, Served::verdict) {
        Outcome::Failure => None,
        Outcome::RateLimited { retry_after } => retry_after,
        _ => return Step::Done(response.map(|body| ResponseBody::new(None, body))),
    };
    let endpoint = served
        .map(|s| Arc::clone(s.endpoint()))
        .or_else(|| picked.and_then(|p| p.get().cloned()));
    // The failure is known below, but a dropped body would pass for a cancellation: it ends
    // as the failure it is, counted once, and dropping it releases the endpoint's slot.
    response.body_mut().report_failure();
    Step::Retry(
        Attempt {
            endpoint: endpoint.as_ref().map(|e| e.key().clone()),
            failure: AttemptFailure::Status {
                status: response.status(),
                retry_after,
            },
        },
        endpoint,
    )
}
