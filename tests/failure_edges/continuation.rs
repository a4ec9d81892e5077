//! Mid-stream continuation never corrupts a stream: past the transcript's cap it is not
//! attempted, the rebuilt request is well-formed on the wire, and an answer that is not the
//! rest of a stream is not spliced in but counted against its endpoint.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_ai_balance::{
    failover::{FailoverLayer, OpenAiChat},
    health::HealthFilterLayer,
    BalanceLayer, EndpointConfig, Health, HealthPolicy, Pool,
};

use crate::{
    model_server::Upstream,
    support::{ms, HttpService},
    wire::{delta, sse, whole, Wire},
};

/// A chat request as real clients send it: with its `content-length`, and hop-by-hop
/// headers a client or proxy in front may have left on it.
fn chat(max_tokens: u64) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "m", "stream": true, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Write a long story."}],
    })
    .to_string();
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-request-id", "req-1")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// `broken` (tier 0) and `spare` (tier 1), each behind a raw hyper client that sends a
/// request's headers as they are.
fn pool(broken: &Wire, spare: &Wire) -> Pool<HttpService> {
    let pool = Pool::new();
    let client = Upstream::client();
    pool.insert(
        EndpointConfig::new("broken").tier(0),
        Upstream::new(client.clone(), broken.uri()),
    )
    .unwrap();
    pool.insert(
        EndpointConfig::new("spare").tier(1),
        Upstream::new(client, spare.uri()),
    )
    .unwrap();
    pool
}

/// Reads a body to its end or its first error: the bytes received, and the error.
async fn drain<B>(mut body: B) -> (Vec<u8>, Option<B::Error>)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => got.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

fn failover() -> FailoverLayer {
    FailoverLayer::builder()
        .first_chunk(ms(5_000))
        .continuation(OpenAiChat)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_stream_that_breaks_past_the_cap_fails_as_without_continuation() {
    // 100 events of 48 KiB of text: 4.8 MiB, past the 4 MiB the continuation keeps.
    let chunk = "x".repeat(48 << 10);
    let events: Vec<Bytes> = (0..100).map(|_| delta("c-broken", &chunk)).collect();
    let sent: usize = events.iter().map(Bytes::len).sum();
    assert!(sent > 4 << 20);
    let broken = Wire::serve(move |_| sse(events.clone(), true)).await;
    let spare = Wire::serve(|_| sse(vec![delta("c-spare", "again")], false)).await;
    let pool = pool(&broken, &spare);
    let svc = ServiceBuilder::new()
        .layer(failover())
        .layer(BalanceLayer::new())
        .service(pool.clone());

    let response = svc.oneshot(chat(1_000_000)).await.unwrap();
    let (got, error) = drain(response.into_body()).await;
    assert!(error.is_some(), "the stream fails as it broke");
    assert_eq!(got.len(), sent, "the caller got what was streamed, once");
    assert_eq!(spare.calls(), 0, "no continuation was asked for");
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
}

#[tokio::test]
async fn the_continuation_request_has_a_true_length_and_no_hop_by_hop_headers() {
    let broken = Wire::serve(|_| {
        sse(
            vec![delta("c-broken", "Once upon "), delta("c-broken", "a time")],
            true,
        )
    })
    .await;
    let spare = Wire::serve(|_| {
        sse(
            vec![delta("c-spare", ", there"), delta("c-spare", " was")],
            false,
        )
    })
    .await;
    let pool = pool(&broken, &spare);
    let svc = ServiceBuilder::new()
        .layer(failover())
        .layer(BalanceLayer::new())
        .service(pool.clone());

    let response = svc.oneshot(chat(100)).await.unwrap();
    let (got, error) = drain(response.into_body()).await;
    assert!(error.is_none(), "carried on: {error:?}");
    let got = String::from_utf8(got).unwrap();
    assert!(got.contains("c-broken") && got.contains("c-spare"), "{got}");
    assert!(got.ends_with("data: [DONE]\n\n"), "{got}");

    assert_eq!(spare.calls(), 1);
    let asked = spare.last();
    let length: usize = asked.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, asked.body.len(), "content-length is the new body's");
    let json: serde_json::Value =
        serde_json::from_slice(&asked.body).expect("the whole body arrived");
    let messages = json["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], "Once upon a time");
    assert_eq!(json["continue_final_message"], true);
    assert_eq!(json["add_generation_prompt"], false);
    assert_eq!(json["max_tokens"], 98);
    for hop in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(!asked.headers.contains_key(hop), "{hop} was forwarded");
    }
    if let Some(connection) = asked.headers.get("connection") {
        // What the client itself says of its connection, never the caller's list.
        assert!(!connection.to_str().unwrap().contains("x-hop"));
    }
    assert_eq!(
        asked.headers["x-request-id"], "req-1",
        "end-to-end headers stay"
    );
    assert!(pool.endpoints().iter().all(|e| e.in_flight() == 0));
}

#[tokio::test]
async fn an_answer_that_is_not_an_event_stream_is_not_spliced_in_and_counts_against_its_endpoint() {
    // (status, type, body, whether it counts against the endpoint that gave it)
    let cases = [
        (
            200,
            "application/json",
            r#"{"choices":[{"message":{"content":"a whole new answer"}}]}"#,
            true,
        ),
        (
            500,
            "application/json",
            r#"{"error":{"message":"boom"}}"#,
            true,
        ),
        // OpenAI's API refuses to continue an assistant message: the request's fault, not
        // the endpoint's.
        (
            400,
            "application/json",
            r#"{"error":{"message":"Unrecognized request argument"}}"#,
            false,
        ),
    ];
    for (status, content_type, body, counts) in cases {
        let broken = Wire::serve(|_| sse(vec![delta("c-broken", "Once upon a time")], true)).await;
        let spare = Wire::serve(move |_| whole(status, content_type, body)).await;
        let pool = pool(&broken, &spare);
        let mut policy = HealthPolicy::default();
        policy.consecutive_failures = 1;
        policy.max_ejected_fraction = 1.0;
        let svc = ServiceBuilder::new()
            .layer(failover())
            .layer(HealthFilterLayer::builder().policy(policy).build().unwrap())
            .layer(BalanceLayer::new())
            .service(pool.clone());

        let response = svc.oneshot(chat(100)).await.unwrap();
        let (got, error) = drain(response.into_body()).await;
        let got = String::from_utf8(got).unwrap();
        let error = error.unwrap_or_else(|| panic!("{status}: spliced in: {got}"));
        assert!(
            !got.contains("whole new answer") && !got.contains("error"),
            "{status}: {got}"
        );
        assert!(
            error.to_string().contains("crashed") || std::error::Error::source(&*error).is_some(),
            "{status}: the error that broke the stream: {error}"
        );
        assert_eq!(spare.calls(), 1, "{status}");
        let spare_endpoint = pool.get("spare").unwrap();
        assert_eq!(
            matches!(spare_endpoint.health(), Health::Ejected { .. }),
            counts,
            "{status}: counted against the endpoint that gave it: {counts}"
        );
        assert_eq!(spare_endpoint.failures(), u64::from(counts), "{status}");
        assert!(
            pool.endpoints().iter().all(|e| e.in_flight() == 0),
            "{status}"
        );
    }
}
