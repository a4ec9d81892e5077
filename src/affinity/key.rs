use http::HeaderName;
use http_body::Body;

use crate::hash::stable_hash;

/// Where a request's affinity key comes from: the key's
/// [`stable_hash`](crate::hash::stable_hash), or `None` to balance it as usual.
///
/// [`Header`] and [`PromptPrefix`] are ready-made; any `Fn(&Req) -> Option<u64>` is one too.
pub trait ExtractKey<Req>: Send + Sync + 'static {
    /// The hashed key of `request`.
    fn extract(&self, request: &Req) -> Option<u64>;
}

impl<F, Req> ExtractKey<Req> for F
where
    F: Fn(&Req) -> Option<u64> + Send + Sync + 'static,
{
    fn extract(&self, request: &Req) -> Option<u64> {
        self(request)
    }
}

/// The value of a header, such as `x-session-id`.
#[derive(Debug, Clone)]
pub struct Header(pub HeaderName);

impl<B> ExtractKey<http::Request<B>> for Header {
    fn extract(&self, request: &http::Request<B>) -> Option<u64> {
        request
            .headers()
            .get(&self.0)
            .map(|v| stable_hash(v.as_bytes()))
    }
}

/// How much of a body [`PromptPrefix`] reads at most.
const PEEK_LIMIT: usize = 64 * 1024;

/// A hash of the first `n` bytes of the prompt, for requests that share a prefix (a system
/// prompt, the earlier turns of a conversation) and so a server's prefix cache: in an
/// OpenAI-style JSON body, the bytes from `"messages"` on; in any other body, its first `n`
/// bytes. Reads only bodies already in memory (`Full<Bytes>`), without consuming them.
#[derive(Debug, Clone, Copy)]
pub struct PromptPrefix(pub usize);

impl<B> ExtractKey<http::Request<B>> for PromptPrefix
where
    B: Body + Clone + Send + Sync + 'static,
{
    fn extract(&self, request: &http::Request<B>) -> Option<u64> {
        let body = crate::peek::peek(request.body(), PEEK_LIMIT)?;
        let start = find(&body, b"\"messages\"").unwrap_or(0);
        let prefix = &body[start..body.len().min(start.saturating_add(self.0))];
        (!prefix.is_empty()).then(|| stable_hash(prefix))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
