//! Which of a client's request headers reach an upstream, and which of an upstream's response
//! headers reach the client.
//!
//! Requests are forwarded by an allow-list: the headers that describe the content and trace
//! the request ([`FORWARDED`]), plus any the upstream's configuration adds. Everything else
//! stays behind, above all the client's credentials (`authorization`, `proxy-authorization`,
//! `cookie`, `x-api-key`, `api-key`: the upstream gets its own), and the hop-by-hop headers
//! (`connection` and every header it names, `keep-alive`, `te`, `trailer`,
//! `transfer-encoding`, `upgrade`, `proxy-connection`), which describe one connection, not
//! the request. `content-length` is set from the body that is actually sent.
//!
//! Responses keep their headers (rate-limit headers, request ids) except the hop-by-hop ones,
//! `set-cookie` (the upstream's session is the gateway's, not the client's) and the headers
//! that name the gateway's account at the provider.

use http::{header, HeaderMap, HeaderName};

/// The request headers forwarded to every upstream, besides those an upstream's configuration
/// adds: the content's type and encoding, what the client accepts, the client's software, and
/// request ids and trace context. Not `accept-encoding`: answers come back uncompressed, so
/// that the layers that read a stream (first-chunk checks, continuation, translation) can.
pub static FORWARDED: [HeaderName; 10] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-correlation-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
    HeaderName::from_static("baggage"),
];

/// Headers that describe one connection, never forwarded either way.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// A client's credentials: never forwarded, even when an upstream's configuration names them.
static CREDENTIALS: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("api-key"),
];

/// Response headers that stay with the gateway: its cookies and its account's ids.
static PRIVATE_RESPONSE: [HeaderName; 4] = [
    header::SET_COOKIE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("anthropic-organization-id"),
];

/// The headers `connection` names: hop-by-hop for this message, whatever their name.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect()
}

/// The headers of `from` that an upstream may see: the allow-listed ones (`FORWARDED` and
/// `extra`), less any that `connection` names.
pub(crate) fn forward(from: &HeaderMap, extra: &[HeaderName]) -> HeaderMap {
    let hop = named_by_connection(from);
    let mut out = HeaderMap::with_capacity(FORWARDED.len() + extra.len());
    for name in FORWARDED.iter().chain(extra) {
        if hop.contains(name) || HOP_BY_HOP.contains(name) || CREDENTIALS.contains(name) {
            continue;
        }
        for value in from.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Removes from an upstream's response headers what the client must not see.
pub(crate) fn clean_response(headers: &mut HeaderMap) {
    for name in named_by_connection(headers) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP.iter().chain(&PRIVATE_RESPONSE) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_headers_are_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("proxy-authorization", "Basic x"),
            ("cookie", "session=1"),
            ("x-api-key", "client-key"),
            ("api-key", "client-key"),
            ("connection", "keep-alive, user-agent, X-Request-Id"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("host", "gateway.internal"),
            ("content-length", "999"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("user-agent", "OpenAI/Python"),
            ("x-request-id", "r1"),
            ("traceparent", "00-abc-def-01"),
            ("x-session-id", "s1"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let asked = ["x-session-id", "authorization", "cookie", "x-api-key", "te"]
            .map(HeaderName::from_static);
        let out = forward(&h, &asked);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        // user-agent and x-request-id are named by `connection`: hop-by-hop here.
        assert_eq!(
            names,
            ["accept", "content-type", "traceparent", "x-session-id"]
        );
    }

    #[test]
    fn responses_lose_hop_by_hop_and_private_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("set-cookie", "__cf=1"),
            ("anthropic-organization-id", "org"),
            ("retry-after", "3"),
            ("x-ratelimit-remaining-requests", "0"),
            ("content-type", "application/json"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        clean_response(&mut h);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "content-type",
                "retry-after",
                "x-ratelimit-remaining-requests"
            ]
        );
    }
}
