//! Background checks of a pool of upstreams: health probes through each upstream, and the
//! engines' load reports from their `/metrics`.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::task::JoinHandle;
use tower_service::Service;

use super::{http_client::Client, service::Upstream};
use crate::{
    endpoint::Endpoint,
    engines::{ScrapeConfig, Scraper, ToEndpoints},
    error::BoxError,
    health::{HealthFilterLayer, ProbeConfig},
    pool::{Pool, WeakPool},
};

/// The path each upstream is probed on, joined to its base URL as a request's path is: every
/// OpenAI-compatible server answers it, and an Anthropic upstream's is translated.
pub const PROBE_PATH: &str = "/v1/models";

/// Probes every upstream of `pool` in a background task that ends once the pool is dropped
/// (call it within a tokio runtime; a settings file's [`ProbeSettings`] give `config`): a
/// `GET` of [`PROBE_PATH`] through each endpoint's own [`Upstream`] (its credentials, its
/// format), judged by `health`'s policy. A `2xx` within the timeout is a success; a refused
/// connection, an error answer (a refused key among them) or no answer is a failure, and
/// enough in a row eject the endpoint.
///
/// [`ProbeSettings`]: crate::config::ProbeSettings
///
/// ```no_run
/// use tower_ai_balance::{client::{self, UpstreamConfig, Upstreams}, health::ProbeConfig, HealthFilterLayer};
///
/// # async fn run() -> Result<(), tower_ai_balance::BoxError> {
/// let pool = Upstreams::new().add(UpstreamConfig::new("http://10.0.0.5:8000/v1")?).build_pool()?;
/// let health = HealthFilterLayer::new();
/// client::spawn_probes(&pool, &health, ProbeConfig::default());
/// # Ok(())
/// # }
/// ```
pub fn spawn_probes(
    pool: &Pool<Upstream>,
    health: &HealthFilterLayer,
    config: ProbeConfig,
) -> JoinHandle<()> {
    let weak = pool.downgrade();
    let probe = move |e: Arc<Endpoint>| probe(weak.upgrade(), e);
    health.spawn_probes(pool, probe, config)
}

/// Scrapes the engines' load reports for every upstream of `pool` in a background task that
/// ends once the pool is dropped (call it within a tokio runtime; a settings file's
/// [`ScrapeSettings`] give `config`), and hands them to the endpoints ([`ToEndpoints`]). Each
/// upstream's metrics are at `/metrics` at the root of its host (where vLLM, SGLang and TGI
/// serve them, whatever the base path), or at the endpoint's label `metrics` (a whole URL);
/// they are asked through the upstreams' client, without the upstream's credentials.
///
/// [`ScrapeSettings`]: crate::config::ScrapeSettings
///
/// ```no_run
/// use tower_ai_balance::{client::{self, UpstreamConfig, Upstreams}, engines::ScrapeConfig};
///
/// # async fn run() -> Result<(), tower_ai_balance::BoxError> {
/// let pool = Upstreams::new().add(UpstreamConfig::new("http://10.0.0.5:8000/v1")?).build_pool()?;
/// client::spawn_scrape(&pool, ScrapeConfig::default()); // http://10.0.0.5:8000/metrics
/// # Ok(())
/// # }
/// ```
pub fn spawn_scrape(pool: &Pool<Upstream>, config: ScrapeConfig) -> JoinHandle<()> {
    let client = (pool.endpoints().first())
        .and_then(|e| pool.service(e.key().as_str()))
        .map(|upstream| upstream.client().clone());
    let weak = pool.downgrade();
    Scraper::new(Fetch(client))
        .config(config)
        .target(move |e| metrics_target(&weak, e))
        .spawn(pool, ToEndpoints)
}

/// Whether the endpoint's upstream answers [`PROBE_PATH`] with a success.
fn probe(
    pool: Option<Pool<Upstream>>,
    endpoint: Arc<Endpoint>,
) -> impl Future<Output = bool> + Send {
    let upstream = pool.and_then(|p| p.service(endpoint.key().as_str()));
    async move {
        let Some(mut upstream) = upstream else {
            return false;
        };
        let Ok(request) = Request::get(PROBE_PATH).body(Full::new(Bytes::new())) else {
            return false;
        };
        match upstream.call(request).await {
            // Read the answer to its end, so that the connection goes back to the pool.
            Ok(answer) if answer.status().is_success() => {
                answer.into_body().collect().await.is_ok()
            }
            _ => false,
        }
    }
}

/// The endpoint's label `metrics`, or `/metrics` at the root of its upstream's host.
fn metrics_target(pool: &WeakPool<Upstream>, endpoint: &Endpoint) -> Option<Uri> {
    if let Some(url) = endpoint.label("metrics") {
        return url.parse().ok();
    }
    let upstream = pool.upgrade()?.service(endpoint.key().as_str())?;
    upstream.base().at_root("/metrics")
}

/// The scraper's fetch: a plain `GET` of an absolute URI through the upstreams' client, with
/// no upstream's credentials (none for a pool that had no upstream at the start).
#[derive(Clone)]
struct Fetch(Option<Client>);

impl Service<Request<Empty<Bytes>>> for Fetch {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Empty<Bytes>>) -> Self::Future {
        let request = request.map(|body| body.map_err(|never| match never {}).boxed_unsync());
        let pooled = self.0.as_ref().map(|client| client.pooled.clone());
        Box::pin(async move {
            let pooled = pooled.ok_or("no client to scrape with")?;
            Ok(pooled.request(request).await?)
        })
    }
}
