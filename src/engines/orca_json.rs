//! The small JSON reader behind the ORCA header's JSON form: objects, strings and numbers,
//! everything else skipped, nesting bounded so that no input can exhaust the stack.

use super::orca_report::{bad, OrcaError};

const MAX_DEPTH: usize = 16;

/// A JSON value, as far as a report needs one.
pub(super) enum Json {
    Number(f64),
    Text(String),
    Object(Vec<(String, Json)>),
    Other,
}

impl Json {
    pub(super) fn number(&self) -> Result<f64, OrcaError> {
        match self {
            Json::Number(n) => Ok(*n),
            // Protobuf's JSON mapping may quote numbers, and spells NaN and infinity as text.
            Json::Text(t) => match t.as_str() {
                "NaN" | "Infinity" | "-Infinity" => bad("a value is NaN or infinite"),
                t => t.parse().or_else(|_| bad("a value that is not a number")),
            },
            _ => bad("a value that is not a number"),
        }
    }
}

/// Reads one JSON value that fills `json` (white space aside).
pub(super) fn read(json: &[u8]) -> Result<Json, OrcaError> {
    let mut reader = Reader { s: json, at: 0 };
    let value = reader.value(0)?;
    reader.space();
    if reader.at != json.len() {
        return bad("text after the JSON object");
    }
    Ok(value)
}

/// A small JSON reader: objects, strings and numbers, everything else skipped; nesting is
/// bounded so that no input can exhaust the stack.
struct Reader<'a> {
    s: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn space(&mut self) {
        while matches!(self.s.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.space();
        if self.s.get(self.at) == Some(&b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, OrcaError> {
        if depth > MAX_DEPTH {
            return bad("nested too deep");
        }
        self.space();
        match self.s.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut fields = Vec::new();
                if self.eat(b'}') {
                    return Ok(Json::Object(fields));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return bad("a key without ':'");
                    }
                    fields.push((key, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Ok(Json::Object(fields));
                    }
                    if !self.eat(b',') {
                        return bad("an object without ',' or '}'");
                    }
                }
            }
            Some(b'[') => {
                self.at += 1;
                if self.eat(b']') {
                    return Ok(Json::Other);
                }
                loop {
                    self.value(depth + 1)?;
                    if self.eat(b']') {
                        return Ok(Json::Other);
                    }
                    if !self.eat(b',') {
                        return bad("an array without ',' or ']'");
                    }
                }
            }
            Some(b'"') => Ok(Json::Text(self.string()?)),
            Some(b't') => self.word(b"true"),
            Some(b'f') => self.word(b"false"),
            Some(b'n') => self.word(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => bad("not a JSON value"),
        }
    }

    fn word(&mut self, word: &[u8]) -> Result<Json, OrcaError> {
        if self.s[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(Json::Other)
        } else {
            bad("not a JSON value")
        }
    }

    fn number(&mut self) -> Result<Json, OrcaError> {
        let start = self.at;
        let digits = |r: &mut Self| {
            let from = r.at;
            while matches!(r.s.get(r.at), Some(b'0'..=b'9')) {
                r.at += 1;
            }
            r.at > from
        };
        if self.s.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        if !digits(self) {
            return bad("a malformed number");
        }
        if self.s.get(self.at) == Some(&b'.') {
            self.at += 1;
            if !digits(self) {
                return bad("a malformed number");
            }
        }
        if matches!(self.s.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.s.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !digits(self) {
                return bad("a malformed number");
            }
        }
        // Only ASCII digits and signs were taken, so this is UTF-8 and Rust's float syntax.
        let text = std::str::from_utf8(&self.s[start..self.at]).or_else(|_| bad("not UTF-8"))?;
        text.parse()
            .map(Json::Number)
            .or_else(|_| bad("a malformed number"))
    }

    fn string(&mut self) -> Result<String, OrcaError> {
        if self.s.get(self.at) != Some(&b'"') {
            return bad("a key that is not a string");
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let Some(&b) = self.s.get(self.at) else {
                return bad("an unterminated string");
            };
            self.at += 1;
            match b {
                b'"' => return String::from_utf8(out).or_else(|_| bad("not UTF-8")),
                b'\\' => {
                    let Some(&e) = self.s.get(self.at) else {
                        return bad("an unterminated string");
                    };
                    self.at += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return bad("a bad escape"),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return bad("a control character in a string"),
                _ => out.push(b),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, OrcaError> {
        let digits = self
            .s
            .get(self.at..self.at + 4)
            .ok_or(OrcaError::new("a short \\u escape"))?;
        self.at += 4;
        let text = std::str::from_utf8(digits).or_else(|_| bad("a bad \\u escape"))?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("a bad \\u escape");
        }
        u32::from_str_radix(text, 16).or_else(|_| bad("a bad \\u escape"))
    }

    fn unicode(&mut self) -> Result<char, OrcaError> {
        let high = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&high) {
            if self.s.get(self.at..self.at + 2) != Some(b"\\u") {
                return bad("an unpaired surrogate");
            }
            self.at += 2;
            let low = self.hex4()?;
            if !(0xDC00..0xE000).contains(&low) {
                return bad("an unpaired surrogate");
            }
            0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
        } else {
            high
        };
        char::from_u32(code).ok_or(OrcaError::new("an unpaired surrogate"))
    }
}
