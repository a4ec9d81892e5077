//! Finding endpoints where they run: `tower::discover::Discover` streams that carry each
//! endpoint's metadata, and the pool side that keeps live state when an endpoint is
//! announced again.
//!
//! A discovered endpoint is a [`Change::Insert`] of its key and an `(EndpointConfig, S)`
//! pair: its metadata (tier, weight, models, concurrency limit, labels) and its service.
//! [`Pool::discover_with_config`] applies such a stream; [`Pool::spawn_discovery`] runs it
//! in a task that does not keep the pool alive.
//!
//! - [`Dns`] (feature `dns`): a name's addresses, re-resolved on the records' TTL.
//! - [`EndpointSlices`] (feature `kubernetes`): a Kubernetes Service's ready endpoints.
//!
//! # Announced again
//!
//! A source may announce a key it announced before (a stream that re-sends its whole set, as
//! a DNS refresh does, or a watch that re-lists). The endpoint stays the same endpoint and
//! keeps its live state: health, ejection count and back-off, half-open trial permits,
//! cooldown, the requests in flight against its limit, latency estimates, counters and load
//! report; the new service replaces the old one for the next picks (requests already sent
//! finish on the old one). New metadata changes only the metadata, in place: weight, tier,
//! concurrency limit (which counts the requests already in flight: a lower limit admits no
//! request until they are under it) and capabilities (models among them). Only new labels
//! replace the endpoint with a new one, whose state starts afresh, while the old one drains.
//!
//! ```
//! use futures_util::stream;
//! use tower::discover::Change;
//! use tower_ai_balance::{EndpointConfig, Pool};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let pool = Pool::new();
//! let changes = stream::iter([
//!     Ok::<_, std::convert::Infallible>(Change::Insert("a", (EndpointConfig::new("a").tier(1), 1))),
//!     Ok(Change::Insert("b", (EndpointConfig::new("b").model("llama-3-8b"), 2))),
//!     Ok(Change::Remove("a")),
//! ]);
//! pool.discover_with_config(changes).await.unwrap();
//! assert_eq!(pool.len(), 1);
//! # }
//! ```
//!
//! [`Change::Insert`]: tower::discover::Change::Insert

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "kubernetes")]
mod kubernetes;

use std::{
    future::{poll_fn, Future},
    pin::pin,
    task::Poll,
};

use tokio::task::JoinHandle;
use tower::discover::{Change, Discover};

#[cfg(feature = "dns")]
pub use self::dns::{Dns, DnsConfig};
#[cfg(feature = "kubernetes")]
pub use self::kubernetes::{
    EndpointSlices, KEY_HARDWARE, KEY_MAX_CONCURRENCY, KEY_MAX_CONTEXT, KEY_MODELS, KEY_TIER,
    KEY_WEIGHT,
};
use crate::{
    endpoint::{EndpointConfig, Key},
    pool::{Pool, WeakPool},
};

impl<S: Clone> Pool<S> {
    /// Feeds the pool from a [`Discover`] stream until it ends or fails, or the pool is
    /// dropped. An insert of a key already present gives that endpoint the new service and
    /// keeps its live state (see [`Pool::upsert`]); endpoints discovered this way get the
    /// default metadata.
    ///
    /// The future holds the pool weakly, so a task that runs it (`tokio::spawn(pool.discover(
    /// stream))`) ends with the pool, even if the stream never wakes again, and drops the
    /// stream.
    pub fn discover<D>(&self, discover: D) -> impl Future<Output = Result<(), D::Error>>
    where
        D: Discover<Service = S>,
        D::Key: Into<Key>,
    {
        drive(self.downgrade(), discover, |pool, change| match change {
            Change::Insert(key, service) => {
                pool.upsert(key, service);
            }
            Change::Remove(key) => {
                pool.remove(key.into().as_str());
            }
        })
    }

    /// Feeds the pool from a [`Discover`] stream whose services carry their metadata, until
    /// it ends or fails, or the pool is dropped. An endpoint announced again keeps its live
    /// state (see the [module docs](crate::discovery)); a config the pool refuses (a negative
    /// weight, a limit of 0) is skipped with a `warn` event. Like
    /// [`discover`](Self::discover), the future holds the pool weakly.
    pub fn discover_with_config<D>(&self, discover: D) -> impl Future<Output = Result<(), D::Error>>
    where
        D: Discover<Service = (EndpointConfig, S)>,
        D::Key: Into<Key>,
    {
        drive(self.downgrade(), discover, apply)
    }

    /// Runs [`discover_with_config`](Self::discover_with_config) in a task that holds the
    /// pool weakly: the task ends when the stream ends or fails, or when every handle to the
    /// pool is dropped. The stream and its services are dropped with it.
    pub fn spawn_discovery<D>(&self, discover: D) -> JoinHandle<Result<(), D::Error>>
    where
        S: Send + Sync + 'static,
        D: Discover<Service = (EndpointConfig, S)> + Send + 'static,
        D::Key: Into<Key>,
        D::Error: Send,
    {
        tokio::spawn(self.discover_with_config(discover))
    }
}

/// Applies each change of `discover` to the pool while some handle keeps the pool: ends when
/// the stream ends or fails, or as soon as the pool is dropped.
async fn drive<S: Clone, D: Discover>(
    mut pool: WeakPool<S>,
    discover: D,
    apply: impl Fn(&Pool<S>, Change<D::Key, D::Service>),
) -> Result<(), D::Error> {
    let mut discover = pin!(discover);
    loop {
        let change = {
            let mut gone = pin!(pool.gone());
            poll_fn(|cx| {
                if gone.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                discover.as_mut().poll_discover(cx)
            })
            .await
        };
        let Some(change) = change else {
            return Ok(()); // the stream ended, or the pool is gone
        };
        let change = change?;
        let Some(pool) = pool.upgrade() else {
            return Ok(());
        };
        apply(&pool, change);
    }
}

fn apply<S: Clone, K: Into<Key>>(pool: &Pool<S>, change: Change<K, (EndpointConfig, S)>) {
    match change {
        Change::Insert(key, (config, service)) => {
            let key = key.into();
            if config.key() != &key {
                tracing::warn!(%key, config = %config.key(), "discovered endpoint's key differs from its config's; using the config's");
            }
            if let Err(error) = pool.announce(config, service) {
                tracing::warn!(%key, %error, "discovered endpoint refused");
            }
        }
        Change::Remove(key) => {
            pool.remove(key.into().as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use futures_util::stream;
    use tokio::time::Instant;

    use super::*;
    use crate::Health;

    type Changes = Vec<Result<Change<&'static str, (EndpointConfig, u32)>, ()>>;

    #[tokio::test]
    async fn announced_again_an_endpoint_keeps_its_state() {
        let pool = Pool::new();
        let a = EndpointConfig::new("a").max_concurrency(4).model("m");
        let changes: Changes = vec![Ok(Change::Insert("a", (a.clone(), 1)))];
        pool.discover_with_config(stream::iter(changes))
            .await
            .unwrap();
        let first = pool.get("a").unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        first.set_health(Health::Ejected { until });
        let ejected = first.health();

        // The same metadata, a new service; then a new weight.
        let changes: Changes = vec![
            Ok(Change::Insert("a", (a.clone(), 2))),
            Ok(Change::Insert("a", (a.clone().weight(3.0), 3))),
        ];
        pool.discover_with_config(stream::iter(changes))
            .await
            .unwrap();
        let now = pool.get("a").unwrap();
        assert!(Arc::ptr_eq(&first, &now), "the same endpoint");
        assert_eq!(now.health(), ejected);
        assert_eq!(now.weight(), 3.0);
        assert_eq!(*pool.load().entries()[0].service(), 3);

        // A new tier, limit and models: the same endpoint takes them.
        let moved = a.clone().tier(1).max_concurrency(2).model("n");
        let changes: Changes = vec![Ok(Change::Insert("a", (moved.clone(), 4)))];
        pool.discover_with_config(stream::iter(changes))
            .await
            .unwrap();
        let now = pool.get("a").unwrap();
        assert!(Arc::ptr_eq(&first, &now), "the same endpoint");
        assert_eq!((now.tier(), now.max_concurrency()), (1, Some(2)));
        assert!(now.capabilities().serves_model("n"));
        assert_eq!(now.health(), ejected);

        // New labels: a new endpoint, the old one drains.
        let changes: Changes = vec![Ok(Change::Insert("a", (moved.label("zone", "b"), 5)))];
        pool.discover_with_config(stream::iter(changes))
            .await
            .unwrap();
        let replaced = pool.get("a").unwrap();
        assert!(!Arc::ptr_eq(&first, &replaced));
        assert!(first.is_removed());
        assert_eq!((replaced.tier(), replaced.health()), (1, Health::Healthy));

        // A refused config is skipped; removal drains.
        let changes: Changes = vec![
            Ok(Change::Insert(
                "b",
                (EndpointConfig::new("b").weight(-1.0), 5),
            )),
            Ok(Change::Remove("a")),
        ];
        pool.discover_with_config(stream::iter(changes))
            .await
            .unwrap();
        assert!(pool.is_empty() && replaced.is_removed());
    }

    #[tokio::test]
    async fn the_spawned_task_ends_with_the_pool() {
        let pool: Pool<u32> = Pool::new();
        // A stream that never ends, but wakes now and then, as a discovery stream does.
        let ticks = stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let key: &'static str = if n == 0 { "a" } else { "b" };
            Some((
                Ok::<_, ()>(Change::Insert(key, (EndpointConfig::new(key), n))),
                n + 1,
            ))
        });
        let task = pool.spawn_discovery(ticks);
        while pool.get("b").is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let endpoint = pool.get("a").unwrap();
        drop(pool);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the task ends once the pool is gone")
            .unwrap()
            .unwrap();
        // The task held no handle: the pool and its snapshot are gone.
        assert_eq!(Arc::strong_count(&endpoint), 1);
    }
}
