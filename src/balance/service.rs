//! [`Balance`]: the service that picks an endpoint for each request and calls it.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{
    choose::{Chooser, NoSlot},
    config::Config,
    ResponseFuture,
};
use crate::{
    error::BoxError,
    hints::Hinted,
    load::{Completion, LoadGuard, TrackLoad},
    per_clone::PerClone,
    pool::Pool,
};

/// Balances requests over a [`Pool`]. See the [module docs](crate::balance).
pub struct Balance<S> {
    chooser: Chooser<S>,
    /// What each response needs to complete its guard; a clone that serves many requests
    /// holds its own copy, so its reference count is not shared between cores.
    completion: PerClone<Completion>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            chooser: self.chooser.clone(),
            completion: self.completion.clone(),
        }
    }
}

impl<S> fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("pool", &self.chooser.pool)
            .field("config", &self.chooser.config)
            .finish()
    }
}

impl<S: Clone> Balance<S> {
    /// Balances over `pool` with the default settings of [`BalanceLayer::new`](super::BalanceLayer::new).
    pub fn new(pool: Pool<S>) -> Self {
        Self::with_config(pool, Arc::new(Config::default()))
    }

    pub(crate) fn with_config(pool: Pool<S>, config: Arc<Config>) -> Self {
        let completion = Completion::new(Arc::clone(&config.classify), config.idle_timeout);
        Self {
            chooser: Chooser { pool, config },
            completion: PerClone::new(completion),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<S> {
        &self.chooser.pool
    }

    /// The stack's one classifier, for callers that route by themselves and judge their own
    /// outcomes with it (WebSocket sessions).
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn classifier(&self) -> &Arc<dyn crate::classify::Classify> {
        &self.chooser.config.classify
    }

    /// Picks an endpoint for `request` and takes a slot on it without calling it, for callers
    /// that route by themselves (a WebSocket upgrade, a custom transport). The slot is held
    /// until the guard is completed or dropped. Fails with
    /// [`NoEndpoints`](crate::error::NoEndpoints) or [`Overloaded`](crate::error::Overloaded);
    /// never waits. A request whose [`Require`](crate::hints::Require) renames it (a model
    /// alias) must be sent as [`Require::serve_as`](crate::hints::Require::serve_as) the
    /// endpoint's model.
    pub fn pick<R: Hinted>(&self, request: &R) -> Result<(S, LoadGuard), BoxError> {
        self.chooser
            .try_pick(request, None)
            .map(|choice| (choice.service, choice.guard))
            .map_err(NoSlot::into_error)
    }
}

impl<S, Req> Service<Req> for Balance<S>
where
    Req: Hinted,
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    S::Response: TrackLoad,
{
    type Response = <S::Response as TrackLoad>::Output;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is per endpoint: the response future drives the picked one.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        match self.chooser.try_pick(&request, None) {
            Ok(mut choice) => {
                choice.tell(&mut request);
                let completion = Arc::clone(self.completion.for_request(Completion::clone));
                let timeout = super::future::attempt_timeout(&request, self.chooser.config.timeout);
                ResponseFuture::ready(choice.service, choice.guard, request, timeout, completion)
            }
            Err(why @ (NoSlot::AllFull | NoSlot::Quota(_))) => match self.chooser.config.queue {
                Some(queue) => {
                    let completion = Arc::clone(self.completion.for_request(Completion::clone));
                    ResponseFuture::queued(self.chooser.clone(), request, queue, completion)
                }
                None => ResponseFuture::failed(why.into_error()),
            },
            Err(NoSlot::Unavailable(e)) => ResponseFuture::failed(e),
        }
    }
}
