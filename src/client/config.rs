//! One upstream's settings: where it is, how it is reached, who it says the gateway is, and
//! its place in the pool.

use std::{fmt, sync::Arc};

use http::{header, HeaderName, HeaderValue};

use super::{error::ClientError, url::BaseUrl};
use crate::endpoint::{EndpointConfig, Key};

type Setting = Arc<dyn Fn(EndpointConfig) -> EndpointConfig + Send + Sync>;

/// The wire format an upstream speaks. The client always speaks OpenAI chat completions to
/// its callers; an upstream of another format has its requests and answers translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Format {
    /// OpenAI-compatible (OpenAI, Azure OpenAI, vLLM, SGLang, TGI, llama.cpp, ...): requests
    /// and answers pass through.
    #[default]
    OpenAi,
    /// Anthropic Messages: `POST .../chat/completions` is sent as `POST .../v1/messages` and
    /// the answer comes back in OpenAI's format (see [`anthropic`](crate::anthropic)).
    #[cfg(feature = "anthropic")]
    Anthropic,
}

/// One upstream: its base URL, credentials, format, and endpoint settings (key, tier, weight,
/// models, limits).
///
/// ```
/// use tower_ai_balance::client::UpstreamConfig;
///
/// let openai = UpstreamConfig::new("https://api.openai.com/v1")?
///     .api_key("sk-...")
///     .model("gpt-4o")
///     .max_concurrency(64);
/// assert_eq!(openai.key().as_str(), "https://api.openai.com/v1");
/// # Ok::<(), tower_ai_balance::client::ClientError>(())
/// ```
#[derive(Clone)]
pub struct UpstreamConfig {
    pub(crate) base: BaseUrl,
    key: Key,
    /// The endpoint settings, applied in order to a config of the final key.
    settings: Vec<Setting>,
    pub(crate) format: Format,
    /// Credentials, sent with every request; their values are never shown.
    pub(crate) credentials: Vec<(HeaderName, HeaderValue)>,
    /// Fixed headers, such as `anthropic-version`.
    pub(crate) fixed: Vec<(HeaderName, HeaderValue)>,
    pub(crate) forward: Vec<HeaderName>,
    pub(crate) upstream_model: Option<Arc<str>>,
    pub(crate) default_max_tokens: u64,
    pub(crate) max_buffered: usize,
    pub(crate) error: Option<ClientError>,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |headers: &[(HeaderName, HeaderValue)]| {
            headers
                .iter()
                .map(|(n, _)| n.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        f.debug_struct("UpstreamConfig")
            .field("base", &self.base)
            .field("endpoint", &self.endpoint_config())
            .field("format", &self.format)
            .field("credentials", &names(&self.credentials))
            .field("headers", &names(&self.fixed))
            .field("forward", &self.forward)
            .field("upstream_model", &self.upstream_model)
            .finish_non_exhaustive()
    }
}

impl UpstreamConfig {
    /// An upstream at `base` (`https://api.openai.com/v1`, `http://10.0.0.5:8000`). Request
    /// paths are joined to the base's path (see [`Upstream`](super::Upstream)). Userinfo in
    /// the URL (`https://user:token@host/`) is sent as `Authorization: Basic` and never
    /// shown; nor is the query. The endpoint's key is the URL as shown, unless
    /// [`name`](Self::name) sets another.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let base = BaseUrl::parse(base)?;
        let mut credentials = Vec::new();
        if let Some(basic) = base.basic_auth() {
            credentials.push((header::AUTHORIZATION, basic.clone()));
        }
        Ok(Self {
            key: Key::from(base.to_string()),
            settings: Vec::new(),
            base,
            format: Format::OpenAi,
            credentials,
            fixed: Vec::new(),
            forward: Vec::new(),
            upstream_model: None,
            default_max_tokens: 4096,
            max_buffered: 32 << 20,
            error: None,
        })
    }

    /// The endpoint's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The endpoint's settings, as the pool takes them.
    pub fn endpoint_config(&self) -> EndpointConfig {
        self.settings
            .iter()
            .fold(EndpointConfig::new(self.key.clone()), |config, f| f(config))
    }

    /// Names the endpoint (its key in the pool, in metrics and in logs).
    pub fn name(mut self, key: impl Into<Key>) -> Self {
        self.key = key.into();
        self
    }

    /// Sends `Authorization: Bearer <key>` (replacing any from the URL's userinfo).
    pub fn api_key(mut self, key: impl AsRef<str>) -> Self {
        self.credentials.retain(|(n, _)| n != header::AUTHORIZATION);
        self.credential(
            header::AUTHORIZATION.as_str(),
            &format!("Bearer {}", key.as_ref()),
        )
    }

    /// Sends the key in a header of its own (`x-api-key`, Azure's `api-key`).
    pub fn key_header(self, name: &str, key: impl AsRef<str>) -> Self {
        self.credential(name, key.as_ref())
    }

    fn credential(mut self, name: &str, value: &str) -> Self {
        match header_pair(name, value) {
            Some((name, mut value)) => {
                value.set_sensitive(true);
                self.credentials.retain(|(n, _)| n != name);
                self.credentials.push((name, value));
            }
            None => {
                self.error
                    .get_or_insert(ClientError::InvalidHeader { name: name.into() });
            }
        }
        self
    }

    /// Sends a fixed header with every request (`anthropic-beta`, `OpenAI-Organization`).
    /// Its value is not shown in `Debug`, but it is not treated as a secret either: put keys
    /// in [`api_key`](Self::api_key) or [`key_header`](Self::key_header).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match header_pair(name, value) {
            Some((name, value)) => {
                self.fixed.retain(|(n, _)| n != name);
                self.fixed.push((name, value));
            }
            None => {
                self.error
                    .get_or_insert(ClientError::InvalidHeader { name: name.into() });
            }
        }
        self
    }

    /// Also forwards this client request header (beyond
    /// [`FORWARDED`](super::FORWARDED)), such as `x-session-id`. Credentials and hop-by-hop
    /// headers are never forwarded, named here or not.
    pub fn forward_header(mut self, name: &str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => self.forward.push(name),
            Err(_) => {
                self.error
                    .get_or_insert(ClientError::InvalidHeader { name: name.into() });
            }
        }
        self
    }

    /// The wire format the upstream speaks ([`Format::OpenAi`] by default).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// An Anthropic Messages upstream with this key: [`Format::Anthropic`], `x-api-key`, and
    /// `anthropic-version: 2023-06-01`.
    #[cfg(feature = "anthropic")]
    pub fn anthropic(self, key: impl AsRef<str>) -> Self {
        self.format(Format::Anthropic)
            .key_header("x-api-key", key)
            .header("anthropic-version", crate::anthropic::ANTHROPIC_VERSION)
    }

    /// The model to ask this upstream for, in place of the request's: an OpenAI client asks
    /// for `gpt-4o`, the Anthropic tier serves `claude-sonnet-4-5`. Applies to
    /// [`Format::Anthropic`], whose requests are rewritten anyway; OpenAI-format requests pass
    /// through unchanged.
    pub fn upstream_model(mut self, model: impl Into<Arc<str>>) -> Self {
        self.upstream_model = Some(model.into());
        self
    }

    /// `max_tokens` for a translated request that sets none (4,096 by default; Anthropic
    /// requires it).
    pub fn default_max_tokens(mut self, tokens: u64) -> Self {
        self.default_max_tokens = tokens.max(1);
        self
    }

    /// The most the client buffers of a body it must read whole: a request to translate, a
    /// non-streamed answer to translate, an error answer (32 MiB by default).
    pub fn max_buffered(mut self, bytes: usize) -> Self {
        self.max_buffered = bytes;
        self
    }

    /// Its tier (0 by default): the pool prefers the lowest tier with room.
    pub fn tier(self, tier: u32) -> Self {
        self.endpoint(move |c| c.tier(tier))
    }

    /// Its weight (1 by default).
    pub fn weight(self, weight: f64) -> Self {
        self.endpoint(move |c| c.weight(weight))
    }

    /// A model it serves (call once per model; none means any).
    pub fn model(self, model: impl Into<Arc<str>>) -> Self {
        let model: Arc<str> = model.into();
        self.endpoint(move |c| c.model(Arc::clone(&model)))
    }

    /// Its maximum concurrency.
    pub fn max_concurrency(self, max: usize) -> Self {
        self.endpoint(move |c| c.max_concurrency(max))
    }

    /// The provider's quota for this upstream's key: requests and tokens per minute (see
    /// [`EndpointConfig::quota`]). Its responses' rate-limit headers correct it.
    pub fn quota(self, quota: crate::endpoint::Quota) -> Self {
        self.endpoint(move |c| c.quota(quota.clone()))
    }

    /// Any other endpoint setting (context window, provider, price, labels).
    pub fn endpoint(
        mut self,
        f: impl Fn(EndpointConfig) -> EndpointConfig + Send + Sync + 'static,
    ) -> Self {
        self.settings.push(Arc::new(f));
        self
    }
}

fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}
