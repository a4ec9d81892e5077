//! A reference for `OpenAiRequest::parse`, built on serde_json, for differential tests: on
//! every body serde_json can read, the in-place reader must read the same. Shared by the
//! property tests and the fuzz target (each includes it with `#[path]`).
//!
//! serde_json refuses what the reader accepts on purpose (lone surrogates, bytes that are not
//! UTF-8, numbers beyond `f64`, `NaN`, nesting past 128 levels); there, the reference says
//! nothing. It keeps every member of an object, so that a routed field given twice is seen.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use tower_ai_balance::route::RequestInfo;

/// A JSON value that keeps repeated keys.
#[derive(Debug, Clone)]
pub(crate) enum Json {
    Null,
    Bool,
    Number(Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
        Ok(Json::Bool)
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Number(n.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Json, E> {
        Number::from_f64(n)
            .map(Json::Number)
            .ok_or_else(|| E::custom("not finite"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::String(s.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Json>()? {
            members.push(member);
        }
        Ok(Json::Object(members))
    }
}

/// What `OpenAiRequest::parse` must return for `bytes`: `None` when serde_json cannot read
/// them, else the request's facts, or `Err` for a body the reader must refuse.
pub(crate) fn reference(bytes: &[u8]) -> Option<Result<RequestInfo, ()>> {
    let json: Json = serde_json::from_slice(bytes).ok()?;
    Some(read(&json))
}

/// The members of `object` named `name`: an error if there are several, `None` for none or
/// `null`.
fn field<'a>(object: &'a [(String, Json)], name: &str) -> Result<Option<&'a Json>, ()> {
    let mut found = object.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
    match (found.next(), found.next()) {
        (_, Some(_)) => Err(()),
        (Some(Json::Null), None) | (None, None) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
    }
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Characters of text and token ids.
type Size = (usize, usize);

fn read(json: &Json) -> Result<RequestInfo, ()> {
    let Json::Object(top) = json else {
        return Err(());
    };
    let model = match field(top, "model")? {
        None => None,
        Some(Json::String(m)) => Some(m.clone()),
        Some(_) => return Err(()),
    };
    let messages = match field(top, "messages")? {
        None => None,
        Some(Json::Array(messages)) => Some(messages_size(messages)?),
        Some(_) => return Err(()),
    };
    let prompt = match field(top, "prompt")? {
        None => None,
        Some(Json::String(s)) => Some((chars(s), 0)),
        Some(Json::Array(items)) => Some(items.iter().fold((0, 0), |size, item| match item {
            Json::Array(inner) => inner.iter().fold(size, prompt_item),
            item => prompt_item(size, item),
        })),
        Some(_) => return Err(()),
    };
    let max_tokens = whole(field(top, "max_tokens")?)?;
    let max_completion_tokens = whole(field(top, "max_completion_tokens")?)?;
    // A chat's max_completion_tokens supersedes its max_tokens; completions have only max_tokens.
    let max = if messages.is_some() {
        max_completion_tokens.or(max_tokens)
    } else {
        max_tokens.or(max_completion_tokens)
    };
    let max = max.unwrap_or(256);
    let (text, ids) = messages.or(prompt).unwrap_or_default();
    Ok(RequestInfo {
        model,
        prompt_tokens: u32::try_from(text.div_ceil(4).saturating_add(ids)).unwrap_or(u32::MAX),
        max_tokens: u32::try_from(max).unwrap_or(u32::MAX),
    })
}

fn messages_size(messages: &[Json]) -> Result<Size, ()> {
    let mut text = 0;
    for message in messages {
        let Json::Object(message) = message else {
            continue;
        };
        match field(message, "content")? {
            Some(Json::String(s)) => text += chars(s),
            Some(Json::Array(parts)) => {
                for part in parts {
                    if let Json::Object(part) = part {
                        if let Some(Json::String(s)) = field(part, "text")? {
                            text += chars(s);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok((text, 0))
}

fn prompt_item((text, ids): Size, item: &Json) -> Size {
    match item {
        Json::String(s) => (text + chars(s), ids),
        Json::Number(_) => (text, ids + 1),
        _ => (text, ids),
    }
}

/// A whole, non-negative number of tokens.
fn whole(value: Option<&Json>) -> Result<Option<u64>, ()> {
    let Some(value) = value else {
        return Ok(None);
    };
    let Json::Number(n) = value else {
        return Err(());
    };
    if let Some(n) = n.as_u64() {
        return Ok(Some(n));
    }
    match n.as_f64() {
        Some(x) if x.is_finite() && x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as u64)),
        _ => Err(()),
    }
}
