//! The health policy from a file.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use super::duration;
use crate::health::HealthPolicy;

/// The file's shape of a [`HealthPolicy`]: each field optional, defaulting to the policy's.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Fields {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    #[serde(deserialize_with = "some_duration")]
    window: Option<Duration>,
    min_requests: Option<u32>,
    #[serde(deserialize_with = "some_duration")]
    base_ejection: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    max_ejection: Option<Duration>,
    trials: Option<u16>,
    max_ejected_fraction: Option<f64>,
    #[serde(deserialize_with = "some_duration")]
    default_cooldown: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    max_cooldown: Option<Duration>,
    /// `false` turns slow start off.
    #[serde(deserialize_with = "slow_start")]
    slow_start: Option<Option<Duration>>,
    timeouts_are_failures: Option<bool>,
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration::required(d).map(Some)
}

fn slow_start<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Duration>>, D::Error> {
    duration::optional(d).map(Some)
}

/// Deserializes from the policy's field names, each optional (see [`HealthPolicy`]);
/// durations as `"30s"`, and `slow_start = false` for none. A policy the health layer would
/// refuse is refused here.
impl<'de> Deserialize<'de> for HealthPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = Fields::deserialize(d)?;
        let mut p = HealthPolicy::default();
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = f.$field { p.$field = v; })* };
        }
        set!(
            consecutive_failures,
            failure_rate,
            window,
            min_requests,
            base_ejection,
            max_ejection,
            trials,
            max_ejected_fraction,
            default_cooldown,
            max_cooldown,
            slow_start,
            timeouts_are_failures
        );
        p.validate().map_err(de::Error::custom)?;
        Ok(p)
    }
}
