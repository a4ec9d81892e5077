//! How to add an endpoint ([`EndpointConfig`]), and what the pool or a layer refuses
//! ([`ConfigError`]): settings are validated once, where they are configured.

use std::{fmt, net::SocketAddr, sync::Arc};

use super::{quota::Quota, Capabilities, Key};

/// How to add an endpoint: its key and metadata. Validated when the pool takes it.
///
/// ```
/// use tower_ai_balance::EndpointConfig;
/// let gpu = EndpointConfig::new("h100-0").weight(2.0).max_concurrency(64).tier(0).label("model", "llama-3-70b");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    pub(super) key: Key,
    pub(super) weight: f64,
    pub(super) max_concurrency: Option<usize>,
    pub(super) tier: u32,
    pub(super) labels: Vec<(Arc<str>, Arc<str>)>,
    pub(super) capabilities: Capabilities,
    pub(super) quota: Option<Quota>,
}

impl EndpointConfig {
    /// An endpoint with weight 1, no concurrency limit, tier 0 and no labels.
    pub fn new(key: impl Into<Key>) -> Self {
        Self {
            key: key.into(),
            weight: 1.0,
            max_concurrency: None,
            tier: 0,
            labels: Vec::new(),
            capabilities: Capabilities::default(),
            quota: None,
        }
    }

    /// The largest weight the pool takes: weights are relative, and sums and products of
    /// larger ones over a pool would overflow to infinity.
    pub const MAX_WEIGHT: f64 = 1e12;

    /// Its relative capacity: load is compared as in-flight requests divided by weight, and the
    /// weighted strategies send traffic in proportion. Weight 0 takes no new requests; a
    /// weight above [`MAX_WEIGHT`](Self::MAX_WEIGHT) is refused.
    pub fn weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// The most requests it may serve at once; never exceeded.
    pub fn max_concurrency(mut self, max: usize) -> Self {
        self.max_concurrency = Some(max);
        self
    }

    /// Its tier: lower tiers are preferred while they have an endpoint with free capacity
    /// (for example 0 for self-hosted instances, 1 for a paid provider).
    pub fn tier(mut self, tier: u32) -> Self {
        self.tier = tier;
        self
    }

    /// A free-form label, such as `model` or `region`.
    pub fn label(mut self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }

    /// A model it serves (call once per model; none means any model).
    pub fn model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.capabilities.models.push(model.into());
        self
    }

    /// Its context window, in tokens.
    pub fn max_context(mut self, tokens: u32) -> Self {
        self.capabilities.max_context = Some(tokens);
        self
    }

    /// Its hardware class.
    pub fn hardware(mut self, hardware: impl Into<Arc<str>>) -> Self {
        self.capabilities.hardware = Some(hardware.into());
        self
    }

    /// Who runs it.
    pub fn provider(mut self, provider: impl Into<Arc<str>>) -> Self {
        self.capabilities.provider = Some(provider.into());
        self
    }

    /// Where it runs.
    pub fn region(mut self, region: impl Into<Arc<str>>) -> Self {
        self.capabilities.region = Some(region.into());
        self
    }

    /// Its price per 1,000 input and output tokens.
    pub fn price(mut self, per_1k_in: f64, per_1k_out: f64) -> Self {
        self.capabilities.price_in = per_1k_in;
        self.capabilities.price_out = per_1k_out;
        self
    }

    /// The provider's quota for it: requests and tokens per minute. Picks treat it as full
    /// while a request would exceed a limit, and the provider's rate-limit headers, when its
    /// responses carry them, correct what is left.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// Its quota, if it has one.
    pub fn quota_value(&self) -> Option<&Quota> {
        self.quota.as_ref()
    }

    /// The key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The value of the label `name`, if it has one.
    pub fn label_value(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// The same endpoint under another key.
    #[cfg(feature = "client")]
    pub(crate) fn with_key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_weight(&self.key, self.weight)?;
        let c = &self.capabilities;
        if !(c.price_in.is_finite()
            && c.price_in >= 0.0
            && c.price_out.is_finite()
            && c.price_out >= 0.0)
        {
            return Err(ConfigError::InvalidSetting {
                name: "price",
                reason: "must be finite and at least 0",
            });
        }
        if let Some((name, reason)) = self.quota.as_ref().and_then(Quota::invalid) {
            return Err(ConfigError::InvalidSetting { name, reason });
        }
        if self.max_concurrency == Some(0) {
            return Err(ConfigError::ZeroMaxConcurrency {
                key: self.key.clone(),
            });
        }
        Ok(())
    }
}

impl From<&str> for EndpointConfig {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for EndpointConfig {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<Key> for EndpointConfig {
    fn from(k: Key) -> Self {
        Self::new(k)
    }
}

impl From<SocketAddr> for EndpointConfig {
    fn from(a: SocketAddr) -> Self {
        Self::new(a)
    }
}

pub(crate) fn check_weight(key: &Key, weight: f64) -> Result<(), ConfigError> {
    if !weight.is_finite() {
        Err(ConfigError::NonFiniteWeight {
            key: key.clone(),
            weight,
        })
    } else if weight < 0.0 {
        Err(ConfigError::NegativeWeight {
            key: key.clone(),
            weight,
        })
    } else if weight > EndpointConfig::MAX_WEIGHT {
        Err(ConfigError::WeightTooLarge {
            key: key.clone(),
            weight,
        })
    } else {
        Ok(())
    }
}

/// A configuration the pool or a layer refused.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A weight below zero.
    NegativeWeight {
        /// The endpoint.
        key: Key,
        /// The weight given.
        weight: f64,
    },
    /// A weight that is NaN or infinite.
    NonFiniteWeight {
        /// The endpoint.
        key: Key,
        /// The weight given.
        weight: f64,
    },
    /// A weight above [`EndpointConfig::MAX_WEIGHT`].
    WeightTooLarge {
        /// The endpoint.
        key: Key,
        /// The weight given.
        weight: f64,
    },
    /// A maximum concurrency of zero: such an endpoint could never serve.
    ZeroMaxConcurrency {
        /// The endpoint.
        key: Key,
    },
    /// An endpoint with this key is already in the pool.
    DuplicateKey {
        /// The key.
        key: Key,
    },
    /// No endpoint with this key is in the pool.
    UnknownEndpoint {
        /// The key.
        key: Key,
    },
    /// A layer setting out of its range.
    InvalidSetting {
        /// The setting.
        name: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NegativeWeight { key, weight } => {
                write!(f, "endpoint {key}: weight {weight} is negative")
            }
            Self::NonFiniteWeight { key, weight } => {
                write!(f, "endpoint {key}: weight {weight} is not a finite number")
            }
            Self::WeightTooLarge { key, weight } => write!(
                f,
                "endpoint {key}: weight {weight} is above the largest, {}",
                EndpointConfig::MAX_WEIGHT
            ),
            Self::ZeroMaxConcurrency { key } => {
                write!(f, "endpoint {key}: max concurrency 0 could never serve")
            }
            Self::DuplicateKey { key } => write!(f, "endpoint {key} is already in the pool"),
            Self::UnknownEndpoint { key } => write!(f, "endpoint {key} is not in the pool"),
            Self::InvalidSetting { name, reason } => write!(f, "setting {name}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {}
