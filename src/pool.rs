//! The shared endpoint set.
//!
//! Readers (every pick) load an immutable snapshot through `arc-swap`: lock-free, and never
//! blocked by a writer. Writers (insert, remove, re-weight, a `Discover` stream) build a new
//! snapshot under a mutex and swap it in; one snapshot per change, so a pick sees the whole
//! change or none of it.
//!
//! A removed endpoint takes no new picks and drains: its in-flight requests finish, and
//! [`Endpoint::drained`] resolves when the last one has.
//!
//! ```
//! use tower_ai_balance::{EndpointConfig, Pool};
//! let pool = Pool::new();
//! pool.insert("a", 1).unwrap();
//! pool.insert(EndpointConfig::new("b").weight(3.0).max_concurrency(8), 2).unwrap();
//! assert_eq!(pool.len(), 2);
//! let removed = pool.remove("a").unwrap();
//! assert!(removed.is_removed());
//! ```

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    sync::{Arc, Weak},
};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::{
    endpoint::{check_weight, ConfigError, Endpoint, EndpointConfig, Key, PoolState, WaitQueue},
    metrics::PoolMetrics,
    report::ReportPolicy,
    sync::{AtomicBool, Ordering::Relaxed},
};

/// An endpoint and its service, as a snapshot holds them.
#[derive(Debug, Clone)]
pub(crate) struct Entry<S> {
    endpoint: Arc<Endpoint>,
    service: S,
}

impl<S> Entry<S> {
    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Its service.
    pub(crate) fn service(&self) -> &S {
        &self.service
    }
}

impl<S> AsRef<Endpoint> for Entry<S> {
    #[inline]
    fn as_ref(&self) -> &Endpoint {
        &self.endpoint
    }
}

/// An immutable view of the pool: its entries sorted by tier, and each tier's range.
#[derive(Debug)]
pub(crate) struct Snapshot<S> {
    entries: Box<[Entry<S>]>,
    /// Each tier: its entries, and its largest weight if their weights differ (for sampling
    /// in proportion to weight).
    tiers: Box<[Tier]>,
    /// For each model some endpoint names: the endpoints that serve it (those that name it,
    /// and those that serve any model). Precomputed so that a pick for a model never draws an
    /// endpoint without it.
    by_model: HashMap<Arc<str>, Snapshot<S>>,
    /// The endpoints that serve any model, for a model no endpoint names.
    any_model: Option<Box<Snapshot<S>>>,
}

/// A tier of a snapshot.
#[derive(Debug, Clone)]
struct Tier {
    tier: u32,
    range: Range<usize>,
    max_weight: Option<f64>,
}

impl<S: Clone> Snapshot<S> {
    fn new(entries: Vec<Entry<S>>) -> Self {
        let mut snapshot = Self::flat(entries);
        let mut named: Vec<Arc<str>> = snapshot
            .entries
            .iter()
            .flat_map(|e| e.endpoint.capabilities().models.clone())
            .collect();
        named.sort();
        named.dedup();
        if named.is_empty() {
            return snapshot;
        }
        let part = |keep: &dyn Fn(&Endpoint) -> bool| {
            Self::flat(
                snapshot
                    .entries
                    .iter()
                    .filter(|e| keep(&e.endpoint))
                    .cloned()
                    .collect(),
            )
        };
        let by_model = named
            .iter()
            .map(|m| (Arc::clone(m), part(&|e| e.capabilities().serves_model(m))))
            .collect();
        let any_model = Box::new(part(&|e| e.capabilities().models.is_empty()));
        snapshot.by_model = by_model;
        snapshot.any_model = Some(any_model);
        snapshot
    }
}

impl<S> Snapshot<S> {
    /// The endpoints that serve `model` (all of them when no endpoint names its models).
    #[inline]
    pub(crate) fn for_model(&self, model: &str) -> &Snapshot<S> {
        match &self.any_model {
            None => self,
            Some(any) => self.by_model.get(model).unwrap_or(any),
        }
    }

    fn flat(mut entries: Vec<Entry<S>>) -> Self {
        entries.sort_by_key(|e| e.endpoint.tier());
        let mut tiers: Vec<Tier> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match tiers.last_mut() {
                Some(t) if t.tier == e.endpoint.tier() => t.range.end = i + 1,
                _ => tiers.push(Tier {
                    tier: e.endpoint.tier(),
                    range: i..i + 1,
                    max_weight: None,
                }),
            }
        }
        for t in &mut tiers {
            let weights = entries[t.range.clone()].iter().map(|e| e.endpoint.weight());
            let max = weights.clone().fold(0.0, f64::max);
            t.max_weight = weights.clone().any(|w| w != max).then_some(max);
        }
        Self {
            entries: entries.into_boxed_slice(),
            tiers: tiers.into_boxed_slice(),
            by_model: HashMap::new(),
            any_model: None,
        }
    }

    /// The entries, lowest tier first.
    pub(crate) fn entries(&self) -> &[Entry<S>] {
        &self.entries
    }

    /// Each tier's entries and their largest weight if their weights differ.
    pub(crate) fn weighted_tiers(&self) -> impl Iterator<Item = (&[Entry<S>], Option<f64>)> + '_ {
        self.tiers
            .iter()
            .map(|t| (&self.entries[t.range.clone()], t.max_weight))
    }

    /// The number of endpoints.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, key: &str) -> Option<usize> {
        find(&self.entries, key)
    }
}

fn find<S>(entries: &[Entry<S>], key: &str) -> Option<usize> {
    entries
        .iter()
        .position(|e| e.endpoint.key().as_str() == key)
}

/// Takes the endpoint out of `entries` and marks it removed, so picks on older snapshots pass
/// it over.
fn take<S>(entries: &mut Vec<Entry<S>>, key: &str) -> Option<Arc<Endpoint>> {
    let removed = entries.remove(find(entries, key)?);
    removed.endpoint.mark_removed();
    Some(removed.endpoint)
}

/// How many drained endpoints the pool keeps for the metrics' next reading, at most: without
/// readings, churn must not grow the list.
const MAX_DRAINED_KEPT: usize = 256;

struct Shared<S> {
    snapshot: ArcSwap<Snapshot<S>>,
    writer: Mutex<()>,
    /// Removed endpoints, reported by [`Pool::metrics`] while they drain and once after.
    removed: Mutex<Vec<Arc<Endpoint>>>,
    /// Dropped with the pool: tells the tasks that feed it (discovery) to end.
    gone: watch::Sender<()>,
    /// What the endpoints share: the queue of waiting requests, the member and ejected counts.
    state: Arc<PoolState>,
    /// Whether the last pick that needed it routed in panic mode.
    in_panic: AtomicBool,
}

/// A pool's endpoints, without its service type and without keeping it alive: what a task
/// that watches endpoints (health probes) holds.
#[derive(Clone)]
pub(crate) struct Members(Arc<dyn MemberSource>);

trait MemberSource: Send + Sync {
    fn endpoints(&self) -> Option<Vec<Arc<Endpoint>>>;
}

impl<S: Send + Sync> MemberSource for Weak<Shared<S>> {
    fn endpoints(&self) -> Option<Vec<Arc<Endpoint>>> {
        let shared = self.upgrade()?;
        let snapshot = shared.snapshot.load();
        Some(
            snapshot
                .entries
                .iter()
                .map(|e| Arc::clone(&e.endpoint))
                .collect(),
        )
    }
}

impl Members {
    /// The endpoints now, or `None` once the pool is gone.
    pub(crate) fn endpoints(&self) -> Option<Vec<Arc<Endpoint>>> {
        self.0.endpoints()
    }
}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Members").finish_non_exhaustive()
    }
}

/// A pool that is not kept alive by this handle: what background tasks hold.
pub(crate) struct WeakPool<S> {
    shared: Weak<Shared<S>>,
    gone: watch::Receiver<()>,
}

impl<S> WeakPool<S> {
    /// The pool, if some handle still keeps it.
    pub(crate) fn upgrade(&self) -> Option<Pool<S>> {
        self.shared.upgrade().map(|shared| Pool { shared })
    }

    /// Resolves once every handle to the pool is dropped.
    pub(crate) async fn gone(&mut self) {
        while self.gone.changed().await.is_ok() {}
    }
}

/// The shared endpoint set: cheap to clone, every clone the same pool.
pub struct Pool<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Pool<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Pool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.shared.snapshot.load();
        f.debug_list()
            .entries(snap.entries.iter().map(|e| &e.endpoint))
            .finish()
    }
}

impl<S: Clone> Default for Pool<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone> Pool<S> {
    /// An empty pool.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(Snapshot::new(Vec::new())),
                writer: Mutex::new(()),
                removed: Mutex::new(Vec::new()),
                gone: watch::Sender::new(()),
                state: Arc::default(),
                in_panic: AtomicBool::new(false),
            }),
        }
    }

    /// Adds an endpoint. Refuses a duplicate key, a negative or non-finite weight and a
    /// maximum concurrency of 0. Each change copies the snapshot (linear in the pool's size):
    /// add many endpoints at once with [`extend`](Self::extend).
    pub fn insert(
        &self,
        config: impl Into<EndpointConfig>,
        service: S,
    ) -> Result<Arc<Endpoint>, ConfigError> {
        let config = config.into();
        self.update(|entries| {
            if find(entries, config.key().as_str()).is_some() {
                return Err(ConfigError::DuplicateKey {
                    key: config.key().clone(),
                });
            }
            self.push(entries, config, service)
        })
    }

    /// Adds many endpoints as one change: one snapshot for the lot, where `insert` copies the
    /// snapshot once per endpoint. All or nothing: a duplicate key (in the pool or the batch)
    /// or an invalid config refuses the whole batch.
    pub fn extend(
        &self,
        endpoints: impl IntoIterator<Item = (EndpointConfig, S)>,
    ) -> Result<Vec<Arc<Endpoint>>, ConfigError> {
        self.update(|entries| {
            let mut keys: std::collections::HashSet<Key> =
                entries.iter().map(|e| e.endpoint.key().clone()).collect();
            let mut added = Vec::new();
            for (config, service) in endpoints {
                if !keys.insert(config.key().clone()) {
                    return Err(ConfigError::DuplicateKey {
                        key: config.key().clone(),
                    });
                }
                added.push(self.push(entries, config, service)?);
            }
            Ok(added)
        })
    }

    /// Removes an endpoint: it takes no new picks, and its in-flight requests finish. Returns
    /// it, so the caller can await [`Endpoint::drained`].
    pub fn remove(&self, key: &str) -> Option<Arc<Endpoint>> {
        self.update(|entries| {
            take(entries, key).ok_or(ConfigError::UnknownEndpoint { key: key.into() })
        })
        .ok()
    }

    /// Gives the endpoint with this key a new service, or adds it with the default metadata:
    /// one snapshot either way. An endpoint already here stays the same endpoint, with its
    /// metadata and all its live state (health, ejections and their back-off, trial permits,
    /// cooldown, requests in flight against its limit, latency estimates, counters, load
    /// report); the next picks call the new service, and requests already sent finish on the
    /// old one.
    pub fn upsert(&self, key: impl Into<Key>, service: S) -> Arc<Endpoint> {
        let key = key.into();
        let result = self.update(|entries| {
            if let Some(i) = find(entries, key.as_str()) {
                entries[i].service = service;
                return Ok(Arc::clone(&entries[i].endpoint));
            }
            self.push(entries, EndpointConfig::new(key.clone()), service)
        });
        result.expect("the default metadata is valid")
    }

    /// Adds the endpoint, or, if one with its key is already here, keeps that endpoint and
    /// its live state (as [`upsert`](Self::upsert) does) and takes the new service; a new
    /// weight, tier or concurrency limit is applied in place (a new limit counts the
    /// requests already in flight). Only new labels or capabilities replace the endpoint
    /// (the old one drains). One snapshot either way.
    pub(crate) fn announce(
        &self,
        config: EndpointConfig,
        service: S,
    ) -> Result<Arc<Endpoint>, ConfigError> {
        config.validate()?;
        self.update(|entries| {
            if let Some(i) = find(entries, config.key().as_str()) {
                if entries[i].endpoint.take_metadata(&config) {
                    entries[i].service = service;
                    return Ok(Arc::clone(&entries[i].endpoint));
                }
                take(entries, config.key().as_str());
            }
            self.push(entries, config, service)
        })
    }

    /// A handle that does not keep the pool alive.
    pub(crate) fn downgrade(&self) -> WeakPool<S> {
        WeakPool {
            shared: Arc::downgrade(&self.shared),
            gone: self.shared.gone.subscribe(),
        }
    }

    fn push(
        &self,
        entries: &mut Vec<Entry<S>>,
        config: EndpointConfig,
        service: S,
    ) -> Result<Arc<Endpoint>, ConfigError> {
        let endpoint = Endpoint::in_pool(config, &self.shared.state)?;
        entries.push(Entry {
            endpoint: Arc::clone(&endpoint),
            service,
        });
        Ok(endpoint)
    }

    /// Applies one change to a copy of the entries and publishes it as one snapshot; nothing
    /// is published if the change fails.
    fn update<R>(
        &self,
        change: impl FnOnce(&mut Vec<Entry<S>>) -> Result<R, ConfigError>,
    ) -> Result<R, ConfigError> {
        let _write = self.shared.writer.lock();
        let before = self.shared.snapshot.load_full();
        let mut entries = before.entries.to_vec();
        let result = change(&mut entries)?;
        let after = Arc::new(Snapshot::new(entries));
        self.shared.snapshot.store(Arc::clone(&after));
        self.keep_removed(&before, &after);
        // New endpoints have room: offer it to the requests that wait.
        let waiters = &self.shared.state.waiters;
        if waiters.is_waiting() {
            let old: std::collections::HashSet<u64> =
                before.entries.iter().map(|e| e.endpoint.id()).collect();
            for e in after
                .entries
                .iter()
                .filter(|e| !old.contains(&e.endpoint.id()))
            {
                waiters.offer(&e.endpoint);
            }
        }
        Ok(result)
    }

    /// Changes an endpoint's weight. Weight 0 drains it: no new picks, in-flight requests
    /// finish.
    pub fn set_weight(&self, key: &str, weight: f64) -> Result<(), ConfigError> {
        // The key is found under the writers' lock, where an upsert or a re-announcement
        // would replace the endpoint: the weight goes to the one in the pool. A new snapshot,
        // so that picks sample by the new weights.
        self.update(|entries| {
            let i = find(entries, key).ok_or_else(|| ConfigError::UnknownEndpoint {
                key: Key::from(key),
            })?;
            let endpoint = &entries[i].endpoint;
            check_weight(endpoint.key(), weight)?;
            endpoint.set_weight(weight);
            Ok(())
        })
    }

    /// Sets how the endpoints' load reports are read: their maximum age and the saturation
    /// thresholds (see [`Endpoint::report`]). Applies from each endpoint's next report.
    /// Refuses a KV-usage threshold that is NaN or negative.
    pub fn set_report_policy(&self, policy: ReportPolicy) -> Result<(), ConfigError> {
        if let Some(reason) = policy.invalid() {
            return Err(ConfigError::InvalidSetting {
                name: "max_kv_usage",
                reason,
            });
        }
        self.shared.state.set_report_policy(&policy);
        Ok(())
    }

    /// How the endpoints' load reports are read.
    pub fn report_policy(&self) -> ReportPolicy {
        self.shared.state.report_policy()
    }

    /// Notes that a scraper feeds the pool every `interval`: a report's default maximum age
    /// is three of them.
    pub(crate) fn scraped_every(&self, interval: std::time::Duration) {
        self.shared.state.set_scrape_interval(interval);
    }

    /// The endpoint with this key.
    pub fn get(&self, key: &str) -> Option<Arc<Endpoint>> {
        let snap = self.shared.snapshot.load();
        snap.find(key)
            .map(|i| Arc::clone(&snap.entries[i].endpoint))
    }

    /// A clone of the service of the endpoint with this key (to probe it, or to call it
    /// outside the balancer).
    pub fn service(&self, key: &str) -> Option<S> {
        let snap = self.shared.snapshot.load();
        snap.find(key).map(|i| snap.entries[i].service.clone())
    }

    /// Every endpoint, lowest tier first.
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.load()
            .entries
            .iter()
            .map(|e| Arc::clone(&e.endpoint))
            .collect()
    }

    /// Every endpoint's live state now, for dashboards (see [`crate::metrics`]). A removed
    /// endpoint is reported while its requests finish (its in-flight count, and the requests
    /// that complete after its removal), and by the first reading after it has drained; then
    /// no more.
    pub fn metrics(&self) -> PoolMetrics {
        let now = tokio::time::Instant::now();
        let mut removed = self.shared.removed.lock();
        let metrics = PoolMetrics::of(
            self.load()
                .entries()
                .iter()
                .map(|e| &**e.endpoint())
                .chain(removed.iter().map(|e| &**e)),
            self.shared.state.layer_events.read(),
            now,
        );
        // Those reported drained are not reported again.
        let first_removed = metrics.endpoints.len() - removed.len();
        let mut reported = metrics.endpoints[first_removed..].iter();
        removed.retain(|_| reported.next().is_some_and(|m| m.in_flight > 0));
        metrics
    }

    /// Keeps the endpoints a change removed for the metrics, while they drain.
    fn keep_removed(&self, before: &Snapshot<S>, after: &Snapshot<S>) {
        let gone = before
            .entries
            .iter()
            .filter(|e| e.endpoint.is_removed())
            .filter(|e| {
                !after
                    .entries
                    .iter()
                    .any(|a| Arc::ptr_eq(&a.endpoint, &e.endpoint))
            });
        let mut removed = self.shared.removed.lock();
        removed.extend(gone.map(|e| Arc::clone(&e.endpoint)));
        if removed.len() > MAX_DRAINED_KEPT {
            // Unread for long: drop the drained, oldest first, down to the bound.
            let mut excess = removed.len() - MAX_DRAINED_KEPT;
            removed.retain(|e| {
                let drop = excess > 0 && e.in_flight() == 0;
                excess -= usize::from(drop);
                !drop
            });
        }
    }

    /// Reads the current snapshot without touching its reference count (the pick's way).
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Snapshot<S>>> {
        self.shared.snapshot.load()
    }

    /// The queue of requests waiting for a slot.
    pub(crate) fn waiters(&self) -> &Arc<WaitQueue> {
        &self.shared.state.waiters
    }

    /// Records whether this pick routed in panic mode, and says so when that changes.
    #[inline]
    pub(crate) fn note_panic(&self, panicking: bool) {
        if self.shared.in_panic.load(Relaxed) != panicking
            && self.shared.in_panic.swap(panicking, Relaxed) != panicking
        {
            if panicking {
                tracing::warn!(
                    endpoints = self.len(),
                    "panic mode: health leaves no endpoint available; routing to all of them"
                );
            } else {
                tracing::info!("panic mode over: healthy endpoints are available again");
            }
        }
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.shared.snapshot.load().len()
    }

    /// A view of the endpoints for tasks that watch them, which does not keep the pool alive.
    pub(crate) fn members(&self) -> Members
    where
        S: Send + Sync + 'static,
    {
        Members(Arc::new(Arc::downgrade(&self.shared)))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
