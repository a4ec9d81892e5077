//! Polls each endpoint's Prometheus `/metrics` for load reports.

use std::{fmt, future::poll_fn, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Limited};
use tokio::{task::JoinHandle, time::Instant};
use tower_service::Service;

use super::{engine_metrics::from_prometheus, ReportSink};
use crate::{endpoint::Endpoint, error::BoxError, report::LoadReport};

/// How often and how patiently the [`Scraper`] polls.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ScrapeConfig {
    /// Time between rounds, give or take `jitter` at random so that replicas do not scrape
    /// in step (default 1 s). The first round starts at once.
    pub interval: Duration,
    /// The share of `interval` a round may start early or late (default 0.1, at most 1).
    pub jitter: f64,
    /// A scrape that has not delivered its whole body by then fails (default 500 ms).
    pub timeout: Duration,
    /// A body longer than this fails without being read further (default 4 MiB; a vLLM
    /// server's whole output is a few hundred KiB).
    pub max_body: usize,
    /// At most this many endpoints are scraped at once (default 64).
    pub concurrency: usize,
}

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            jitter: 0.1,
            timeout: Duration::from_millis(500),
            max_body: 4 << 20,
            concurrency: 64,
        }
    }
}

/// Why a scrape gave no report.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScrapeError {
    /// The endpoint has no metrics address (see [`Scraper::target`]).
    NoTarget,
    /// The scrape took longer than the timeout.
    Timeout,
    /// The request failed.
    Fetch(BoxError),
    /// The answer was not a success.
    Status(StatusCode),
    /// The body failed, or was longer than the limit.
    Body(BoxError),
    /// The body held no engine load metrics.
    NoMetrics,
}

impl fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTarget => f.write_str("the endpoint has no metrics address"),
            Self::Timeout => f.write_str("the scrape timed out"),
            Self::Fetch(e) => write!(f, "the scrape failed: {e}"),
            Self::Status(s) => write!(f, "the metrics endpoint answered {s}"),
            Self::Body(e) => write!(f, "the metrics body failed: {e}"),
            Self::NoMetrics => f.write_str("the body holds no engine load metrics"),
        }
    }
}

impl std::error::Error for ScrapeError {}

type Target = Arc<dyn Fn(&Endpoint) -> Option<Uri> + Send + Sync>;
type Parse = fn(&[u8], Instant) -> Option<LoadReport>;

/// Polls each endpoint's Prometheus metrics on an interval, with a timeout and jitter, and
/// hands the reports to a [`ReportSink`].
///
/// `F` fetches: any tower service from an `http::Request<Empty<Bytes>>` to an
/// `http::Response` (a hyper-util client, or a stack around one that adds credentials), so
/// the scraper brings no HTTP client of its own. The body is read up to
/// [`ScrapeConfig::max_body`]; by default it is read as vLLM's or SGLang's metrics
/// ([`from_prometheus`](super::from_prometheus)).
///
/// Each endpoint's metrics address comes from [`target`](Self::target); by default, in
/// order: the endpoint's label `metrics` (a whole URL), its label `base` followed by
/// `/metrics`, its key followed by `/metrics` when the key is a URL, or
/// `http://{key}/metrics` when the key is a socket address (as discovered endpoints' keys
/// are).
pub struct Scraper<F> {
    fetch: F,
    target: Target,
    parse: Parse,
    config: ScrapeConfig,
}

impl<F> fmt::Debug for Scraper<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraper")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The default metrics address of an endpoint (see [`Scraper`]).
pub fn default_target(endpoint: &Endpoint) -> Option<Uri> {
    if let Some(url) = endpoint.label("metrics") {
        return url.parse().ok();
    }
    let join = |base: &str| {
        format!("{}/metrics", base.trim_end_matches('/'))
            .parse()
            .ok()
    };
    if let Some(base) = endpoint.label("base") {
        return join(base);
    }
    let key = endpoint.key().as_str();
    if key.parse::<std::net::SocketAddr>().is_ok() {
        return format!("http://{key}/metrics").parse().ok();
    }
    match key.parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => join(key),
        _ => None,
    }
}

impl<F, B> Scraper<F>
where
    F: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    F::Error: Into<BoxError>,
    F::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A scraper that fetches with `fetch`, with the default settings.
    pub fn new(fetch: F) -> Self {
        Self {
            fetch,
            target: Arc::new(default_target),
            parse: from_prometheus,
            config: ScrapeConfig::default(),
        }
    }

    /// Its settings.
    pub fn config(mut self, config: ScrapeConfig) -> Self {
        self.config = config;
        self
    }

    /// Where each endpoint's metrics are; `None` leaves the endpoint unscraped.
    pub fn target(
        mut self,
        target: impl Fn(&Endpoint) -> Option<Uri> + Send + Sync + 'static,
    ) -> Self {
        self.target = Arc::new(target);
        self
    }

    /// How a body becomes a report (for engines other than vLLM and SGLang).
    pub fn parse(mut self, parse: fn(&[u8], Instant) -> Option<LoadReport>) -> Self {
        self.parse = parse;
        self
    }

    /// Scrapes one endpoint once, within the timeout. The report records this router's
    /// requests in flight there as the scrape was sent, and is stamped when the body arrived.
    pub async fn scrape(&self, endpoint: &Endpoint) -> Result<LoadReport, ScrapeError> {
        let uri = (self.target)(endpoint).ok_or(ScrapeError::NoTarget)?;
        let local = u32::try_from(endpoint.in_flight()).unwrap_or(u32::MAX);
        let fetch = self.fetch(uri);
        let body = tokio::time::timeout(self.config.timeout, fetch)
            .await
            .map_err(|_| ScrapeError::Timeout)??;
        let report = (self.parse)(&body, Instant::now()).ok_or(ScrapeError::NoMetrics)?;
        Ok(report.local_in_flight(local))
    }

    async fn fetch(&self, uri: Uri) -> Result<Bytes, ScrapeError> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = uri;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("text/plain;version=0.0.4"),
        );
        let mut fetch = self.fetch.clone();
        poll_fn(|cx| fetch.poll_ready(cx))
            .await
            .map_err(|e| ScrapeError::Fetch(e.into()))?;
        let response = fetch
            .call(request)
            .await
            .map_err(|e| ScrapeError::Fetch(e.into()))?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), self.config.max_body);
        Ok(body.collect().await.map_err(ScrapeError::Body)?.to_bytes())
    }

    /// Scrapes every endpoint of `pool` each round, until the pool is dropped (the task holds
    /// it weakly, as the health probes do), and hands the reports to `sink`: [`ToEndpoints`](super::ToEndpoints)
    /// for the pool's pick to read them. The pool's reports are then fresh for three of this
    /// scraper's intervals unless its [`ReportPolicy`](crate::report::ReportPolicy) sets an
    /// age. A failed scrape is
    /// a `debug` event and gives no report: the endpoint's last report keeps its measured
    /// time, so a consumer sees it age and, past its limit, ignores it.
    pub fn spawn<S: Clone + Send + Sync + 'static>(
        self,
        pool: &crate::Pool<S>,
        sink: impl ReportSink,
    ) -> JoinHandle<()> {
        let members = pool.members();
        // The pool's reports are fresh for three intervals unless its policy says otherwise.
        pool.scraped_every(self.config.interval);
        let jitter = if self.config.jitter.is_finite() {
            self.config.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let concurrency = self.config.concurrency.max(1);
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if !first {
                    let factor = 1.0 - jitter + 2.0 * jitter * rand::random::<f64>();
                    tokio::time::sleep(crate::clock::scaled(self.config.interval, factor)).await;
                }
                first = false;
                let Some(endpoints) = members.endpoints() else {
                    return; // the pool is gone
                };
                let this = &self;
                let sink = &sink;
                futures_util::stream::iter(&endpoints)
                    .for_each_concurrent(concurrency, |endpoint| async move {
                        match this.scrape(endpoint).await {
                            Ok(report) => sink.report(endpoint, report),
                            Err(error) => {
                                tracing::debug!(endpoint = %endpoint.key(), %error, "no load report")
                            }
                        }
                    })
                    .await;
                sink.round(&endpoints);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EndpointConfig;

    fn target(config: EndpointConfig) -> Option<String> {
        default_target(&Endpoint::new(config).unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn default_targets() {
        assert_eq!(
            target(EndpointConfig::new("10.0.0.7:8000")).as_deref(),
            Some("http://10.0.0.7:8000/metrics")
        );
        assert_eq!(
            target(EndpointConfig::new("[::1]:8000")).as_deref(),
            Some("http://[::1]:8000/metrics")
        );
        assert_eq!(
            target(EndpointConfig::new("https://gpu-0.internal/")).as_deref(),
            Some("https://gpu-0.internal/metrics")
        );
        assert_eq!(
            target(EndpointConfig::new("gpu-0").label("base", "http://127.0.0.1:9/")).as_deref(),
            Some("http://127.0.0.1:9/metrics")
        );
        assert_eq!(
            target(EndpointConfig::new("gpu-0").label("metrics", "http://127.0.0.1:9/m"))
                .as_deref(),
            Some("http://127.0.0.1:9/m")
        );
        assert_eq!(target(EndpointConfig::new("gpu-0")), None);
    }
}
