//! Anthropic's model list (`GET /v1/models`) in OpenAI's shape.
//!
//! Anthropic answers `{"data":[{"type":"model","id","display_name","created_at"}],
//! "has_more","first_id","last_id"}`, a page at a time (`limit` up to 1,000, the next page
//! after `last_id`); OpenAI's clients read `{"object":"list","data":[{"id","object":"model",
//! "created","owned_by"}]}`.

use serde_json::{json, Value};

/// The most models asked for per page (Anthropic's maximum).
pub(crate) const PAGE: u32 = 1000;

/// One page of Anthropic's model list: its models in OpenAI's shape, and the id to ask
/// after for the next page (`None` on the last one). `None` if the body is not a model list.
pub(crate) fn models_page(body: &[u8]) -> Option<(Vec<Value>, Option<String>)> {
    let page: Value = serde_json::from_slice(body).ok()?;
    let data = page.get("data")?.as_array()?;
    let models = data
        .iter()
        .filter_map(|m| {
            let id = m.get("id")?.as_str()?;
            let created = (m.get("created_at").and_then(Value::as_str))
                .and_then(unix_seconds)
                .unwrap_or(0);
            Some(json!({"id": id, "object": "model", "created": created, "owned_by": "anthropic"}))
        })
        .collect();
    let next = match page.get("has_more").and_then(Value::as_bool) {
        Some(true) => page
            .get("last_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    };
    Some((models, next))
}

/// The list OpenAI's clients read.
pub(crate) fn openai_list(models: Vec<Value>) -> Vec<u8> {
    json!({"object": "list", "data": models})
        .to_string()
        .into_bytes()
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2025-02-19T00:00:00Z`, with an offset
/// or fractional seconds), or `None` if it is not one.
fn unix_seconds(time: &str) -> Option<u64> {
    let b = time.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = time.get(range)?;
        digits.bytes().all(|c| c.is_ascii_digit()).then_some(())?;
        digits.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &time[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        rest = &fraction[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let [h1, h2, m1, m2] = digits.map(|d| i64::from(d - b'0'));
            let seconds = ((h1 * 10 + h2) * 60 + m1 * 10 + m2) * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(60) - offset;
    u64::try_from(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_rfc_3339() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2025-02-19T00:00:00Z"), Some(1_739_923_200));
        assert_eq!(
            unix_seconds("2024-02-29T12:34:56.789Z"),
            Some(1_709_210_096)
        );
        assert_eq!(
            unix_seconds("2025-02-19T02:00:00+02:00"),
            Some(1_739_923_200)
        );
        assert_eq!(
            unix_seconds("2025-02-18T22:00:00-02:00"),
            Some(1_739_923_200)
        );
        for bad in [
            "",
            "2025-02-19",
            "2025-13-01T00:00:00Z",
            "2025-02-19T00:00:00",
            "yesterday",
        ] {
            assert_eq!(unix_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_page_becomes_openai_models_and_the_next_cursor() {
        let page = br#"{"data":[
            {"type":"model","id":"claude-sonnet-4-5","display_name":"Claude Sonnet 4.5","created_at":"2025-09-29T00:00:00Z"},
            {"type":"model","id":"claude-haiku-4-5","display_name":"Claude Haiku 4.5","created_at":"bad"}
        ],"has_more":true,"first_id":"claude-sonnet-4-5","last_id":"claude-haiku-4-5"}"#;
        let (models, next) = models_page(page).unwrap();
        assert_eq!(next.as_deref(), Some("claude-haiku-4-5"));
        assert_eq!(models[0]["id"], "claude-sonnet-4-5");
        assert_eq!(models[0]["object"], "model");
        assert_eq!(models[0]["owned_by"], "anthropic");
        assert_eq!(models[0]["created"], 1_759_104_000);
        assert_eq!(models[1]["created"], 0);
        let last = br#"{"data":[],"has_more":false,"first_id":null,"last_id":null}"#;
        assert_eq!(models_page(last), Some((vec![], None)));
        assert_eq!(models_page(b"{\"error\":{}}"), None);
        let list: Value = serde_json::from_slice(&openai_list(models)).unwrap();
        assert_eq!(list["object"], "list");
        assert_eq!(list["data"][1]["id"], "claude-haiku-4-5");
    }
}
