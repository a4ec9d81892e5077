//! The stack at its failure edges, as a user meets them in production: rate limits and
//! panic mode, failures only one layer sees, retries across tiers and after timeouts,
//! continuation of broken streams, limits and live state under re-announcement, credentials
//! in what a client sees, and settings at their extremes.
#![allow(unreachable_pub)]

#[path = "../../examples/support/gateway.rs"]
mod gateway;
#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

mod continuation;
mod extremes;
mod failover_promises;
mod once;
mod rate_limits;
mod slots;
mod timeouts;
mod wire;
