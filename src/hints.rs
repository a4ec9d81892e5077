//! How the layers talk: routing hints in, the serving endpoint out.
//!
//! Inward, a layer that wants to steer the pick puts a hint in the request's
//! [`http::Extensions`]: [`Exclude`] (endpoints already tried), [`Cost`] (the request's work in
//! units such as tokens). [`Balance`](crate::balance::Balance) reads them. Toward the
//! endpoint's service, `Balance` adds [`ServeAs`] to a request sent as another model than it
//! names (a model alias).
//!
//! Outward, the endpoint that served a request and the verdict on its response head are
//! attached to the response's extensions as [`Served`], and carried in
//! [`EndpointError`](crate::error::EndpointError) when it failed. A response body that knows
//! the final verdict (after trailers, a broken stream or a stall) says so through [`Judged`].
//!
//! Requests that are not `http::Request` take part through the [`Hinted`] trait; [`WithHints`]
//! implements it for any `T`.

use std::sync::Arc;

use http::Extensions;

pub use crate::{capability::Require, endpoint::Tokens};
use crate::{classify::Outcome, endpoint::Endpoint};

/// A request (or response) that can carry routing hints.
pub trait Hinted {
    /// The request's extensions, where hints live.
    fn extensions(&self) -> &Extensions;
    /// The request's extensions, mutably.
    fn extensions_mut(&mut self) -> &mut Extensions;
}

impl<B> Hinted for http::Request<B> {
    fn extensions(&self) -> &Extensions {
        http::Request::extensions(self)
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        http::Request::extensions_mut(self)
    }
}

impl<B> Hinted for http::Response<B> {
    fn extensions(&self) -> &Extensions {
        http::Response::extensions(self)
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        http::Response::extensions_mut(self)
    }
}

/// Any request, with an [`Extensions`] beside it for hints.
#[derive(Debug, Clone, Default)]
pub struct WithHints<T> {
    /// The request itself.
    pub request: T,
    /// Its hints.
    pub extensions: Extensions,
}

impl<T> WithHints<T> {
    /// Wraps a request with no hints.
    pub fn new(request: T) -> Self {
        Self {
            request,
            extensions: Extensions::new(),
        }
    }
}

impl<T> Hinted for WithHints<T> {
    fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }
}

/// Endpoints this request must not be sent to (for example, those a retry already tried).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclude {
    ids: Vec<u64>,
    /// One bit per id modulo 64: a clear bit rules an endpoint out of the list at once, so the
    /// pick checks the list only for one endpoint in 64 or so.
    mask: u64,
    /// Every endpoint in a tier below this one is excluded too (0: none is).
    tier_floor: u32,
}

impl Exclude {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an endpoint.
    pub fn insert(&mut self, endpoint: &Endpoint) {
        if !self.contains(endpoint) {
            self.ids.push(endpoint.id());
            self.mask |= 1 << (endpoint.id() % 64);
        }
    }

    /// Also excludes every endpoint in a tier below `tier` (lower tiers are preferred, so
    /// this sends the request on to `tier` or beyond). A second call keeps the higher floor.
    pub fn tiers_below(&mut self, tier: u32) {
        self.tier_floor = self.tier_floor.max(tier);
    }

    /// The tier below which every endpoint is excluded (0: no tier is).
    pub fn tier_floor(&self) -> u32 {
        self.tier_floor
    }

    /// Whether the endpoint is excluded.
    #[inline]
    pub fn contains(&self, endpoint: &Endpoint) -> bool {
        let id = endpoint.id();
        (self.mask & (1 << (id % 64)) != 0 && self.ids.contains(&id))
            || endpoint.tier() < self.tier_floor
    }

    /// One bit per excluded id modulo 64, for a caller to keep in a register: a clear bit says
    /// an endpoint is not excluded. Every bit is set while whole tiers are excluded.
    #[inline]
    pub(crate) fn mask(&self) -> u64 {
        if self.tier_floor > 0 {
            !0
        } else {
            self.mask
        }
    }

    /// How many endpoints are excluded by name (whole tiers aside).
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is excluded: no endpoint, no tier.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.tier_floor == 0
    }
}

/// Keeps requests with the same key (a session, a stream) on the same endpoint.
///
/// [`Balance`](crate::balance::Balance) ranks the eligible endpoints by weighted rendezvous
/// hashing of the key and takes the first whose load is under `bound` × its share of the
/// total (consistent hashing with bounded loads): the same key finds the same endpoint in every
/// replica, only the keys of an endpoint that leaves move, and a hot key spills over instead of
/// swamping one endpoint. With `prefer`, that endpoint is taken first while it is eligible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affinity {
    /// The key's hash ([`hash_key`](crate::affinity::hash_key)).
    pub key: u64,
    /// How far above its share of the load an endpoint may go before the key spills to the
    /// next in its order (1.25 by default; at least 1).
    pub bound: f64,
    /// An endpoint ([`Endpoint::id`]) to use first while it can serve.
    pub prefer: Option<u64>,
}

impl Affinity {
    /// Affinity by `key`, with the default bound of 1.25.
    pub fn new(key: &[u8]) -> Self {
        Self::hashed(crate::hash::stable_hash(key))
    }

    /// Affinity by an already hashed key.
    pub fn hashed(key: u64) -> Self {
        Self {
            key,
            bound: 1.25,
            prefer: None,
        }
    }
}

/// The work a request brings, in units of the caller's choosing (prompt tokens plus maximum
/// output tokens is a good one). Counted in the serving endpoint's outstanding work until the
/// response ends. A request without it counts 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cost(pub u64);

/// This request's per-attempt timeout to the response head, in place of the one set with
/// [`BalanceBuilder::timeout`](crate::balance::BalanceBuilder::timeout) (or where none is set).
///
/// One timeout cannot suit every request: a streamed generation sends its headers at once,
/// a non-streamed one only when the whole answer is written, minutes later for a long one. A
/// gateway that reads the request (its `stream` flag, its `max_tokens`) sets the limit each
/// needs, and [`Balance`](crate::balance::Balance) applies it to every attempt, as it applies
/// its own: a request that outlives it fails with [`Timeout`](crate::error::Timeout), counted
/// against the endpoint.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_ai_balance::{hints::AttemptTimeout, BalanceLayer, Pool};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_ai_balance::BoxError> {
/// // A non-streamed generation: the head comes after 90 s of work.
/// let slow = service_fn(|_req: Request<Full<Bytes>>| async {
///     tokio::time::sleep(Duration::from_secs(90)).await;
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
/// });
/// let pool = Pool::new();
/// pool.insert("gpu-0", slow)?;
/// let balance = BalanceLayer::builder().timeout(Duration::from_secs(30)).build()?;
/// let svc = ServiceBuilder::new().layer(balance).service(pool);
///
/// assert!(svc.clone().oneshot(Request::new(Full::new(Bytes::new()))).await.is_err());
/// let mut request = Request::new(Full::new(Bytes::new()));
/// request.extensions_mut().insert(AttemptTimeout(Duration::from_secs(300)));
/// assert!(svc.oneshot(request).await.is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttemptTimeout(pub std::time::Duration);

impl AttemptTimeout {
    /// The limit a chat or text completion needs, read from its JSON body: `first_byte` for a
    /// stream (`"stream": true`), whose head comes at once; for a non-streamed answer, whose
    /// head comes only once it is written, `first_byte` plus `per_token` for each token it may
    /// generate (`max_completion_tokens`, else `max_tokens`, else 4,096). A body that is not
    /// in memory (buffered, as `BufferBodyLayer` leaves it) or cannot be read gets the
    /// longest. The body is read in place, not consumed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ai_balance::hints::AttemptTimeout;
    ///
    /// let (first_byte, per_token) = (Duration::from_secs(30), Duration::from_millis(250));
    /// let limit = |body: &str| AttemptTimeout::for_generation(&body.to_owned(), first_byte, per_token).0;
    /// assert_eq!(limit(r#"{"stream":true,"max_tokens":100}"#), Duration::from_secs(30));
    /// assert_eq!(limit(r#"{"max_tokens":100}"#), Duration::from_secs(55));
    /// assert_eq!(limit(r#"{"max_tokens":100,"max_completion_tokens":8}"#), Duration::from_secs(32));
    /// assert_eq!(limit(r#"{"stream":false}"#), Duration::from_secs(30 + 1024));
    /// assert_eq!(limit("not json"), Duration::from_secs(30 + 1024));
    /// ```
    pub fn for_generation<B: http_body::Body + Clone>(
        body: &B,
        first_byte: std::time::Duration,
        per_token: std::time::Duration,
    ) -> Self {
        let body = crate::peek::peek(body, usize::MAX).unwrap_or_default();
        let (mut stream, mut max_tokens, mut max_completion) = (false, None, None);
        let number = |token: &[u8]| std::str::from_utf8(token).ok()?.parse::<u32>().ok();
        let read = crate::json::Scanner::new(&body).object(|s, key, _| {
            if key.is("stream") {
                stream = s.scalar()? == b"true";
            } else if key.is("max_tokens") && s.peek()? != b'"' {
                max_tokens = number(s.scalar()?);
            } else if key.is("max_completion_tokens") && s.peek()? != b'"' {
                max_completion = number(s.scalar()?);
            } else {
                s.skip()?;
            }
            Ok(())
        });
        if read.is_ok() && stream {
            return Self(first_byte);
        }
        let tokens = match read {
            Ok(()) => max_completion.or(max_tokens).unwrap_or(4096),
            Err(_) => 4096,
        };
        Self(first_byte.saturating_add(per_token.saturating_mul(tokens)))
    }
}

/// The model a request is to be sent as, put in the request by
/// [`Balance`](crate::balance::Balance) before it calls the endpoint's service, when the
/// request's [`Require`] [renames](Require::renames) it (a model alias, or other models that
/// will do): the first of the acceptable models that the chosen endpoint serves. Requests
/// that name their model themselves never carry it.
///
/// The endpoint's service sends the request naming this model, not the one in the body
/// (which may be the alias, or a variant that was not available): the crate's HTTP upstream
/// (`client::Upstream`) does, and [`RewriteModel`](crate::route::RewriteModel) does it for
/// any other service of in-memory bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeAs(pub Arc<str>);

/// Filled by [`Balance`](crate::balance::Balance) with the endpoint it picked, as soon as it
/// picks: a layer above can tell where a request in flight went before it answers (to hedge
/// elsewhere, or to name the endpoint of an attempt it cancels).
#[derive(Debug, Clone, Default)]
pub(crate) struct Picked(Arc<std::sync::OnceLock<Arc<Endpoint>>>);

impl Picked {
    /// An empty cell; put a clone in the request's extensions.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The endpoint picked, once it has been.
    pub(crate) fn get(&self) -> Option<&Arc<Endpoint>> {
        self.0.get()
    }

    pub(crate) fn set(&self, endpoint: &Arc<Endpoint>) {
        let _ = self.0.set(Arc::clone(endpoint));
    }
}

/// Put in a request by `Failover` when it judges the response's first chunk before the caller
/// sees it (an error event is a failure): a body that ends with that chunk waits for the
/// judgment before it takes its verdict.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FirstChunkJudged;

/// The endpoint that served a response and the verdict on the response's head, in the
/// response's extensions: put there once, by `Balance`, with the stack's one classifier.
#[derive(Debug, Clone)]
pub struct Served {
    endpoint: Arc<Endpoint>,
    verdict: Outcome,
    /// When the request took its slot on the endpoint: a failure of a request sent before
    /// the endpoint's last ejection is late news, not a failed trial.
    sent: tokio::time::Instant,
}

impl Served {
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        verdict: Outcome,
        sent: tokio::time::Instant,
    ) -> Self {
        Self {
            endpoint,
            verdict,
            sent,
        }
    }

    /// When the request took its slot on the endpoint.
    pub(crate) fn sent(&self) -> tokio::time::Instant {
        self.sent
    }

    /// The endpoint that served the response.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The verdict on the response's head. A success may still turn into a failure at the end
    /// of its body ([`Judged::verdict`]).
    pub fn verdict(&self) -> Outcome {
        self.verdict
    }
}

/// A response body that knows its verdict once it has ended, and that a layer above can tell
/// of a failure it found and the body could not see.
///
/// `Balance`'s body judges the end of the stream (trailers, where gRPC puts its status; a body
/// error; a stall past the idle timeout) with the stack's classifier, and completes the load
/// guard with that verdict. `HealthFilter`'s and `Failover`'s bodies forward both methods to
/// the body they wrap, so a verdict is taken once, where the load guard lives, and every layer
/// reads it.
pub trait Judged {
    /// The verdict on the whole response, once the body has ended (`None` while it runs, and
    /// for a body dropped before its end: a cancellation is nobody's failure).
    fn verdict(&self) -> Option<Outcome>;

    /// A layer above found a failure that the body cannot see (an error event in the stream,
    /// no first chunk in time): records it against the endpoint, once, and ends the body's
    /// hold on the endpoint. Does nothing to a body that has already ended.
    fn report_failure(&mut self);
}
