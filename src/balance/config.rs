//! A `Balance`'s settings ([`Config`]), shared by the services one layer builds and their
//! clones, and what a request does when every endpoint is full ([`Queue`]).

use std::{fmt, sync::Arc, time::Duration};

use crate::{
    classify::{Classify, DefaultClassifier},
    pick::{Picker, Strategy},
    prefix::PrefixPolicy,
};

/// What a request does when every eligible endpoint is at its concurrency limit: wait for a
/// slot, at most `timeout`, with at most `max_waiting` requests waiting at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    /// How many requests may wait at once; one more fails at once.
    pub max_waiting: usize,
    /// How long one request may wait.
    pub timeout: Duration,
}

/// A `Balance`'s settings, shared by the services one layer builds and their clones.
pub(crate) struct Config {
    pub(crate) picker: Picker,
    pub(crate) queue: Option<Queue>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) panic_mode: bool,
    pub(crate) classify: Arc<dyn Classify>,
    /// Picks requests that carry a [`PromptBlocks`](crate::prefix::PromptBlocks) hint.
    pub(crate) prefix: Option<PrefixPolicy>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("strategy", &self.picker.strategy())
            .field("queue", &self.queue)
            .field("timeout", &self.timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("panic_mode", &self.panic_mode)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    /// Power of two choices, no queue, no timeouts, panic mode on, the default classifier.
    fn default() -> Self {
        Self {
            picker: Picker::new(Strategy::default()),
            queue: None,
            timeout: None,
            idle_timeout: None,
            panic_mode: true,
            classify: Arc::new(DefaultClassifier),
            prefix: None,
        }
    }
}
