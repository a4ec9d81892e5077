//! [`PrefixKeys`] and its [`PrefixKeysLayer`]: the layer that reads each request's prompt
//! blocks and hands them to `Balance` in a [`PromptBlocks`] hint.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

use super::{extract::with_scratch, hint::PromptBlocks, ExtractBlocks};
use crate::hints::Hinted;

/// Builds [`PrefixKeys`] with an extractor: `PrefixKeysLayer::new(ChatMessages::new(64)?)`.
pub struct PrefixKeysLayer<K> {
    extract: Arc<K>,
}

impl<K> PrefixKeysLayer<K> {
    /// Reads each request's blocks with `extract`: [`ChatMessages`](super::ChatMessages) for
    /// an OpenAI chat body, or any `Fn(&Req, &mut Vec<u64>) -> Option<u64>`.
    pub fn new(extract: K) -> Self {
        Self {
            extract: Arc::new(extract),
        }
    }
}

impl<K> Clone for PrefixKeysLayer<K> {
    fn clone(&self) -> Self {
        Self {
            extract: Arc::clone(&self.extract),
        }
    }
}

impl<K> fmt::Debug for PrefixKeysLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixKeysLayer").finish_non_exhaustive()
    }
}

impl<S, K> Layer<S> for PrefixKeysLayer<K> {
    type Service = PrefixKeys<S, K>;

    fn layer(&self, inner: S) -> PrefixKeys<S, K> {
        PrefixKeys {
            inner,
            extract: Arc::clone(&self.extract),
        }
    }
}

/// Puts each request's prompt blocks in a [`PromptBlocks`] hint, for `Balance`'s
/// [`PrefixPolicy`](super::PrefixPolicy). A request whose extractor finds no prompt goes on
/// without one, and is balanced as usual. See the [module docs](super).
pub struct PrefixKeys<S, K> {
    inner: S,
    extract: Arc<K>,
}

impl<S: Clone, K> Clone for PrefixKeys<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extract: Arc::clone(&self.extract),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for PrefixKeys<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixKeys")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K> PrefixKeys<S, K> {
    /// Wraps `inner`, reading each request's blocks with `extract`.
    pub fn new(inner: S, extract: K) -> Self {
        Self {
            inner,
            extract: Arc::new(extract),
        }
    }

    /// A layer that wraps services with `extract`.
    pub fn layer(extract: K) -> PrefixKeysLayer<K> {
        PrefixKeysLayer::new(extract)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, Req> Service<Req> for PrefixKeys<S, K>
where
    S: Service<Req>,
    K: ExtractBlocks<Req>,
    Req: Hinted,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let hint = with_scratch(|out| {
            let tokens = self.extract.extract(&request, out)?;
            Some(PromptBlocks::new(out, tokens))
        });
        if let Some(hint) = hint {
            request.extensions_mut().insert(hint);
        }
        self.inner.call(request)
    }
}
