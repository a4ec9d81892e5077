//! [`Fields`]: the token counts a response's `usage` objects gave, merged in the order they
//! came, and the [`Usage`] they amount to.
//!
//! The formats name the counts differently:
//! - OpenAI chat completions: `prompt_tokens` (cached ones included), `completion_tokens`,
//!   `prompt_tokens_details.cached_tokens`;
//! - OpenAI responses: `input_tokens` (cached ones included), `output_tokens`,
//!   `input_tokens_details.cached_tokens`;
//! - Anthropic Messages: `input_tokens` (the tokens neither read from nor written to the
//!   cache), `cache_read_input_tokens`, `cache_creation_input_tokens`, `output_tokens`.
//!
//! A later object's counts replace an earlier one's, field by field: Anthropic's
//! `message_delta` carries the cumulative output count and keeps `message_start`'s input
//! count, and a server that reports usage on every chunk ends with the final figures.

use super::Usage;
use crate::json::{ScanError, Scanner, Str};

/// The counts seen so far; `None` where no object gave one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    prompt: Option<u64>,
    input: Option<u64>,
    output: Option<u64>,
    cached: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
}

impl Fields {
    /// The usage, once any count was read.
    pub(crate) fn usage(&self) -> Option<Usage> {
        if *self == Self::default() {
            return None;
        }
        let input = self.prompt.unwrap_or_else(|| {
            // Anthropic's input count leaves out the cache's tokens; OpenAI's never has
            // the two cache fields, so the sum is its own count.
            self.input
                .unwrap_or(0)
                .saturating_add(self.cache_read.unwrap_or(0))
                .saturating_add(self.cache_creation.unwrap_or(0))
        });
        Some(Usage {
            input_tokens: input,
            output_tokens: self.output.unwrap_or(0),
            cached_input_tokens: self.cached.or(self.cache_read).unwrap_or(0),
        })
    }

    /// Reads one `usage` object, `text` being exactly its JSON, and merges what it says into
    /// these counts. Malformed text changes nothing.
    pub(crate) fn merge(&mut self, text: &[u8]) {
        let mut read = Fields::default();
        if read_object(text, &mut read).is_err() {
            return;
        }
        let take = |mine: &mut Option<u64>, theirs: Option<u64>| {
            if theirs.is_some() {
                *mine = theirs;
            }
        };
        take(&mut self.prompt, read.prompt);
        take(&mut self.input, read.input);
        take(&mut self.output, read.output);
        take(&mut self.cached, read.cached);
        take(&mut self.cache_read, read.cache_read);
        take(&mut self.cache_creation, read.cache_creation);
    }
}

fn read_object(text: &[u8], into: &mut Fields) -> Result<(), ScanError> {
    let mut s = Scanner::new(text);
    s.object(|s, key, _| {
        let slot = match key_name(key) {
            Some(Key::Prompt) => &mut into.prompt,
            Some(Key::Input) => &mut into.input,
            Some(Key::Output) => &mut into.output,
            Some(Key::CacheRead) => &mut into.cache_read,
            Some(Key::CacheCreation) => &mut into.cache_creation,
            Some(Key::Details) if s.peek()? == b'{' => {
                return s.object(|s, key, _| {
                    if key.is("cached_tokens") {
                        count(s, &mut into.cached)
                    } else {
                        s.skip()
                    }
                });
            }
            _ => return s.skip(),
        };
        count(s, slot)
    })?;
    if s.at_end() {
        Ok(())
    } else {
        Err(s.error("text after the usage object"))
    }
}

enum Key {
    Prompt,
    Input,
    Output,
    CacheRead,
    CacheCreation,
    Details,
}

fn key_name(key: Str<'_>) -> Option<Key> {
    Some(match key.raw() {
        b"prompt_tokens" => Key::Prompt,
        b"input_tokens" => Key::Input,
        b"completion_tokens" | b"output_tokens" => Key::Output,
        b"cache_read_input_tokens" => Key::CacheRead,
        b"cache_creation_input_tokens" => Key::CacheCreation,
        b"prompt_tokens_details" | b"input_tokens_details" => Key::Details,
        _ => return None,
    })
}

/// A count: a non-negative integer. Anything else (`null`, a string, a fraction, a number
/// beyond `u64`) is skipped and leaves `slot` as it was.
fn count(s: &mut Scanner<'_>, slot: &mut Option<u64>) -> Result<(), ScanError> {
    if !s.peek()?.is_ascii_digit() {
        return s.skip();
    }
    let token = s.scalar()?;
    if let Some(n) = std::str::from_utf8(token)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
    {
        *slot = Some(n);
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn usage(objects: &[&str]) -> Option<Usage> {
        let mut f = Fields::default();
        for o in objects {
            f.merge(o.as_bytes());
        }
        f.usage()
    }

    #[test]
    fn openai_counts_include_the_cached_prompt() {
        let u = usage(&[
            r#"{"prompt_tokens":120,"completion_tokens":7,"total_tokens":127,
            "prompt_tokens_details":{"cached_tokens":100,"audio_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":0}}"#,
        ]);
        assert_eq!(u, Some(Usage::new(120, 7).cached(100)));
        let u = usage(&[
            r#"{"input_tokens":30,"output_tokens":5,"input_tokens_details":{"cached_tokens":8}}"#,
        ]);
        assert_eq!(u, Some(Usage::new(30, 5).cached(8)), "the responses API");
    }

    #[test]
    fn anthropic_counts_add_the_cache_and_later_objects_replace_earlier_ones() {
        let u = usage(&[
            r#"{"input_tokens":25,"cache_creation_input_tokens":20,"cache_read_input_tokens":10,"output_tokens":1}"#,
            r#"{"output_tokens":15}"#,
        ]);
        assert_eq!(u, Some(Usage::new(55, 15).cached(10)));
        let u =
            usage(&[r#"{"input_tokens":25,"cache_creation_input_tokens":null,"output_tokens":1}"#]);
        assert_eq!(u, Some(Usage::new(25, 1)));
    }

    #[test]
    fn what_is_not_a_count_is_skipped_and_bad_text_changes_nothing() {
        assert_eq!(usage(&[]), None);
        assert_eq!(usage(&["{}"]), None);
        assert_eq!(
            usage(&[r#"{"prompt_tokens":-1,"completion_tokens":"7","x":[1,{"y":2}]}"#]),
            None
        );
        assert_eq!(
            usage(&[r#"{"prompt_tokens":1.5,"completion_tokens":99999999999999999999999}"#]),
            None
        );
        assert_eq!(usage(&[r#"{"prompt_tokens":3,"completion_tokens":"#]), None);
        assert_eq!(usage(&[r#"{"prompt_tokens":3} x"#]), None);
        assert_eq!(
            usage(&[r#"{"prompt_tokens":3}"#, "{\"completion_tokens\":"]),
            Some(Usage::new(3, 0))
        );
    }
}
