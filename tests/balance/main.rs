//! The Balance layer: picking, load held for a stream's life, drains, limits and typed errors.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

mod churn;
mod config;
mod drain;
mod limits;
mod queue;
mod quota;
mod quota_burst;
mod reannounce;
mod streams;
mod swap;
mod writers;
