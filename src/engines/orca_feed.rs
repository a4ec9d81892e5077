//! [`OrcaFeedLayer`]: feeds the ORCA load report a backend attaches to a response to the
//! endpoint that served it, so the pick reads it without a scraper.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::OrcaReport;
use crate::hints::Served;

/// Feeds each response's ORCA load report to the endpoint that served it.
///
/// Put it directly above [`Balance`](crate::balance::Balance): it reads the
/// [`Served`] that `Balance` puts in each response's extensions to learn the endpoint, and the
/// `endpoint-load-metrics` (or `endpoint-load-metrics-bin`) header for the report
/// ([`OrcaReport::from_headers`]). A report is taken as measured when the head arrived, with
/// this router's requests in flight at the endpoint at that instant (this one included) as
/// the ones the engine counted. A response without a header, a header that gives none of
/// waiting, running or KV usage, or a malformed one (a `debug` event) changes nothing, and
/// leaves the endpoint's pick as fast as without reports.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_ai_balance::{balance::BalanceLayer, engines::OrcaFeedLayer, Pool};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ai_balance::BoxError> {
/// let engine = service_fn(|_req: Request<Full<Bytes>>| async {
///     let response = Response::builder()
///         .header("endpoint-load-metrics", "TEXT named_metrics.num_requests_waiting=12")
///         .body(Full::new(Bytes::from("ok")))
///         .unwrap();
///     Ok::<_, Infallible>(response)
/// });
/// let pool = Pool::new();
/// pool.insert("gpu-0", engine)?;
/// let svc = ServiceBuilder::new()
///     .layer(OrcaFeedLayer::new())
///     .layer(BalanceLayer::new())
///     .service(pool.clone());
/// let _response = svc.oneshot(Request::new(Full::new(Bytes::new()))).await?;
/// let report = pool.get("gpu-0").unwrap().latest_report().unwrap();
/// assert_eq!(report.waiting, Some(12));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct OrcaFeedLayer(());

impl OrcaFeedLayer {
    /// The layer.
    pub fn new() -> Self {
        Self(())
    }
}

impl<S> Layer<S> for OrcaFeedLayer {
    type Service = OrcaFeed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OrcaFeed { inner }
    }
}

/// The service of [`OrcaFeedLayer`].
#[derive(Debug, Clone)]
pub struct OrcaFeed<S> {
    inner: S,
}

impl<S, Req, B> Service<Req> for OrcaFeed<S>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = OrcaFeedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        OrcaFeedFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`OrcaFeed`].
    #[derive(Debug)]
    pub struct OrcaFeedFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for OrcaFeedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.poll(cx));
        if let Ok(response) = &result {
            feed(response);
        }
        Poll::Ready(result)
    }
}

/// Gives the response's report, if it has one that says anything of the engine's load, to
/// the endpoint named in its [`Served`].
fn feed<B>(response: &http::Response<B>) {
    let Some(served) = response.extensions().get::<Served>() else {
        return;
    };
    let Some(orca) = OrcaReport::from_headers(response.headers()) else {
        return;
    };
    let report = orca.load_report(Instant::now());
    if report.waiting.is_none() && report.running.is_none() && report.kv_usage.is_none() {
        return;
    }
    let endpoint = served.endpoint();
    let local = u32::try_from(endpoint.in_flight()).unwrap_or(u32::MAX);
    endpoint.report(&report.local_in_flight(local));
}
