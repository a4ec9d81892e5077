//! HTTP(S) upstreams as endpoint services (feature `client`).
//!
//! An [`Upstream`] sends each request to one provider or model server: hyper-util's pooled
//! client over rustls (ring; the Mozilla roots, or a custom CA), HTTP/1.1 or HTTP/2 by ALPN,
//! with connect timeouts and keep-alive. It joins the base URL's path with the request's,
//! sets the upstream's `Host`, sends the upstream's own credentials and never the client's
//! (request headers are forwarded by an allow-list, [`FORWARDED`]), and keeps
//! `content-length` true. One type serves every [`Format`], so one pool can mix
//! OpenAI-compatible upstreams with Anthropic ones (feature `anthropic`).
//!
//! [`Upstreams`] builds a whole [`Pool`](crate::Pool) from a list of [`UpstreamConfig`]s
//! (each from code, from a command-line line by `FromStr`, or from a settings file's endpoint
//! with [`UpstreamConfig::from_endpoint`]), [`ModelList`] answers `GET /v1/models` for it,
//! [`spawn_probes`] and [`spawn_scrape`] check its upstreams in the background, and
//! [`http_error::openai_response`](crate::http_error::openai_response) turns the stack's
//! errors into the answers an OpenAI client expects.
//!
//! Credentials never show: `Debug` names headers without their values, and URLs (in keys,
//! `Debug`, errors) are shown without their userinfo and query.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_ai_balance::{
//!     buffered::BufferBodyLayer, client::{UpstreamConfig, Upstreams}, failover::FailoverLayer,
//!     BalanceLayer, HealthFilterLayer,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = std::env::var("OPENAI_API_KEY")?;
//! let pool = Upstreams::new()
//!     .add(UpstreamConfig::new("http://10.0.0.5:8000/v1")?.model("gpt-4o").max_concurrency(32))
//!     .add(UpstreamConfig::new("https://api.openai.com/v1")?.api_key(key).model("gpt-4o").tier(1))
//!     .build_pool()?;
//! let stack = ServiceBuilder::new()
//!     .layer(BufferBodyLayer::new(16 << 20))
//!     .layer(FailoverLayer::builder().first_chunk(Duration::from_secs(30)).build()?)
//!     .layer(HealthFilterLayer::new())
//!     .layer(BalanceLayer::new())
//!     .service(pool);
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

mod body;
mod checks;
mod config;
mod error;
mod headers;
mod http_client;
mod models;
mod service;
mod spec;
mod upstreams;
mod url;

pub use self::{
    body::ResponseBody,
    checks::{spawn_probes, spawn_scrape, PROBE_PATH},
    config::{Format, UpstreamConfig},
    error::{ClientError, ResponseTooLarge},
    headers::FORWARDED,
    http_client::{Client, ClientBuilder},
    models::ModelList,
    service::{ResponseFuture, Upstream},
    upstreams::Upstreams,
};
