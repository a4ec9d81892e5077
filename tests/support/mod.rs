//! Helpers shared by the integration test binaries; each uses a part of them.
#![allow(dead_code)]

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneSyncService;
use tower_ai_balance::{hints::Served, Endpoint, Pool};

use crate::model_server::{ModelServer, Spec, Upstream};

pub type HttpService = Upstream;

/// `n` simulated model servers, each behind its own endpoint (`m0`, `m1`, ...) in a fresh
/// pool; each endpoint's `base` label is its server's URI.
pub async fn http_pool(
    n: usize,
    ttft: Duration,
    per_token: Duration,
) -> (Pool<HttpService>, Vec<ModelServer>) {
    let pool = Pool::new();
    let client = Upstream::client();
    let mut servers = Vec::new();
    for i in 0..n {
        let s = ModelServer::spawn(Spec::new(format!("m{i}"), ttft, per_token)).await;
        let config = tower_ai_balance::EndpointConfig::new(format!("m{i}"))
            .label("base", s.uri().to_string().trim_end_matches('/'));
        pool.insert(config, Upstream::new(client.clone(), s.uri()))
            .unwrap();
        servers.push(s);
    }
    (pool, servers)
}

pub fn served<B>(r: &Response<B>) -> Arc<Endpoint> {
    r.extensions()
        .get::<Served>()
        .expect("Served is attached")
        .endpoint()
        .clone()
}

pub fn total_in_flight<S: Clone>(pool: &Pool<S>) -> usize {
    pool.endpoints().iter().map(|e| e.in_flight()).sum()
}

/// An in-process endpoint service that answers at once with a fixed body.
pub type Echo = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

pub fn echo(name: &'static str) -> Echo {
    BoxCloneSyncService::new(tower::service_fn(
        move |_req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
        },
    ))
}

pub fn empty_request() -> Request<Full<Bytes>> {
    Request::new(Full::new(Bytes::new()))
}

pub async fn read_to_end<B: http_body::Body>(body: B) -> Result<Bytes, B::Error> {
    Ok(body.collect().await?.to_bytes())
}

/// An in-process endpoint service whose response bodies stay open until the test lets them go
/// (a stand-in for a long stream), or finish at once for requests carrying `x-quick`.
#[derive(Clone, Default)]
pub struct Held {
    pub open: Arc<parking_lot::Mutex<Vec<OpenBody>>>,
}

/// The endpoint's name and the sender that ends one open body.
pub type OpenBody = (&'static str, tokio::sync::oneshot::Sender<()>);

pub type HeldBody = http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, Infallible>>,
>;

impl Held {
    pub fn service(
        &self,
        name: &'static str,
    ) -> BoxCloneSyncService<Request<Full<Bytes>>, Response<HeldBody>, Infallible> {
        let open = Arc::clone(&self.open);
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
            let open = Arc::clone(&open);
            async move {
                use futures_util::StreamExt;
                let quick = req.headers().contains_key("x-quick");
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                if quick {
                    drop(tx);
                } else {
                    open.lock().push((name, tx));
                }
                let frames = futures_util::stream::once(async move {
                    let _ = rx.await;
                    Ok(http_body::Frame::data(Bytes::from(name)))
                })
                .boxed();
                Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(frames)))
            }
        }))
    }

    /// Lets every open body on `name` finish.
    pub fn release(&self, name: &str) -> usize {
        let mut open = self.open.lock();
        let before = open.len();
        open.retain(|(n, _)| *n != name);
        before - open.len()
    }

    /// Lets one open body on `name` finish; whether there was one.
    pub fn release_one(&self, name: &str) -> bool {
        let mut open = self.open.lock();
        match open.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                open.remove(i);
                true
            }
            None => false,
        }
    }
}

pub fn quick_request() -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-quick", "1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Polls a body until it ends (for the Held service's bodies).
pub async fn finish<B: http_body::Body>(body: B)
where
    B::Error: std::fmt::Debug,
{
    read_to_end(body).await.unwrap();
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The error of a call that must fail.
pub async fn call_err<F, T>(call: F) -> tower_ai_balance::BoxError
where
    F: std::future::Future<Output = Result<T, tower_ai_balance::BoxError>>,
{
    match call.await {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}
