//! Settings from a file (feature `serde`): endpoints, the health policy and each layer's
//! settings, from TOML, YAML, JSON or any other serde format.
//!
//! [`EndpointConfig`] and [`HealthPolicy`] deserialize directly; each layer has a plain
//! settings struct ([`BalanceSettings`], [`FailoverSettings`], [`AffinitySettings`],
//! [`ProbeSettings`], [`ScrapeSettings`]) with a method that builds the layer or config, so a
//! file never depends on how the builders are spelled. [`Settings`] gathers them all. Every
//! field may be left out (the layer's default); an unknown field is an error, so a typo is
//! not silently ignored, and so is an endpoint key listed twice; and a value the builders refuse (a negative weight, 0 attempts) is an
//! error at load time, not at the first request.
//!
//! Durations are written `"250ms"`, `"30s"`, `"5m"`, `"1h"` (units may be combined:
//! `"1m30s"`), or as a number of seconds.
//!
//! ```
//! use tower_ai_balance::config::Settings;
//!
//! let settings: Settings = serde_json::from_str(r#"{
//!     "endpoints": [
//!         {"key": "http://10.0.0.7:8000", "weight": 2, "max_concurrency": 64, "models": ["llama-3-70b"]},
//!         {"key": "https://api.example.com", "tier": 1, "provider": "example", "labels": {"region": "eu"}}
//!     ],
//!     "health": {"consecutive_failures": 3, "base_ejection": "10s", "slow_start": false},
//!     "balance": {"strategy": "least_loaded", "queue": {"max_waiting": 512, "timeout": "5s"}},
//!     "failover": {"attempts": 2, "first_chunk": "30s", "hedge": {"after": "800ms"}}
//! }"#).unwrap();
//! assert_eq!(settings.endpoints.len(), 2);
//! let balance = settings.balance.layer().unwrap();
//! let failover = settings.failover.layer().unwrap();
//! ```

mod duration;
mod endpoint;
mod health;
mod layers;

use serde::Deserialize;

pub use self::layers::{
    AffinitySettings, BalanceSettings, BudgetSettings, FailoverSettings, HedgeSettings,
    ProbeSettings, QueueSettings, RememberSettings, ScrapeSettings, StrategySetting,
};
use crate::{endpoint::EndpointConfig, health::HealthPolicy};

/// Everything a gateway's file may say, each part optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// The endpoints, each key at most once.
    #[serde(deserialize_with = "endpoint::unique")]
    pub endpoints: Vec<EndpointConfig>,
    /// The health policy.
    pub health: HealthPolicy,
    /// Balance's settings.
    pub balance: BalanceSettings,
    /// Failover's settings.
    pub failover: FailoverSettings,
    /// StreamAffinity's settings, if the layer is wanted.
    pub affinity: Option<AffinitySettings>,
    /// Active health probes, if wanted.
    pub probes: Option<ProbeSettings>,
    /// Load report scraping, if wanted.
    pub scrape: Option<ScrapeSettings>,
}
