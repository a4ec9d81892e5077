//! Credentials in what a client, a scraper or a log sees. A test binary of its own: it
//! captures the logs with a subscriber set for its thread, and tracing's per-call-site
//! interest is shared by the whole process, so a test running beside it on another thread
//! could leave the call site it reads switched off.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;
#[path = "../support/mod.rs"]
mod support;

#[path = "../failure_edges/keys.rs"]
mod keys;
