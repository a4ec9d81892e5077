//! What of a client's upgrade request reaches the upstream: the headers forwarded by an
//! allow-list, and the subprotocols offered, less any that carry a credential.
//!
//! The upstream's handshake is the gateway's own request: it carries the upstream's
//! credentials and never the client's. Of the client's headers, only those that describe the
//! client and trace the session go on ([`FORWARDED`], plus those the upstream's configuration
//! names). The client's credentials (`authorization`, `proxy-authorization`, `cookie`,
//! `x-api-key`, `api-key`), the handshake's own headers (`host`, `upgrade`, `connection`,
//! `sec-websocket-key`, `-version`, `-extensions`, `-accept`; the gateway's WebSocket library
//! writes its own) and the hop-by-hop ones never do, named or not. The browser's `origin` goes
//! only where a configuration names it.
//!
//! Browsers cannot set headers on a WebSocket, so some APIs take a key in a subprotocol
//! (OpenAI's Realtime API reads `openai-insecure-api-key.<key>`). Such subprotocols are the
//! client's credentials too: they are dropped from the offer, and the rest is offered to the
//! upstream as the client sent it. The upstream's choice, always one of those, is the one
//! the gateway answers the client with.

use std::collections::HashSet;

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// The client headers forwarded to every WebSocket upstream, besides those its configuration
/// adds: the client's software and language, request ids and trace context, and OpenAI's
/// `openai-beta` (which selects the Realtime API's version).
pub static FORWARDED: [HeaderName; 8] = [
    header::USER_AGENT,
    header::ACCEPT_LANGUAGE,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-correlation-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
    HeaderName::from_static("openai-beta"),
];

/// Never forwarded, even when a configuration names them: credentials, the handshake's own
/// headers and hop-by-hop headers.
static NEVER: [HeaderName; 20] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
    header::HOST,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::CONTENT_LENGTH,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
];

/// The subprotocol prefix of OpenAI's browser credential, hidden by default.
pub(crate) const OPENAI_KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// Copies into `out` the headers of `from` that the upstream may see: the allow-listed ones
/// (`FORWARDED` and `extra`), less the forbidden ones and any that `connection` names.
pub(crate) fn forward(from: &HeaderMap, extra: &[HeaderName], out: &mut HeaderMap) {
    let named: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in FORWARDED.iter().chain(extra) {
        if NEVER.contains(name) || named.contains(name) || out.contains_key(name) {
            continue;
        }
        for value in from.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
}

/// The subprotocols the client offered, in its order, less those that start with one of
/// `hidden` (compared without regard to case): the value to offer the upstream, or `None`
/// when nothing is left. A malformed header offers nothing.
pub(crate) fn offered_protocols(from: &HeaderMap, hidden: &[String]) -> Option<HeaderValue> {
    let mut kept: Vec<&str> = Vec::new();
    // Each token once, found in linear time: the header is the client's, of any length.
    let mut seen: HashSet<&str> = HashSet::new();
    for value in from.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(text) = value.to_str() else {
            return None;
        };
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let secret = hidden.iter().any(|prefix| {
                token.len() >= prefix.len()
                    && token.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            });
            if !secret && seen.insert(token) {
                kept.push(token);
            }
        }
    }
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_allowed_headers_reach_the_upstream() {
        let from = headers(&[
            ("authorization", "Bearer client"),
            ("cookie", "s=1"),
            ("x-api-key", "client"),
            ("host", "gateway"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade, x-request-id"),
            ("sec-websocket-key", "abc"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-protocol", "realtime"),
            ("origin", "https://app.example"),
            ("user-agent", "browser"),
            ("x-request-id", "r1"),
            ("traceparent", "00-1-2-01"),
            ("openai-beta", "realtime=v1"),
            ("x-session-id", "s1"),
        ]);
        let extra = [
            "x-session-id",
            "authorization",
            "sec-websocket-key",
            "origin",
        ]
        .map(HeaderName::from_static);
        let mut out = HeaderMap::new();
        forward(&from, &extra, &mut out);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        // x-request-id is named by `connection`: hop-by-hop on this connection. `origin` goes
        // only because it was named.
        assert_eq!(
            names,
            [
                "openai-beta",
                "origin",
                "traceparent",
                "user-agent",
                "x-session-id"
            ]
        );
    }

    #[test]
    fn the_upstream_own_headers_are_not_overwritten() {
        let from = headers(&[("user-agent", "client")]);
        let mut out = headers(&[("user-agent", "gateway")]);
        forward(&from, &[], &mut out);
        assert_eq!(out.get_all("user-agent").iter().count(), 1);
        assert_eq!(out["user-agent"], "gateway");
    }

    #[test]
    fn credential_subprotocols_are_never_offered() {
        let hidden = [OPENAI_KEY_PROTOCOL.to_owned()];
        let from = headers(&[
            (
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.sk-client, openai-beta.realtime-v1",
            ),
            (
                "sec-websocket-protocol",
                "OPENAI-INSECURE-API-KEY.sk-2, realtime",
            ),
        ]);
        let offered = offered_protocols(&from, &hidden).unwrap();
        assert_eq!(offered, "realtime, openai-beta.realtime-v1");
        let only_key = headers(&[("sec-websocket-protocol", "openai-insecure-api-key.sk")]);
        assert_eq!(offered_protocols(&only_key, &hidden), None);
        assert_eq!(offered_protocols(&HeaderMap::new(), &hidden), None);
        let mut bad = HeaderMap::new();
        bad.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_bytes(b"\xffx").unwrap(),
        );
        assert_eq!(offered_protocols(&bad, &hidden), None);
    }

    #[test]
    fn a_long_list_of_subprotocols_is_read_in_linear_time() {
        // A client's upgrade may carry a header of hundreds of KiB (hyper reads up to some
        // 400 KiB of head): each token compared with every one kept before it is quadratic,
        // seconds of a core for one request.
        let tokens: Vec<String> = (0..60_000).map(|i| format!("p{i:x}")).collect();
        let value = tokens.join(",");
        let mut from = HeaderMap::new();
        from.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&value).unwrap(),
        );
        let started = std::time::Instant::now();
        let offered = offered_protocols(&from, &[OPENAI_KEY_PROTOCOL.to_owned()]);
        let took = started.elapsed();
        assert_eq!(offered.unwrap().len(), value.len() + tokens.len() - 1);
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    }
}
