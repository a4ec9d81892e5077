//! The prefix-cache simulation's parts, for the `prefix_cache` example only.

#![allow(unreachable_pub)]

/// The events every router hands to its `Base`, for routers that keep no more state.
macro_rules! base_events {
    () => {
        fn first_token(&mut self, id: usize, now: f64) {
            self.base().first_token(id, now);
        }
        fn finished(&mut self, id: usize, now: f64) {
            self.base().finished(id, now);
        }
        fn scrape(&mut self, metrics: &[super::fleet::Metrics], _now: f64) {
            self.base().metrics.copy_from_slice(metrics);
        }
    };
}

pub mod dynamo;
pub mod fleet;
pub mod llmd;
pub mod lru;
pub mod report;
pub mod routers;
pub mod sglang;
pub mod trace;
