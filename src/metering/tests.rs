//! The metering layer under `Failover`: the tokens counted at the endpoint that answered, for
//! the model the request was sent as, and the span fields recorded on the span the answer came
//! in (the request's on a first attempt, the attempt's on a retry).

use std::{
    convert::Infallible,
    fmt,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tracing::{
    field::{Field, Visit},
    span::{Attributes, Id, Record},
    Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

use super::MeteringLayer;
use crate::{capability::Require, failover::FailoverLayer, BalanceLayer, EndpointConfig, Pool};

/// A field recorded on a span: (span name, field, value).
type Recorded = (&'static str, &'static str, String);

/// The fields recorded on spans.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Recorded>>>);

struct Visitor<'a>(&'static str, &'a Capture);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        self.1
             .0
            .lock()
            .unwrap()
            .push((self.0, field.name(), value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let value = value.to_owned();
        self.1
             .0
            .lock()
            .unwrap()
            .push((self.0, field.name(), value));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        attrs.record(&mut Visitor(attrs.metadata().name(), self));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let name = ctx.span(id).map_or("?", |s| s.name());
        values.record(&mut Visitor(name, self));
    }
}

impl Capture {
    fn get(&self, span: &str, field: &str) -> Vec<String> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|(s, f, _)| *s == span && *f == field)
            .map(|(_, _, v)| v.clone())
            .collect()
    }
}

const ANSWER: &str = r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":16}}}"#;

fn answer(
    status: u16,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync {
    service_fn(move |_: Request<Full<Bytes>>| async move {
        let body = if status == 200 { ANSWER } else { "{}" };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok::<_, Infallible>(response)
    })
}

fn request() -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    request.extensions_mut().insert(Require::model("llama"));
    request
}

fn counted(pool: &Pool<impl Clone>, key: &str) -> Vec<(String, u64, u64, u64)> {
    let endpoints = pool.endpoints();
    let e = endpoints.iter().find(|e| e.key().as_str() == key).unwrap();
    e.tokens()
        .iter()
        .map(|t| (t.model.to_string(), t.input, t.output, t.cached_input))
        .collect()
}

#[tokio::test]
async fn a_first_attempts_usage_is_counted_and_recorded_on_the_request_span() {
    let capture = Capture::default();
    let _default = tracing_subscriber::registry()
        .with(capture.clone())
        .set_default();
    let pool = Pool::new();
    let config = EndpointConfig::new("gpu-0")
        .model("llama")
        .provider("anthropic");
    pool.insert(config, answer(200)).unwrap();
    let stack = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(MeteringLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let response = stack.oneshot(request()).await.unwrap();
    assert!(capture
        .get("request", "gen_ai.usage.input_tokens")
        .is_empty());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ANSWER);
    assert_eq!(
        counted(&pool, "gpu-0"),
        [
            ("llama".to_owned(), 30, 4, 16),
            ("_OTHER".to_owned(), 0, 0, 0)
        ]
    );
    assert_eq!(capture.get("request", "gen_ai.usage.input_tokens"), ["30"]);
    assert_eq!(capture.get("request", "gen_ai.usage.output_tokens"), ["4"]);
    assert_eq!(
        capture.get("request", "gen_ai.provider.name"),
        ["anthropic"]
    );
}

#[tokio::test]
async fn a_retried_answer_counts_where_it_was_served_and_records_on_its_attempt() {
    let capture = Capture::default();
    let _default = tracing_subscriber::registry()
        .with(capture.clone())
        .set_default();
    let pool = Pool::new();
    let failing = EndpointConfig::new("self-hosted").model("llama");
    pool.insert(failing, answer(503)).unwrap();
    let provider = EndpointConfig::new("provider").model("llama").tier(1);
    pool.insert(provider.provider("openai"), answer(200))
        .unwrap();
    let stack = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(MeteringLayer::new())
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let response = stack.oneshot(request()).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(
        counted(&pool, "provider")[0],
        ("llama".to_owned(), 30, 4, 16)
    );
    assert_eq!(
        counted(&pool, "self-hosted")[0],
        ("llama".to_owned(), 0, 0, 0),
        "its 503 had no usage"
    );
    assert_eq!(capture.get("attempt", "gen_ai.usage.output_tokens"), ["4"]);
    assert_eq!(capture.get("request", "gen_ai.provider.name"), ["openai"]);
}
