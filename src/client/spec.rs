//! An upstream from one line of text (a command-line flag) or from an endpoint's labels (a
//! config file): its URL, credentials, wire format and place in the pool.

use std::str::FromStr;

use super::{config::UpstreamConfig, error::ClientError};
use crate::endpoint::EndpointConfig;

fn invalid(option: &str, reason: impl Into<String>) -> ClientError {
    ClientError::InvalidOption {
        option: option.to_owned(),
        reason: reason.into(),
    }
}

/// The value of environment variable `var`, for a key that stays out of flags and files.
fn env(var: &str) -> Result<String, ClientError> {
    std::env::var(var).map_err(|_| invalid("key", format!("${var} is not set")))
}

/// The upstream's wire format (`openai` when `None`), its key and the model it is asked for.
pub(super) fn provider(
    upstream: UpstreamConfig,
    format: Option<&str>,
    key: Option<String>,
    model: Option<&str>,
) -> Result<UpstreamConfig, ClientError> {
    let upstream = match model {
        Some(model) => upstream.upstream_model(model),
        None => upstream,
    };
    Ok(match (format.unwrap_or("openai"), key) {
        #[cfg(feature = "anthropic")]
        ("anthropic", Some(key)) => upstream.anthropic(key),
        #[cfg(feature = "anthropic")]
        ("anthropic", None) => return Err(invalid("key", "an Anthropic upstream needs its key")),
        ("openai", Some(key)) => upstream.api_key(key),
        ("openai", None) => upstream,
        (other, _) => {
            return Err(invalid(
                "format",
                format!("unknown format {other:?} (openai or anthropic)"),
            ))
        }
    })
}

/// The labels of an endpoint read from a file (see
/// [`UpstreamConfig::from_endpoint`]): `format`, `key_env` and `upstream_model`.
fn from_labels(
    upstream: UpstreamConfig,
    label: impl Fn(&str) -> Option<String>,
) -> Result<UpstreamConfig, ClientError> {
    let key = label("key_env").map(|var| env(&var)).transpose()?;
    let (format, model) = (label("format"), label("upstream_model"));
    provider(upstream, format.as_deref(), key, model.as_deref())
}

impl UpstreamConfig {
    /// An upstream at the URL an endpoint's key holds, with every other setting of the
    /// endpoint (as a config file names upstreams: `key = "https://api.example.com/v1"`). The
    /// key becomes the URL as shown, without userinfo and query.
    ///
    /// Three labels say how it is reached, so that a file can name every upstream: `format`
    /// (`openai`, the default, or `anthropic`), `key_env` (the environment variable holding
    /// its key: keys stay out of files; sent as a bearer token, or as Anthropic's `x-api-key`)
    /// and `upstream_model` (see [`upstream_model`](Self::upstream_model)). A variable that is
    /// not set, an unknown format or an Anthropic upstream without a key is an error.
    ///
    /// ```
    /// use tower_ai_balance::{client::UpstreamConfig, EndpointConfig};
    ///
    /// let endpoint = EndpointConfig::new("https://user:secret@llm.internal/v1").tier(1).model("gpt-4o");
    /// let upstream = UpstreamConfig::from_endpoint(endpoint)?;
    /// assert_eq!(upstream.key().as_str(), "https://llm.internal/v1");
    /// assert_eq!(upstream.endpoint_config().key().as_str(), "https://llm.internal/v1");
    /// # Ok::<(), tower_ai_balance::client::ClientError>(())
    /// ```
    pub fn from_endpoint(endpoint: EndpointConfig) -> Result<Self, ClientError> {
        let label = |name: &str| endpoint.label_value(name).map(str::to_owned);
        let upstream = from_labels(Self::new(endpoint.key().as_str())?, label)?;
        Ok(upstream.endpoint(move |config| endpoint.clone().with_key(config.key().clone())))
    }
}

/// `URL[,key=KEY|key=env:VAR][,format=openai|anthropic][,model=UPSTREAM_MODEL][,tier=N]
/// [,weight=W][,models=a|b][,max_concurrency=N]`: one upstream as a command-line flag gives
/// it. `key=env:VAR` reads the key from the environment (a key given in the line itself shows
/// in the process list); `model` is the name the upstream is asked for
/// ([`upstream_model`](UpstreamConfig::upstream_model)), `models` the names it serves as.
///
/// ```
/// use tower_ai_balance::client::UpstreamConfig;
///
/// let upstream: UpstreamConfig = "http://10.0.0.5:8000/v1,models=llama-3-70b|llama,tier=1,max_concurrency=64".parse()?;
/// assert_eq!(upstream.key().as_str(), "http://10.0.0.5:8000/v1");
/// assert!("http://10.0.0.5:8000/v1,tier=first".parse::<UpstreamConfig>().is_err());
/// # Ok::<(), tower_ai_balance::client::ClientError>(())
/// ```
impl FromStr for UpstreamConfig {
    type Err = ClientError;

    fn from_str(spec: &str) -> Result<Self, ClientError> {
        let mut parts = spec.split(',');
        let mut upstream = UpstreamConfig::new(parts.next().unwrap_or_default())?;
        let options: Vec<(&str, &str)> = parts
            .map(|p| p.split_once('=').ok_or(p))
            .collect::<Result<_, _>>()
            .map_err(|p| invalid(p, "not name=value"))?;
        let number = |name: &str| invalid(name, "not a number");
        for &(name, v) in &options {
            if options.iter().filter(|o| o.0 == name).count() > 1 {
                return Err(invalid(name, "given twice"));
            }
            upstream = match name {
                "tier" => upstream.tier(v.parse().map_err(|_| number(name))?),
                "weight" => upstream.weight(v.parse().map_err(|_| number(name))?),
                "max_concurrency" => upstream.max_concurrency(v.parse().map_err(|_| number(name))?),
                "models" => v.split('|').fold(upstream, |u, m| u.model(m)),
                "key" | "format" | "model" => upstream,
                other => return Err(invalid(other, "unknown option")),
            };
        }
        let option = |name| options.iter().find(|o| o.0 == name).map(|o| o.1);
        let key = match option("key").map(|k| k.strip_prefix("env:").ok_or(k)) {
            Some(Ok(var)) => Some(env(var)?),
            Some(Err(key)) => Some(key.to_owned()),
            None => None,
        };
        provider(upstream, option("format"), key, option("model"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<UpstreamConfig, ClientError> {
        spec.parse()
    }

    #[test]
    fn a_line_sets_the_endpoint_and_the_provider() {
        let u = parse("http://10.0.0.5:8000/v1,weight=2.5,models=a|b,max_concurrency=8").unwrap();
        let e = crate::Endpoint::new(u.endpoint_config()).unwrap();
        assert_eq!(e.key().as_str(), "http://10.0.0.5:8000/v1");
        assert_eq!(e.weight(), 2.5);
        assert_eq!(e.max_concurrency(), Some(8));
        let caps = e.capabilities();
        let models: Vec<&str> = caps.models.iter().map(|m| &**m).collect();
        assert_eq!(models, ["a", "b"]);
        assert!(u.credentials.is_empty());

        let u = parse("https://h/v1,key=sk-line").unwrap();
        assert_eq!(u.credentials[0].0, "authorization");
        assert_eq!(u.credentials[0].1, "Bearer sk-line");
        std::env::set_var("TOWER_AI_BALANCE_SPEC_TEST_KEY", "sk-env");
        let u = parse("https://h/v1,key=env:TOWER_AI_BALANCE_SPEC_TEST_KEY").unwrap();
        assert_eq!(u.credentials[0].1, "Bearer sk-env");
    }

    #[cfg(feature = "anthropic")]
    #[test]
    fn an_anthropic_line_needs_its_key_and_names_its_model() {
        let u = parse("https://h,format=anthropic,key=sk-ant,model=claude-x").unwrap();
        assert_eq!(u.format, super::super::Format::Anthropic);
        assert_eq!(u.upstream_model.as_deref(), Some("claude-x"));
        assert!(u
            .credentials
            .iter()
            .any(|(n, v)| n == "x-api-key" && v == "sk-ant"));
        assert!(parse("https://h,format=anthropic").is_err());
    }

    #[test]
    fn a_bad_line_is_refused_without_showing_the_key() {
        for bad in [
            "not a url",
            "http://h/v1,tier",
            "http://h/v1,tier=x",
            "http://h/v1,tier=1,tier=2",
            "http://h/v1,colour=red",
            "http://h/v1,format=cohere,key=sk-secret",
            "http://h/v1,key=env:TOWER_AI_BALANCE_SPEC_TEST_UNSET",
            "http://h/v1,weight=-1",
        ] {
            let error = match parse(bad).and_then(|u| {
                crate::Pool::<()>::new()
                    .insert(u.endpoint_config(), ())
                    .map_err(ClientError::from)
            }) {
                Ok(_) => panic!("{bad:?} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(!error.contains("sk-secret"), "{error}");
        }
    }

    #[test]
    fn labels_name_the_provider() {
        std::env::set_var("TOWER_AI_BALANCE_LABEL_TEST_KEY", "sk-label");
        let endpoint = EndpointConfig::new("https://h/v1")
            .label("key_env", "TOWER_AI_BALANCE_LABEL_TEST_KEY")
            .tier(2);
        let u = UpstreamConfig::from_endpoint(endpoint).unwrap();
        assert_eq!(u.credentials[0].1, "Bearer sk-label");
        assert_eq!(crate::Endpoint::new(u.endpoint_config()).unwrap().tier(), 2);
        let unset = EndpointConfig::new("https://h/v1")
            .label("key_env", "TOWER_AI_BALANCE_LABEL_TEST_UNSET");
        assert!(UpstreamConfig::from_endpoint(unset).is_err());
        let unknown = EndpointConfig::new("https://h/v1").label("format", "cohere");
        assert!(UpstreamConfig::from_endpoint(unknown).is_err());
    }
}
