//! An endpoint's metadata from a file.

use std::collections::{BTreeMap, BTreeSet};

use serde::{de, Deserialize, Deserializer};

use crate::{endpoint::EndpointConfig, error::ConfigError};

/// The file's shape of an [`EndpointConfig`]: `key` is required, everything else optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    key: String,
    #[serde(default = "one")]
    weight: f64,
    max_concurrency: Option<usize>,
    #[serde(default)]
    tier: u32,
    #[serde(default)]
    models: Vec<String>,
    max_context: Option<u32>,
    hardware: Option<String>,
    provider: Option<String>,
    region: Option<String>,
    /// Per 1,000 input and output tokens.
    price: Option<Price>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Price {
    input: f64,
    output: f64,
}

fn one() -> f64 {
    1.0
}

/// Deserializes from `{"key": ..., "weight": ..., "max_concurrency": ..., "tier": ...,
/// "models": [...], "max_context": ..., "hardware": ..., "provider": ..., "region": ...,
/// "price": {"input": ..., "output": ...}, "labels": {...}}`, every field but `key` optional.
/// A config the pool would refuse (a negative or non-finite weight, a concurrency limit of
/// 0, a negative price) is refused here.
impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = Fields::deserialize(d)?;
        let mut config = EndpointConfig::new(f.key).weight(f.weight).tier(f.tier);
        if let Some(max) = f.max_concurrency {
            config = config.max_concurrency(max);
        }
        for model in f.models {
            config = config.model(model);
        }
        if let Some(tokens) = f.max_context {
            config = config.max_context(tokens);
        }
        if let Some(h) = f.hardware {
            config = config.hardware(h);
        }
        if let Some(p) = f.provider {
            config = config.provider(p);
        }
        if let Some(r) = f.region {
            config = config.region(r);
        }
        if let Some(p) = f.price {
            config = config.price(p.input, p.output);
        }
        for (name, value) in f.labels {
            config = config.label(name, value);
        }
        config.validate().map_err(de::Error::custom)?;
        Ok(config)
    }
}

/// `#[serde(deserialize_with)]` for a file's list of endpoints: two entries with one key are
/// refused, since the pool would keep only one of them and silently drop the other.
pub(super) fn unique<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EndpointConfig>, D::Error> {
    let endpoints = Vec::<EndpointConfig>::deserialize(d)?;
    let mut keys = BTreeSet::new();
    for endpoint in &endpoints {
        if !keys.insert(endpoint.key()) {
            let key = endpoint.key().clone();
            return Err(de::Error::custom(ConfigError::DuplicateKey { key }));
        }
    }
    Ok(endpoints)
}
