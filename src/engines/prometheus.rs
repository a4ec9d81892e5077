//! The Prometheus text exposition format, read sample by sample.
//!
//! Only what a load report needs: each sample's name, labels and value. `# HELP`, `# TYPE` and
//! other comments are skipped, as are timestamps and OpenMetrics exemplars after the value.
//! The reader never panics and never allocates for a line it skips: a line that is not valid
//! UTF-8, or not a well-formed sample, is passed over and the next one read. The caller bounds
//! the input's size (the scraper stops reading a body past its limit).

use std::borrow::Cow;

/// One sample: `name{label="value",...} value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The metric's name, such as `vllm:num_requests_waiting`.
    pub name: &'a str,
    /// The labels' text between the braces, already checked to be well formed.
    labels: &'a str,
    /// The value (`NaN`, `+Inf` and `-Inf` included).
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of the label `name`, unescaped.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        let mut rest = self.labels;
        loop {
            let (label, value, next) = next_label(rest)?;
            if label == name {
                return Some(unescape(value));
            }
            rest = next;
        }
    }

    /// Every label, in order, unescaped.
    pub fn labels(&self) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> + 'a {
        let mut rest = self.labels;
        std::iter::from_fn(move || {
            let (label, value, next) = next_label(rest)?;
            rest = next;
            Some((label, unescape(value)))
        })
    }
}

/// Every well-formed sample in `text`, in order.
pub fn samples(text: &[u8]) -> impl Iterator<Item = Sample<'_>> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        parse_line(line)
    })
}

fn is_space(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_matches(is_space);
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_len = line
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0, true))
        .map_or(line.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = line.split_at(name_len);
    let rest = rest.trim_start_matches(is_space);
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let end = labels_end(inner)?;
            (&inner[..end], &inner[end + 1..])
        }
        None => ("", rest),
    };
    let rest = rest.trim_start_matches(is_space);
    let value = rest.split(is_space).next().filter(|v| !v.is_empty())?;
    Some(Sample {
        name,
        labels,
        value: parse_value(value)?,
    })
}

fn is_name_char(c: char, first: bool, colon: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        // Rust's float syntax is a superset of Go's `ParseFloat` forms the format allows,
        // except for words: only the three above are accepted.
        _ if v
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => v.parse().ok(),
    }
}

/// Where the label set that starts after `{` ends (the index of its `}`), if it is well
/// formed: `name="value"` pairs separated by commas, a trailing comma allowed.
fn labels_end(inner: &str) -> Option<usize> {
    let mut rest = inner;
    loop {
        let trimmed = rest.trim_start_matches(is_space);
        if let Some(after) = trimmed.strip_prefix('}') {
            return Some(inner.len() - after.len() - 1);
        }
        let (_, _, next) = next_label(trimmed)?;
        let next = next.trim_start_matches(is_space);
        rest = match next.strip_prefix(',') {
            Some(after) => after,
            None if next.starts_with('}') => next,
            None => return None,
        };
    }
}

/// The first `name="value"` in `s` (spaces and a comma before it allowed), its raw value and
/// what follows it.
fn next_label(s: &str) -> Option<(&str, &str, &str)> {
    let s = s.trim_start_matches(|c| is_space(c) || c == ',');
    let name_len = s
        .char_indices()
        .find(|&(i, c)| !is_name_char(c, i == 0, false))
        .map_or(s.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let (name, rest) = s.split_at(name_len);
    let rest = rest.trim_start_matches(is_space).strip_prefix('=')?;
    let rest = rest.trim_start_matches(is_space).strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((name, &rest[..i], &rest[i + 1..])),
            _ => {}
        }
    }
    None
}

fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples_labels_and_special_values() {
        let text = concat!(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n",
            "# TYPE vllm:num_requests_running gauge\n",
            "vllm:num_requests_running{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B\"} 4.0\n",
            "  plain 7 1700000000000\r\n",
            "escaped{path=\"a\\\\b\",quote=\"say \\\"hi\\\"\",nl=\"x\\ny\",} +Inf\n",
            "spaced { a = \"1\" , b=\"2\" } -Inf # {trace_id=\"x\"} 1\n",
            "nan NaN\n",
        );
        let s: Vec<_> = samples(text.as_bytes()).collect();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].name, "vllm:num_requests_running");
        assert_eq!(s[0].value, 4.0);
        assert_eq!(s[0].label("engine").as_deref(), Some("0"));
        assert_eq!(
            s[0].label("model_name").as_deref(),
            Some("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(s[0].label("missing"), None);
        assert_eq!((s[1].name, s[1].value), ("plain", 7.0));
        assert_eq!(s[2].label("path").as_deref(), Some("a\\b"));
        assert_eq!(s[2].label("quote").as_deref(), Some("say \"hi\""));
        assert_eq!(s[2].label("nl").as_deref(), Some("x\ny"));
        assert_eq!(s[2].value, f64::INFINITY);
        assert_eq!(s[3].labels().count(), 2);
        assert_eq!(s[3].value, f64::NEG_INFINITY);
        assert!(s[4].value.is_nan());
    }

    #[test]
    fn malformed_lines_are_passed_over() {
        let text: &[u8] = b"good 1\nbad{a=\"1\" 2\n{a=\"1\"} 3\nnovalue\nbad{a=1} 4\n\xff\xfe 5\nword inf\nhex 0x10\ngood 2\n";
        let values: Vec<f64> = samples(text).map(|s| s.value).collect();
        assert_eq!(values, [1.0, 2.0]);
    }
}
