//! [`UsageReader`]: the token usage of a response body, read from its bytes as they pass.
//!
//! The body's first significant byte says what it is: `{` a JSON answer (one document),
//! anything else a server-sent event stream, whose `data:` lines are the documents (one per
//! event; `data: [DONE]` is followed as harmless text). Lines end with `\n`, `\r\n` or `\r`,
//! also split between pieces; a blank line ends an event; a field name longer than any
//! known one, a comment and any other field are skipped. The reader keeps a few bytes of
//! state and never looks back at earlier pieces (see [`Lexer`] for the one bounded copy).

use super::{fields::Fields, lexer::Lexer, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Framing {
    /// Only whitespace (or a byte-order mark) so far.
    #[default]
    Unknown,
    Json,
    Sse,
}

/// Where an event stream's current line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// At its start: nothing read yet.
    #[default]
    Start,
    /// In its field name, `len` bytes of which match `data` so far (5 once it is longer or
    /// differs).
    Name { len: u8 },
    /// In a `data` field's value; `first` before its first byte (a space there is dropped).
    Data { first: bool },
    /// In a line of no interest.
    Skip,
}

/// Reads the token usage of one response body, fed in pieces as they pass.
///
/// ```
/// use tower_ai_balance::usage::{Usage, UsageReader};
///
/// let mut reader = UsageReader::new();
/// for piece in [
///     &b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n"[..],
///     b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"compl",
///     b"etion_tokens\":2,\"total_tokens\":11}}\n\ndata: [DONE]\n\n",
/// ] {
///     reader.push(piece);
/// }
/// assert_eq!(reader.usage(), Some(Usage::new(9, 2)));
/// ```
#[derive(Debug, Default)]
pub struct UsageReader {
    framing: Framing,
    line: Line,
    /// The last piece ended with `\r`: a `\n` first in the next ends the same line.
    after_cr: bool,
    /// The current event has had a `data` line (the next one is joined with `\n`).
    event_data: bool,
    lexer: Lexer,
    fields: Fields,
    /// Reading stopped: a piece could not be read in place.
    stopped: bool,
}

impl UsageReader {
    /// A reader for a new body.
    pub fn new() -> Self {
        Self::default()
    }

    /// The usage found so far: `None` when the body has had no `usage` object with a count.
    pub fn usage(&self) -> Option<Usage> {
        self.fields.usage()
    }

    /// Reads the next piece of the body.
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.stopped {
            return;
        }
        if self.framing == Framing::Unknown {
            let start = bytes
                .iter()
                .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0xEF | 0xBB | 0xBF));
            let Some(start) = start else { return };
            bytes = &bytes[start..];
            self.framing = if bytes[0] == b'{' {
                Framing::Json
            } else {
                Framing::Sse
            };
        }
        match self.framing {
            Framing::Json => self.lexer.feed(bytes, &mut self.fields),
            _ => self.events(bytes),
        }
    }

    /// Reads nothing more: what was found so far stands.
    pub(crate) fn stop(&mut self) {
        self.stopped = true;
    }

    fn events(&mut self, mut bytes: &[u8]) {
        // An empty piece changes nothing: a `\r` that ended the last one still waits for
        // the `\n` that may start the next.
        if bytes.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) {
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while !bytes.is_empty() {
            let end = crate::json::find_either(bytes, b'\n', b'\r');
            let line = &bytes[..end.unwrap_or(bytes.len())];
            self.line_part(line);
            let Some(end) = end else { return };
            let cr = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if cr {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.line_end();
        }
    }

    /// Reads part of a line, up to its end or the piece's.
    fn line_part(&mut self, mut part: &[u8]) {
        while !part.is_empty() {
            match self.line {
                Line::Start => self.line = Line::Name { len: 0 },
                Line::Name { len } => {
                    let b = part[0];
                    part = &part[1..];
                    self.line = match (b, len) {
                        (b':', 4) => Line::Data { first: true },
                        (b':', _) => Line::Skip,
                        (_, 0..=3) if b == b"data"[usize::from(len)] => Line::Name { len: len + 1 },
                        _ => Line::Name { len: 5 },
                    };
                }
                Line::Data { first } => {
                    if first {
                        if self.event_data {
                            self.lexer.feed(b"\n", &mut self.fields);
                        }
                        self.event_data = true;
                        if part[0] == b' ' {
                            part = &part[1..];
                        }
                        self.line = Line::Data { first: false };
                        continue;
                    }
                    self.lexer.feed(part, &mut self.fields);
                    return;
                }
                Line::Skip => return,
            }
        }
    }

    fn line_end(&mut self) {
        match self.line {
            // A blank line ends the event.
            Line::Start => {
                self.event_data = false;
                self.lexer.reset();
            }
            // `data` alone, or `data:` with nothing after it: a data line with an empty value.
            Line::Name { len: 4 } | Line::Data { first: true } => {
                if self.event_data {
                    self.lexer.feed(b"\n", &mut self.fields);
                }
                self.event_data = true;
            }
            _ => {}
        }
        self.line = Line::Start;
    }
}
