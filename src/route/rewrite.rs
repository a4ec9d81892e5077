//! Sending a request as the model its endpoint serves: [`RewriteModel`] writes the
//! [`ServeAs`] model into the request's JSON body, around an endpoint's service.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body::Body;
use tower_layer::Layer;
use tower_service::Service;

use crate::{hints::ServeAs, json::member::replace_string, peek::peek};

/// Wraps endpoint services in [`RewriteModel`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RewriteModelLayer;

impl RewriteModelLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RewriteModelLayer {
    type Service = RewriteModel<S>;

    fn layer(&self, inner: S) -> RewriteModel<S> {
        RewriteModel::new(inner)
    }
}

/// An endpoint's service that sends a request naming the model
/// [`Balance`](crate::balance::Balance) chose for it ([`ServeAs`], set for a model alias)
/// rather than the one its body names: the body's top-level `"model"` is replaced (or added)
/// and `content-length`, if the request has one, follows. Wrap each endpoint's service in it
/// when the pool serves aliases and the services send bodies as they are;
/// `client::Upstream` does this itself.
///
/// Only the members before `"model"` are scanned, each skipped without being decoded, and the
/// body is copied once. A request without the hint, or whose body already names the model,
/// goes on untouched. A body not in memory (a stream), or not a JSON object, cannot be
/// rewritten and goes on as it is: routing reads only bodies in memory
/// ([`OpenAiRules`](super::OpenAiRules)), so an alias read from a body always finds it here.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, ServiceExt};
/// use tower_ai_balance::{hints::ServeAs, route::RewriteModel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_ai_balance::BoxError> {
/// let upstream = RewriteModel::new(service_fn(|r: Request<Full<Bytes>>| async move {
///     Ok::<_, Infallible>(Response::new(r.into_body()))
/// }));
/// let mut request = Request::new(Full::new(Bytes::from(r#"{"model":"chat","stream":true}"#)));
/// request.extensions_mut().insert(ServeAs("llama-70b".into()));
/// let sent = upstream.oneshot(request).await?.into_body().collect().await?.to_bytes();
/// assert_eq!(sent, r#"{"model":"llama-70b","stream":true}"#);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RewriteModel<S> {
    inner: S,
}

impl<S> RewriteModel<S> {
    /// Rewrites the requests `inner` sends.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for RewriteModel<S>
where
    S: Service<Request<B>>,
    B: Body + Clone + From<Bytes>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if let Some(body) = rewritten(&request) {
            set_length(request.headers_mut(), body.len());
            *request.body_mut() = B::from(body);
        }
        self.inner.call(request)
    }
}

/// The body of `request` as the model in its [`ServeAs`] hint, if it has the hint and a body
/// that must and can be rewritten.
fn rewritten<B: Body + Clone>(request: &Request<B>) -> Option<Bytes> {
    let ServeAs(model) = request.extensions().get::<ServeAs>()?;
    let body = peek(request.body(), usize::MAX)?;
    rewrite(&body, model)
}

/// `body` naming `model`, if it is a JSON object that names another.
pub(crate) fn rewrite(body: &[u8], model: &str) -> Option<Bytes> {
    replace_string(body, "model", model)
        .ok()
        .flatten()
        .map(Bytes::from)
}

/// Makes a `content-length` the request already has say `len`.
pub(crate) fn set_length(headers: &mut http::HeaderMap, len: usize) {
    if headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};
    use tower::{service_fn, ServiceExt};

    use super::*;

    async fn sent(request: Request<Full<Bytes>>) -> (Option<String>, Bytes) {
        let echo = service_fn(|r: Request<Full<Bytes>>| async move {
            let length = r
                .headers()
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap().to_owned());
            let body = r.into_body().collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>((length, body))
        });
        RewriteModelLayer::new()
            .layer(echo)
            .oneshot(request)
            .await
            .unwrap()
    }

    fn request(body: &'static str, serve_as: Option<&str>) -> Request<Full<Bytes>> {
        let mut r = Request::post("/v1/chat/completions")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        if let Some(model) = serve_as {
            r.extensions_mut().insert(ServeAs(model.into()));
        }
        r
    }

    #[tokio::test]
    async fn the_body_names_the_model_served_and_its_length_follows() {
        let (length, body) = sent(request(r#"{"model":"chat","n":1}"#, Some("qwen-72b"))).await;
        assert_eq!(body, r#"{"model":"qwen-72b","n":1}"#);
        assert_eq!(length, Some(body.len().to_string()));
    }

    #[tokio::test]
    async fn a_request_without_the_hint_or_with_a_body_it_cannot_read_goes_as_it_is() {
        for (body, serve_as) in [
            (r#"{"model":"chat"}"#, None),
            (r#"{"model":"m"}"#, Some("m")),
            ("not json", Some("m")),
            (r#"["model"]"#, Some("m")),
        ] {
            let (length, sent) = sent(request(body, serve_as)).await;
            assert_eq!(sent, body);
            assert_eq!(length, Some(body.len().to_string()));
        }
    }
}
