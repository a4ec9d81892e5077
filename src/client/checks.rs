//! The background checks a settings file asks of a pool of upstreams: health probes through
//! each upstream, and the engines' load reports from their `/metrics`.

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
    config::Settings,
    endpoint::Endpoint,
    engines::{Scraper, ToEndpoints},
    error::{BoxError, ConfigError},
    health::HealthFilterLayer,
    pool::{Pool, WeakPool},
};

/// The path each upstream is probed on, joined to its base URL as a request's path is: every
/// OpenAI-compatible server answers it, and an Anthropic upstream's is translated.
pub const PROBE_PATH: &str = "/v1/models";

/// Starts what `settings` asks to run beside a pool of upstreams, in background tasks that
/// end once the pool is dropped (call it within a tokio runtime):
///
/// - with [`probes`](Settings::probes): a `GET` of [`PROBE_PATH`] through each endpoint's own
///   [`Upstream`] (its credentials, its format), judged by `health`'s policy: a `2xx` within
///   the timeout is a success; a refused connection, an error answer (a refused key among
///   them) or no answer is a failure, and enough in a row eject the endpoint;
/// - with [`scrape`](Settings::scrape): the engines' load reports, from `/metrics` at the root
///   of each upstream's host (or the endpoint's label `metrics`, a whole URL), sent without
///   the upstream's credentials, to the endpoints ([`ToEndpoints`]).
///
/// Returns the tasks' handles (abort one to stop it sooner), or the scrape setting refused.
///
/// ```no_run
/// use tower_ai_balance::{client::{self, UpstreamConfig, Upstreams}, config::Settings, HealthFilterLayer};
///
/// # async fn run() -> Result<(), tower_ai_balance::BoxError> {
/// let settings: Settings = toml::from_str(r#"
///     [[endpoints]]
///     key = "http://10.0.0.5:8000/v1"
///     [probes]
///     interval = "5s"
///     [scrape]
///     interval = "1s"
/// "#)?;
/// let mut upstreams = Upstreams::new();
/// for e in &settings.endpoints {
///     upstreams = upstreams.add(UpstreamConfig::from_endpoint(e.clone())?);
/// }
/// let pool = upstreams.build_pool()?;
/// let health = HealthFilterLayer::builder().policy(settings.health.clone()).build()?;
/// let tasks = client::spawn_checks(&settings, &pool, &health)?;
/// # Ok(())
/// # }
/// ```
pub fn spawn_checks(
    settings: &Settings,
    pool: &Pool<Upstream>,
    health: &HealthFilterLayer,
) -> Result<Vec<JoinHandle<()>>, ConfigError> {
    let mut tasks = Vec::new();
    if let Some(scrape) = &settings.scrape {
        let config = scrape.config()?;
        let Some(client) = pool
            .endpoints()
            .first()
            .and_then(|e| pool.service(e.key().as_str()))
        else {
            return Ok(tasks); // no upstream to scrape (nor to probe)
        };
        let weak = pool.downgrade();
        let scraper = Scraper::new(Fetch(client.client().clone()))
            .config(config)
            .target(move |e| metrics_target(&weak, e));
        tasks.push(scraper.spawn(pool, ToEndpoints));
    }
    if let Some(probes) = &settings.probes {
        let weak = pool.downgrade();
        let probe = move |e: Arc<Endpoint>| probe(weak.upgrade(), e);
        tasks.push(health.spawn_probes(pool, probe, probes.config()));
    }
    Ok(tasks)
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

/// The scraper's fetch: a plain `GET` of an absolute URI through the shared client, with no
/// upstream's credentials.
#[derive(Clone)]
struct Fetch(Client);

impl Service<Request<Empty<Bytes>>> for Fetch {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Empty<Bytes>>) -> Self::Future {
        let request = request.map(|body| body.map_err(|never| match never {}).boxed_unsync());
        let pooled = self.0.pooled.clone();
        Box::pin(async move { Ok(pooled.request(request).await?) })
    }
}
