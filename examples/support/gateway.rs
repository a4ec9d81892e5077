//! The OpenAI-compatible gateway: its upstreams (from flags or a file), its stack and its
//! routes. Shared by `examples/gateway.rs`, the soak and the gateway's tests (included with
//! `#[path]`; not library API).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use axum::{
    http::header,
    routing::{get, post_service},
    Router,
};
use bytes::Bytes;
use http_body_util::Full;
use tower::ServiceBuilder;
use tower_ai_balance::{
    buffered::BufferBodyLayer,
    client::{self, Client, ModelList, Upstream, UpstreamConfig, Upstreams},
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
    /// Upstreams from `--upstream` flags, besides the settings' endpoints.
    pub upstreams: Vec<UpstreamConfig>,
    /// A `--config` file's endpoints, health policy, layer settings, probes and scrape.
    pub settings: Settings,
    /// The HTTP(S) client every upstream shares (its trusted roots).
    pub client: Option<Client>,
    /// The largest request body, and the most all bodies in flight hold at once.
    pub max_body: usize,
    pub max_bodies: usize,
    /// The per-attempt limit on a response's head (see `AttemptTimeout::for_generation`;
    /// `balance.timeout` in the file sets `first_byte`).
    pub first_byte: Duration,
    pub per_token: Duration,
    /// How often the models of upstreams that name none are asked again.
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

impl Gateway {
    /// The routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /metrics`; and the pool.
    pub async fn build(self) -> Result<(Router, Pool<Upstream>), BoxError> {
        let mut upstreams = Upstreams::new().client(self.client.map_or_else(Client::new, Ok)?);
        for e in &self.settings.endpoints {
            upstreams = upstreams.add(UpstreamConfig::from_endpoint(e.clone())?);
        }
        let pool = self
            .upstreams
            .into_iter()
            .fold(upstreams, Upstreams::add)
            .build_pool()?;
        let s = self.settings;
        let (mut balance, mut failover) = (s.balance, s.failover);
        balance.idle_timeout.get_or_insert(Duration::from_secs(120));
        failover.first_chunk.get_or_insert(Duration::from_secs(60));
        let (first_byte, per_token) = (balance.timeout.unwrap_or(self.first_byte), self.per_token);
        let health = HealthFilterLayer::builder()
            .policy(s.health.clone())
            .build()?;
        if let Some(probes) = s.probes {
            client::spawn_probes(&pool, &health, probes.config()?);
        }
        if let Some(scrape) = s.scrape {
            client::spawn_scrape(&pool, scrape.config()?);
        }
        let bodies = BufferBodyLayer::new(self.max_body).total_limit(self.max_bodies);
        let chat = ServiceBuilder::new()
            .layer(OpenAiErrorsLayer::new())
            .layer(bodies.clone())
            .map_request(move |mut r: http::Request<Full<Bytes>>| {
                let limit = AttemptTimeout::for_generation(r.body(), first_byte, per_token);
                r.extensions_mut().insert(limit);
                r
            })
            .layer(failover.layer()?)
            .layer(RouteLayer::new(OpenAiRules(Rules::new())))
            // The tokens of each answer, counted at its endpoint per model for `/metrics`.
            .layer(MeteringLayer::new())
            .layer(s.affinity.clone().unwrap_or_default().layer()?)
            .layer(health)
            .layer(balance.layer()?)
            .service(pool.clone());
        let models = ModelList::new(&pool);
        models.refresh().await;
        models.refresh_every(self.models_every);
        let metrics_pool = pool.clone();
        let metrics = move || {
            let text = format!(
                "{}# HELP gateway_request_body_bytes Bytes held by request bodies in flight.\n\
                 # TYPE gateway_request_body_bytes gauge\ngateway_request_body_bytes {}\n",
                metrics_pool.metrics().prometheus(),
                bodies.buffered_bytes()
            );
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        };
        let router = Router::new()
            .route("/v1/chat/completions", post_service(chat))
            .route_service("/v1/models", models)
            .route("/metrics", get(metrics));
        Ok((router, pool))
    }
}
