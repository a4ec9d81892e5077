//! Reading a provider's rate-limit headers: OpenAI's `x-ratelimit-{limit,remaining,reset}-
//! {requests,tokens}` (resets as durations: `6m0s`, `1s`, `20ms`) and Anthropic's
//! `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`
//! (resets as RFC 3339 times). A value that does not read is as absent: no byte panics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::quota::{Figure, ProviderFigures, QuotaKind};

/// The header names of one limit: limit, remaining, reset, and whether the reset is a time.
struct Names {
    kind: QuotaKind,
    limit: &'static str,
    remaining: &'static str,
    reset: &'static str,
    absolute: bool,
}

const NAMES: [Names; 6] = [
    Names {
        kind: QuotaKind::Requests,
        limit: "x-ratelimit-limit-requests",
        remaining: "x-ratelimit-remaining-requests",
        reset: "x-ratelimit-reset-requests",
        absolute: false,
    },
    Names {
        kind: QuotaKind::Tokens,
        limit: "x-ratelimit-limit-tokens",
        remaining: "x-ratelimit-remaining-tokens",
        reset: "x-ratelimit-reset-tokens",
        absolute: false,
    },
    Names {
        kind: QuotaKind::Requests,
        limit: "anthropic-ratelimit-requests-limit",
        remaining: "anthropic-ratelimit-requests-remaining",
        reset: "anthropic-ratelimit-requests-reset",
        absolute: true,
    },
    Names {
        kind: QuotaKind::Tokens,
        limit: "anthropic-ratelimit-tokens-limit",
        remaining: "anthropic-ratelimit-tokens-remaining",
        reset: "anthropic-ratelimit-tokens-reset",
        absolute: true,
    },
    Names {
        kind: QuotaKind::InputTokens,
        limit: "anthropic-ratelimit-input-tokens-limit",
        remaining: "anthropic-ratelimit-input-tokens-remaining",
        reset: "anthropic-ratelimit-input-tokens-reset",
        absolute: true,
    },
    Names {
        kind: QuotaKind::OutputTokens,
        limit: "anthropic-ratelimit-output-tokens-limit",
        remaining: "anthropic-ratelimit-output-tokens-remaining",
        reset: "anthropic-ratelimit-output-tokens-reset",
        absolute: true,
    },
];

/// What `headers` say of each limit, resets as waits from `now` (the wall clock, for
/// Anthropic's times).
pub(crate) fn read(headers: &HeaderMap, now: SystemTime) -> ProviderFigures {
    let mut figures = ProviderFigures::default();
    if headers.is_empty() {
        return figures;
    }
    for names in &NAMES {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let remaining = text(names.remaining).and_then(count);
        let limit = text(names.limit).and_then(count);
        let reset = text(names.reset).and_then(|v| {
            if names.absolute {
                rfc3339(v).map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
            } else {
                go_duration(v)
            }
        });
        if remaining.is_none() && limit.is_none() && reset.is_none() {
            continue;
        }
        let slot = &mut figures.0[names.kind as usize];
        // The first family present wins (a response speaks one provider's dialect).
        if slot.is_none() {
            *slot = Some(Figure {
                limit,
                remaining,
                reset,
            });
        }
    }
    figures
}

/// A whole number of units (a fraction is rounded down; some proxies send `"99.0"`).
fn count(v: &str) -> Option<u64> {
    let whole = v.split_once('.').map_or(v, |(w, f)| {
        if f.bytes().all(|b| b.is_ascii_digit()) {
            w
        } else {
            ""
        }
    });
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(whole.parse::<u64>().unwrap_or(u64::MAX))
}

/// A Go-style duration as OpenAI sends it: `6m0s`, `1s`, `20ms`, `1h2m3.5s`, `0.5s`.
pub(crate) fn go_duration(v: &str) -> Option<Duration> {
    let mut rest = v.as_bytes();
    if rest.is_empty() {
        return None;
    }
    if rest == b"0" {
        return Some(Duration::ZERO);
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .iter()
            .position(|b| !(b.is_ascii_digit() || *b == b'.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .iter()
            .position(|b| b.is_ascii_digit() || *b == b'.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit] {
            b"h" => 3.6e12,
            b"m" => 6e10,
            b"s" => 1e9,
            b"ms" => 1e6,
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1e3,
            b"ns" => 1.0,
            _ => return None,
        };
        rest = &rest[unit..];
        nanos += number * scale;
    }
    // Anything beyond a year is as good as a year, and keeps the arithmetic finite.
    const YEAR: f64 = 3.15e16;
    nanos
        .is_finite()
        .then(|| Duration::from_nanos(nanos.min(YEAR) as u64))
}

/// An RFC 3339 time (`2024-06-01T12:00:30Z`, `...30.5+02:00`), as a wall-clock instant.
pub(crate) fn rfc3339(v: &str) -> Option<SystemTime> {
    let b = v.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(r)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &b[start..i.min(start + 9)];
        let mut n = 0u64;
        for d in digits {
            n = n * 10 + u64::from(d - b'0');
        }
        nanos = n * 10u64.pow(9 - digits.len() as u32);
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if b.len() == i + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && sep(i + 3, b":") => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    let secs = u64::try_from(secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos as u32))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn openai_durations_and_anthropic_times_read() {
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "5", "5x", "1..2s", "-1s", "1e400s"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
        let at = |s| rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap());
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(
            at("2024-06-01T12:00:30Z"),
            Some(Duration::from_secs(1_717_243_230))
        );
        assert_eq!(
            at("2024-06-01T14:00:30.25+02:00"),
            Some(Duration::from_millis(1_717_243_230_250))
        );
        for bad in [
            "2024-06-01",
            "2024-13-01T00:00:00Z",
            "2024-06-01T00:00:00",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_dialect_gives_its_figures() {
        let now = UNIX_EPOCH + Duration::from_secs(1_717_243_200);
        let openai = read(
            &headers(&[
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-remaining-requests", "499"),
                ("x-ratelimit-reset-requests", "120ms"),
                ("x-ratelimit-limit-tokens", "30000"),
                ("x-ratelimit-remaining-tokens", "29000"),
                ("x-ratelimit-reset-tokens", "2s"),
            ]),
            now,
        );
        assert_eq!(
            openai.0[QuotaKind::Tokens as usize],
            Some(Figure {
                limit: Some(30_000),
                remaining: Some(29_000),
                reset: Some(Duration::from_secs(2)),
            })
        );
        assert_eq!(
            openai.0[QuotaKind::Requests as usize].unwrap().remaining,
            Some(499)
        );
        let anthropic = read(
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "49"),
                ("anthropic-ratelimit-input-tokens-limit", "40000"),
                ("anthropic-ratelimit-input-tokens-remaining", "39000"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2024-06-01T12:00:30Z",
                ),
                ("anthropic-ratelimit-output-tokens-remaining", "7000"),
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2024-06-01T11:00:00Z",
                ),
            ]),
            now,
        );
        let input = anthropic.0[QuotaKind::InputTokens as usize].unwrap();
        assert_eq!(input.reset, Some(Duration::from_secs(30)));
        assert_eq!((input.limit, input.remaining), (Some(40_000), Some(39_000)));
        let output = anthropic.0[QuotaKind::OutputTokens as usize].unwrap();
        assert_eq!(
            output.reset,
            Some(Duration::ZERO),
            "a reset in the past is now"
        );
        assert!(anthropic.0[QuotaKind::Tokens as usize].is_none());
        assert!(read(&HeaderMap::new(), now).is_empty());
    }

    #[test]
    fn no_bytes_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(22);
        let now = SystemTime::now();
        let alphabet = b"0123456789.:+-TZhmsuns \xb5\xce\xbcxyz\x7f\xff";
        for _ in 0..20_000 {
            let len = rng.random_range(0..32);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let Ok(value) = http::HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut h = HeaderMap::new();
            for n in &NAMES {
                h.insert(n.limit, value.clone());
                h.insert(n.remaining, value.clone());
                h.insert(n.reset, value.clone());
            }
            let _ = read(&h, now);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = (go_duration(s), rfc3339(s), count(s));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn rfc3339_times_read_as_httpdate_writes_them(
            secs in 0u64..253_402_300_800,
            offset in -1439i64..=1439,
            millis in proptest::option::of(0u32..1000),
        ) {
            // The same instant, written by httpdate ("Sun, 06 Nov 1994 08:49:37 GMT") and
            // rewritten as RFC 3339 in a zone `offset` minutes east.
            let local = secs as i64 + offset * 60;
            proptest::prop_assume!((0..253_402_300_800).contains(&local));
            let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(local as u64));
            let f: Vec<&str> = http.split([' ', ':']).collect();
            let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                .iter()
                .position(|m| *m == f[2])
                .unwrap()
                + 1;
            let fraction = millis.map_or(String::new(), |m| format!(".{m:03}"));
            let zone = if offset == 0 {
                "Z".to_owned()
            } else {
                let sign = if offset > 0 { '+' } else { '-' };
                format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
            };
            let text = format!(
                "{}-{month:02}-{}T{}:{}:{}{fraction}{zone}",
                f[3], f[1], f[4], f[5], f[6]
            );
            let want = UNIX_EPOCH
                + Duration::from_secs(secs)
                + Duration::from_millis(u64::from(millis.unwrap_or(0)));
            proptest::prop_assert_eq!(rfc3339(&text), Some(want), "{}", text);
        }

        #[test]
        fn go_durations_read_as_written(
            h in 0u64..8_000,
            m in 0u64..60,
            s in 0u64..60,
            ms in 0u64..1000,
        ) {
            let text = format!("{h}h{m}m{s}.{ms:03}s");
            let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
            let got = go_duration(&text).unwrap();
            // Read through f64 nanoseconds: within a microsecond.
            let diff = got.abs_diff(want);
            proptest::prop_assert!(diff < Duration::from_micros(1), "{} read as {:?}", text, got);
        }
    }
}
