//! A pool of upstreams from a list of their settings, in one call.

use super::{config::UpstreamConfig, error::ClientError, http_client::Client, service::Upstream};
use crate::pool::Pool;

/// A list of upstreams sharing one [`Client`], and the [`Pool`] they make.
///
/// ```
/// use tower_ai_balance::client::{UpstreamConfig, Upstreams};
///
/// # fn main() -> Result<(), tower_ai_balance::client::ClientError> {
/// let pool = Upstreams::new()
///     .add(UpstreamConfig::new("http://10.0.0.5:8000/v1")?.model("llama-3-70b").max_concurrency(64))
///     .add(UpstreamConfig::new("http://10.0.0.6:8000/v1")?.model("llama-3-70b").max_concurrency(64))
///     .add(UpstreamConfig::new("https://api.openai.com/v1")?.api_key("sk-...").model("gpt-4o").tier(1))
///     .build_pool()?;
/// assert_eq!(pool.len(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Upstreams {
    client: Option<Client>,
    upstreams: Vec<UpstreamConfig>,
}

impl Upstreams {
    /// An empty list, with the default [`Client`] unless [`client`](Self::client) sets one.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client every upstream of the list uses (its TLS roots, timeouts and pool).
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Adds an upstream.
    #[allow(clippy::should_implement_trait)] // a builder's `add`, not `+`
    pub fn add(mut self, upstream: UpstreamConfig) -> Self {
        self.upstreams.push(upstream);
        self
    }

    /// The upstreams as endpoint services, with their endpoint settings.
    pub fn build(self) -> Result<Vec<(crate::endpoint::EndpointConfig, Upstream)>, ClientError> {
        let client = match self.client {
            Some(client) => client,
            None => Client::new()?,
        };
        self.upstreams
            .iter()
            .map(|config| Ok((config.endpoint_config(), Upstream::new(&client, config)?)))
            .collect()
    }

    /// A pool of the upstreams: all or none (a duplicate key or a bad setting refuses the lot).
    pub fn build_pool(self) -> Result<Pool<Upstream>, ClientError> {
        let pool = Pool::new();
        pool.extend(self.build()?)?;
        Ok(pool)
    }
}
