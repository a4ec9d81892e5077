//! An incremental server-sent events parser: bytes in, whole events out.
//!
//! Follows the SSE rules that matter here: lines end with `\n`, `\r\n` or `\r` (also when the
//! `\r` and the `\n` arrive in different chunks); a blank line ends an event; `data:` lines
//! join with `\n`; `event:` names it; a line that starts with `:` is a comment; one space
//! after the colon is dropped; a byte-order mark that starts the stream is dropped. An event
//! is bounded in size, so bytes that never end a line cannot grow it without limit.

use super::error::ResponseError;

/// The most one event (its lines and data) may hold.
pub(crate) const MAX_EVENT: usize = 4 << 20;

/// U+FEFF in UTF-8.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Event {
    /// Its `event:` name, if it had one.
    pub(crate) name: Option<String>,
    /// Its `data:` lines, joined with `\n`.
    pub(crate) data: Vec<u8>,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The last chunk ended with `\r`: a `\n` first in the next is the same line end.
    after_cr: bool,
    name: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    /// A line has ended: a byte-order mark is no longer the stream's first bytes.
    seen_line: bool,
}

impl SseParser {
    /// Parses `bytes`, appending every event they complete to `events`.
    pub(crate) fn push(
        &mut self,
        mut bytes: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ResponseError> {
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.extend_line(bytes)?;
                    break;
                }
                Some(i) => {
                    self.extend_line(&bytes[..i])?;
                    let cr = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    if cr {
                        match bytes.first() {
                            Some(b'\n') => bytes = &bytes[1..],
                            Some(_) => {}
                            None => self.after_cr = true,
                        }
                    }
                    self.end_line(events);
                }
            }
        }
        Ok(())
    }

    fn extend_line(&mut self, part: &[u8]) -> Result<(), ResponseError> {
        if self.line.len() + part.len() + self.data.len() > MAX_EVENT {
            return Err(ResponseError::EventTooLarge);
        }
        self.line.extend_from_slice(part);
        Ok(())
    }

    fn end_line(&mut self, events: &mut Vec<Event>) {
        let mut line = std::mem::take(&mut self.line);
        if !std::mem::replace(&mut self.seen_line, true) && line.starts_with(BOM) {
            // The stream's one leading byte-order mark, which the SSE rules drop.
            line.drain(..BOM.len());
        }
        if line.is_empty() {
            if self.has_data {
                if self.data.last() == Some(&b'\n') {
                    self.data.pop();
                }
                events.push(Event {
                    name: self.name.take(),
                    data: std::mem::take(&mut self.data),
                });
            }
            self.name = None;
            self.has_data = false;
            self.line = line;
            return;
        }
        if line[0] != b':' {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"event" => self.name = Some(String::from_utf8_lossy(value).into_owned()),
                b"data" => {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                    self.has_data = true;
                }
                _ => {}
            }
        }
        // Keep the line's allocation for the next one.
        self.line = line;
        self.line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(input: &[u8], cut: usize) -> Vec<Event> {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        for piece in input.chunks(cut.max(1)) {
            parser.push(piece, &mut events).unwrap();
        }
        events
    }

    #[test]
    fn events_survive_any_chunking_and_line_ending() {
        let lf =
            b"event: a\ndata: {\"x\":1}\n\n: comment\ndata:two\ndata: lines\n\nevent: c\ndata\n\n";
        let crlf = String::from_utf8_lossy(lf).replace('\n', "\r\n");
        let cr = String::from_utf8_lossy(lf).replace('\n', "\r");
        let want = vec![
            Event {
                name: Some("a".into()),
                data: b"{\"x\":1}".to_vec(),
            },
            Event {
                name: None,
                data: b"two\nlines".to_vec(),
            },
            Event {
                name: Some("c".into()),
                data: b"".to_vec(),
            },
        ];
        for input in [&lf[..], crlf.as_bytes(), cr.as_bytes()] {
            for cut in 1..input.len() + 1 {
                assert_eq!(parse_in_pieces(input, cut), want, "cut {cut}");
            }
        }
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        let block = vec![b'x'; 1 << 20];
        let mut result = Ok(());
        for _ in 0..5 {
            result = parser.push(&block, &mut events);
        }
        assert_eq!(result, Err(ResponseError::EventTooLarge));
    }

    #[test]
    fn a_byte_order_mark_before_the_first_line_is_dropped() {
        // The SSE rules drop one leading U+FEFF; kept, it made the first line's field
        // `\u{feff}data`, and the first event (Anthropic's `message_start`, with the input
        // tokens) was lost.
        let input = "\u{feff}data: {\"x\":1}\n\n".as_bytes();
        for cut in 1..input.len() + 1 {
            assert_eq!(
                parse_in_pieces(input, cut),
                [Event {
                    name: None,
                    data: b"{\"x\":1}".to_vec(),
                }],
                "cut {cut}"
            );
        }
    }
}
