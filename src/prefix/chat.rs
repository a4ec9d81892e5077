//! Block keys from an OpenAI chat-completions body: the `messages` array, in order, hashed in
//! blocks of bytes as it is read, without consuming the body and without copying it.

use std::{
    pin::pin,
    task::{Context, Poll},
};

use bytes::Buf;
use http_body::Body;

use super::{block::ByteStream, BlockHasher, ExtractBlocks};
use crate::error::ConfigError;

/// Block hashes of an OpenAI-style chat body's `messages` array, for routers without a
/// tokenizer: the array's bytes from `[` to `]`, in blocks of a fixed number of bytes, each
/// hash covering all before it. Two requests of one conversation share the blocks of their
/// common earlier turns; the system prompt alone gives the first few.
///
/// It reads only a body already in memory (a `Full<Bytes>`, `Bytes`, `String`), polling a
/// clone once without waiting, so the request is sent untouched; a streaming body has no key.
/// The bytes are hashed as they come, frame by frame, with no copy and no allocation beyond
/// the hashes themselves. A body without a `messages` array (or one longer than
/// [`limit`](Self::limit)) yields what it read so far, or nothing.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_ai_balance::prefix::{ChatMessages, ExtractBlocks};
/// let keys = ChatMessages::new(32).unwrap();
/// let turn = |text: &str| {
///     let body = format!(r#"{{"model":"m","messages":[{{"role":"system","content":"You are a careful assistant."}},{text}]}}"#);
///     http::Request::new(Full::new(Bytes::from(body)))
/// };
/// let (mut first, mut second) = (Vec::new(), Vec::new());
/// keys.extract(&turn(r#"{"role":"user","content":"Hello"}"#), &mut first).unwrap();
/// keys.extract(&turn(r#"{"role":"user","content":"Hello"},{"role":"assistant","content":"Hi! How can I help?"}"#), &mut second).unwrap();
/// assert_eq!(first[..2], second[..2]); // the same system prompt and first turn
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ChatMessages {
    hasher: BlockHasher,
    bytes_per_token: u32,
    limit: usize,
}

impl ChatMessages {
    /// Blocks of `block_bytes` bytes (at least 8); 256 bytes (some 64 tokens) is a good start.
    pub fn new(block_bytes: usize) -> Result<Self, ConfigError> {
        if block_bytes < 8 {
            return Err(ConfigError::InvalidSetting {
                name: "block_bytes",
                reason: "must be at least 8",
            });
        }
        Ok(Self {
            hasher: BlockHasher::new(block_bytes)?,
            bytes_per_token: 4,
            limit: 4 << 20,
        })
    }

    /// Starts every chain from `seed` (the model's hash, say), as [`BlockHasher::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.hasher = self.hasher.seed(seed);
        self
    }

    /// Reads at most this many bytes of a body (4 MiB by default).
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }

    /// How many bytes of JSON make a token, to estimate the prompt's length (4 by default).
    pub fn bytes_per_token(mut self, bytes: u32) -> Self {
        self.bytes_per_token = bytes.max(1);
        self
    }

    /// The hasher, for the length of a block.
    pub fn hasher(&self) -> &BlockHasher {
        &self.hasher
    }
}

impl<B> ExtractBlocks<http::Request<B>> for ChatMessages
where
    B: Body + Clone + Send + Sync + 'static,
{
    fn extract(&self, request: &http::Request<B>, out: &mut Vec<u64>) -> Option<u64> {
        let mut body = pin!(request.body().clone());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut scan = Scan::new(self.hasher.stream());
        let mut read = 0usize;
        let before = out.len();
        while !scan.done() && read < self.limit {
            match body.as_mut().poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() && !scan.done() && read < self.limit {
                            let chunk = data.chunk();
                            let n = chunk.len().min(self.limit - read);
                            scan.push(&chunk[..n], out);
                            read += n;
                            data.advance(n);
                        }
                    }
                }
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(_))) | Poll::Pending => {
                    out.truncate(before);
                    return None;
                }
            }
        }
        (scan.bytes > 0).then(|| (scan.bytes / u64::from(self.bytes_per_token)).max(1))
    }
}

/// Finds `"messages"`, then `:` and `[`, then feeds the array to the hasher up to its
/// closing `]`, tracking strings and nesting.
struct Scan {
    stream: ByteStream,
    state: State,
    /// Bytes of the array hashed.
    bytes: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    /// Looking for a top-level `"messages"` key: the nesting depth (1 inside the body's
    /// object), whether inside a string (and after a backslash), and how many bytes of
    /// `"messages"` the current string has matched (`None`: not a top-level string, or it
    /// differs). A `messages` key nested deeper (a tool's parameter, metadata) is not it.
    Seek {
        depth: u32,
        string: bool,
        escape: bool,
        matched: Option<usize>,
    },
    /// After the key: expecting `:`.
    Colon,
    /// After the colon: expecting `[`.
    Open,
    /// Inside the array.
    Array {
        depth: u32,
        string: bool,
        escape: bool,
    },
    Done,
}

const KEY: &[u8] = b"\"messages\"";

/// Looking for the key, at the start of the body.
const SEEK: State = State::Seek {
    depth: 0,
    string: false,
    escape: false,
    matched: None,
};

/// Looking for the key, at `depth` outside strings, after byte `b`.
fn seek(depth: u32, b: u8) -> State {
    State::Seek {
        depth: match b {
            b'{' | b'[' => depth.saturating_add(1),
            b'}' | b']' => depth.saturating_sub(1),
            _ => depth,
        },
        string: b == b'"',
        escape: false,
        matched: (b == b'"' && depth == 1).then_some(1),
    }
}

impl Scan {
    fn new(stream: ByteStream) -> Self {
        Self {
            stream,
            state: SEEK,
            bytes: 0,
        }
    }

    fn done(&self) -> bool {
        self.state == State::Done
    }

    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<u64>) {
        while !bytes.is_empty() && !self.done() {
            if let State::Array { .. } = self.state {
                let n = self.array(bytes);
                self.stream.push(&bytes[..n], out);
                self.bytes += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            self.state = match self.state {
                State::Seek {
                    depth,
                    string: true,
                    escape,
                    matched,
                } => {
                    let (escape, string, matched) = match b {
                        _ if escape => (false, true, None),
                        b'\\' => (true, true, None),
                        b'"' if matched == Some(KEY.len() - 1) => {
                            self.state = State::Colon;
                            continue;
                        }
                        b'"' => (false, false, None),
                        _ => (false, true, matched.filter(|&m| KEY[m] == b).map(|m| m + 1)),
                    };
                    State::Seek {
                        depth,
                        string,
                        escape,
                        matched,
                    }
                }
                State::Seek { depth, .. } => seek(depth, b),
                State::Colon if b.is_ascii_whitespace() => State::Colon,
                State::Colon if b == b':' => State::Open,
                // "messages" as a value, not a key: keep looking, at the top level.
                State::Colon => seek(1, b),
                State::Open if b.is_ascii_whitespace() => State::Open,
                State::Open if b == b'[' => {
                    self.stream.push(b"[", out);
                    self.bytes += 1;
                    State::Array {
                        depth: 1,
                        string: false,
                        escape: false,
                    }
                }
                State::Open | State::Done | State::Array { .. } => State::Done,
            };
        }
    }

    /// Advances through the array; how many bytes of `bytes` belong to it.
    fn array(&mut self, bytes: &[u8]) -> usize {
        let State::Array {
            mut depth,
            mut string,
            mut escape,
        } = self.state
        else {
            return 0;
        };
        for (i, &b) in bytes.iter().enumerate() {
            if string {
                if escape {
                    escape = false;
                } else if b == b'\\' {
                    escape = true;
                } else if b == b'"' {
                    string = false;
                }
                continue;
            }
            match b {
                b'"' => string = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        self.state = State::Done;
                        return i + 1;
                    }
                }
                _ => {}
            }
        }
        self.state = State::Array {
            depth,
            string,
            escape,
        };
        bytes.len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;

    fn request(body: &str) -> http::Request<Full<Bytes>> {
        http::Request::new(Full::new(Bytes::from(body.to_owned())))
    }

    fn blocks(keys: &ChatMessages, body: &str) -> (Option<u64>, Vec<u64>) {
        let mut out = Vec::new();
        let tokens = keys.extract(&request(body), &mut out);
        (tokens, out)
    }

    #[test]
    fn hashes_the_messages_array_only() {
        let keys = ChatMessages::new(8).unwrap();
        let array = r#"[{"role":"user","content":"a ] } \" [ tricky one"}]"#;
        let (_, expected) = {
            let mut out = Vec::new();
            BlockHasher::new(8)
                .unwrap()
                .bytes(array.as_bytes(), &mut out);
            (0, out)
        };
        let (tokens, got) = blocks(
            &keys,
            &format!(r#"{{"model":"x","messages": {array},"stream":true}}"#),
        );
        assert_eq!(got, expected);
        assert_eq!(tokens, Some(array.len() as u64 / 4));
        // Whatever comes before or after the array does not matter.
        let (_, again) = blocks(
            &keys,
            &format!(r#"{{"messages":{array},"temperature":0.2,"model":"y"}}"#),
        );
        assert_eq!(again, expected);
    }

    #[test]
    fn a_value_named_messages_is_not_the_key() {
        let keys = ChatMessages::new(8).unwrap();
        let (_, a) = blocks(
            &keys,
            r#"{"kind":"messages","messages":[{"content":"0123456789abcdef"}]}"#,
        );
        let (_, b) = blocks(&keys, r#"{"messages":[{"content":"0123456789abcdef"}]}"#);
        assert!(!a.is_empty());
        assert_eq!(a, b);
    }

    #[test]
    fn a_messages_key_nested_before_the_top_level_one_is_not_it() {
        // A tool whose parameter is named `messages`, or metadata holding such a key, may
        // come before the request's own `messages`: only the top-level key is the prompt.
        let keys = ChatMessages::new(8).unwrap();
        let array = r#"[{"role":"user","content":"0123456789abcdef0123456789abcdef"}]"#;
        let (want_tokens, want) = blocks(&keys, &format!(r#"{{"messages":{array}}}"#));
        assert!(!want.is_empty());
        for before in [
            r#""tools":[{"type":"function","function":{"name":"summarize","parameters":{"type":"object","properties":{"messages":{"type":"array"}}}}}]"#,
            r#""metadata":{"messages":["a"]}"#,
            r#""model":"messages","stop":["messages"]"#,
        ] {
            let body = format!(r#"{{{before},"messages":{array}}}"#);
            assert_eq!(blocks(&keys, &body), (want_tokens, want.clone()), "{body}");
        }
    }

    #[test]
    fn bodies_without_messages_have_no_key() {
        let keys = ChatMessages::new(8).unwrap();
        for body in [
            "",
            "{}",
            r#"{"prompt":"hello there, a long prompt"}"#,
            "\"messages\": 3",
            "garbage \u{0} [",
        ] {
            let (tokens, out) = blocks(&keys, body);
            assert_eq!((tokens, out.len()), (None, 0), "{body:?}");
        }
    }

    #[test]
    fn the_body_is_left_intact_and_frames_hash_as_one() {
        let keys = ChatMessages::new(16).unwrap();
        let body = r#"{"messages":[{"role":"user","content":"split across many frames, one byte at a time"}]}"#;
        let whole = blocks(&keys, body);
        let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = body
            .bytes()
            .map(|b| Ok(http_body::Frame::data(Bytes::copy_from_slice(&[b]))))
            .collect();
        // A body that is Clone and in memory, delivered one byte per frame.
        #[derive(Clone)]
        struct Frames(Vec<Bytes>);
        impl Body for Frames {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                Poll::Ready(
                    (!self.0.is_empty()).then(|| Ok(http_body::Frame::data(self.0.remove(0)))),
                )
            }
        }
        let split = Frames(
            frames
                .into_iter()
                .map(|f| f.unwrap().into_data().unwrap())
                .collect(),
        );
        let mut out = Vec::new();
        let tokens = keys.extract(&http::Request::new(split.clone()), &mut out);
        assert_eq!((tokens, out), whole);
        assert_eq!(split.0.len(), body.len());
        let req = request(body);
        keys.extract(&req, &mut Vec::new());
        let left = futures_util::FutureExt::now_or_never(req.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(left, body);
    }

    #[test]
    fn a_body_that_would_wait_has_no_key() {
        let keys = ChatMessages::new(8).unwrap();
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
        let mut out = vec![42];
        assert_eq!(keys.extract(&http::Request::new(Later), &mut out), None);
        assert_eq!(out, [42]);
    }

    #[test]
    fn the_limit_bounds_the_read() {
        let keys = ChatMessages::new(8).unwrap().limit(20);
        let (_, out) = blocks(
            &keys,
            r#"{"messages":[{"content":"0123456789abcdefghijklmnop"}]}"#,
        );
        // 20 bytes read, of which 8 after the key: one block.
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let keys = ChatMessages::new(8).unwrap();
        let mut state = 1u64;
        for len in 0..400 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    b"\"messages:[]{}\\ ab"[(state % 18) as usize]
                })
                .collect();
            let mut out = Vec::new();
            let _ = keys.extract(&http::Request::new(Full::new(Bytes::from(body))), &mut out);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn only_the_top_level_array_is_hashed_whatever_comes_around_it(
            text in "[a-z{}\\[\\]\":,\\\\ ]{0,40}",
            before in proptest::collection::vec(0usize..5, 0..4),
            after in proptest::collection::vec(0usize..5, 0..3),
        ) {
            let text = serde_json::to_string(&text).unwrap();
            let array = format!(r#"[{{"role":"user","content":{text}}},{{"content":[{{"type":"text","text":{text}}}]}}]"#);
            let member = |i: usize| match i {
                0 => format!(r#""model":{text}"#),
                1 => format!(r#""metadata":{{"messages":[{text}]}}"#),
                2 => r#""tools":[{"function":{"parameters":{"properties":{"messages":{"type":"array"}}}}}]"#
                    .to_owned(),
                3 => format!(r#""stop":["messages",{text}]"#),
                _ => r#""x":"messages""#.to_owned(),
            };
            let members: Vec<String> = before
                .iter()
                .map(|&i| member(i))
                .chain([format!(r#""messages" : {array}"#)])
                .chain(after.iter().map(|&i| member(i)))
                .collect();
            let body = format!("{{{}}}", members.join(","));
            let keys = ChatMessages::new(8).unwrap();
            let mut want = Vec::new();
            BlockHasher::new(8).unwrap().bytes(array.as_bytes(), &mut want);
            let (_, got) = blocks(&keys, &body);
            proptest::prop_assert_eq!(&got, &want, "{}", body);
        }
    }
}
