//! An upstream's own error answer, kept for the client.

use std::{error::Error, fmt};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body_util::Full;

/// An upstream's own error answer, kept so that it can reach the client as it was: its
/// status, the headers a client acts on (`retry-after`, rate-limit headers, `content-type`,
/// request ids) and its body.
///
/// [`openai_response`](super::openai_response) passes a 429 answer through where it is the error, is in the error's
/// chain, or is the failure of the only attempt an [`AttemptsFailed`](crate::error::AttemptsFailed) lists.
#[derive(Debug, Clone)]
pub struct UpstreamAnswer {
    pub(super) status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl UpstreamAnswer {
    /// Keeps `status`, `body` and those of `headers` a client may see.
    pub fn new(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let keep = |name: &HeaderName| {
            let n = name.as_str();
            matches!(
                n,
                "content-type" | "retry-after" | "retry-after-ms" | "x-request-id" | "request-id"
            ) || n.starts_with("x-ratelimit-")
                || n.starts_with("ratelimit")
                || n.starts_with("anthropic-ratelimit-")
        };
        let mut kept = HeaderMap::new();
        for (name, value) in headers {
            if keep(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        Self {
            status,
            headers: kept,
            body,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers kept.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The answer as a response.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

impl fmt::Display for UpstreamAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the upstream answered {}", self.status)
    }
}

impl Error for UpstreamAnswer {}
