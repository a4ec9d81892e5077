//! The completion hook: how a response carries its [`LoadGuard`] until it is finished, and
//! what its judging needs ([`Completion`]).

use std::{fmt, sync::Arc, time::Duration};

use super::LoadGuard;
use crate::{
    classify::{Classify, Outcome},
    hints::{Served, WithHints},
};

/// What a response needs to complete its load guard: the classifier that judges it (one for
/// the whole stack, set on [`BalanceLayer`](crate::balance::BalanceLayer)), and how long its
/// body may go without a frame. Made by `Balance`, shared by the responses of one of its
/// clones.
#[derive(Clone)]
pub struct Completion {
    pub(crate) classify: Arc<dyn Classify>,
    pub(crate) idle_timeout: Option<Duration>,
}

impl Completion {
    pub(crate) fn new(classify: Arc<dyn Classify>, idle_timeout: Option<Duration>) -> Self {
        Self {
            classify,
            idle_timeout,
        }
    }

    /// The classifier.
    pub fn classifier(&self) -> &dyn Classify {
        &*self.classify
    }

    /// How long a body may go without a frame, if there is a limit.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// How a response carries its load guard until it is finished.
///
/// Implemented for `http::Response<B>` (judged by its head, then at the end of its body, which
/// holds the guard: see [`balance::ResponseBody`](crate::balance::ResponseBody)) and for
/// [`WithHints<T>`] (finished, and a success, when it arrives). Both attach [`Served`] to the
/// response's extensions, with the endpoint and the verdict on the head.
pub trait TrackLoad {
    /// The response with the guard attached.
    type Output;
    /// Judges the response's head and attaches the guard.
    fn track(self, guard: LoadGuard, completion: &Arc<Completion>) -> Self::Output;
}

impl<T> TrackLoad for WithHints<T> {
    type Output = WithHints<T>;

    fn track(mut self, guard: LoadGuard, _: &Arc<Completion>) -> Self::Output {
        let served = Served::new(
            Arc::clone(guard.endpoint()),
            Outcome::Success,
            guard.started(),
        );
        self.extensions.insert(served);
        guard.complete();
        self
    }
}
