//! The HTTP upstream client (feature `client`) and the Anthropic adapter (feature
//! `anthropic`), against real servers on loopback: HTTPS with certificates made at test time,
//! HTTP/2 by ALPN and h2c, header and credential handling, the simulated Anthropic Messages
//! server, and the whole stack behind axum.
#![allow(unreachable_pub)]

#[path = "../../examples/support/model_server.rs"]
mod model_server;

mod aliases;
mod anthropic;
mod headers;
mod sse_fuzz;
mod stack;
mod support;
mod tls;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_ai_balance::client::{Client, ResponseBody, Upstream, UpstreamConfig};

/// Sends one request through a fresh upstream of `config`, and reads the whole answer.
pub async fn send(
    client: &Client,
    config: UpstreamConfig,
    request: Request<Full<Bytes>>,
) -> Result<(Response<()>, Bytes), tower_ai_balance::BoxError> {
    let upstream = Upstream::new(client, &config)?;
    let response: Response<ResponseBody> = upstream.oneshot(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((Response::from_parts(parts, ()), body))
}

/// A JSON `POST` to `path`.
pub fn post(path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}
