//! Reading a request body without consuming it.
//!
//! A body that is `Clone` and already in memory (`http_body_util::Full<Bytes>`, `String`,
//! `Bytes`) can be read from a clone, polled once with a no-op waker: what the affinity and
//! routing extractors use to look at a prompt before the request is sent. A streaming body
//! (one that would have to wait) is not read at all.

use std::{
    pin::pin,
    task::{Context, Poll},
};

use bytes::Buf;
use http_body::Body;

/// Up to `limit` bytes of the body, if it is already in memory; `None` if reading it would
/// have to wait or failed. The body itself is untouched.
pub(crate) fn peek<B: Body + Clone>(body: &B, limit: usize) -> Option<Vec<u8>> {
    let mut body = pin!(body.clone());
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    let mut out = Vec::new();
    while out.len() < limit {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(mut data) = frame.into_data() {
                    while data.has_remaining() && out.len() < limit {
                        let chunk = data.chunk();
                        let n = chunk.len().min(limit - out.len());
                        out.extend_from_slice(&chunk[..n]);
                        data.advance(n);
                    }
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(_))) | Poll::Pending => return None,
        }
    }
    Some(out)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[test]
    fn a_buffered_body_is_read_and_left_intact() {
        let body = Full::new(Bytes::from_static(b"{\"messages\": []}"));
        assert_eq!(peek(&body, 1024).unwrap(), b"{\"messages\": []}");
        assert_eq!(peek(&body, 4).unwrap(), b"{\"me");
        let rest = futures_util::FutureExt::now_or_never(body.collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest, "{\"messages\": []}");
    }

    #[test]
    fn a_body_that_would_wait_is_not_read() {
        #[derive(Clone)]
        struct Later;
        impl Body for Later {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                Poll::Pending
            }
        }
        assert_eq!(peek(&Later, 10), None);
    }
}
