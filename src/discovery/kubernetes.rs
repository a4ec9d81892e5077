//! Kubernetes discovery: a Service's ready endpoints, from its EndpointSlices.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_core::Stream;
use futures_util::{stream::BoxStream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};
use tower::discover::Change;

use crate::endpoint::{EndpointConfig, Key};

/// The tier (an integer, 0 preferred).
pub const KEY_TIER: &str = "tower-ai-balance/tier";
/// The weight (a number of at least 0).
pub const KEY_WEIGHT: &str = "tower-ai-balance/weight";
/// The models served, separated by commas (a label holds one; an annotation any number).
pub const KEY_MODELS: &str = "tower-ai-balance/models";
/// The most requests one endpoint serves at once (an integer of at least 1).
pub const KEY_MAX_CONCURRENCY: &str = "tower-ai-balance/max-concurrency";
/// The context window, in tokens.
pub const KEY_MAX_CONTEXT: &str = "tower-ai-balance/max-context";
/// The hardware class.
pub const KEY_HARDWARE: &str = "tower-ai-balance/hardware";

const SERVICE_NAME: &str = "kubernetes.io/service-name";

type Metadata = Arc<dyn Fn(EndpointConfig) -> EndpointConfig + Send + Sync>;
type Events = BoxStream<'static, Result<watcher::Event<EndpointSlice>, watcher::Error>>;

/// A [`Discover`](tower::discover::Discover) stream of a Kubernetes Service's ready
/// endpoints, from its EndpointSlices (label `kubernetes.io/service-name`).
///
/// It lists the slices, then watches them, through kube's watcher: watch bookmarks keep its
/// place, a `410 Gone` (the place expired) starts a fresh list, and a failed request is
/// retried with back-off (a `debug` event; the stream never ends or fails). After each list
/// and each change it yields what changed:
///
/// - an `Insert` for each address of a ready endpoint that was not announced, or whose
///   metadata changed (keyed by the address and port, `10.0.0.7:8000`), with the service
///   `service` makes for it;
/// - a `Remove` for each one that is gone, no longer ready, or terminating: the pool drains
///   it, so its streams finish while it takes no new request;
/// - nothing for an endpoint that stays as it was, so it keeps its live state.
///
/// A ready condition left unset counts as ready, as the API says. The port is the slice's
/// port named by [`port`](Self::port), or its first port. Each endpoint's metadata is read
/// from the slice's annotations, then its labels (the EndpointSlice controller copies the
/// Service's labels onto its slices), under the keys [`KEY_TIER`], [`KEY_WEIGHT`],
/// [`KEY_MODELS`], [`KEY_MAX_CONCURRENCY`], [`KEY_MAX_CONTEXT`] and [`KEY_HARDWARE`]; a
/// value that does not parse is skipped with a `warn` event. The endpoint's `zone`, `node`
/// and `pod` become labels of the same names, and [`metadata`](Self::metadata) may add
/// more.
///
/// The client's TLS and credentials are the application's: build the `kube::Client` as
/// usual (`Client::try_default()` in a cluster, with a TLS feature of kube turned on).
///
/// ```no_run
/// use tower_ai_balance::{discovery::EndpointSlices, Pool};
///
/// # async fn run() -> Result<(), tower_ai_balance::BoxError> {
/// let client = kube::Client::try_default().await?;
/// let pool = Pool::new();
/// let slices = EndpointSlices::new(client, "inference", "vllm", |addr| addr.to_string()).port("http");
/// let _task = pool.spawn_discovery(slices);
/// # Ok(())
/// # }
/// ```
pub struct EndpointSlices<S, F> {
    events: Events,
    service: F,
    port: Option<String>,
    metadata: Metadata,
    slices: BTreeMap<String, Vec<(SocketAddr, EndpointConfig)>>,
    listing: Option<BTreeMap<String, Vec<(SocketAddr, EndpointConfig)>>>,
    announced: BTreeMap<SocketAddr, EndpointConfig>,
    pending: VecDeque<Change<Key, (EndpointConfig, S)>>,
}

// Nothing in it is pinned in place: its stream is boxed.
impl<S, F> Unpin for EndpointSlices<S, F> {}

impl<S, F> fmt::Debug for EndpointSlices<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSlices")
            .field("port", &self.port)
            .field("endpoints", &self.announced.keys())
            .finish_non_exhaustive()
    }
}

impl<S, F> EndpointSlices<S, F>
where
    F: FnMut(SocketAddr) -> S,
{
    /// Watches the endpoints of the Service `service_name` in `namespace`; each gets the
    /// service `service` makes for its address.
    pub fn new(client: Client, namespace: &str, service_name: &str, service: F) -> Self {
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("{SERVICE_NAME}={service_name}"));
        Self {
            events: watcher(api, config).default_backoff().boxed(),
            service,
            port: None,
            metadata: Arc::new(|config| config),
            slices: BTreeMap::new(),
            listing: None,
            announced: BTreeMap::new(),
            pending: VecDeque::new(),
        }
    }

    /// Uses the slices' port of this name (by default, each slice's first port).
    pub fn port(mut self, name: impl Into<String>) -> Self {
        self.port = Some(name.into());
        self
    }

    /// Adds to each endpoint's metadata, after the labels and annotations are read.
    pub fn metadata(
        mut self,
        metadata: impl Fn(EndpointConfig) -> EndpointConfig + Send + Sync + 'static,
    ) -> Self {
        self.metadata = Arc::new(metadata);
        self
    }

    fn event(&mut self, event: watcher::Event<EndpointSlice>) {
        match event {
            watcher::Event::Init => self.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(slice) => {
                let (name, endpoints) = self.read(&slice);
                self.listing
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, endpoints);
            }
            watcher::Event::InitDone => {
                self.slices = self.listing.take().unwrap_or_default();
                self.diff();
            }
            watcher::Event::Apply(slice) => {
                let (name, endpoints) = self.read(&slice);
                self.slices.insert(name, endpoints);
                self.diff();
            }
            watcher::Event::Delete(slice) => {
                self.slices.remove(&slice.metadata.name.unwrap_or_default());
                self.diff();
            }
        }
    }

    /// A slice's ready endpoints and their metadata.
    fn read(&self, slice: &EndpointSlice) -> (String, Vec<(SocketAddr, EndpointConfig)>) {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let port = slice.ports.iter().flatten().find(|p| match &self.port {
            Some(wanted) => p.name.as_deref() == Some(wanted),
            None => true,
        });
        let Some(port) = port.and_then(|p| u16::try_from(p.port?).ok()) else {
            tracing::warn!(slice = %name, port = ?self.port, "EndpointSlice without the port; skipped");
            return (name, Vec::new());
        };
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            return (name, Vec::new());
        }
        let mut endpoints = Vec::new();
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.as_ref();
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            if !ready || terminating {
                continue;
            }
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                let addr = SocketAddr::new(ip, port);
                let mut config = slice_metadata(EndpointConfig::new(addr), slice);
                let pod = endpoint.target_ref.as_ref().and_then(|r| r.name.as_deref());
                for (label, value) in [
                    ("zone", endpoint.zone.as_deref()),
                    ("node", endpoint.node_name.as_deref()),
                    ("pod", pod),
                ] {
                    if let Some(value) = value {
                        config = config.label(label, value);
                    }
                }
                endpoints.push((addr, (self.metadata)(config)));
            }
        }
        (name, endpoints)
    }

    /// Queues what changed between the announced endpoints and the slices' ready ones.
    fn diff(&mut self) {
        let mut now = BTreeMap::new();
        for (addr, config) in self.slices.values().flatten() {
            now.entry(*addr).or_insert_with(|| config.clone());
        }
        for gone in self.announced.keys().filter(|a| !now.contains_key(a)) {
            self.pending.push_back(Change::Remove(Key::from(*gone)));
        }
        for (addr, config) in &now {
            if self.announced.get(addr) != Some(config) {
                let service = (self.service)(*addr);
                self.pending
                    .push_back(Change::Insert(Key::from(*addr), (config.clone(), service)));
            }
        }
        self.announced = now;
    }
}

/// Reads the metadata keys from the slice's annotations, then its labels.
fn slice_metadata(mut config: EndpointConfig, slice: &EndpointSlice) -> EndpointConfig {
    let meta = &slice.metadata;
    let get = |key: &str| {
        let annotation = meta.annotations.as_ref().and_then(|a| a.get(key));
        annotation
            .or_else(|| meta.labels.as_ref().and_then(|l| l.get(key)))
            .map(|v| v.trim())
    };
    let warn = |key: &str, value: &str| {
        tracing::warn!(slice = ?meta.name, key, value, "unreadable endpoint metadata; skipped");
    };
    if let Some(v) = get(KEY_TIER) {
        match v.parse() {
            Ok(tier) => config = config.tier(tier),
            Err(_) => warn(KEY_TIER, v),
        }
    }
    if let Some(v) = get(KEY_WEIGHT) {
        match v.parse::<f64>() {
            // Within what the pool takes: a weight it refuses would keep the slice's every
            // endpoint out of the pool, where an unreadable one is only skipped.
            Ok(w) if (0.0..=EndpointConfig::MAX_WEIGHT).contains(&w) => {
                config = config.weight(w);
            }
            _ => warn(KEY_WEIGHT, v),
        }
    }
    if let Some(v) = get(KEY_MAX_CONCURRENCY) {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => config = config.max_concurrency(n),
            _ => warn(KEY_MAX_CONCURRENCY, v),
        }
    }
    if let Some(v) = get(KEY_MAX_CONTEXT) {
        match v.parse() {
            Ok(n) => config = config.max_context(n),
            Err(_) => warn(KEY_MAX_CONTEXT, v),
        }
    }
    if let Some(v) = get(KEY_HARDWARE).filter(|v| !v.is_empty()) {
        config = config.hardware(v);
    }
    if let Some(v) = get(KEY_MODELS) {
        for model in v.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            config = config.model(model);
        }
    }
    config
}

impl<S, F> Stream for EndpointSlices<S, F>
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
            match this.events.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(event))) => this.event(event),
                Poll::Ready(Some(Err(error))) => {
                    // The watcher re-lists after a 410 and retries the rest with back-off.
                    tracing::debug!(%error, "EndpointSlice watch error; retrying");
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn annotated(pairs: &[(&str, &str)]) -> EndpointSlice {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("vllm-abc".into()),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn a_weight_the_pool_would_refuse_is_skipped_not_the_endpoint() {
        let addr = "10.0.0.7:8000";
        for weight in ["1e13", "1e300", "inf", "NaN", "-1", "heavy"] {
            let slice = annotated(&[(KEY_WEIGHT, weight), (KEY_TIER, "2")]);
            let config = slice_metadata(EndpointConfig::new(addr), &slice);
            assert!(config.validate().is_ok(), "weight {weight}");
            assert_eq!(config, EndpointConfig::new(addr).tier(2), "weight {weight}");
        }
        let slice = annotated(&[(KEY_WEIGHT, "1e12")]);
        let config = slice_metadata(EndpointConfig::new(addr), &slice);
        assert_eq!(config, EndpointConfig::new(addr).weight(1e12));
    }
}
