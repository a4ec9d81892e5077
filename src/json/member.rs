//! One member of a JSON object replaced where it lies, in a copy of the text:
//! [`replace_string`], for a request body sent as another model than it names.

use super::{
    scan::{ScanError, Scanner},
    write::string_into,
};

/// Stops the scan once the member is found: what follows it is copied, not read.
const FOUND: ScanError = ScanError::new("found", usize::MAX);

/// A UTF-8 byte-order mark, which model servers' readers skip.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// `text`, a JSON object, with the value of its member `key` (at the top level) replaced by
/// the string `value`, or with the member added first when there is none; `Ok(None)` when
/// the member already is that string, so nothing is copied.
///
/// Only the object's members before `key` are scanned, each skipped without being decoded;
/// everything else is copied byte for byte (a byte-order mark, whitespace, the other members
/// and their order). An error when `text` is not an object, or breaks off before the member.
pub(crate) fn replace_string(
    text: &[u8],
    key: &str,
    value: &str,
) -> Result<Option<Vec<u8>>, ScanError> {
    let start = if text.starts_with(BOM) { BOM.len() } else { 0 };
    let mut s = Scanner::new(&text[start..]);
    if s.peek()? != b'{' {
        return Err(s.error("the body is not a JSON object"));
    }
    let brace = start + s.offset();
    let mut members = 0usize;
    let mut found = None;
    let scanned = s.object(|s, k, _| {
        members += 1;
        if !k.is(key) {
            return s.skip();
        }
        s.peek()?;
        let from = s.offset();
        let same = match s.peek()? {
            b'"' => s.string()?.is(value),
            _ => {
                s.skip()?;
                false
            }
        };
        found = Some((start + from..start + s.offset(), same));
        Err(FOUND)
    });
    match scanned {
        Ok(()) | Err(FOUND) => {}
        Err(e) => return Err(e),
    }
    let mut literal = String::with_capacity(value.len() + 2);
    string_into(&mut literal, value);
    let mut out = Vec::with_capacity(text.len() + key.len() + literal.len() + 4);
    match found {
        Some((_, true)) => return Ok(None),
        Some((span, false)) => {
            out.extend_from_slice(&text[..span.start]);
            out.extend_from_slice(literal.as_bytes());
            out.extend_from_slice(&text[span.end..]);
        }
        None => {
            out.extend_from_slice(&text[..=brace]);
            let mut name = String::with_capacity(key.len() + 2);
            string_into(&mut name, key);
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(literal.as_bytes());
            if members > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&text[brace + 1..]);
        }
    }
    Ok(Some(out))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn replaced(text: &str, value: &str) -> String {
        let out = replace_string(text.as_bytes(), "model", value)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .unwrap_or_else(|| text.as_bytes().to_vec());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_value_is_replaced_where_it_lies_and_the_rest_is_kept_byte_for_byte() {
        assert_eq!(
            replaced(r#"{"model":"chat","messages":[]}"#, "llama-70b"),
            r#"{"model":"llama-70b","messages":[]}"#
        );
        let text = "{ \"stream\" : true,\n  \"messages\":[{\"content\":\"\\\"model\\\": x\",\"model\":1}],\n  \"model\" :  \"chat\" , \"n\":1}";
        assert_eq!(
            replaced(text, "qwen"),
            "{ \"stream\" : true,\n  \"messages\":[{\"content\":\"\\\"model\\\": x\",\"model\":1}],\n  \"model\" :  \"qwen\" , \"n\":1}",
            "only the top-level member, and nothing around it"
        );
        // An escaped key is the same key; a value of another type is replaced whole.
        assert_eq!(
            replaced(r#"{"mod\u0065l":null}"#, "m"),
            r#"{"mod\u0065l":"m"}"#
        );
        assert_eq!(replaced(r#"{"model":{"a":[1]}}"#, "m"), r#"{"model":"m"}"#);
        // A name that needs escaping is written as JSON.
        let out = replaced(r#"{"model":"x"}"#, "a\"b\\c");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "a\"b\\c");
    }

    #[test]
    fn a_member_already_right_is_not_copied_and_a_missing_one_is_added_first() {
        assert_eq!(
            replace_string(br#"{"model":"m","messages":[]}"#, "model", "m").unwrap(),
            None
        );
        assert_eq!(
            replace_string(br#"{"model":"\u006d"}"#, "model", "m").unwrap(),
            None,
            "the same string, escaped"
        );
        assert_eq!(
            replaced(r#" {"messages":[]}"#, "m"),
            r#" {"model":"m","messages":[]}"#
        );
        assert_eq!(replaced("{ }", "m"), r#"{"model":"m" }"#);
        let with_mark = "\u{feff}{\"model\":\"chat\"}";
        assert_eq!(replaced(with_mark, "m"), "\u{feff}{\"model\":\"m\"}");
    }

    #[test]
    fn what_follows_the_member_is_not_read_and_what_is_not_an_object_is_refused() {
        // The member comes before a part that is broken off: it is still found.
        assert_eq!(
            replaced(r#"{"model":"chat","messages":[{"content":"#, "m"),
            r#"{"model":"m","messages":[{"content":"#
        );
        for bad in [
            r#"["model"]"#,
            r#""model""#,
            r#"{"messages":[}"#,
            "",
            "{\"a\":1",
        ] {
            assert!(
                replace_string(bad.as_bytes(), "model", "m").is_err(),
                "{bad:?}"
            );
        }
    }
}
