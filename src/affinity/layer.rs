//! [`StreamAffinityLayer`] and its [`StreamAffinityBuilder`]: where keys come from, the load
//! bound, and the remembering table, validated once.

use std::{sync::Arc, time::Duration};

use http::HeaderName;
use tower_layer::Layer;

use super::{table::Table, Header, Shared, StreamAffinity};
use crate::error::ConfigError;

/// Builds a [`StreamAffinity`].
#[derive(Debug, Clone)]
pub struct StreamAffinityLayer<K> {
    extract: Arc<K>,
    bound: f64,
    table: Option<Arc<Table>>,
}

impl StreamAffinityLayer<Header> {
    /// Keys requests by a header, such as `x-session-id`.
    pub fn header(name: HeaderName) -> Self {
        Self::new(Header(name))
    }
}

impl<K> StreamAffinityLayer<K> {
    /// Keys requests with `extract`; stateless, with a load bound of 1.25.
    pub fn new(extract: K) -> Self {
        Self {
            extract: Arc::new(extract),
            bound: 1.25,
            table: None,
        }
    }

    /// Settings other than the defaults, with keys from `extract`.
    pub fn builder(extract: K) -> StreamAffinityBuilder<K> {
        StreamAffinityBuilder {
            layer: Self::new(extract),
            remember: None,
        }
    }

    /// How many keys the table remembers now (0 when stateless).
    pub fn remembered(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.len())
    }

    /// The most keys the table can hold (0 when stateless).
    pub fn capacity(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.capacity())
    }
}

/// The settings of a [`StreamAffinityLayer`], checked by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct StreamAffinityBuilder<K> {
    layer: StreamAffinityLayer<K>,
    remember: Option<(usize, Duration)>,
}

impl<K> StreamAffinityBuilder<K> {
    /// How far above its share of the load an endpoint may go before a key spills over to the
    /// next endpoint in its order (1.25 by default); at least 1.
    pub fn bound(mut self, c: f64) -> Self {
        self.layer.bound = c;
        self
    }

    /// Remembers where each key was served (at most `capacity` keys, each forgotten after
    /// `idle` without a request) and sends it back there while that endpoint can serve it:
    /// strict stickiness. When the endpoint is ejected or removed, the key moves and the table
    /// follows it.
    pub fn remember(mut self, capacity: usize, idle: Duration) -> Self {
        self.remember = Some((capacity, idle));
        self
    }

    /// The layer, or the setting it refuses: a bound below 1 or not a number.
    pub fn build(mut self) -> Result<StreamAffinityLayer<K>, ConfigError> {
        let c = self.layer.bound;
        if c.is_nan() || c < 1.0 {
            return Err(ConfigError::InvalidSetting {
                name: "bound",
                reason: "must be a number of at least 1",
            });
        }
        if let Some((capacity, idle)) = self.remember {
            self.layer.table = Some(Arc::new(Table::new(capacity, idle)));
        }
        Ok(self.layer)
    }
}

impl<S, K> Layer<S> for StreamAffinityLayer<K> {
    type Service = StreamAffinity<S, K>;

    fn layer(&self, inner: S) -> StreamAffinity<S, K> {
        StreamAffinity::new(
            inner,
            Arc::new(Shared {
                extract: Arc::clone(&self.extract),
                bound: self.bound,
                table: self.table.clone(),
            }),
        )
    }
}
