//! [`ResponseFuture`]: in remembering mode, notes which endpoint served the key.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::Shared;
use crate::hints::{Hinted, Served};

pin_project! {
    /// The response future of [`StreamAffinity`](super::StreamAffinity): in remembering mode,
    /// notes which endpoint served the key.
    #[derive(Debug)]
    pub struct ResponseFuture<F, K> {
        #[pin]
        inner: F,
        remember: Option<(u64, Arc<Shared<K>>)>,
    }
}

impl<F, K> ResponseFuture<F, K> {
    pub(crate) fn new(inner: F, remember: Option<(u64, Arc<Shared<K>>)>) -> Self {
        Self { inner, remember }
    }
}

impl<F, K, T, E> Future for ResponseFuture<F, K>
where
    F: Future<Output = Result<T, E>>,
    T: Hinted,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.remember.is_none() {
            // Stateless: the response passes as it is, without a copy here.
            return this.inner.poll(cx);
        }
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some((key, shared))) = (&result, this.remember.take()) {
            if let (Some(served), Some(table)) =
                (response.extensions().get::<Served>(), &shared.table)
            {
                table.insert(key, served.endpoint().id(), Instant::now());
            }
        }
        Poll::Ready(result)
    }
}
