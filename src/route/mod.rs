//! Routes by content: what a request needs, and how much work it brings.
//!
//! [`Route`] sets the [`Require`] and [`Cost`] hints from each
//! request, so that [`Balance`](crate::balance::Balance) sends it only where it can run (the
//! model, a long enough context window, the hardware) and counts its tokens, not 1, in the
//! endpoint's outstanding work. The routing is a function of the request, or [`Rules`] over
//! what a reader extracts from it: model aliases with weights among their variants, and
//! request classes (short classifications, long generations) with requirements of their own.
//! With the `openai` feature, `OpenAiRules` reads OpenAI-style JSON bodies (without
//! consuming them).
//!
//! A request whose routing cannot be decided (with `OpenAiRules`, a body it cannot read) is
//! never sent on as if it required nothing: its [`Routing`] says [`refused`](Routing::refused),
//! and `Route` fails it with [`BadRequest`] without calling the inner service.
//!
//! # Model aliases
//!
//! [`Rules::alias`] resolves a name the clients use (`chat`) to variants the endpoints serve,
//! by weight. The weighted draw picks the preferred variant; the others are set as its
//! [`Require::fallback`], heaviest first, and `Balance` takes one of them only when no
//! endpoint of the preferred variant, in any tier, can take the request now (all ejected,
//! cooling down or full): a weighted split between models holds while each model can serve,
//! and an alias fails only when none can. The request is then sent as the variant that
//! serves it: `Balance` tells the endpoint's service in a
//! [`ServeAs`](crate::hints::ServeAs) hint, and the service writes it into the body.
//! `client::Upstream` does so itself; wrap any other endpoint service in [`RewriteModel`]
//! (`pool.insert(config, RewriteModel::new(service))`), which replaces the body's `"model"`
//! where it lies, scanning only the members before it.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_ai_balance::{
//!     capability::Require, hints::Served, route::{RouteLayer, Routing}, BalanceLayer, EndpointConfig, Pool,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_ai_balance::BoxError> {
//! let model = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
//! });
//! let pool = Pool::new();
//! pool.insert(EndpointConfig::new("small").model("llama-8b").max_context(8_192), model)?;
//! pool.insert(EndpointConfig::new("large").model("llama-70b").max_context(131_072), model)?;
//!
//! // Route by a header naming the model.
//! let route = RouteLayer::new(|req: &Request<Full<Bytes>>| Routing {
//!     require: req.headers().get("x-model").and_then(|v| v.to_str().ok()).map(Require::model),
//!     ..Routing::default()
//! });
//! let svc = ServiceBuilder::new().layer(route).layer(BalanceLayer::new()).service(pool);
//! let request = Request::builder().header("x-model", "llama-70b").body(Full::new(Bytes::new()))?;
//! let response = svc.oneshot(request).await?;
//! assert_eq!(response.extensions().get::<Served>().unwrap().endpoint().key().as_str(), "large");
//! # Ok(())
//! # }
//! ```

mod bad_request;
mod future;
#[cfg(feature = "openai")]
mod openai;
mod rewrite;
mod rules;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

#[cfg(feature = "openai")]
pub use self::openai::{OpenAiRequest, OpenAiRules};
#[cfg(feature = "client")]
pub(crate) use self::rewrite::rewrite;
pub use self::{
    bad_request::BadRequest,
    future::ResponseFuture,
    rewrite::{RewriteModel, RewriteModelLayer},
    rules::{Class, RequestInfo, Rules},
};
use crate::{
    capability::Require,
    error::BoxError,
    hints::{Cost, Hinted, Tokens},
};

/// What [`Route`] sets on a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// What the serving endpoint must have.
    pub require: Option<Require>,
    /// The request's work, in tokens (prompt plus maximum output, or an estimate).
    pub cost: Option<u64>,
    /// Its prompt's tokens and its maximum output, for endpoints with a provider quota
    /// ([`Quota`](crate::endpoint::Quota)) to reserve.
    pub tokens: Option<Tokens>,
    /// Refuse the request with this error instead of sending it on: its routing cannot be
    /// decided from what it says.
    pub refuse: Option<BadRequest>,
}

impl Routing {
    /// Refuses the request with `error`.
    pub fn refused(error: BadRequest) -> Self {
        Self {
            refuse: Some(error),
            ..Self::default()
        }
    }
}

/// Decides a request's [`Routing`]. Any `Fn(&Req) -> Routing` is one.
pub trait Decide<Req>: Send + Sync + 'static {
    /// The routing of `request`.
    fn decide(&self, request: &Req) -> Routing;
}

impl<F, Req> Decide<Req> for F
where
    F: Fn(&Req) -> Routing + Send + Sync + 'static,
{
    fn decide(&self, request: &Req) -> Routing {
        self(request)
    }
}

/// Builds a [`Route`].
#[derive(Debug)]
pub struct RouteLayer<D> {
    decide: Arc<D>,
}

impl<D> Clone for RouteLayer<D> {
    fn clone(&self) -> Self {
        Self {
            decide: Arc::clone(&self.decide),
        }
    }
}

impl<D> RouteLayer<D> {
    /// Routes with `decide`.
    pub fn new(decide: D) -> Self {
        Self {
            decide: Arc::new(decide),
        }
    }

    /// The same, in the builder shape every layer shares; a route has no setting to refuse.
    pub fn builder(decide: D) -> RouteBuilder<D> {
        RouteBuilder { decide }
    }
}

/// The settings of a [`RouteLayer`]: its decision.
#[derive(Debug, Clone)]
pub struct RouteBuilder<D> {
    decide: D,
}

impl<D> RouteBuilder<D> {
    /// The layer.
    pub fn build(self) -> Result<RouteLayer<D>, crate::error::ConfigError> {
        Ok(RouteLayer::new(self.decide))
    }
}

impl<S, D> Layer<S> for RouteLayer<D> {
    type Service = Route<S, D>;

    fn layer(&self, inner: S) -> Route<S, D> {
        Route {
            inner,
            decide: Arc::clone(&self.decide),
        }
    }
}

/// Sets the `Require` and `Cost` hints of each request, or refuses it with [`BadRequest`]
/// when its routing says so. See the [module docs](crate::route).
#[derive(Debug)]
pub struct Route<S, D> {
    inner: S,
    decide: Arc<D>,
}

impl<S: Clone, D> Clone for Route<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            decide: Arc::clone(&self.decide),
        }
    }
}

impl<S, D, Req> Service<Req> for Route<S, D>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    D: Decide<Req>,
    Req: Hinted,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let routing = self.decide.decide(&request);
        if let Some(error) = routing.refuse {
            return ResponseFuture::refused(error);
        }
        if let Some(require) = routing.require {
            if let Some(model) = &require.model {
                // Into the request span of a `Failover` above, if there is one and it is on.
                tracing::Span::current().record("gen_ai.request.model", &**model);
            }
            request.extensions_mut().insert(require);
        }
        if let Some(cost) = routing.cost {
            request.extensions_mut().insert(Cost(cost));
        }
        if let Some(tokens) = routing.tokens {
            request.extensions_mut().insert(tokens);
        }
        ResponseFuture::called(self.inner.call(request))
    }
}
