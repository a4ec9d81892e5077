//! The OpenAI request reader against a serde_json reference: on every body serde_json reads it
//! reads the same facts (or refuses the same bodies); what model servers accept and serde_json
//! does not changes nothing it reads; a body cut short is refused; no bytes make it panic.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower_ai_balance::{
    affinity::{ExtractKey, PromptPrefix},
    route::{Decide, OpenAiRequest, OpenAiRules, Rules},
};

use crate::reference::reference;

/// Text with escapes, quotes, non-ASCII and astral characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z ]{0,24}", ".{0,16}", "[\"\\\\/\n\t\u{1}é😀a-z]{0,12}",]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u32>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u32..100_000).prop_map(|n| Value::from(f64::from(n))),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::from),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::vec((text(), inner), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn content() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        Just(json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})),
        any_json().prop_map(|t| json!({"type": "text", "text": t})),
        any_json(),
    ];
    prop_oneof![
        4 => text().prop_map(Value::from),
        2 => proptest::collection::vec(part, 0..4).prop_map(Value::from),
        1 => any_json(),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => ("[a-z]{1,9}", content()).prop_map(|(role, content)| json!({"role": role, "content": content})),
        1 => any_json(),
    ]
}

fn prompt() -> impl Strategy<Value = Value> {
    let ids = proptest::collection::vec(any::<u32>(), 0..8);
    prop_oneof![
        text().prop_map(Value::from),
        proptest::collection::vec(text(), 0..4).prop_map(Value::from),
        ids.clone().prop_map(Value::from),
        proptest::collection::vec(ids, 0..3).prop_map(Value::from),
        proptest::collection::vec(any_json(), 0..4).prop_map(Value::from),
        any_json(),
    ]
}

fn max_tokens() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (0u32..100_000).prop_map(Value::from),
        1 => number(),
        1 => any_json(),
    ]
}

/// The members of a request body, in any order, sometimes with a routed field twice.
fn members() -> impl Strategy<Value = Vec<(String, Value)>> {
    let routed = (
        proptest::option::of(prop_oneof![
            8 => "[a-z0-9.:/-]{1,16}".prop_map(Value::from),
            1 => text().prop_map(Value::from),
            1 => any_json(),
        ]),
        proptest::option::of(prop_oneof![
            8 => proptest::collection::vec(message(), 0..5).prop_map(Value::from),
            1 => any_json(),
        ]),
        proptest::option::of(prompt()),
        proptest::option::of(max_tokens()),
        proptest::option::of(max_tokens()),
    );
    let extra = proptest::collection::vec(("[a-z_]{1,10}", any_json()), 0..4);
    (routed, extra, proptest::option::of(0usize..5), any::<u64>()).prop_map(
        |((model, messages, prompt, max, max_completion), extra, twice, order)| {
            let names = [
                "model",
                "messages",
                "prompt",
                "max_tokens",
                "max_completion_tokens",
            ];
            let values = [model, messages, prompt, max, max_completion];
            let mut members: Vec<(String, Value)> = names
                .iter()
                .zip(values)
                .filter_map(|(n, v)| Some((n.to_string(), v?)))
                .chain(extra)
                .collect();
            if let Some(i) = twice.filter(|&i| i < members.len()) {
                members.push(members[i].clone());
            }
            // A deterministic shuffle from the drawn seed.
            let mut seed = order;
            for i in (1..members.len()).rev() {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                members.swap(i, (seed >> 33) as usize % (i + 1));
            }
            members
        },
    )
}

/// The members written as a JSON object, pretty or not, non-ASCII escaped as `\u` or not.
fn write(members: &[(String, Value)], pretty: bool, ascii: bool) -> String {
    let sep = if pretty { ",\n  " } else { "," };
    let body = members
        .iter()
        .map(|(k, v)| {
            let v = if pretty {
                serde_json::to_string_pretty(v).unwrap()
            } else {
                v.to_string()
            };
            format!("{}:{v}", Value::from(k.as_str()))
        })
        .collect::<Vec<_>>()
        .join(sep);
    let text = format!("{{{body}}}");
    if !ascii {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Values model servers' readers accept in a member routing does not read, with whether
/// serde_json refuses them too: none may change what is read.
fn tolerated() -> Vec<(Vec<u8>, bool)> {
    vec![
        (br#""cut mid-emoji \ud83d""#.to_vec(), true),
        (br#""\udc00 a low one alone""#.to_vec(), true),
        (b"1e400".to_vec(), true),
        (b"-1e999".to_vec(), true),
        (b"[NaN, Infinity, -Infinity]".to_vec(), true),
        (b"\"a raw\x01control character\"".to_vec(), true),
        (b"\"caf\xe9 \xff\xfe\"".to_vec(), true),
        ([vec![b'['; 200], vec![b']'; 200]].concat(), true),
        (br#"{"stream":true,"stream":false}"#.to_vec(), false),
    ]
}

fn with_member(body: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = b"{\"x\":".to_vec();
    out.extend_from_slice(value);
    if body.len() > 2 {
        out.push(b',');
    }
    out.extend_from_slice(&body[1..]);
    out
}

/// What the reader gives, in the reference's terms.
fn read(bytes: &[u8]) -> Result<Option<tower_ai_balance::route::RequestInfo>, ()> {
    OpenAiRequest::parse(bytes).map_err(drop)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_reader_reads_what_serde_json_reads(
        members in members(),
        pretty in any::<bool>(),
        ascii in any::<bool>(),
        which in 0usize..9,
        cut in any::<prop::sample::Index>(),
    ) {
        let body = write(&members, pretty, ascii);
        let expected = reference(body.as_bytes()).expect("serde_json reads what it wrote");
        prop_assert_eq!(read(body.as_bytes()), expected.clone().map(Some), "{}", body);

        // What serde_json refuses and model servers accept changes nothing read.
        let (value, refused) = &tolerated()[which];
        let tolerant = with_member(body.as_bytes(), value);
        let shown = String::from_utf8_lossy(&tolerant);
        prop_assert_eq!(reference(&tolerant).is_none(), *refused, "{}", shown);
        prop_assert_eq!(read(&tolerant), expected.map(Some), "{}", shown);

        // A body cut short is refused, wherever it is cut.
        let cut = 1 + cut.index(body.len() - 1);
        let cut = &body.as_bytes()[..cut];
        prop_assert!(read(cut).is_err(), "{}", String::from_utf8_lossy(cut));
    }

    #[test]
    fn no_bytes_make_the_reader_or_the_prefix_key_panic(
        members in members(),
        noise in proptest::collection::vec(any::<u8>(), 1..8),
        at in any::<prop::sample::Index>(),
        n in prop_oneof![Just(0usize), 1usize..256, Just(usize::MAX)],
    ) {
        let mut body = write(&members, false, false).into_bytes();
        let at = at.index(body.len());
        body.splice(at..at, noise);
        let _ = OpenAiRequest::parse(&body);
        let request = Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap();
        let _ = OpenAiRules(Rules::new()).decide(&request);
        let _ = PromptPrefix(n).extract(&request);
    }
}
