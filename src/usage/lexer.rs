//! [`Lexer`]: follows one JSON document fed in pieces of any size, and hands each `usage`
//! object it meets to [`Fields::merge`].
//!
//! It keeps only what finding the object needs: the nesting depth (whether each of the
//! first 64 levels is an object or an array), whether it is inside a string (and after a
//! backslash), and the key a value belongs to. Strings are crossed eight bytes at a time to
//! their quote or backslash. A `usage` object is read where it lies when one piece holds it
//! whole; one split between pieces is copied into a carry-over buffer, bounded by
//! [`MAX_USAGE`] bytes (a larger one is dropped). Nothing else is copied or allocated.
//!
//! The objects looked at are a top-level member `usage`, and a member `usage` of a top-level
//! `message` or `response` object (Anthropic's `message_start` event, OpenAI's
//! `response.completed`). A `usage` deeper in the document (inside a message's content, a
//! tool call's arguments) is someone's text, not the server's count. Malformed text is
//! followed as well as it can be and never panics.

use super::fields::Fields;
use crate::json::find_either;

/// The largest `usage` object kept across pieces, in bytes; real ones are under 500.
pub(crate) const MAX_USAGE: usize = 4096;

/// The longest key remembered: longer ones are none of the three looked for.
const KEY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    /// A key of no interest, or no key.
    Other,
    Usage,
    /// `message` or `response`: a top-level object that may hold the usage.
    Holder,
}

#[derive(Debug, Default)]
pub(crate) struct Lexer {
    /// Containers open.
    depth: u32,
    /// Bit `d` set: the container at depth `d + 1` is an array (for the first 64 levels).
    arrays: u64,
    in_string: bool,
    escaped: bool,
    /// The string being read is a key.
    in_key: bool,
    /// The next string of the current object is a key.
    expect_key: bool,
    key: [u8; KEY],
    key_len: usize,
    /// The key whose value comes next, at the current depth.
    named: Option<Named>,
    /// Inside a top-level `message` or `response` object.
    in_holder: bool,
    /// Reading a `usage` object, which ends when the depth falls below this.
    capture_depth: Option<u32>,
    /// Where the object started in the current piece.
    capture_from: Option<usize>,
    /// The object's start, when it began in an earlier piece.
    carry: Vec<u8>,
}

impl Lexer {
    /// Starts a new document (the carry-over buffer keeps its memory).
    pub(crate) fn reset(&mut self) {
        let carry = std::mem::take(&mut self.carry);
        *self = Self {
            carry,
            ..Self::default()
        };
        self.carry.clear();
    }

    fn top_is_array(&self) -> bool {
        let d = self.depth.wrapping_sub(1);
        d < 64 && self.arrays >> d & 1 == 1
    }

    /// Follows `bytes`, the next piece of the document.
    pub(crate) fn feed(&mut self, bytes: &[u8], fields: &mut Fields) {
        let mut i = 0;
        if self.capture_depth.is_some() {
            self.capture_from = Some(0);
        }
        while i < bytes.len() {
            if self.in_string {
                i = self.string(bytes, i);
                continue;
            }
            match bytes[i] {
                b'"' => {
                    self.in_string = true;
                    self.in_key = self.expect_key;
                    self.expect_key = false;
                    self.key_len = 0;
                    if !self.in_key {
                        self.named = None;
                    }
                }
                b'{' => {
                    let named = self.named.take();
                    let qualifies = self.depth == 1 || (self.depth == 2 && self.in_holder);
                    if named == Some(Named::Usage) && qualifies && self.capture_depth.is_none() {
                        self.capture_depth = Some(self.depth + 1);
                        self.capture_from = Some(i);
                        self.carry.clear();
                    }
                    if named == Some(Named::Holder) && self.depth == 1 {
                        self.in_holder = true;
                    }
                    self.open(false);
                    self.expect_key = true;
                }
                b'[' => {
                    self.named = None;
                    self.open(true);
                    self.expect_key = false;
                }
                b'}' | b']' => {
                    self.named = None;
                    self.expect_key = false;
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth <= 1 {
                        self.in_holder = false;
                    }
                    if let Some(depth) = self.capture_depth {
                        if self.depth < depth {
                            self.captured(bytes, i + 1, fields);
                        }
                    }
                }
                b',' => {
                    self.named = None;
                    self.expect_key = self.depth > 0 && !self.top_is_array();
                }
                b':' | b' ' | b'\t' | b'\n' | b'\r' => {}
                _ => self.named = None,
            }
            i += 1;
        }
        if let Some(from) = self.capture_from.take() {
            self.keep(&bytes[from..]);
        }
    }

    fn open(&mut self, array: bool) {
        if self.depth < 64 {
            let bit = 1u64 << self.depth;
            self.arrays = if array {
                self.arrays | bit
            } else {
                self.arrays & !bit
            };
        }
        self.depth = self.depth.saturating_add(1);
    }

    /// Inside a string from `i`: crosses it to its end or the piece's; returns where to go on.
    fn string(&mut self, bytes: &[u8], mut i: usize) -> usize {
        if self.escaped {
            self.escaped = false;
            self.key_byte(bytes[i]);
            return i + 1;
        }
        let rest = &bytes[i..];
        let Some(j) = find_either(rest, b'"', b'\\') else {
            if self.in_key {
                rest.iter().for_each(|&b| self.key_byte(b));
            }
            return bytes.len();
        };
        if self.in_key {
            rest[..j].iter().for_each(|&b| self.key_byte(b));
        }
        i += j;
        if bytes[i] == b'\\' {
            self.escaped = true;
            self.key_byte(b'\\');
        } else {
            self.in_string = false;
            if self.in_key {
                self.in_key = false;
                let key = &self.key[..self.key_len.min(KEY)];
                self.named = Some(match key {
                    _ if self.key_len > KEY => Named::Other,
                    b"usage" => Named::Usage,
                    b"message" | b"response" if self.depth == 1 => Named::Holder,
                    _ => Named::Other,
                });
            }
        }
        i + 1
    }

    fn key_byte(&mut self, b: u8) {
        if self.in_key {
            if let Some(slot) = self.key.get_mut(self.key_len) {
                *slot = b;
            }
            self.key_len = self.key_len.saturating_add(1);
        }
    }

    /// The `usage` object ends at `end` in `bytes`: read it, in place when it began in this
    /// piece.
    fn captured(&mut self, bytes: &[u8], end: usize, fields: &mut Fields) {
        self.capture_depth = None;
        let Some(from) = self.capture_from.take() else {
            return;
        };
        if from == 0 && !self.carry.is_empty() {
            self.keep(&bytes[..end]);
            if !self.carry.is_empty() {
                fields.merge(&self.carry);
            }
            self.carry.clear();
        } else {
            fields.merge(&bytes[from..end]);
        }
    }

    /// Keeps `part` of an object that goes on in the next piece; drops the object when it
    /// would exceed [`MAX_USAGE`].
    fn keep(&mut self, part: &[u8]) {
        if self.carry.len() + part.len() > MAX_USAGE {
            self.carry = Vec::new();
            self.capture_depth = None;
            self.capture_from = None;
            return;
        }
        self.carry.extend_from_slice(part);
    }
}
