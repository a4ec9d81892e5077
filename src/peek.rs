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

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;

/// Up to `limit` bytes of the body, if it is already in memory; `None` if reading it would
/// have to wait or failed. The body itself is untouched.
///
/// A body of one chunk of [`Bytes`] (`Full<Bytes>`, `Bytes`) is returned as that chunk, shared
/// and not copied; the chunks of a body of several are joined into one buffer.
pub(crate) fn peek<B: Body + Clone>(body: &B, limit: usize) -> Option<Bytes> {
    let mut body = pin!(body.clone());
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut len = 0;
    while len < limit {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                let n = data.remaining().min(limit - len);
                if n == 0 {
                    continue;
                }
                len += n;
                if len == n {
                    // For `Bytes` this is a shared slice, not a copy.
                    first = data.copy_to_bytes(n);
                } else {
                    let joined = joined.get_or_insert_with(|| {
                        let mut all = BytesMut::with_capacity(len);
                        all.put_slice(&first);
                        all
                    });
                    joined.put((&mut data).take(n));
                }
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(_))) | Poll::Pending => return None,
        }
    }
    Some(joined.map_or(first, BytesMut::freeze))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[test]
    fn a_buffered_body_is_read_and_left_intact() {
        let body = Full::new(Bytes::from_static(b"{\"messages\": []}"));
        assert_eq!(peek(&body, 1024).unwrap(), &b"{\"messages\": []}"[..]);
        assert_eq!(peek(&body, 4).unwrap(), &b"{\"me"[..]);
        let rest = futures_util::FutureExt::now_or_never(body.collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(rest, "{\"messages\": []}");
    }

    #[test]
    fn a_body_of_one_chunk_is_shared_not_copied() {
        let bytes = Bytes::from(vec![7u8; 1 << 20]);
        let body = Full::new(bytes.clone());
        let peeked = peek(&body, usize::MAX).unwrap();
        assert_eq!(peeked.as_ptr(), bytes.as_ptr(), "the same memory");
        assert_eq!(peeked.len(), bytes.len());
        let head = peek(&body, 10).unwrap();
        assert_eq!((head.as_ptr(), head.len()), (bytes.as_ptr(), 10));
    }

    #[test]
    fn the_chunks_of_a_body_of_several_are_joined_up_to_the_limit() {
        // Chunks that are all ready, cloneable as a buffered body is.
        #[derive(Clone)]
        struct Chunks(&'static [&'static str]);
        impl Body for Chunks {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Poll::Ready(None);
                };
                self.0 = rest;
                Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                    first.as_bytes(),
                )))))
            }
        }
        let body = Chunks(&["{\"model\":", "", "\"m\",", "\"messages\":[]}"]);
        assert_eq!(
            peek(&body, usize::MAX).unwrap(),
            "{\"model\":\"m\",\"messages\":[]}"
        );
        assert_eq!(peek(&body, 12).unwrap(), "{\"model\":\"m\"");
        assert_eq!(peek(&body, 3).unwrap(), "{\"m");
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
