//! Reading OpenAI-style JSON request bodies for routing: [`OpenAiRequest`] and
//! [`OpenAiRules`] (feature `openai`).

use http_body::Body;

use super::{BadRequest, Decide, RequestInfo, Routing, Rules};
use crate::json::{ScanError, Scanner, Str};

/// What an OpenAI-style JSON body (chat or text completions) says of itself: its model, an
/// estimate of its prompt's tokens and its `max_tokens` (or `max_completion_tokens`, which a
/// chat's `max_completion_tokens` supersedes; 256 when absent).
///
/// The prompt is the text of `messages[*].content` (a string, or the `text` of each part), or
/// else `prompt`: a string, an array of strings, an array of token ids or an array of arrays of
/// token ids. Text counts a quarter of its characters (the usual rule of thumb), a token id one.
///
/// The body is read in place, without being consumed or copied, and only the fields routing
/// needs are read: everything else is skipped without being decoded (see [`parse`] for what is
/// accepted and what is refused).
///
/// [`parse`]: OpenAiRequest::parse
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiRequest;

/// The fields read, in the order of the bits that say which were seen.
const FIELDS: [&str; 5] = [
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
];

const TWICE: [&str; 5] = [
    "the field \"model\" is given twice",
    "the field \"messages\" is given twice",
    "the field \"prompt\" is given twice",
    "the field \"max_tokens\" is given twice",
    "the field \"max_completion_tokens\" is given twice",
];

impl OpenAiRequest {
    /// Reads `body` if it is in memory (`Full<Bytes>`, `Bytes`, `String`), without consuming
    /// it: a body of one chunk is read where it lies. `Ok(None)` for a body that is empty or
    /// that would have to be waited for; otherwise as [`parse`](Self::parse).
    pub fn read<B: Body + Clone>(body: &B) -> Result<Option<RequestInfo>, BadRequest> {
        match crate::peek::peek(body, usize::MAX) {
            Some(bytes) => Self::parse(&bytes),
            None => Ok(None),
        }
    }

    /// Reads a JSON request body (after a UTF-8 byte-order mark, if there is one). `Ok(None)`
    /// when it is empty (or only whitespace).
    ///
    /// Accepted as model servers' JSON readers accept them: a lone surrogate escape, bytes that
    /// are not UTF-8 in a string, numbers beyond `f64` and `NaN`, repeated keys in what routing
    /// does not read, and nesting up to 1,024 levels. Refused with [`BadRequest`]: a body that
    /// is not one JSON object (not JSON, cut short, brackets that do not match, bytes after
    /// it), one of the fields above given twice (readers disagree on which one counts), or of
    /// the wrong type (`model` not a string, `messages` not an array, `prompt` neither a string
    /// nor an array, a maximum that is not a whole number of tokens). `null` is as absent.
    pub fn parse(bytes: &[u8]) -> Result<Option<RequestInfo>, BadRequest> {
        // A byte-order mark, which Python's reader (vLLM's, SGLang's) skips.
        let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let mut scanner = Scanner::new(bytes);
        if scanner.at_end() {
            return Ok(None);
        }
        read(&mut scanner)
            .map(Some)
            .map_err(|e| BadRequest::new(format!("the request body cannot be read: {e}")))
    }
}

/// What the fields say, as they are read.
#[derive(Default)]
struct Fields {
    seen: u8,
    model: Option<String>,
    messages: Option<Prompt>,
    prompt: Option<Prompt>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

/// A prompt's size: characters of text and token ids.
#[derive(Default, Clone, Copy)]
struct Prompt {
    chars: usize,
    ids: usize,
}

impl Prompt {
    fn text(&mut self, s: Str<'_>) {
        self.chars = self.chars.saturating_add(s.char_count());
    }

    fn tokens(&self) -> u32 {
        let tokens = self.chars.div_ceil(4).saturating_add(self.ids);
        u32::try_from(tokens).unwrap_or(u32::MAX)
    }
}

fn read(s: &mut Scanner<'_>) -> Result<RequestInfo, ScanError> {
    if s.peek()? != b'{' {
        return Err(s.error("the body is not a JSON object"));
    }
    let mut f = Fields::default();
    s.object(|s, key, at| {
        let Some(i) = FIELDS.iter().position(|name| key.is(name)) else {
            return s.skip();
        };
        if f.seen & 1 << i != 0 {
            return Err(ScanError::new(TWICE[i], at));
        }
        f.seen |= 1 << i;
        match i {
            0 => f.model = model(s)?,
            1 => f.messages = messages(s)?,
            2 => f.prompt = prompt(s)?,
            3 => f.max_tokens = whole(s, "max_tokens is not a whole number of tokens")?,
            _ => {
                f.max_completion_tokens =
                    whole(s, "max_completion_tokens is not a whole number of tokens")?
            }
        }
        Ok(())
    })?;
    if !s.at_end() {
        return Err(s.error("bytes follow the JSON object"));
    }
    let prompt = f.messages.or(f.prompt).unwrap_or_default();
    // A chat request's `max_completion_tokens` supersedes its deprecated `max_tokens` (as
    // vLLM, the Anthropic translation and `AttemptTimeout` read them); the completions API
    // has only `max_tokens`.
    let max_tokens = if f.messages.is_some() {
        f.max_completion_tokens.or(f.max_tokens)
    } else {
        f.max_tokens.or(f.max_completion_tokens)
    };
    let max_tokens = max_tokens.unwrap_or(256);
    Ok(RequestInfo {
        model: f.model,
        prompt_tokens: prompt.tokens(),
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
    })
}

/// Skips a `null`, telling whether there was one.
fn null(s: &mut Scanner<'_>) -> Result<bool, ScanError> {
    // The only token that starts with an `n` is `null`.
    if s.peek()? == b'n' {
        s.scalar()?;
        return Ok(true);
    }
    Ok(false)
}

fn model(s: &mut Scanner<'_>) -> Result<Option<String>, ScanError> {
    if null(s)? {
        return Ok(None);
    }
    if s.peek()? != b'"' {
        return Err(s.error("model is not a string"));
    }
    let name = s.string()?;
    Ok(Some(match std::str::from_utf8(name.raw()) {
        Ok(plain) if !plain.contains('\\') => plain.to_owned(),
        _ => name.chars().collect(),
    }))
}

fn messages(s: &mut Scanner<'_>) -> Result<Option<Prompt>, ScanError> {
    if null(s)? {
        return Ok(None);
    }
    if s.peek()? != b'[' {
        return Err(s.error("messages is not an array"));
    }
    let mut prompt = Prompt::default();
    s.array(|s| {
        if s.peek()? != b'{' {
            return s.skip();
        }
        let mut seen = false;
        s.object(|s, key, at| {
            if !key.is("content") {
                return s.skip();
            }
            if std::mem::replace(&mut seen, true) {
                return Err(ScanError::new("a message's \"content\" is given twice", at));
            }
            match s.peek()? {
                b'"' => prompt.text(s.string()?),
                b'[' => s.array(|s| part(s, &mut prompt))?,
                _ => s.skip()?,
            }
            Ok(())
        })
    })?;
    Ok(Some(prompt))
}

/// One part of a message's content: its `text`, if it has one.
fn part(s: &mut Scanner<'_>, prompt: &mut Prompt) -> Result<(), ScanError> {
    if s.peek()? != b'{' {
        return s.skip();
    }
    let mut seen = false;
    s.object(|s, key, at| {
        if !key.is("text") {
            return s.skip();
        }
        if std::mem::replace(&mut seen, true) {
            return Err(ScanError::new(
                "a content part's \"text\" is given twice",
                at,
            ));
        }
        match s.peek()? {
            b'"' => prompt.text(s.string()?),
            _ => s.skip()?,
        }
        Ok(())
    })
}

fn prompt(s: &mut Scanner<'_>) -> Result<Option<Prompt>, ScanError> {
    if null(s)? {
        return Ok(None);
    }
    let mut prompt = Prompt::default();
    match s.peek()? {
        b'"' => prompt.text(s.string()?),
        b'[' => s.array(|s| match s.peek()? {
            b'[' => s.array(|s| prompt_item(s, &mut prompt)),
            _ => prompt_item(s, &mut prompt),
        })?,
        _ => return Err(s.error("prompt is not a string or an array")),
    }
    Ok(Some(prompt))
}

/// A string or a token id in a prompt's array; anything else counts for nothing.
#[inline]
fn prompt_item(s: &mut Scanner<'_>, prompt: &mut Prompt) -> Result<(), ScanError> {
    match s.peek()? {
        b'"' => prompt.text(s.string()?),
        b'-' | b'0'..=b'9' => {
            s.scalar()?;
            prompt.ids = prompt.ids.saturating_add(1);
        }
        _ => s.skip()?,
    }
    Ok(())
}

/// A whole, non-negative number (`300`, `300.0`, `3e2`), or `null`.
fn whole(s: &mut Scanner<'_>, wrong: &'static str) -> Result<Option<u64>, ScanError> {
    if null(s)? {
        return Ok(None);
    }
    let first = s.peek()?;
    let at = s.error(wrong);
    if !matches!(first, b'-' | b'0'..=b'9') {
        return Err(at);
    }
    let token = s.scalar()?;
    if token.iter().all(u8::is_ascii_digit) {
        return Ok(Some(token.iter().fold(0u64, |n, &d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        })));
    }
    let x: f64 = std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(at)?;
    if x.is_finite() && x >= 0.0 && x.fract() == 0.0 {
        Ok(Some(x as u64))
    } else {
        Err(at)
    }
}

/// [`Rules`] over what [`OpenAiRequest`] reads. A body it cannot read is refused with
/// [`BadRequest`], never routed as if it required nothing; so is a compressed body
/// (`Content-Encoding` other than `identity`: decompress it before this layer, with
/// tower-http's `RequestDecompression` for one). An empty body (a `GET`) and a
/// `multipart/form-data` upload, which it does not read, are balanced as usual, as is a body
/// not in memory.
#[derive(Debug, Clone, Default)]
pub struct OpenAiRules(pub Rules);

impl<B> Decide<http::Request<B>> for OpenAiRules
where
    B: Body + Clone + Send + Sync + 'static,
{
    fn decide(&self, request: &http::Request<B>) -> Routing {
        if is_multipart(request) {
            return Routing::default();
        }
        if is_compressed(request) {
            return Routing::refused(BadRequest::new(
                "the request body is compressed (its Content-Encoding is not identity): it \
                 cannot be read for routing",
            ));
        }
        match OpenAiRequest::read(request.body()) {
            Ok(Some(info)) => self.0.decide(&info, rand::random()),
            Ok(None) => Routing::default(),
            Err(error) => Routing::refused(error),
        }
    }
}

fn is_multipart<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("multipart/form-data"))
}

/// Whether the request has a `Content-Encoding` other than `identity`.
fn is_compressed<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|coding| {
            !coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"identity")
        })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn info(body: &str) -> RequestInfo {
        OpenAiRequest::parse(body.as_bytes())
            .unwrap_or_else(|e| panic!("{body}: {e}"))
            .unwrap()
    }

    fn refusal(body: &str) -> String {
        OpenAiRequest::parse(body.as_bytes())
            .expect_err(body)
            .reason()
            .to_owned()
    }

    #[test]
    fn reads_the_fields_in_any_order_and_skips_the_rest() {
        let read = info(
            r#"{"stream":true,"tools":[{"type":"function","function":{"parameters":{"a":[1,{}]}}}],
                "messages":[{"role":"system","content":"abcd"},{"role":"user","content":[
                  {"type":"text","text":"efgh"},{"type":"image_url","image_url":{"url":"data:,x"}}]},
                  {"role":"assistant","content":null,"tool_calls":[]}],
                "max_completion_tokens":7,"model":"m\u00e9"}"#,
        );
        assert_eq!(
            read,
            RequestInfo {
                model: Some("mé".into()),
                prompt_tokens: 2,
                max_tokens: 7
            }
        );
        let read = info(r#"{"max_tokens":3e2,"max_completion_tokens":5,"prompt":"abcde"}"#);
        assert_eq!(
            (read.model, read.prompt_tokens, read.max_tokens),
            (None, 2, 300)
        );
        let chat = info(r#"{"max_tokens":100,"messages":[],"max_completion_tokens":8}"#);
        assert_eq!(
            chat.max_tokens, 8,
            "a chat's max_completion_tokens supersedes max_tokens"
        );
        assert_eq!(info(r#"{"model":"m"}"#).max_tokens, 256, "the default");
        assert_eq!(info(r#"{"model":null,"max_tokens":null}"#).model, None);
        assert_eq!(OpenAiRequest::parse(b" \n").unwrap(), None, "an empty body");
        let with_mark = b"\xef\xbb\xbf{\"model\":\"m\"}";
        assert_eq!(
            info(std::str::from_utf8(with_mark).unwrap())
                .model
                .as_deref(),
            Some("m")
        );
    }

    #[test]
    fn a_prompt_counts_its_text_and_its_token_ids() {
        let tokens = |prompt: &str| info(&format!(r#"{{"prompt":{prompt}}}"#)).prompt_tokens;
        assert_eq!(tokens(r#""12345678""#), 2);
        assert_eq!(tokens(r#"["1234","5678",""]"#), 2);
        assert_eq!(tokens("[1,2,3]"), 3);
        assert_eq!(tokens("[[1,2],[3],[]]"), 3);
        assert_eq!(tokens(r#"[[1,2],"abcd",7,null,{"x":1}]"#), 4);
        // Messages win over a prompt, as with the chat endpoint.
        assert_eq!(
            info(r#"{"prompt":[1,2,3,4,5],"messages":[{"content":"ab"}]}"#).prompt_tokens,
            1
        );
    }

    #[test]
    fn the_maximum_is_a_whole_number_of_tokens() {
        let max = |v: &str| OpenAiRequest::parse(format!(r#"{{"max_tokens":{v}}}"#).as_bytes());
        assert_eq!(max("300.0").unwrap().unwrap().max_tokens, 300);
        assert_eq!(
            max("99999999999999999999999").unwrap().unwrap().max_tokens,
            u32::MAX
        );
        for bad in ["-1", "1.5", "1e400", "\"300\"", "NaN", "true", "[1]"] {
            assert!(
                max(bad).unwrap_err().reason().contains("max_tokens"),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_say_what_and_where() {
        assert_eq!(
            refusal(r#"{"model":"a","model":"b"}"#),
            "the request body cannot be read: the field \"model\" is given twice (at byte 13)"
        );
        assert!(refusal(r#"{"messages":[{"content":"a","content":"b"}]}"#).contains("twice"));
        assert!(refusal(r#"{"model":"a""#).contains("ends early"));
        assert!(refusal(r#"{"prompt":5}"#).contains("prompt"));
        assert!(refusal(r#"{"model":nul}"#).contains("expected a value"));
        assert!(refusal("\"just a string\"").contains("not a JSON object"));
    }
}
