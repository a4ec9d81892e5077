//! Whether a client's path has a `.` or `..` segment: joined under an upstream's base path,
//! such a segment would leave it (`/openai/v1` + `/../admin`) on any upstream or proxy that
//! resolves them, with the gateway's credentials. No model API's path has one, so the
//! upstreams refuse them rather than resolve them.

/// Whether `path` has a segment that is `.` or `..`, its dots written as they are or
/// percent-encoded (`%2e`), with `/`, `\` and their percent-encodings (`%2f`, `%5c`) all
/// taken as separators, as some servers take them.
pub(crate) fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // The current segment: how many dots, and whether anything else.
    let (mut dots, mut other) = (0u8, false);
    let mut i = 0;
    loop {
        let (separator, dot, width) = match bytes.get(i) {
            None => (true, false, 0),
            Some(b'/' | b'\\') => (true, false, 1),
            Some(b'.') => (false, true, 1),
            Some(b'%') => match bytes.get(i + 1..i + 3) {
                Some([b'2', b'e' | b'E']) => (false, true, 3),
                Some([b'2', b'f' | b'F'] | [b'5', b'c' | b'C']) => (true, false, 3),
                _ => (false, false, 1),
            },
            Some(_) => (false, false, 1),
        };
        if separator {
            if !other && (dots == 1 || dots == 2) {
                return true;
            }
            if i >= bytes.len() {
                return false;
            }
            (dots, other) = (0, false);
        } else if dot {
            dots = dots.saturating_add(1);
        } else {
            other = true;
        }
        i += width;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_in_any_spelling_are_found() {
        for path in [
            "/..",
            "/.",
            "/../admin",
            "/chat/../../admin",
            "/./x",
            "/%2e%2e/admin",
            "/%2E./admin",
            "/.%2e/admin",
            "/%2e/x",
            "/v1/..%2fadmin",
            "/v1/..%2Fadmin",
            "/v1\\..\\admin",
            "/v1/..%5cadmin",
            "..",
            "/v1/chat/..",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "",
            "/",
            "/v1/chat/completions",
            "/v1/models/gpt-4.1",
            "/v1/models/llama-3.1-8b",
            "/...",
            "/.well-known/x",
            "/a..b",
            "/v1/%2e%2e%2e",
            "/x.",
            "//v1//models",
            "/%2",
            "/%",
            "/%2g",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
