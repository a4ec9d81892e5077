//! [`ProxyBuilder`]: a proxy's settings (attempts, timeouts, size limits, the session key,
//! health, hidden subprotocols), checked once; `Proxy::new` and `Proxy::builder` start here.

use std::{fmt, sync::Arc, time::Duration};

use http::{request, HeaderName};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{
    headers::OPENAI_KEY_PROTOCOL,
    proxy::{KeyFn, Shared},
    Proxy, Settings, Target,
};
use crate::{
    affinity::hash_key, balance::Balance, error::ConfigError, health::HealthFilterLayer,
    health::HealthPolicy,
};

/// The settings of a [`Proxy`], checked by [`build`](Self::build).
pub struct ProxyBuilder {
    attempts: usize,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    close_timeout: Duration,
    max_message_size: usize,
    max_frame_size: usize,
    affinity: Option<Box<KeyFn>>,
    bound: f64,
    health: Option<HealthPolicy>,
    hidden_protocols: Vec<String>,
}

impl Default for ProxyBuilder {
    /// 3 attempts, a 10 s connect timeout, a 5 min idle timeout, 5 s for the closing
    /// handshakes, messages up to 16 MiB and frames up to 4 MiB, no session key, no health
    /// policy, and OpenAI's `openai-insecure-api-key.` subprotocol hidden.
    fn default() -> Self {
        Self {
            attempts: 3,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(300)),
            close_timeout: Duration::from_secs(5),
            max_message_size: 16 << 20,
            max_frame_size: 4 << 20,
            affinity: None,
            bound: 1.25,
            health: None,
            hidden_protocols: vec![OPENAI_KEY_PROTOCOL.to_owned()],
        }
    }
}

impl fmt::Debug for ProxyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBuilder")
            .field("attempts", &self.attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("max_frame_size", &self.max_frame_size)
            .field("keyed", &self.affinity.is_some())
            .field("bound", &self.bound)
            .field("health", &self.health)
            .field("hidden_protocols", &self.hidden_protocols)
            .finish()
    }
}

fn invalid(name: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidSetting { name, reason }
}

impl Proxy<()> {
    /// Settings other than the defaults; [`ProxyBuilder::build`] makes the proxy over a pool
    /// of any [`Target`].
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }
}

impl<S: Target + Clone> Proxy<S> {
    /// A proxy with the default settings of [`ProxyBuilder`], picking with `balance` (its
    /// pool, strategy and classifier).
    pub fn new(balance: Balance<S>) -> Self {
        ProxyBuilder::default().finish(balance)
    }
}

impl ProxyBuilder {
    /// How many endpoints a session may be tried on before it starts (3 by default; at
    /// least 1).
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = attempts;
        self
    }

    /// How long one attempt may take to connect and complete the upstream's handshake
    /// (10 s by default); past it, the attempt counts as the endpoint's failure.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Ends a session after this long with no frame either way, pings and pongs included
    /// (5 min by default; `None` for never). Nobody's failure.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// How long the closing handshakes may take once a session has ended (5 s by default).
    /// The endpoint's slot is released before they start.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// The largest message either side may send (16 MiB by default): a larger one ends the
    /// session with 1009 (message too big), nobody's failure.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The largest frame either side may send (4 MiB by default), as for messages.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Keys sessions by this header of the upgrade request (`x-session-id`): a session goes
    /// where [`StreamAffinityLayer::header`](crate::StreamAffinityLayer::header) sends HTTP
    /// requests with the same value (the same hash, the same rendezvous over the pool).
    pub fn affinity_header(self, name: HeaderName) -> Self {
        self.affinity(move |head: &request::Parts| {
            head.headers.get(&name).map(|v| hash_key(v.as_bytes()))
        })
    }

    /// Keys sessions with a function of the upgrade request's head, returning a
    /// [`hash_key`]; `None` balances the session by load.
    pub fn affinity(
        mut self,
        key: impl Fn(&request::Parts) -> Option<u64> + Send + Sync + 'static,
    ) -> Self {
        self.affinity = Some(Box::new(key));
        self
    }

    /// How far above its share of the load an endpoint may go before a key spills to the
    /// next in its order (1.25 by default; at least 1), as in
    /// [`StreamAffinityBuilder::bound`](crate::affinity::StreamAffinityBuilder::bound).
    pub fn affinity_bound(mut self, c: f64) -> Self {
        self.bound = c;
        self
    }

    /// Judges each session's endpoint with this health layer's policy, as the layer judges
    /// HTTP responses: a refused handshake or a broken session counts against it, a clean
    /// close for it.
    pub fn health(mut self, layer: &HealthFilterLayer) -> Self {
        self.health = Some(layer.policy().clone());
        self
    }

    /// Also drops the client's subprotocols that start with `prefix` (compared without
    /// regard to case) from what the upstream is offered: subprotocols that carry a
    /// credential. `openai-insecure-api-key.` is always dropped.
    pub fn hide_subprotocol(mut self, prefix: impl Into<String>) -> Self {
        self.hidden_protocols.push(prefix.into());
        self
    }

    /// The proxy over `balance`'s pool, or the setting it refuses: no attempt, a zero
    /// timeout, a zero size limit, a frame limit above the message limit, or an affinity
    /// bound below 1.
    pub fn build<S: Target + Clone>(self, balance: Balance<S>) -> Result<Proxy<S>, ConfigError> {
        if self.attempts == 0 {
            return Err(invalid("attempts", "must be at least 1"));
        }
        if self.connect_timeout.is_zero() || self.close_timeout.is_zero() {
            return Err(invalid("timeout", "must be longer than zero"));
        }
        if self.idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid("idle_timeout", "must be longer than zero"));
        }
        if self.max_message_size == 0 || self.max_frame_size == 0 {
            return Err(invalid("max_message_size", "must be at least 1 byte"));
        }
        if self.max_frame_size > self.max_message_size {
            return Err(invalid(
                "max_frame_size",
                "must be at most max_message_size",
            ));
        }
        if self.bound.is_nan() || self.bound < 1.0 {
            return Err(invalid("bound", "must be a number of at least 1"));
        }
        Ok(self.finish(balance))
    }

    pub(crate) fn finish<S: Clone>(self, balance: Balance<S>) -> Proxy<S> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size));
        let settings = Settings {
            config,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
            classify: Arc::clone(balance.classifier()),
            health: self.health,
        };
        Proxy {
            balance,
            shared: Arc::new(Shared {
                settings: Arc::new(settings),
                attempts: self.attempts,
                connect_timeout: self.connect_timeout,
                affinity: self.affinity,
                bound: self.bound,
                hidden_protocols: self.hidden_protocols,
                shutdown: watch::Sender::new(false),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower_layer::Layer;

    use super::*;
    use crate::{websocket::Upstream, BalanceLayer, Pool};

    fn balance() -> Balance<Upstream> {
        BalanceLayer::new().layer(Pool::new())
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let refused = [
            ProxyBuilder::default().attempts(0),
            ProxyBuilder::default().connect_timeout(Duration::ZERO),
            ProxyBuilder::default().close_timeout(Duration::ZERO),
            ProxyBuilder::default().idle_timeout(Some(Duration::ZERO)),
            ProxyBuilder::default().max_message_size(0),
            ProxyBuilder::default().max_frame_size(0),
            ProxyBuilder::default()
                .max_message_size(1024)
                .max_frame_size(2048),
            ProxyBuilder::default().affinity_bound(0.5),
            ProxyBuilder::default().affinity_bound(f64::NAN),
        ];
        for builder in refused {
            let shown = format!("{builder:?}");
            assert!(
                matches!(
                    builder.build(balance()),
                    Err(ConfigError::InvalidSetting { .. })
                ),
                "{shown}"
            );
        }
        let proxy = ProxyBuilder::default()
            .idle_timeout(None)
            .max_message_size(1024)
            .max_frame_size(1024)
            .affinity_bound(1.0)
            .build(balance())
            .unwrap();
        assert_eq!(proxy.sessions(), 0);
    }
}
