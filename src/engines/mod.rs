//! What the engines say about their own load: sources of [`LoadReport`]s.
//!
//! - [`Scraper`]: polls each endpoint's Prometheus `/metrics` (vLLM's and SGLang's names,
//!   [`from_prometheus`]) on an interval, with a timeout and jitter, in a task that ends when
//!   the pool is dropped. It fetches through any tower HTTP service, so it adds no client.
//! - [`OrcaReport`]: the ORCA load report a backend attaches to its responses
//!   (`endpoint-load-metrics`, text, JSON or binary; `endpoint-load-metrics-bin`);
//!   [`OrcaFeedLayer`], above `Balance`, gives each one to the endpoint that served it.
//! - Anything else: build a [`LoadReport`] and hand it to [`Endpoint::report`](crate::Endpoint::report) or to a
//!   [`ReportSink`].
//!
//! Reports go to a [`ReportSink`]: [`ToEndpoints`] gives each to its endpoint, where the pick
//! reads it; [`LatestReports`] keeps the latest per endpoint for anything else.
//!
//! ```no_run
//! # async fn run() {
//! use bytes::Bytes;
//! use http_body_util::Empty;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower_ai_balance::{engines::{LatestReports, Scraper, ToEndpoints}, Pool};
//!
//! let pool: Pool<()> = Pool::new();
//! pool.insert("10.0.0.7:8000", ()).unwrap();
//! let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//! // Scrapes http://10.0.0.7:8000/metrics every second until `pool` is dropped; the pool's
//! // picks read the reports.
//! let _task = Scraper::new(client).spawn(&pool, ToEndpoints);
//! // Or keep them aside, for a dashboard.
//! let reports = LatestReports::new();
//! # let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
//! let _task = Scraper::new(client).spawn(&pool, reports.clone());
//! # }
//! ```
//!
//! # How a report enters the pick
//!
//! A report enters the pick through its endpoint
//! ([`Endpoint::report`](crate::Endpoint::report)); this is the formula
//! the pick uses, and why.
//!
//! A report is old the moment it arrives, and it counts this router's own requests only as
//! they were when it was taken. Every router replica reads the same reports, so if each sent
//! its traffic to the endpoint the last report showed least loaded, they would all pile onto
//! it until the next scrape (herding). The picker therefore splits an endpoint's load into the
//! part only the report knows and the part only this router knows:
//!
//! ```text
//! others(e) = max(0, waiting + running − local_in_flight)   from the latest fresh report
//! mine(e)   = this router's requests in flight at e now       exact, updated on every pick
//! load(e)   = others(e) + mine(e)
//! score(e)  = (load(e) + 1) / weight(e)                        lower wins, power of two choices
//! ```
//!
//! - `local_in_flight` is this router's count at `e` when the report was taken (the scraper
//!   records it as it sends the scrape; [`LoadReport::others`] does the subtraction). The
//!   engine's `waiting + running` includes those requests; replacing them by `mine(e)` now
//!   counts every request this router sent since the report, and every one it sent that the
//!   engine has not started (still in the network or its HTTP server), and drops those that
//!   finished since. This router's own load is never stale, only the other replicas' is.
//! - `others(e)` is held between reports. With `R` replicas each sees its own share of the
//!   traffic exactly and the rest as of the last report, at most one interval old.
//! - Power of two choices, not the least loaded of all: each pick compares two endpoints
//!   drawn at random, so replicas that see the same stale figures still spread their picks
//!   over the endpoints, and no single endpoint draws every replica's traffic between two
//!   reports (Mitzenmacher, "How useful is old information?", 2000: with stale load
//!   information, choosing the best of all herds and degrades badly, the best of two stays
//!   close to fresh-information performance).
//! - Staleness: a report older than a set age (default three scrape intervals) is ignored:
//!   `others(e) = 0`, and the endpoint is scored by its local count alone, as without reports.
//! - Saturation (optional, [`ReportPolicy`]): an endpoint whose
//!   fresh report shows `waiting > max_waiting` or `kv_usage > max_kv_usage` is treated as
//!   full, as at its concurrency limit; when every endpoint is, requests wait in `Balance`'s
//!   queue or fail with `Overloaded`, as `Balance` is configured. A report that frees an
//!   endpoint wakes the queue as a release does.
//! - Cost: an endpoint without a report costs the pick nothing more than before (the pick's
//!   one load of the in-flight word says "no report" through the gate bit). An endpoint with
//!   one is gated, and the pick reads its report word (one more load) and the clock.
//!
//! Waiting and running requests count the same: a running request holds batch and KV cache
//! space a newcomer needs, and a waiting one will. Weight still scales capacity, as for the
//! local count, so the same picker code serves both, and an endpoint without reports is
//! scored exactly as today.

mod engine_metrics;
mod orca;
mod orca_feed;
mod orca_json;
mod orca_proto;
mod orca_report;
mod prometheus;
mod scraper;
mod sink;

pub use self::{
    engine_metrics::from_prometheus,
    orca::{load_report, OrcaError, OrcaReport, ENDPOINT_LOAD_METRICS, ENDPOINT_LOAD_METRICS_BIN},
    orca_feed::{OrcaFeed, OrcaFeedFuture, OrcaFeedLayer},
    prometheus::{samples, Sample},
    scraper::{default_target, ScrapeConfig, ScrapeError, Scraper},
    sink::{LatestReports, ReportSink, ToEndpoints},
};
pub use crate::report::{LoadReport, ReportPolicy};
