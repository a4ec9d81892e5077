//! Routing by what an OpenAI-style JSON body asks for: bodies a strict JSON reader refuses but
//! model servers accept still reach only endpoints with their model; bodies nobody can read are
//! refused with a typed error before any endpoint sees them; prompts given as arrays count.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    failover::FailoverLayer,
    route::{BadRequest, OpenAiRules, RouteLayer, Rules},
    BalanceLayer, BoxError, EndpointConfig, Pool,
};

use crate::support::{echo, served, Echo};

fn post(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

/// A chat body for `gpt-4o` with `inside` spliced in where a value may go, the model last.
fn gpt_body_with(inside: &[u8]) -> Vec<u8> {
    let mut body = br#"{"messages":[{"role":"user","content":"hello"}],"extra":"#.to_vec();
    body.extend_from_slice(inside);
    body.extend_from_slice(br#","max_tokens":64,"model":"gpt-4o"}"#);
    body
}

/// An 8 MiB data URL: the size a screenshot reaches in base64.
fn image_chat(image_bytes: usize) -> Vec<u8> {
    let mut body = br#"{"messages":[{"role":"user","content":[{"type":"text","text":"What is in this picture?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,"#.to_vec();
    body.extend(vec![b'A'; image_bytes]);
    body.extend_from_slice(br#""}}]}],"max_tokens":300,"model":"gpt-4o"}"#);
    body
}

fn nested(depth: usize) -> Vec<u8> {
    let mut v = vec![b'['; depth];
    v.extend(vec![b']'; depth]);
    v
}

#[tokio::test]
async fn bodies_model_servers_accept_reach_only_an_endpoint_with_their_model() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a body over 8 MiB", image_chat(9 << 20)),
        (
            "a lone surrogate escape",
            gpt_body_with(br#""cut mid-emoji \ud83d""#),
        ),
        (
            "a lone surrogate in the content",
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"\ud83d"}]}"#.to_vec(),
        ),
        ("a number beyond f64", gpt_body_with(b"1e400")),
        (
            "invalid UTF-8 in a string",
            gpt_body_with(b"\"caf\xe9 \xff\""),
        ),
        (
            "a repeated key that routing does not read",
            gpt_body_with(br#"{"stream":true,"stream":false}"#),
        ),
        ("nesting 200 deep", gpt_body_with(&nested(200))),
        (
            "NaN and Infinity",
            gpt_body_with(b"[NaN, Infinity, -Infinity]"),
        ),
    ];
    let pool: Pool<Echo> = Pool::new();
    pool.insert(EndpointConfig::new("gpt").model("gpt-4o"), echo("gpt"))
        .unwrap();
    pool.insert(
        EndpointConfig::new("llama").model("llama-70b"),
        echo("llama"),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(OpenAiRules(Rules::new())))
        .layer(BalanceLayer::new())
        .service(pool);
    for (case, body) in cases {
        let body = Bytes::from(body);
        for _ in 0..20 {
            let r = svc
                .clone()
                .oneshot(post(body.clone()))
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(served(&r).key().as_str(), "gpt", "{case}");
        }
    }
}

#[tokio::test]
async fn a_body_that_cannot_be_read_is_refused_before_any_endpoint_sees_it() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hel"#.to_vec(),
            "ends",
        ),
        (
            "the model named twice",
            br#"{"model":"llama-70b","messages":[],"model":"gpt-4o"}"#.to_vec(),
            "model",
        ),
        (
            "the model named twice, once escaped",
            br#"{"model":"llama-70b","messages":[],"mod\u0065l":"gpt-4o"}"#.to_vec(),
            "model",
        ),
        (
            "nesting 100,000 deep",
            gpt_body_with(&nested(100_000)),
            "deep",
        ),
        ("not an object", b"[1, 2, 3]".to_vec(), "object"),
        ("not JSON", b"model=gpt-4o".to_vec(), "object"),
        (
            "a model that is not a string",
            br#"{"model":42,"messages":[]}"#.to_vec(),
            "model",
        ),
        (
            "messages that are not an array",
            br#"{"model":"gpt-4o","messages":"hello"}"#.to_vec(),
            "messages",
        ),
        (
            "a negative max_tokens",
            br#"{"model":"gpt-4o","messages":[],"max_tokens":-1}"#.to_vec(),
            "max_tokens",
        ),
        ("brackets that do not match", gpt_body_with(b"[1, 2}"), ""),
        (
            "trailing bytes",
            br#"{"model":"gpt-4o","messages":[]} {}"#.to_vec(),
            "",
        ),
    ];
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(OpenAiRules(Rules::new())))
        .service(service_fn(move |_: Request<Full<Bytes>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(http::Response::new(Full::new(Bytes::new()))) }
        }));
    for (case, body, reason) in cases {
        let e = svc
            .clone()
            .oneshot(post(body))
            .await
            .map(|_| ())
            .expect_err(case);
        let bad = e
            .downcast_ref::<BadRequest>()
            .unwrap_or_else(|| panic!("{case}: not a BadRequest: {e}"));
        assert!(bad.reason().contains(reason), "{case}: {bad}");
    }
    let gzipped = Request::post("/v1/chat/completions")
        .header("content-encoding", "gzip")
        .body(Full::new(Bytes::from_static(b"\x1f\x8b\x08\x00")))
        .unwrap();
    let e = svc.clone().oneshot(gzipped).await.map(|_| ()).unwrap_err();
    assert!(e
        .downcast_ref::<BadRequest>()
        .unwrap()
        .reason()
        .contains("compressed"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the inner service is never called"
    );
    // What is left to route is routed: an empty body (a GET) and a multipart upload.
    svc.clone().oneshot(post(Bytes::new())).await.unwrap();
    let upload = Request::post("/v1/audio/transcriptions")
        .header("content-type", "multipart/form-data; boundary=x")
        .body(Full::new(Bytes::from_static(b"--x\r\n\r\n--x--\r\n")))
        .unwrap();
    svc.clone().oneshot(upload).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refusal_passes_through_failover_as_it_is() {
    let pool: Pool<Echo> = Pool::new();
    pool.insert(EndpointConfig::new("gpt").model("gpt-4o"), echo("gpt"))
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(FailoverLayer::new())
        .layer(RouteLayer::new(OpenAiRules(Rules::new())))
        .layer(BalanceLayer::new())
        .service(pool.clone());
    let e = svc
        .oneshot(post(&br#"{"model":"gpt-4o","messages":["#[..]))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(e.is::<BadRequest>(), "{e}");
    assert_eq!(pool.get("gpt").unwrap().in_flight(), 0);
}

#[tokio::test]
async fn a_prompt_given_as_an_array_counts_toward_the_context_it_needs() {
    let pool: Pool<Echo> = Pool::new();
    for (name, context) in [("small-0", 8_192), ("small-1", 8_192), ("long", 131_072)] {
        pool.insert(
            EndpointConfig::new(name)
                .model("llama")
                .max_context(context),
            echo(name),
        )
        .unwrap();
    }
    let svc = ServiceBuilder::new()
        .layer(RouteLayer::new(OpenAiRules(Rules::new())))
        .layer(BalanceLayer::new())
        .service(pool);
    let ids = |n: usize| vec!["17"; n].join(",");
    let quarter = "x".repeat(100_000);
    let prompts = [
        (
            "strings",
            format!(r#"["{quarter}","{quarter}","{quarter}","{quarter}"]"#),
        ),
        ("token ids", format!("[{}]", ids(100_000))),
        (
            "arrays of token ids",
            format!("[[{}],[{}]]", ids(50_000), ids(50_000)),
        ),
    ];
    for (case, prompt) in prompts {
        let body = Bytes::from(format!(
            r#"{{"model":"llama","prompt":{prompt},"max_tokens":100}}"#
        ));
        for _ in 0..40 {
            let r = svc.clone().oneshot(post(body.clone())).await.unwrap();
            assert_eq!(served(&r).key().as_str(), "long", "{case}");
        }
    }
}
