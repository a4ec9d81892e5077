//! [`StreamAffinity`]: the service that hands `Balance` an affinity hint for each keyed
//! request.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tokio::time::Instant;
use tower_service::Service;

use super::{ExtractKey, ResponseFuture, Shared};
use crate::hints::{Affinity, Hinted};

/// Keeps requests with the same key on the same endpoint. See the
/// [module docs](crate::affinity).
#[derive(Debug)]
pub struct StreamAffinity<S, K> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K> Clone for StreamAffinity<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, K> StreamAffinity<S, K> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K>>) -> Self {
        Self { inner, shared }
    }
}

impl<S, K, Req> Service<Req> for StreamAffinity<S, K>
where
    S: Service<Req>,
    S::Response: Hinted,
    K: ExtractKey<Req>,
    Req: Hinted,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let key = self.shared.extract.extract(&request);
        let mut remember = None;
        if let Some(key) = key {
            let mut affinity = Affinity::hashed(key);
            affinity.bound = self.shared.bound;
            if let Some(table) = &self.shared.table {
                affinity.prefer = table.get(key, Instant::now());
                remember = Some((key, Arc::clone(&self.shared)));
            }
            request.extensions_mut().insert(affinity);
        }
        ResponseFuture::new(self.inner.call(request), remember)
    }
}
