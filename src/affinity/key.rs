//! Where a request's affinity key comes from: [`ExtractKey`], by [`Header`] or by
//! [`PromptPrefix`].

use http::HeaderName;
use http_body::Body;

use crate::{
    hash::stable_hash,
    json::{ScanError, Scanner},
};

/// Where a request's affinity key comes from: the key's [`hash_key`], or `None` to balance it
/// as usual.
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

/// The hash of an affinity key: the same in every process, on every platform and with every
/// Rust release, so that gateway replicas that share nothing agree on where a key belongs.
/// What an [`ExtractKey`] of your own returns.
pub fn hash_key(key: &[u8]) -> u64 {
    stable_hash(key)
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
/// OpenAI-style JSON body, the bytes from its `"messages"` key on; in any other body, its first
/// `n` bytes. A prefix longer than what is left of the body is the rest of the body, and a
/// prefix of 0 bytes is no key. Reads only bodies already in memory (`Full<Bytes>`), within
/// their first 64 KiB, without consuming or copying them.
#[derive(Debug, Clone, Copy)]
pub struct PromptPrefix(pub usize);

impl<B> ExtractKey<http::Request<B>> for PromptPrefix
where
    B: Body + Clone + Send + Sync + 'static,
{
    fn extract(&self, request: &http::Request<B>) -> Option<u64> {
        let body = crate::peek::peek(request.body(), PEEK_LIMIT)?;
        let start = messages_key(&body).unwrap_or(0);
        let prefix = &body[start..body.len().min(start.saturating_add(self.0))];
        (!prefix.is_empty()).then(|| stable_hash(prefix))
    }
}

/// Where the top-level `"messages"` key of a JSON object begins, if the body is one and has it
/// (read up to that key only).
fn messages_key(body: &[u8]) -> Option<usize> {
    let mut scanner = Scanner::new(body);
    let mut found = None;
    // Reading stops at the key: the error that stops it is not one.
    let _ = scanner.object(|scanner, key, at| {
        if key.is("messages") {
            found = Some(at);
            return Err(ScanError::new("found", at));
        }
        scanner.skip()
    });
    found
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_starts_at_the_top_level_messages_key() {
        let at = |body: &str| messages_key(body.as_bytes());
        assert_eq!(at(r#"{"messages":[]}"#), Some(1));
        assert_eq!(at(r#"{"model":"m", "messages":[]}"#), Some(14));
        // Not a value that reads "messages", nor a key inside another value.
        assert_eq!(
            at(r#"{"model":"messages","tools":[{"messages":1}],"messages":[]}"#),
            Some(45)
        );
        assert_eq!(at(r#"{"m\u0065ssages":[]}"#), Some(1), "an escaped key");
        // Found before the body ends: a body cut after the key still has its prefix.
        assert_eq!(at(r#"{"stream":true,"messages":[{"role":"us"#), Some(15));
        assert_eq!(at(r#"{"model":"m"}"#), None);
        assert_eq!(at("not json \"messages\""), None);
        assert_eq!(at(""), None);
    }
}
