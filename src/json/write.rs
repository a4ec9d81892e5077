//! Writing JSON: string literals, and the OpenAI-format error body, without a JSON library.

use bytes::Bytes;

/// Appends `s` to `out` as a JSON string literal.
pub(crate) fn string_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `s` as a JSON string literal.
#[cfg_attr(not(feature = "anthropic"), allow(dead_code))]
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    string_into(&mut out, s);
    out
}

/// `{"error":{"message":...,"type":...,"param":null,"code":...}}`, the body of an OpenAI-format
/// error answer.
pub(crate) fn openai_error_body(message: &str, kind: &str, code: Option<&str>) -> Bytes {
    let mut out = String::with_capacity(message.len() + 80);
    out.push_str("{\"error\":{\"message\":");
    string_into(&mut out, message);
    out.push_str(",\"type\":");
    string_into(&mut out, kind);
    out.push_str(",\"param\":null,\"code\":");
    match code {
        Some(code) => string_into(&mut out, code),
        None => out.push_str("null"),
    }
    out.push_str("}}");
    Bytes::from(out)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json_reads_them() {
        let text = "quote \" backslash \\ newline \n tab \t bell \u{7} émoji 🦀";
        let written = string(text);
        let read: String = serde_json::from_str(&written).unwrap();
        assert_eq!(read, text);
        let body = openai_error_body("a \"b\"", "server_error", None);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["message"], "a \"b\"");
        assert!(v["error"]["code"].is_null());
    }
}
