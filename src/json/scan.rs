//! Scanning JSON in place: the few values a router needs are read where they lie in the body,
//! and everything else is skipped without being decoded or copied.
//!
//! The scanner is strict about structure, because routing must know where each value begins
//! and ends: brackets must match, an object's members are `"key": value` separated by commas,
//! and the text ends with the value. It is lenient about what model servers' own JSON readers
//! accept and a strict reader refuses: a lone surrogate escape (`"\ud83d"`, from a client that
//! cut a string mid-emoji), bytes that are not UTF-8 inside a string, numbers beyond `f64`
//! (`1e400`), `NaN` and `Infinity`, control characters inside strings, and nesting deeper than
//! a recursive reader goes (up to [`MAX_DEPTH`], about where Python's reader stops). Skipping
//! a string never decodes it, and a number is skipped as a token. Nothing allocates.

use std::fmt;

/// How deeply values may nest, counted from where skipping starts.
pub(crate) const MAX_DEPTH: usize = 1024;

/// Why the scanner stopped: what it found, and at which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanError {
    what: &'static str,
    at: usize,
}

impl ScanError {
    pub(crate) const fn new(what: &'static str, at: usize) -> Self {
        Self { what, at }
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.what, self.at)
    }
}

/// A cursor over JSON text.
#[derive(Debug)]
pub(crate) struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// A string as it is written between its quotes, escapes and all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The position: the offset of the next byte to read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// An error at the current position.
    pub(crate) fn error(&self, what: &'static str) -> ScanError {
        ScanError::new(what, self.pos)
    }

    #[inline]
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte that is not whitespace, left in place; an error at the end of the text.
    #[inline]
    pub(crate) fn peek(&mut self) -> Result<u8, ScanError> {
        self.skip_whitespace();
        match self.bytes.get(self.pos) {
            Some(&b) => Ok(b),
            None => Err(self.error("the JSON ends early")),
        }
    }

    /// Whether only whitespace is left.
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    pub(crate) fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.pos >= self.bytes.len()
    }

    #[inline]
    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), ScanError> {
        if self.peek()? == byte {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// Reads an object: calls `member` with each key, the byte offset of the key's opening
    /// quote, and the scanner on the member's value, which `member` must read or skip.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, Str<'a>, usize) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.expect(b'{', "expected an object")?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            let at = self.pos;
            let key = self.string()?;
            self.expect(b':', "expected ':' after a key")?;
            member(self, key, at)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or '}' in an object")),
            }
        }
    }

    /// Reads an array: calls `element` with the scanner on each element, which `element` must
    /// read or skip.
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    pub(crate) fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), ScanError>,
    ) -> Result<(), ScanError> {
        self.expect(b'[', "expected an array")?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or ']' in an array")),
            }
        }
    }

    /// Reads a string, without decoding it.
    pub(crate) fn string(&mut self) -> Result<Str<'a>, ScanError> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            let rest = self.bytes.get(self.pos..).unwrap_or_default();
            let Some(i) = find_either(rest, b'"', b'\\') else {
                self.pos = self.bytes.len();
                return Err(self.error("the JSON ends inside a string"));
            };
            self.pos += i;
            if self.bytes[self.pos] == b'"' {
                let raw = &self.bytes[start..self.pos];
                self.pos += 1;
                return Ok(Str { raw, escaped });
            }
            // A backslash: what follows it is never the string's end.
            escaped = true;
            self.pos += 2;
        }
    }

    /// Reads a number or a literal (`true`, `false`, `null`, `NaN`, `Infinity`,
    /// `-Infinity`) as the token it is written as.
    #[inline]
    pub(crate) fn scalar(&mut self) -> Result<&'a [u8], ScanError> {
        self.skip_whitespace();
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let len = rest
            .iter()
            .position(|&b| CLASS[usize::from(b)] & TOKEN == 0)
            .unwrap_or(rest.len());
        let token = &rest[..len];
        let ok = match token {
            [b'0'..=b'9', ..] | [b'-', b'0'..=b'9', ..] => {
                token.iter().all(|&b| CLASS[usize::from(b)] & NUMBER != 0)
            }
            _ => matches!(
                token,
                b"true" | b"false" | b"null" | b"NaN" | b"Infinity" | b"-Infinity"
            ),
        };
        if !ok {
            return Err(if rest.is_empty() {
                self.error("the JSON ends early")
            } else {
                self.error("expected a value")
            });
        }
        self.pos += len;
        Ok(token)
    }

    /// Skips one value of any kind and depth, without recursion.
    pub(crate) fn skip(&mut self) -> Result<(), ScanError> {
        match self.peek()? {
            b'"' => return self.string().map(drop),
            b'{' | b'[' => {}
            _ => return self.scalar().map(drop),
        }
        let mut open = Open::default();
        loop {
            // A value.
            match self.peek()? {
                b'{' => {
                    self.pos += 1;
                    if self.peek()? == b'}' {
                        self.pos += 1;
                    } else {
                        open.push(false).map_err(|()| self.error(TOO_DEEP))?;
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.pos += 1;
                    if self.peek()? == b']' {
                        self.pos += 1;
                    } else {
                        open.push(true).map_err(|()| self.error(TOO_DEEP))?;
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                _ => {
                    self.scalar()?;
                }
            }
            // What follows it: the next member or element, or the ends of what it closes.
            loop {
                let Some(in_array) = open.top() else {
                    return Ok(());
                };
                match (self.peek()?, in_array) {
                    (b',', _) => {
                        self.pos += 1;
                        if !in_array {
                            self.key()?;
                        }
                        break;
                    }
                    (b'}', false) | (b']', true) => {
                        self.pos += 1;
                        open.pop();
                    }
                    (_, false) => return Err(self.error("expected ',' or '}' in an object")),
                    (_, true) => return Err(self.error("expected ',' or ']' in an array")),
                }
            }
        }
    }

    /// A member's key and its colon.
    fn key(&mut self) -> Result<(), ScanError> {
        self.string()?;
        self.expect(b':', "expected ':' after a key")
    }
}

const TOO_DEEP: &str = "the JSON nests deeper than 1024 levels";

/// A byte that may be part of a number or a literal.
const TOKEN: u8 = 1;
/// A byte that may be part of a number.
const NUMBER: u8 = 2;

/// Each byte's classes.
const CLASS: [u8; 256] = {
    let mut class = [0; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.') {
            class[b] |= TOKEN;
        }
        if c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.' | b'e' | b'E') {
            class[b] |= NUMBER;
        }
        b += 1;
    }
    class
};

/// The containers `skip` is inside: a bit each (set for an array), without allocating.
#[derive(Default)]
struct Open {
    bits: [u64; MAX_DEPTH / 64],
    depth: usize,
}

impl Open {
    fn push(&mut self, array: bool) -> Result<(), ()> {
        if self.depth == MAX_DEPTH {
            return Err(());
        }
        let (word, bit) = (self.depth / 64, self.depth % 64);
        self.bits[word] = self.bits[word] & !(1 << bit) | u64::from(array) << bit;
        self.depth += 1;
        Ok(())
    }

    fn pop(&mut self) {
        self.depth -= 1;
    }

    /// Whether the innermost open container is an array; `None` when none is open.
    fn top(&self) -> Option<bool> {
        let d = self.depth.checked_sub(1)?;
        Some(self.bits[d / 64] >> (d % 64) & 1 == 1)
    }
}

impl<'a> Str<'a> {
    /// The bytes between the quotes, escapes as written.
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    pub(crate) fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether it decodes to `text`.
    pub(crate) fn is(&self, text: &str) -> bool {
        if self.escaped {
            self.chars().eq(text.chars())
        } else {
            self.raw == text.as_bytes()
        }
    }

    /// Its characters once decoded, counted without decoding: an escape is one character (a
    /// surrogate pair one too), bytes that are not UTF-8 one each at most.
    #[cfg_attr(not(feature = "openai"), allow(dead_code))]
    pub(crate) fn char_count(&self) -> usize {
        // Every byte that does not continue a UTF-8 sequence starts a character. Counted in
        // runs short enough for a byte-wide sum, which vectorises.
        let continuing: usize = self
            .raw
            .chunks(255)
            .map(|run| {
                let n = run
                    .iter()
                    .fold(0u8, |n, &b| n + u8::from((b as i8) < -0x40));
                usize::from(n)
            })
            .sum();
        let mut count = self.raw.len() - continuing;
        if !self.escaped {
            return count;
        }
        let mut i = 0;
        while let Some(at) = find_either(&self.raw[i..], b'\\', b'\\').map(|j| i + j) {
            let (len, _) = escape(&self.raw[at..]);
            // The escape's bytes are ASCII, each counted above; together they are one.
            count = count.saturating_sub(len - 1);
            i = at + len;
        }
        count
    }

    /// Its characters, decoded: a lone surrogate or a byte that is not UTF-8 becomes U+FFFD.
    pub(crate) fn chars(&self) -> impl Iterator<Item = char> + 'a {
        let mut rest = self.raw;
        std::iter::from_fn(move || {
            let (&first, _) = rest.split_first()?;
            let (len, c) = if first == b'\\' {
                escape(rest)
            } else {
                // A character is at most four bytes: look no further.
                let window = &rest[..rest.len().min(4)];
                let valid = match std::str::from_utf8(window) {
                    Ok(s) => s,
                    Err(e) => std::str::from_utf8(&window[..e.valid_up_to()]).unwrap_or_default(),
                };
                match valid.chars().next() {
                    Some(c) => (c.len_utf8(), c),
                    None => {
                        let e = std::str::from_utf8(window).err();
                        let len = e.and_then(|e| e.error_len()).unwrap_or(window.len());
                        (len, char::REPLACEMENT_CHARACTER)
                    }
                }
            };
            rest = &rest[len.min(rest.len())..];
            Some(c)
        })
    }
}

/// The escape at the start of `raw` (which begins with a backslash): its length in bytes and
/// the character it stands for.
fn escape(raw: &[u8]) -> (usize, char) {
    let Some(&kind) = raw.get(1) else {
        return (1, char::REPLACEMENT_CHARACTER);
    };
    let simple = match kind {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let Some(high) = hex4(raw.get(2..6)) else {
                return (2, char::REPLACEMENT_CHARACTER);
            };
            if (0xD800..0xDC00).contains(&high) && raw.get(6..8) == Some(b"\\u") {
                if let Some(low @ 0xDC00..0xE000) = hex4(raw.get(8..12)) {
                    let c = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    return (12, char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
            }
            return (
                6,
                char::from_u32(high).unwrap_or(char::REPLACEMENT_CHARACTER),
            );
        }
        _ => char::REPLACEMENT_CHARACTER,
    };
    // An unknown escape of a byte that starts a longer UTF-8 sequence takes only that byte.
    (2, simple)
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    digits?.iter().try_fold(0u32, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | v)
    })
}

/// The index of the first `a` or `b` in `haystack`, eight bytes at a time.
pub(crate) fn find_either(haystack: &[u8], a: u8, b: u8) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Sets the high bit of each zero byte of `v` (and perhaps of bytes after the first zero,
    // never before it, so the lowest set bit is exact).
    let zeros = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let (splat_a, splat_b) = (ONES * u64::from(a), ONES * u64::from(b));
    let mut chunks = haystack.chunks_exact(8);
    for (i, chunk) in (&mut chunks).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let found = zeros(word ^ splat_a) | zeros(word ^ splat_b);
        if found != 0 {
            return Some(i * 8 + found.trailing_zeros() as usize / 8);
        }
    }
    let tail = haystack.len() - chunks.remainder().len();
    chunks
        .remainder()
        .iter()
        .position(|&c| c == a || c == b)
        .map(|i| tail + i)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn skip(text: &[u8]) -> Result<usize, ScanError> {
        let mut s = Scanner::new(text);
        s.skip()?;
        if !s.at_end() {
            return Err(s.error("trailing"));
        }
        Ok(s.pos)
    }

    #[test]
    fn skips_what_model_servers_accept() {
        for ok in [
            &br#"{"a":[1,-2.5e10,true,false,null,{"b":{}},[]],"c":"d\"e\\"}"#[..],
            br#""lone \ud83d surrogate""#,
            b"1e400",
            b"[NaN, Infinity, -Infinity]",
            b"\"not \xff\xfe utf-8\"",
            b"\"a raw\ncontrol\tcharacter\"",
            b"  { \"k\" : [ 1 , 2 ] }  ",
        ] {
            assert!(skip(ok).is_ok(), "{}", String::from_utf8_lossy(ok));
        }
        let deep = [vec![b'['; MAX_DEPTH], vec![b'1'], vec![b']'; MAX_DEPTH]].concat();
        assert!(skip(&deep).is_ok());
    }

    #[test]
    fn refuses_what_no_reader_can_read() {
        for (bad, why) in [
            (&br#"{"a":[1,2}"#[..], "expected ',' or ']'"),
            (br#"{"a":1"#, "ends early"),
            (br#"{"a":"1"#, "inside a string"),
            (br#"{"a" 1}"#, "':'"),
            (br#"{"a":1,}"#, "expected a string"),
            (br#"[1,]"#, "expected a value"),
            (br#"[1 2]"#, "expected ',' or ']'"),
            (b"{1:2}", "expected a string"),
            (b"nope", "expected a value"),
            (b"", "ends early"),
            (b"\"\\", "inside a string"),
        ] {
            let e = skip(bad).expect_err(std::str::from_utf8(bad).unwrap());
            assert!(e.to_string().contains(why), "{e}");
        }
        let deeper = [
            vec![b'['; MAX_DEPTH + 1],
            vec![b'1'],
            vec![b']'; MAX_DEPTH + 1],
        ]
        .concat();
        assert!(skip(&deeper).unwrap_err().to_string().contains("deeper"));
        let mixed = [vec![b'['; 100], vec![b'}'; 100]].concat();
        assert!(skip(&mixed).is_err());
    }

    fn string(text: &[u8]) -> Str<'_> {
        Scanner::new(text).string().unwrap()
    }

    #[test]
    fn decodes_and_counts_characters_as_a_json_reader_would() {
        for (text, decoded) in [
            (&br#""plain""#[..], "plain"),
            (
                br#""caf\u00e9 \"quoted\" \\ \/ \n""#,
                "café \"quoted\" \\ / \n",
            ),
            ("\"é😀\"".as_bytes(), "é😀"),
            (br#""\ud83d\ude00 pair""#, "😀 pair"),
            (br#""\ud83d lone""#, "\u{fffd} lone"),
            (br#""\ude00\ud83d""#, "\u{fffd}\u{fffd}"),
            (b"\"bad \xff byte\"", "bad \u{fffd} byte"),
            (br#""\u12""#, "\u{fffd}12"),
        ] {
            let s = string(text);
            assert_eq!(s.chars().collect::<String>(), decoded);
            assert_eq!(s.char_count(), decoded.chars().count(), "{decoded}");
            if std::str::from_utf8(text).is_ok() {
                assert!(s.is(decoded), "{decoded}");
            }
        }
        assert!(string(br#""mod\u0065l""#).is("model"));
        assert!(!string(br#""model""#).is("models"));
    }

    #[test]
    fn finds_a_byte_at_every_offset() {
        let mut hay = vec![b'x'; 40];
        assert_eq!(find_either(&hay, b'"', b'\\'), None);
        for i in 0..40 {
            hay[i] = b'\\';
            assert_eq!(find_either(&hay, b'"', b'\\'), Some(i));
            hay[i] = b'"';
            assert_eq!(find_either(&hay[..=i], b'"', b'\\'), Some(i));
            hay[i] = 0x80 | b'"';
            assert_eq!(find_either(&hay, b'"', b'\\'), None);
            hay[i] = b'x';
        }
    }
}
