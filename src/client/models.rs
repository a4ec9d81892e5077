//! The models a pool of upstreams serves, answered as OpenAI's `GET /v1/models`.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    fmt,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::join_all;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use parking_lot::RwLock;
use tokio::task::JoinHandle;
use tower_service::Service;

use super::service::Upstream;
use crate::{
    error::BoxError,
    json::{write, Scanner},
    pool::Pool,
};

/// The answer to `GET /v1/models` for a pool of [`Upstream`]s, so that an OpenAI client's
/// `models.list()` finds what the gateway serves: the models each endpoint is configured
/// with, and, for each upstream configured with none, the models its own `GET /v1/models`
/// lists (an OpenAI-compatible server's list, or an Anthropic upstream's, translated with its
/// own credentials).
///
/// The upstreams are asked by [`refresh`](Self::refresh), each within 5 s and 1 MiB, all at
/// once; an upstream that does not answer lists nothing until the next refresh.
/// [`refresh_every`](Self::refresh_every) keeps asking in the background. A `tower::Service`
/// for any request (`GET` and `HEAD`; other methods get `405`), cheap to clone:
///
/// ```no_run
/// # use std::time::Duration;
/// # use axum::Router;
/// use tower_ai_balance::client::{ModelList, UpstreamConfig, Upstreams};
///
/// # async fn run() -> Result<(), tower_ai_balance::BoxError> {
/// let pool = Upstreams::new()
///     .add(UpstreamConfig::new("http://10.0.0.5:8000/v1")?) // lists its own models
///     .add(UpstreamConfig::new("https://api.openai.com/v1")?.api_key("sk-...").model("gpt-4o"))
///     .build_pool()?;
/// let models = ModelList::new(&pool);
/// models.refresh().await;
/// models.refresh_every(Duration::from_secs(60));
/// let app: Router = Router::new().route_service("/v1/models", models);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ModelList {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<Upstream>,
    /// The models the upstreams listed at the last refresh.
    listed: RwLock<BTreeSet<String>>,
}

impl fmt::Debug for ModelList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelList")
            .field("listed", &*self.inner.listed.read())
            .finish_non_exhaustive()
    }
}

/// How long an upstream has to answer, and how much of its list is read.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
const ASK_LIMIT: usize = 1 << 20;

impl ModelList {
    /// The models of `pool`'s endpoints; the upstreams' own lists once
    /// [`refresh`](Self::refresh) has asked them.
    pub fn new(pool: &Pool<Upstream>) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                listed: RwLock::default(),
            }),
        }
    }

    /// Asks every upstream that is configured with no model for its list, and keeps what
    /// they answer in place of what they answered before.
    pub async fn refresh(&self) {
        self.inner.refresh().await;
    }

    /// Refreshes every `every` in a background task (call it within a tokio runtime), which
    /// ends once every clone of the list is dropped.
    pub fn refresh_every(&self, every: Duration) -> JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.refresh().await;
            }
        })
    }

    /// The model ids it lists, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids = self.inner.listed.read().clone();
        for e in self.inner.pool.endpoints() {
            ids.extend(e.capabilities().models.iter().map(|m| m.to_string()));
        }
        ids.into_iter().collect()
    }

    /// OpenAI's list: `{"object":"list","data":[{"id","object":"model","created","owned_by"}]}`.
    fn body(&self) -> Bytes {
        let mut out = String::from("{\"object\":\"list\",\"data\":[");
        for (i, id) in self.ids().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"id\":");
            write::string_into(&mut out, id);
            out.push_str(",\"object\":\"model\",\"created\":0,\"owned_by\":\"gateway\"}");
        }
        out.push_str("]}");
        Bytes::from(out)
    }
}

impl Inner {
    async fn refresh(&self) {
        let endpoints = self.pool.endpoints();
        let ask = endpoints
            .iter()
            .filter(|e| e.capabilities().models.is_empty())
            .filter_map(|e| self.pool.service(e.key().as_str()))
            .map(|upstream| async move {
                let ask = tokio::time::timeout(ASK_TIMEOUT, ask(upstream));
                ask.await.ok().and_then(Result::ok).unwrap_or_default()
            });
        let found = join_all(ask).await.into_iter().flatten().collect();
        *self.listed.write() = found;
    }
}

/// The ids an upstream's `GET /v1/models` lists.
async fn ask(mut upstream: Upstream) -> Result<Vec<String>, BoxError> {
    let request = Request::get("/v1/models").body(Full::new(Bytes::new()))?;
    let response = upstream.call(request).await?;
    if !response.status().is_success() {
        return Err(format!("the upstream answered {}", response.status()).into());
    }
    let body = Limited::new(response.into_body(), ASK_LIMIT)
        .collect()
        .await?;
    model_ids(&body.to_bytes()).map_err(|e| format!("not a model list: {e}").into())
}

/// The `id` of each object of an OpenAI-format list's `data`.
fn model_ids(body: &[u8]) -> Result<Vec<String>, crate::json::ScanError> {
    let mut ids = Vec::new();
    Scanner::new(body).object(|s, key, _| {
        if !key.is("data") {
            return s.skip();
        }
        s.array(|s| {
            s.object(|s, key, _| {
                if key.is("id") && s.peek()? == b'"' {
                    ids.push(s.string()?.chars().collect());
                    Ok(())
                } else {
                    s.skip()
                }
            })
        })
    })?;
    Ok(ids)
}

impl<B> Service<Request<B>> for ModelList {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (status, body) = match *request.method() {
            Method::GET | Method::HEAD => (StatusCode::OK, self.body()),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                write::openai_error_body("use GET", "invalid_request_error", None),
            ),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        std::future::ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_a_list_and_anything_else_is_refused() {
        let list = br#"{"object":"list","data":[{"id":"a","object":"model"},{"object":"model","id":"b\u0041","meta":{"id":"x"}},{"id":3}]}"#;
        assert_eq!(model_ids(list).unwrap(), ["a", "bA"]);
        assert_eq!(model_ids(br#"{"data":[]}"#).unwrap(), Vec::<String>::new());
        assert!(model_ids(b"<html>").is_err());
        assert!(model_ids(br#"{"data":[{"id":"a"}"#).is_err());
    }

    #[tokio::test]
    async fn the_list_names_the_configured_models_in_openai_format() {
        let pool = super::super::Upstreams::new()
            .add(
                super::super::UpstreamConfig::new("http://127.0.0.1:9/v1")
                    .unwrap()
                    .model("m\"1")
                    .model("a"),
            )
            .build_pool()
            .unwrap();
        let models = ModelList::new(&pool);
        let answer = models.clone().call(Request::new(())).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"object":"list","data":[{"id":"a","object":"model","created":0,"owned_by":"gateway"},{"id":"m\"1","object":"model","created":0,"owned_by":"gateway"}]}"#
        );
        let post = Request::post("/v1/models").body(()).unwrap();
        assert_eq!(
            models.clone().call(post).await.unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
