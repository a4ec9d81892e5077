//! Model aliases: a variant that cannot serve gives way to the next, and each endpoint's
//! service is told the model it serves the request as, which `RewriteModel` writes into the
//! body.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, util::BoxCloneSyncService, Service, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    capability::{Require, Unmet, Unsatisfiable},
    failover::FailoverLayer,
    hints::{ServeAs, WithHints},
    route::{OpenAiRequest, RewriteModel, RouteLayer, Rules},
    Balance, BalanceLayer, BoxError, EndpointConfig, Pool,
};

use crate::support::served;

/// What an endpoint received: the model its body named, and the hint it was given.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

type Model = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An endpoint's service behind `RewriteModel`: it logs the model the body names and answers
/// 200 with it, or `status` (a broken server).
fn model_server(log: &Log, status: StatusCode) -> Model {
    let log = Arc::clone(log);
    BoxCloneSyncService::new(RewriteModel::new(service_fn(
        move |r: Request<Full<Bytes>>| {
            let log = Arc::clone(&log);
            async move {
                let hint = r.extensions().get::<ServeAs>().map(|s| s.0.to_string());
                let body = r.into_body().collect().await.unwrap().to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let model = json["model"].as_str().unwrap_or_default().to_owned();
                log.lock().unwrap().push((model.clone(), hint));
                let mut response = Response::new(Full::new(Bytes::from(model)));
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }
        },
    )))
}

fn chat(model: &str) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": model, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hello"}],
    });
    Request::post("/v1/chat/completions")
        .header("content-length", body.to_string().len())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// "chat" is three parts llama-70b to one part qwen-72b.
fn rules() -> Rules {
    Rules::new().alias("chat", [("llama-70b", 3.0), ("qwen-72b", 1.0)])
}

/// Routes by `rules` with a fixed draw: 0 always prefers llama-70b.
fn route(
    draw: f64,
) -> RouteLayer<
    impl Fn(&Request<Full<Bytes>>) -> tower_ai_balance::route::Routing + Send + Sync + 'static,
> {
    let rules = rules();
    RouteLayer::new(move |r: &Request<Full<Bytes>>| {
        let info = OpenAiRequest::read(r.body()).unwrap().unwrap();
        rules.decide(&info, draw)
    })
}

fn logs() -> (Log, Log) {
    (Log::default(), Log::default())
}

fn taken(log: &Log) -> Vec<(String, Option<String>)> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test]
async fn an_alias_takes_the_next_variant_while_the_preferred_has_no_room() {
    let (llama, qwen) = logs();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("llama-0")
            .model("llama-70b")
            .max_concurrency(1),
        model_server(&llama, StatusCode::OK),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("qwen-0").model("qwen-72b"),
        model_server(&qwen, StatusCode::OK),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(route(0.0))
        .layer(BalanceLayer::new())
        .service(pool.clone());

    let r = svc.clone().oneshot(chat("chat")).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "llama-0", "the draw's variant");
    assert_eq!(
        taken(&llama),
        [("llama-70b".to_owned(), Some("llama-70b".to_owned()))]
    );
    // The response's body holds the slot until it is dropped.
    drop(r);

    // Its only slot taken: the alias goes to the other variant, sent as that model.
    let mut one_for_llama = WithHints::new(());
    one_for_llama.extensions.insert(Require::model("llama-70b"));
    let held = Balance::new(pool.clone()).pick(&one_for_llama).unwrap();
    for _ in 0..10 {
        let r = svc.clone().oneshot(chat("chat")).await.unwrap();
        assert_eq!(served(&r).key().as_str(), "qwen-0");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(taken(&llama).is_empty());
    assert_eq!(
        taken(&qwen),
        vec![("qwen-72b".to_owned(), Some("qwen-72b".to_owned())); 10]
    );
    // A request for the model itself is not an alias: it is not sent elsewhere, and never
    // renamed.
    let e = svc
        .clone()
        .oneshot(chat("llama-70b"))
        .await
        .expect_err("llama-70b is full");
    assert!(e.is::<tower_ai_balance::Overloaded>(), "{e}");
    drop(held);
    let r = svc.clone().oneshot(chat("llama-70b")).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "llama-0");
    assert_eq!(taken(&llama), [("llama-70b".to_owned(), None)]);
}

#[tokio::test]
async fn a_retry_that_excludes_the_preferred_variant_takes_the_next() {
    let (llama, qwen) = logs();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("llama-0").model("llama-70b"),
        model_server(&llama, StatusCode::INTERNAL_SERVER_ERROR),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("qwen-0").model("qwen-72b"),
        model_server(&qwen, StatusCode::OK),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(route(0.0))
        .layer(BalanceLayer::new())
        .service(pool);
    let r = svc.oneshot(chat("chat")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(served(&r).key().as_str(), "qwen-0");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "qwen-72b");
    assert_eq!(
        taken(&llama),
        [("llama-70b".to_owned(), Some("llama-70b".to_owned()))],
        "the first attempt, as its own model"
    );
    assert_eq!(
        taken(&qwen),
        [("qwen-72b".to_owned(), Some("qwen-72b".to_owned()))],
        "the retry, as the other"
    );
}

#[tokio::test]
async fn a_variant_walks_its_own_tiers_before_the_next_variant() {
    // The alias falls back to another model only when its own cannot serve anywhere: a
    // weighted split between models is kept while the preferred model has an overflow tier.
    let (llama, qwen) = logs();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("llama-0")
            .model("llama-70b")
            .max_concurrency(1),
        model_server(&llama, StatusCode::OK),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("llama-provider")
            .model("llama-70b")
            .tier(1),
        model_server(&llama, StatusCode::OK),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("qwen-0").model("qwen-72b"),
        model_server(&qwen, StatusCode::OK),
    )
    .unwrap();
    let mut one_for_llama = WithHints::new(());
    one_for_llama.extensions.insert(Require::model("llama-70b"));
    let _held = Balance::new(pool.clone()).pick(&one_for_llama).unwrap();
    let svc = ServiceBuilder::new()
        .layer(route(0.0))
        .layer(BalanceLayer::new())
        .service(pool);
    let r = svc.oneshot(chat("chat")).await.unwrap();
    assert_eq!(served(&r).key().as_str(), "llama-provider");
    assert_eq!(
        taken(&llama),
        [("llama-70b".to_owned(), Some("llama-70b".to_owned()))]
    );
}

#[tokio::test]
async fn an_endpoint_of_any_model_serves_an_alias_as_its_preferred_variant() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("any"),
        model_server(&log, StatusCode::OK),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(route(0.9))
        .layer(BalanceLayer::new())
        .service(pool);
    svc.oneshot(chat("chat")).await.unwrap();
    assert_eq!(
        taken(&log),
        [("qwen-72b".to_owned(), Some("qwen-72b".to_owned()))]
    );
}

#[tokio::test]
async fn an_alias_nothing_can_serve_is_unsatisfiable() {
    let log = Log::default();
    let pool = Pool::new();
    pool.insert(
        EndpointConfig::new("mistral-0").model("mistral"),
        model_server(&log, StatusCode::OK),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(route(0.0))
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let unmet = |e: BoxError| e.downcast_ref::<Unsatisfiable>().unwrap().unmet().clone();
    let e = svc.clone().oneshot(chat("chat")).await.unwrap_err();
    assert_eq!(unmet(e), Unmet::Model("chat".into()), "named by the alias");
    // A variant served only where the context is too short (the request needs its 10
    // output tokens and the prompt's): that is what is unmet.
    pool.insert(
        EndpointConfig::new("qwen-small")
            .model("qwen-72b")
            .max_context(8),
        model_server(&log, StatusCode::OK),
    )
    .unwrap();
    let e = svc.oneshot(chat("chat")).await.unwrap_err();
    let unmet = unmet(e);
    assert!(matches!(unmet, Unmet::Context(_)), "{unmet:?}");
    assert!(taken(&log).is_empty());
}

#[test]
fn an_alias_names_its_variants_heaviest_first_and_the_draw_first_of_all() {
    let rules = Rules::new().alias(
        "chat",
        [
            ("a", 1.0),
            ("b", 5.0),
            ("off", 0.0),
            ("c", 2.0),
            ("nan", f64::NAN),
        ],
    );
    let info = tower_ai_balance::route::RequestInfo {
        model: Some("chat".into()),
        prompt_tokens: 1,
        max_tokens: 1,
    };
    let require = rules.decide(&info, 0.0).require.unwrap();
    let models: Vec<&str> = require.models().map(|m| &**m).collect();
    assert_eq!(
        models,
        ["a", "b", "c"],
        "the draw, then by weight, once each"
    );
    assert_eq!(require.alias.as_deref(), Some("chat"));
    assert!(require.renames());
    let require = rules.decide(&info, 0.99).require.unwrap();
    assert_eq!(
        require.models().map(|m| &**m).collect::<Vec<_>>(),
        ["c", "b", "a"]
    );
    // Not an alias: the model itself, not renamed.
    let plain = tower_ai_balance::route::RequestInfo {
        model: Some("b".into()),
        ..info
    };
    let require = rules.decide(&plain, 0.0).require.unwrap();
    assert_eq!(
        (require.model.as_deref(), require.renames()),
        (Some("b"), false)
    );
}

#[tokio::test]
async fn balance_tells_only_a_renamed_request_its_model() {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = Arc::clone(&seen);
    let svc = service_fn(move |r: WithHints<()>| {
        log.lock()
            .unwrap()
            .push(r.extensions.get::<ServeAs>().map(|s| s.0.to_string()));
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let pool = Pool::new();
    pool.insert(EndpointConfig::new("e").model("m").model("n"), svc)
        .unwrap();
    let mut balance = ServiceBuilder::new()
        .layer(BalanceLayer::new())
        .service(pool);
    for require in [
        None,
        Some(Require::model("n")),
        Some(Require::model("x").fallback(["n", "m"])),
        Some(Require::model("m").alias("chat")),
    ] {
        let mut request = WithHints::new(());
        if let Some(r) = require {
            request.extensions.insert(r);
        }
        balance.ready().await.unwrap().call(request).await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [None, None, Some("n".to_owned()), Some("m".to_owned())]
    );
}
