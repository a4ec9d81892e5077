//! The client's side of the handshake, for servers that take the upgrade themselves (hyper):
//! whether a request is a WebSocket upgrade, and the `101 Switching Protocols` that accepts it.

use std::fmt;

use http::{
    header::{self, GetAll},
    request, HeaderValue, Method, Response, StatusCode,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A request that is not a WebSocket upgrade this crate can accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotUpgrade {
    /// Not a `GET`.
    Method,
    /// No `Connection: upgrade` or no `Upgrade: websocket`.
    NotWebSocket,
    /// A `Sec-WebSocket-Version` other than 13: answer 426 with `Sec-WebSocket-Version: 13`.
    Version,
    /// No valid `Sec-WebSocket-Key`.
    Key,
}

impl NotUpgrade {
    /// The status to answer with: 426 (Upgrade Required) for a version, 400 otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            NotUpgrade::Version => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The answer to give: [`status`](Self::status), with `Sec-WebSocket-Version: 13` for a
    /// version.
    pub fn response(self) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = self.status();
        if self == NotUpgrade::Version {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl fmt::Display for NotUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotUpgrade::Method => "a WebSocket upgrade must be a GET",
            NotUpgrade::NotWebSocket => "not a WebSocket upgrade",
            NotUpgrade::Version => "only WebSocket version 13 is supported",
            NotUpgrade::Key => "no valid Sec-WebSocket-Key",
        })
    }
}

impl std::error::Error for NotUpgrade {}

/// Whether the fields `values` (one comma-separated list, however many fields carry it) hold
/// `token` (without regard to case).
fn has_token(values: GetAll<'_, HeaderValue>, token: &str) -> bool {
    values.iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// The `101 Switching Protocols` that accepts the WebSocket upgrade `head` asks for, with
/// `protocol` (a session's [`protocol`](super::Session::protocol)) as its subprotocol; or why
/// `head` is not one. Send it, then hand the upgraded connection to
/// [`Session::serve_io`](super::Session::serve_io).
pub fn accept(
    head: &request::Parts,
    protocol: Option<&HeaderValue>,
) -> Result<Response<()>, NotUpgrade> {
    let headers = &head.headers;
    if head.method != Method::GET {
        return Err(NotUpgrade::Method);
    }
    if !has_token(headers.get_all(header::CONNECTION), "upgrade")
        || !has_token(headers.get_all(header::UPGRADE), "websocket")
    {
        return Err(NotUpgrade::NotWebSocket);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(NotUpgrade::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .ok_or(NotUpgrade::Key)?;
    let accept =
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| NotUpgrade::Key)?;
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol.clone());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)]) -> request::Parts {
        let mut builder = http::Request::get("/v1/realtime");
        for (k, v) in pairs {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn an_upgrade_is_accepted_with_the_rfc_key() {
        let realtime = HeaderValue::from_static("realtime");
        let response = accept(&head(&GOOD), Some(&realtime)).unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455, section 1.3.
        assert_eq!(
            response.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response.headers()["sec-websocket-protocol"], "realtime");
    }

    #[test]
    fn what_is_not_an_upgrade_says_why() {
        let mut post = head(&GOOD);
        post.method = Method::POST;
        assert_eq!(accept(&post, None).unwrap_err(), NotUpgrade::Method);
        assert_eq!(
            accept(&head(&GOOD[1..]), None).unwrap_err(),
            NotUpgrade::NotWebSocket
        );
        let mut v8 = GOOD;
        v8[2].1 = "8";
        let refused = accept(&head(&v8), None).unwrap_err();
        assert_eq!(refused.response().status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(refused.response().headers()["sec-websocket-version"], "13");
        let mut short = GOOD;
        short[3].1 = "abc";
        assert_eq!(accept(&head(&short), None).unwrap_err(), NotUpgrade::Key);
    }

    #[test]
    fn a_connection_list_split_over_two_fields_is_one_list() {
        // RFC 9110, 5.3: fields of one name are one comma-separated list.
        let split = head(&[
            ("connection", "keep-alive"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(
            accept(&split, None).unwrap().status(),
            StatusCode::SWITCHING_PROTOCOLS
        );
    }
}
