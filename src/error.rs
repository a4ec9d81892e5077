//! The crate's typed errors.
//!
//! Services in this crate return [`BoxError`], as tower middleware does; each condition is its own
//! small type so callers can tell them apart with `err.is::<Overloaded>()` or
//! `err.downcast_ref::<EndpointError>()`. Every error that an endpoint caused names it.

use std::{fmt, sync::Arc, time::Duration};

pub use crate::endpoint::ConfigError;
use crate::{
    classify::Outcome,
    endpoint::{Endpoint, Key},
};

/// A type-erased error, as used across tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// No endpoint could take the request: the pool is empty, or every endpoint is removed,
/// draining (weight 0), ejected, cooling down or excluded by the request's hints.
#[derive(Debug, Clone)]
pub struct NoEndpoints {
    empty: bool,
    retry_after: Option<Duration>,
}

impl NoEndpoints {
    pub(crate) fn empty() -> Self {
        Self {
            empty: true,
            retry_after: None,
        }
    }

    pub(crate) fn unavailable(retry_after: Option<Duration>) -> Self {
        Self {
            empty: false,
            retry_after,
        }
    }

    /// Whether the pool had no endpoints at all (as opposed to none that could serve).
    pub fn pool_was_empty(&self) -> bool {
        self.empty
    }

    /// When endpoints are only cooling down or ejected, how long until the first comes back.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.empty {
            f.write_str("no endpoints: the pool is empty")
        } else {
            f.write_str("no endpoints: none is available for this request")?;
            if let Some(d) = self.retry_after {
                write!(f, " (the first returns in {d:?})")?;
            }
            Ok(())
        }
    }
}

impl std::error::Error for NoEndpoints {}

/// Every endpoint that could serve the request has spent its provider quota (requests or
/// tokens per minute, see [`Quota`](crate::endpoint::Quota)) and the request could not wait
/// for it: says when quota returns for a request of its size.
#[derive(Debug, Clone)]
pub struct QuotaExhausted {
    retry_after: Duration,
}

impl QuotaExhausted {
    pub(crate) fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }

    /// How long until an endpoint's quota has room for the request.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for QuotaExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quota exhausted: every endpoint that could serve has spent its requests or tokens \
             per minute (quota returns in {:?})",
            self.retry_after
        )
    }
}

impl std::error::Error for QuotaExhausted {}

/// Every endpoint that could serve the request is cooling down after a rate limit (a 429, a
/// 529, a 503 with `Retry-After`): none is sent a request before its time, panic mode or not.
/// Says when the first comes back.
#[derive(Debug, Clone)]
pub struct RateLimited {
    retry_after: Duration,
}

impl RateLimited {
    pub(crate) fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }

    /// How long until the first of them comes back.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate-limited: every endpoint that could serve is cooling down (the first returns in {:?})",
            self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}

/// Every eligible endpoint is at its maximum concurrency, and the request could not wait
/// (no queue, the queue was full, or the wait timed out).
#[derive(Debug, Clone)]
pub struct Overloaded {
    waited: Option<Duration>,
}

impl Overloaded {
    pub(crate) fn new(waited: Option<Duration>) -> Self {
        Self { waited }
    }

    /// How long the request waited in the queue before giving up, if it queued at all.
    pub fn waited(&self) -> Option<Duration> {
        self.waited
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.waited {
            Some(d) => write!(
                f,
                "overloaded: every endpoint is at its concurrency limit (waited {d:?})"
            ),
            None => f.write_str("overloaded: every endpoint is at its concurrency limit"),
        }
    }
}

impl std::error::Error for Overloaded {}

/// The endpoint did not answer within the per-attempt timeout (or a stream's first chunk did
/// not come within `Failover`'s first-chunk wait). Carried inside an [`EndpointError`], which
/// names the endpoint.
#[derive(Debug, Clone)]
pub struct Timeout {
    after: Duration,
    sent: bool,
}

impl Timeout {
    /// A timeout after the request was handed to the endpoint's service.
    pub(crate) fn new(after: Duration) -> Self {
        Self { after, sent: true }
    }

    /// A timeout while the endpoint's service was not yet ready to take the request.
    pub(crate) fn before_sending(after: Duration) -> Self {
        Self { after, sent: false }
    }

    /// The timeout that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Whether the request had been handed to the endpoint's service when the time ran out:
    /// the upstream may have it and be running it (a generation that is billed and may have
    /// effects), so `Failover` sends it elsewhere only when told to
    /// ([`FailoverBuilder::retry_timeouts`](crate::failover::FailoverBuilder::retry_timeouts)).
    /// `false` when the service never became ready: nothing was sent.
    pub fn request_sent(&self) -> bool {
        self.sent
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no response within {:?}", self.after)
    }
}

impl std::error::Error for Timeout {}

/// A streamed response sent nothing for longer than the idle timeout; it was ended and counted
/// as its endpoint's failure.
#[derive(Debug, Clone)]
pub struct Stalled {
    after: Duration,
}

impl Stalled {
    pub(crate) fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The idle timeout that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the stream sent nothing for {:?}", self.after)
    }
}

impl std::error::Error for Stalled {}

/// One failed attempt, as [`AttemptsFailed`] lists it.
#[derive(Debug)]
pub struct Attempt {
    /// The endpoint it went to, if it got that far.
    pub endpoint: Option<Key>,
    /// What went wrong.
    pub failure: AttemptFailure,
}

/// What went wrong with one attempt.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// The endpoint answered with a status that calls for another endpoint (5xx, 429).
    Status {
        /// The status.
        status: http::StatusCode,
        /// The `Retry-After` it gave, if any.
        retry_after: Option<Duration>,
    },
    /// The endpoint's service failed (connect error, timeout, reset).
    Error(BoxError),
    /// The stream failed or stalled before its first chunk, or its first event was an error.
    FirstChunk(BoxError),
}

/// Why [`AttemptsFailed`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// Every allowed attempt was made.
    Attempts,
    /// The retry budget had nothing left.
    Budget,
    /// The overall deadline passed.
    Deadline,
    /// No endpoint was left to try.
    NoEndpoints,
    /// The last attempt ran out of the per-attempt timeout after its request was sent, and
    /// such a timeout is not sent elsewhere unless `Failover` is told to
    /// ([`FailoverBuilder::retry_timeouts`](crate::failover::FailoverBuilder::retry_timeouts)).
    TimedOutAfterSending,
}

/// Every attempt failed: each one's endpoint and failure, and why no more were made.
#[derive(Debug)]
pub struct AttemptsFailed {
    attempts: Vec<Attempt>,
    gave_up: GaveUp,
    retry_after: Option<Duration>,
}

impl AttemptsFailed {
    pub(crate) fn new(
        attempts: Vec<Attempt>,
        gave_up: GaveUp,
        retry_after: Option<Duration>,
    ) -> Self {
        let asked = attempts.iter().filter_map(|a| match a.failure {
            AttemptFailure::Status { retry_after, .. } => retry_after,
            _ => None,
        });
        let retry_after = retry_after.into_iter().chain(asked).min();
        Self {
            attempts,
            gave_up,
            retry_after,
        }
    }

    /// The attempts, in order.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// Why no more attempts were made.
    pub fn gave_up(&self) -> GaveUp {
        self.gave_up
    }

    /// When it is worth trying again: the soonest an endpoint comes back from a cooldown or an
    /// ejection, or the shortest `Retry-After` an attempt was given. For a `Retry-After` of
    /// the gateway's own.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for AttemptsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.gave_up {
            GaveUp::Attempts => "no attempts left",
            GaveUp::Budget => "the retry budget is spent",
            GaveUp::Deadline => "the deadline passed",
            GaveUp::NoEndpoints => "no endpoint left to try",
            GaveUp::TimedOutAfterSending => {
                "the last timed out after its request was sent, which is not retried"
            }
        };
        write!(f, "{} attempt(s) failed, {why}", self.attempts.len())?;
        for (i, a) in self.attempts.iter().enumerate() {
            let at: &dyn fmt::Display = match &a.endpoint {
                Some(key) => key,
                None => &"-",
            };
            match &a.failure {
                AttemptFailure::Status { status, .. } => {
                    write!(f, "; {}: {at} answered {status}", i + 1)?
                }
                AttemptFailure::Error(e) => write!(f, "; {}: {at}: {}", i + 1, unnamed(e))?,
                AttemptFailure::FirstChunk(e) => write!(
                    f,
                    "; {}: {at}: before the first chunk: {}",
                    i + 1,
                    unnamed(e)
                )?,
            }
        }
        if let Some(d) = self.retry_after {
            write!(f, "; retry after {d:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for AttemptsFailed {}

/// An attempt's error without the endpoint it names, which the attempt names already: an
/// [`EndpointError`]'s own error.
fn unnamed(error: &BoxError) -> &(dyn std::error::Error + Send + Sync + 'static) {
    match error.downcast_ref::<EndpointError>() {
        Some(e) => e.inner(),
        None => &**error,
    }
}

/// A retry was needed, but the request's body cannot be sent again (it was streamed, not
/// buffered). The retry was not sent; an empty body is never sent in its place.
#[derive(Debug)]
pub struct NotReplayable {
    attempts: Vec<Attempt>,
}

impl NotReplayable {
    pub(crate) fn new(attempts: Vec<Attempt>) -> Self {
        Self { attempts }
    }

    /// The attempts made before the retry that could not be sent.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the request body cannot be replayed, so the failed attempt was not retried ({} made)",
            self.attempts.len()
        )
    }
}

impl std::error::Error for NotReplayable {}

/// The endpoint's own service failed; carries the endpoint, its error, and the verdict the
/// stack's classifier gave that error.
pub struct EndpointError {
    endpoint: Arc<Endpoint>,
    source: BoxError,
    verdict: Outcome,
    /// When the request took its slot, if known (see [`Served`](crate::hints::Served)).
    sent: Option<tokio::time::Instant>,
}

impl EndpointError {
    pub(crate) fn new(endpoint: Arc<Endpoint>, source: BoxError, verdict: Outcome) -> Self {
        Self {
            endpoint,
            source,
            verdict,
            sent: None,
        }
    }

    /// The same error, for a request that took its slot at `sent`.
    pub(crate) fn sent_at(mut self, sent: tokio::time::Instant) -> Self {
        self.sent = Some(sent);
        self
    }

    /// When the request took its slot, if known.
    pub(crate) fn sent(&self) -> Option<tokio::time::Instant> {
        self.sent
    }

    /// The endpoint that failed.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The verdict on the error ([`Classify::classify_error`](crate::classify::Classify)):
    /// whether it counts against the endpoint, and whether another endpoint might serve.
    pub fn verdict(&self) -> Outcome {
        self.verdict
    }

    /// The inner service's error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Takes the inner service's error.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Debug for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointError")
            .field("endpoint", self.endpoint.key())
            .field("source", &self.source)
            .field("verdict", &self.verdict)
            .finish()
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "endpoint {} failed: {}",
            self.endpoint.key(),
            self.source
        )
    }
}

impl std::error::Error for EndpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
