//! The OpenAI-compatible gateway: its upstreams (from flags or a file), its stack and its
//! routes. Shared by `examples/gateway.rs`, the soak and the gateway's tests (included with
//! `#[path]`; not library API).
#![allow(dead_code, unreachable_pub)]

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::header,
    response::IntoResponse,
    routing::{get, post_service},
    Router,
};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full, Limited};
use parking_lot::RwLock;
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    buffered::BufferBodyLayer,
    client::{Client, Format, Upstream, UpstreamConfig, Upstreams},
    config::Settings,
    hints::AttemptTimeout,
    http_error::OpenAiErrorsLayer,
    metering::MeteringLayer,
    route::{OpenAiRules, RouteLayer, Rules},
    BoxError, HealthFilterLayer, Pool,
};

/// Everything the gateway is made of; `Gateway::default()` holds its defaults.
#[derive(Debug)]
pub struct Gateway {
    pub upstreams: Vec<UpstreamConfig>,
    /// The health policy and layer settings (a `--config` file's, or the defaults).
    pub settings: Settings,
    /// The HTTP(S) client every upstream shares (its trusted roots).
    pub client: Option<Client>,
    /// The largest request body, and the most all bodies in flight hold at once.
    pub max_body: usize,
    pub max_bodies: usize,
    /// The per-attempt limit on a response's head: `first_byte` for a stream, whose head
    /// comes at once; `first_byte` plus `per_token` for each token it may generate for a
    /// non-streamed answer, whose head comes only when it is written. (`balance.timeout` in the
    /// file sets `first_byte`.)
    pub first_byte: Duration,
    pub per_token: Duration,
    /// How often the models of upstreams that name none are asked again (`GET /v1/models`).
    pub models_every: Duration,
}

impl Default for Gateway {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            settings: Settings::default(),
            client: None,
            max_body: 16 << 20,
            max_bodies: 256 << 20,
            first_byte: Duration::from_secs(30),
            per_token: Duration::from_millis(250),
            models_every: Duration::from_secs(60),
        }
    }
}

/// `URL[,key=K|env:VAR][,format=openai|anthropic][,model=UPSTREAM_MODEL][,tier=N][,weight=W]
/// [,models=a|b][,max_concurrency=N]`: one upstream, as `--upstream` gives it.
pub fn parse_upstream(spec: &str) -> Result<UpstreamConfig, BoxError> {
    let mut parts = spec.split(',');
    let mut upstream = UpstreamConfig::new(parts.next().unwrap_or_default())?;
    let options: Vec<(&str, &str)> = (parts.map(|p| p.split_once('=').ok_or(p)))
        .collect::<Result<_, _>>()
        .map_err(|p| format!("not name=value: {p:?}"))?;
    for &(name, v) in &options {
        upstream = match name {
            "tier" => upstream.tier(v.parse()?),
            "weight" => upstream.weight(v.parse()?),
            "max_concurrency" => upstream.max_concurrency(v.parse()?),
            "models" => v.split('|').fold(upstream, |u, m| u.model(m)),
            "key" | "format" | "model" => upstream,
            other => return Err(format!("unknown upstream option {other:?}").into()),
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

fn env(var: &str) -> Result<String, BoxError> {
    std::env::var(var).map_err(|_| format!("${var} is not set").into())
}

/// The upstream's wire format, its key and the model it is asked for.
fn provider(
    upstream: UpstreamConfig,
    format: Option<&str>,
    key: Option<String>,
    model: Option<&str>,
) -> Result<UpstreamConfig, BoxError> {
    let upstream = match model {
        Some(model) => upstream.upstream_model(model),
        None => upstream,
    };
    Ok(match (format.unwrap_or("openai"), key) {
        ("anthropic", Some(key)) => upstream.anthropic(key),
        ("anthropic", None) => return Err("an Anthropic upstream needs its key".into()),
        ("openai", Some(key)) => upstream.api_key(key),
        ("openai", None) => upstream,
        (other, _) => return Err(format!("unknown upstream format {other:?}").into()),
    })
}

/// A TOML file of [`Settings`]: each endpoint's key is its URL, and its labels `format`,
/// `key_env` (the variable holding its key: keys stay out of files) and `upstream_model` say
/// how it is reached.
pub fn read_config(toml: &str) -> Result<(Settings, Vec<UpstreamConfig>), BoxError> {
    let settings: Settings = toml::from_str(toml)?;
    let mut upstreams = Vec::new();
    for e in &settings.endpoints {
        let key = e.label_value("key_env").map(env).transpose()?;
        let (format, model) = (e.label_value("format"), e.label_value("upstream_model"));
        let upstream = UpstreamConfig::from_endpoint(e.clone())?;
        upstreams.push(provider(upstream, format, key, model)?);
    }
    Ok((settings, upstreams))
}

#[derive(Clone)]
struct AppState {
    pool: Pool<Upstream>,
    listed: Arc<RwLock<BTreeSet<String>>>,
    bodies: BufferBodyLayer,
}

impl Gateway {
    /// The routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /metrics`; and the pool.
    pub async fn build(self) -> Result<(Router, Pool<Upstream>), BoxError> {
        let mut upstreams = Upstreams::new().client(match self.client {
            Some(client) => client,
            None => Client::new()?,
        });
        for u in self.upstreams {
            upstreams = upstreams.add(u);
        }
        let pool = upstreams.build_pool()?;
        let s = self.settings;
        let (mut balance, mut failover) = (s.balance, s.failover);
        balance.idle_timeout.get_or_insert(Duration::from_secs(120));
        failover.first_chunk.get_or_insert(Duration::from_secs(60));
        let (first_byte, per_token) = (balance.timeout.unwrap_or(self.first_byte), self.per_token);
        let bodies = BufferBodyLayer::new(self.max_body).total_limit(self.max_bodies);
        let chat = ServiceBuilder::new()
            .layer(OpenAiErrorsLayer::new())
            .layer(bodies.clone())
            .map_request(move |mut r: http::Request<Full<Bytes>>| {
                let limit = head_limit(r.body(), first_byte, per_token);
                r.extensions_mut().insert(AttemptTimeout(limit));
                r
            })
            .layer(failover.layer()?)
            .layer(RouteLayer::new(OpenAiRules(Rules::new())))
            // The tokens of each answer, counted at its endpoint per model for `/metrics`.
            .layer(MeteringLayer::new())
            .layer(s.affinity.unwrap_or_default().layer()?)
            .layer(HealthFilterLayer::builder().policy(s.health).build()?)
            .layer(balance.layer()?)
            .service(pool.clone());
        let listed = Arc::default();
        watch_models(&pool, Arc::downgrade(&listed), self.models_every).await;
        let state = AppState {
            pool: pool.clone(),
            listed,
            bodies,
        };
        let router = Router::new()
            .route("/v1/chat/completions", post_service(chat))
            .route("/v1/models", get(models))
            .route("/metrics", get(metrics))
            .with_state(state);
        Ok((router, pool))
    }
}

/// The head limit for a request body (see [`Gateway::first_byte`]); a body that cannot be read
/// is refused further down, and gets the longest.
fn head_limit(body: &Full<Bytes>, first_byte: Duration, per_token: Duration) -> Duration {
    #[derive(serde::Deserialize, Default)]
    struct Asks {
        stream: Option<bool>,
        max_tokens: Option<u32>,
        max_completion_tokens: Option<u32>,
    }
    let bytes = body
        .clone()
        .collect()
        .now_or_never()
        .map(|b| b.unwrap().to_bytes());
    let asks: Asks = serde_json::from_slice(&bytes.unwrap_or_default()).unwrap_or_default();
    if asks.stream == Some(true) {
        return first_byte;
    }
    let tokens = asks
        .max_completion_tokens
        .or(asks.max_tokens)
        .unwrap_or(4096);
    first_byte.saturating_add(per_token.saturating_mul(tokens))
}

/// Lists the models of the OpenAI-format upstreams that name none, now and then `every`, until
/// the list is dropped.
async fn watch_models(
    pool: &Pool<Upstream>,
    listed: std::sync::Weak<RwLock<BTreeSet<String>>>,
    every: Duration,
) {
    let ask: Vec<Upstream> = (pool.endpoints().iter())
        .filter(|e| e.capabilities().models.is_empty())
        .filter_map(|e| pool.service(e.key().as_str()))
        .filter(|u| u.format() == Format::OpenAi)
        .collect();
    let refresh = move || {
        let (ask, listed) = (ask.clone(), listed.clone());
        async move {
            let mut found = BTreeSet::new();
            for upstream in ask {
                let request = http::Request::get("/v1/models").body(Full::new(Bytes::new()));
                let answer = async {
                    let body = upstream.oneshot(request?).await?.into_body();
                    let body = Limited::new(body, 1 << 20).collect().await?.to_bytes();
                    Ok::<_, BoxError>(serde_json::from_slice::<serde_json::Value>(&body)?)
                };
                if let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(5), answer).await {
                    let ids = list["data"].as_array().into_iter().flatten();
                    found.extend(ids.filter_map(|m| m["id"].as_str().map(str::to_owned)));
                }
            }
            let Some(listed) = listed.upgrade() else {
                return false;
            };
            *listed.write() = found;
            true
        }
    };
    refresh().await;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if !refresh().await {
                break;
            }
        }
    });
}

async fn models(State(state): State<AppState>) -> impl IntoResponse {
    let mut names = state.listed.read().clone();
    for e in state.pool.endpoints() {
        names.extend(e.capabilities().models.iter().map(|m| m.to_string()));
    }
    let data: Vec<_> = (names.iter())
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "gateway"}))
        .collect();
    let list = serde_json::json!({"object": "list", "data": data});
    (
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let bodies = state.bodies.buffered_bytes();
    let text = format!(
        "{}# HELP gateway_request_body_bytes Bytes held by request bodies in flight.\n\
         # TYPE gateway_request_body_bytes gauge\ngateway_request_body_bytes {bodies}\n",
        state.pool.metrics().prometheus()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
