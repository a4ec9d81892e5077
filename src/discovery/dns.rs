//! DNS discovery: a name's addresses as endpoints, re-resolved on the records' TTL.

use std::{
    collections::{BTreeSet, VecDeque},
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_core::Stream;
use hickory_resolver::{
    proto::rr::{RData, RecordType},
    TokioResolver,
};
use tokio::time::Sleep;
use tower::discover::Change;

use crate::{
    endpoint::{EndpointConfig, Key},
    error::BoxError,
};

/// How often a [`Dns`] stream resolves its name again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsConfig {
    /// Never resolve again sooner than this, whatever the TTL (default 1 s; taken as at least
    /// 100 ms, so that a zero never makes a failing resolver be asked in a tight loop);
    /// also the wait before retrying a failed resolution.
    pub min_ttl: Duration,
    /// Never wait longer than this, whatever the TTL (default 30 s).
    pub max_ttl: Duration,
}

/// The shortest wait between two resolutions of one name, whatever the settings say.
const MIN_WAIT: Duration = Duration::from_millis(100);

impl DnsConfig {
    /// [`min_ttl`](Self::min_ttl), at least `MIN_WAIT`.
    fn min_wait(&self) -> Duration {
        self.min_ttl.max(MIN_WAIT)
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(30),
        }
    }
}

type Resolution = Pin<Box<dyn Future<Output = Resolved> + Send>>;
type Metadata = Arc<dyn Fn(EndpointConfig) -> EndpointConfig + Send + Sync>;

enum Resolved {
    /// The addresses, and how long they are valid.
    Addresses(BTreeSet<IpAddr>, Duration),
    /// The name has no addresses: both families answered, with no records or NXDOMAIN.
    None(Duration),
    /// A family's query failed (a timeout, SERVFAIL): the last answer stands.
    Failed(BoxError),
}

enum State {
    Resolving(Resolution),
    Waiting(Pin<Box<Sleep>>),
}

/// A [`Discover`](tower::discover::Discover) stream of a DNS name's addresses: each address
/// (with the given port) is one endpoint, keyed by the socket address (`10.0.0.7:8000`,
/// `[fd00::7]:8000`).
///
/// The name is resolved at once, then again when the answer's TTL runs out, within
/// [`DnsConfig`]'s bounds. Each resolution yields an `Insert` for every new address and a
/// `Remove` for every address that is gone (the pool drains it); an address that stays is
/// not announced again, so its endpoint keeps its live state. A and AAAA records are asked
/// for apart: when both answer and neither has an address (no records, or NXDOMAIN), every
/// endpoint is removed; when either query fails (a timeout, a server failure), nothing
/// changes and the name is resolved again after [`DnsConfig::min_ttl`], with a `warn`
/// event, since a flaky resolver must not empty the pool. The stream never ends and never
/// fails.
///
/// Every endpoint it creates gets the metadata [`metadata`](Self::metadata) gives it (a
/// tier, a weight, models, a concurrency limit) and a service made by `service` from its
/// address.
///
/// ```no_run
/// use tower_ai_balance::{discovery::Dns, Pool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ai_balance::BoxError> {
/// let pool = Pool::new();
/// // One endpoint per address of a headless Service, each serving one model.
/// let dns = Dns::system("vllm.inference.svc.cluster.local.", 8000, |addr| addr.to_string())?
///     .metadata(|config| config.model("llama-3-70b").max_concurrency(64));
/// let _task = pool.spawn_discovery(dns);
/// # Ok(())
/// # }
/// ```
pub struct Dns<S, F> {
    resolver: Arc<TokioResolver>,
    name: Arc<str>,
    port: u16,
    service: F,
    metadata: Metadata,
    config: DnsConfig,
    known: BTreeSet<SocketAddr>,
    pending: VecDeque<Change<Key, (EndpointConfig, S)>>,
    state: Option<State>,
}

// Nothing in it is pinned in place: its futures are boxed.
impl<S, F> Unpin for Dns<S, F> {}

impl<S, F> fmt::Debug for Dns<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dns")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("config", &self.config)
            .field("endpoints", &self.known)
            .finish_non_exhaustive()
    }
}

impl<S, F> Dns<S, F>
where
    F: FnMut(SocketAddr) -> S,
{
    /// Resolves `name` with `resolver`; each address on `port` gets the service `service`
    /// makes for it.
    pub fn new(resolver: TokioResolver, name: impl Into<String>, port: u16, service: F) -> Self {
        Self {
            resolver: Arc::new(resolver),
            name: name.into().into(),
            port,
            service,
            metadata: Arc::new(|config| config),
            config: DnsConfig::default(),
            known: BTreeSet::new(),
            pending: VecDeque::new(),
            state: None,
        }
    }

    /// Resolves `name` with the system's resolver configuration (`/etc/resolv.conf` on
    /// Unix), with hickory's cache off so that each resolution asks the server.
    pub fn system(name: impl Into<String>, port: u16, service: F) -> Result<Self, BoxError> {
        let mut builder = TokioResolver::builder_tokio()?;
        builder.options_mut().cache_size = 0;
        Ok(Self::new(builder.build()?, name, port, service))
    }

    /// The metadata of each endpoint: `metadata` is given `EndpointConfig::new(address)`
    /// and returns it with what the endpoints share (tier, weight, models, limits, labels).
    pub fn metadata(
        mut self,
        metadata: impl Fn(EndpointConfig) -> EndpointConfig + Send + Sync + 'static,
    ) -> Self {
        self.metadata = Arc::new(metadata);
        self
    }

    /// How often the name is resolved again.
    pub fn config(mut self, config: DnsConfig) -> Self {
        self.config = config;
        self
    }

    fn resolve(&self) -> Resolution {
        let (resolver, name) = (Arc::clone(&self.resolver), Arc::clone(&self.name));
        let (min, max) = (
            self.config.min_wait(),
            self.config.max_ttl.max(self.config.min_wait()),
        );
        Box::pin(async move {
            // A and AAAA apart, so that one family's timeout is never mistaken for the
            // other's empty answer (a dual-stack lookup reports the empty answer).
            let (v4, v6) = futures_util::future::join(
                resolver.lookup(&*name, RecordType::A),
                resolver.lookup(&*name, RecordType::AAAA),
            )
            .await;
            let mut ips = BTreeSet::new();
            let mut valid = max;
            for answer in [v4, v6] {
                match answer {
                    Ok(lookup) => {
                        let left = lookup
                            .valid_until()
                            .saturating_duration_since(std::time::Instant::now());
                        valid = valid.min(left);
                        ips.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None,
                        }));
                    }
                    // An authoritative "no such name" or "no such records".
                    Err(e) if e.is_no_records_found() => {}
                    Err(e) => return Resolved::Failed(e.into()),
                }
            }
            let ttl = valid.clamp(min, max);
            if ips.is_empty() {
                Resolved::None(ttl)
            } else {
                Resolved::Addresses(ips, ttl)
            }
        })
    }

    /// Turns a resolution into changes, and says when to resolve again.
    fn changes(&mut self, resolved: Resolved) -> Duration {
        let (now, ttl) = match resolved {
            Resolved::Addresses(ips, ttl) => {
                let port = self.port;
                (
                    ips.into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect(),
                    ttl,
                )
            }
            Resolved::None(ttl) => {
                tracing::info!(name = %self.name, "the name has no addresses");
                (BTreeSet::new(), ttl)
            }
            Resolved::Failed(error) => {
                tracing::warn!(name = %self.name, %error, "resolution failed; keeping the last answer");
                return self.config.min_wait();
            }
        };
        for gone in self.known.difference(&now) {
            self.pending.push_back(Change::Remove(Key::from(*gone)));
        }
        for &new in now.difference(&self.known) {
            let config = (self.metadata)(EndpointConfig::new(new));
            let service = (self.service)(new);
            self.pending
                .push_back(Change::Insert(Key::from(new), (config, service)));
        }
        self.known = now;
        ttl
    }
}

impl<S, F> Stream for Dns<S, F>
where
    F: FnMut(SocketAddr) -> S,
{
    type Item = Result<Change<Key, (EndpointConfig, S)>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match this.state.take() {
                None => this.state = Some(State::Resolving(this.resolve())),
                Some(State::Resolving(mut resolving)) => match resolving.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = Some(State::Resolving(resolving));
                        return Poll::Pending;
                    }
                    Poll::Ready(resolved) => {
                        let wait = this.changes(resolved);
                        this.state = Some(State::Waiting(Box::pin(tokio::time::sleep(wait))));
                    }
                },
                Some(State::Waiting(mut sleep)) => match sleep.as_mut().poll(cx) {
                    Poll::Pending => {
                        this.state = Some(State::Waiting(sleep));
                        return Poll::Pending;
                    }
                    Poll::Ready(()) => this.state = Some(State::Resolving(this.resolve())),
                },
            }
        }
    }
}
